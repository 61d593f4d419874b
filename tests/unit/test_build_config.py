"""setup.py's build configuration: pkg-config flags, Homebrew prefixes, per-platform errors, build options.

The pure functions get fake pkg-config answers; the boundaries (pkg-config, the C compiler, setup.py itself,
scripts/build_clang.sh) run for real on this machine.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_setup():
    spec = importlib.util.spec_from_file_location("hivedata_setup_under_test", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


S = _load_setup()
CURL, JPEG = S.LIBRARIES
BREW_JPEG = "/opt/homebrew/opt/jpeg-turbo"


def fake_pkg_config(answers: dict[tuple[str, str], str]):
    """A PkgConfig that knows only the (flag, module) pairs in answers."""
    calls = []

    def query(args: list[str]) -> str | None:
        calls.append(args)
        return answers.get(tuple(args))

    query.calls = calls
    return query


# ------------------------------------------------------------------------------------------- flags


def test_debian_pkg_config_output():
    flags = S.flags_from_pkg_config("-I/usr/include/x86_64-linux-gnu", "-lcurl")
    assert flags == S.NativeFlags(include_dirs=["/usr/include/x86_64-linux-gnu"], libraries=["curl"])


def test_homebrew_pkg_config_output_keeps_framework_pairs_and_quoted_paths():
    flags = S.flags_from_pkg_config(
        f"-I{BREW_JPEG}/include -DCURL_STATICLIB -I'/Users/me/my libs/include'",
        f"-L{BREW_JPEG}/lib -ljpeg -framework CoreFoundation -framework SystemConfiguration -Wl,-rpath,/x",
    )
    assert flags.include_dirs == [f"{BREW_JPEG}/include", "/Users/me/my libs/include"]
    assert flags.extra_compile_args == ["-DCURL_STATICLIB"]
    assert flags.library_dirs == [f"{BREW_JPEG}/lib"]
    assert flags.libraries == ["jpeg"]
    assert flags.extra_link_args == ["-framework", "CoreFoundation", "-framework", "SystemConfiguration",
                                     "-Wl,-rpath,/x"]


def test_without_pkg_config_plain_library_names():
    flags = S.native_flags(None)
    assert flags == S.NativeFlags(libraries=["curl", "jpeg"])


def test_pkg_config_for_every_library_merged_without_duplicates():
    pc = fake_pkg_config({
        ("--cflags", "libcurl"): "-I/opt/homebrew/opt/curl/include",
        ("--libs", "libcurl"): "-L/opt/homebrew/opt/curl/lib -lcurl -framework Security",
        ("--cflags", "libjpeg"): f"-I{BREW_JPEG}/include -I/opt/homebrew/opt/curl/include",
        ("--libs", "libjpeg"): f"-L{BREW_JPEG}/lib -ljpeg -framework Security",
    })
    flags = S.native_flags(pc)
    assert flags.include_dirs == ["/opt/homebrew/opt/curl/include", f"{BREW_JPEG}/include"]
    assert flags.library_dirs == ["/opt/homebrew/opt/curl/lib", f"{BREW_JPEG}/lib"]
    assert flags.libraries == ["curl", "jpeg"]
    assert flags.extra_link_args == ["-framework", "Security", "-framework", "Security"]  # pairs stay whole
    assert sorted(map(tuple, pc.calls)) == [("--cflags", "libcurl"), ("--cflags", "libjpeg"),
                                            ("--libs", "libcurl"), ("--libs", "libjpeg")]


def test_module_pkg_config_does_not_know_falls_back_to_its_plain_name():
    pc = fake_pkg_config({("--cflags", "libcurl"): "", ("--libs", "libcurl"): "-lcurl"})
    flags = S.native_flags(pc)
    assert flags == S.NativeFlags(libraries=["curl", "jpeg"])
    half = fake_pkg_config({("--cflags", "libjpeg"): "-I/j/include"})  # cflags without libs: not trusted
    assert S.native_flags(half) == S.NativeFlags(libraries=["curl", "jpeg"])


# ------------------------------------------------------------------------------------------- Homebrew


def test_homebrew_dirs_existing_only_brew_answer_first_no_duplicates():
    existing = {"/opt/homebrew/opt/jpeg-turbo/lib/pkgconfig", "/opt/homebrew/opt/curl/lib/pkgconfig",
                "/usr/local/opt/curl/lib/pkgconfig", "/custom/brew/opt/jpeg-turbo/lib/pkgconfig"}
    prefixes = {"jpeg-turbo": "/custom/brew/opt/jpeg-turbo/", "curl": "/opt/homebrew/opt/curl"}
    dirs = S.homebrew_pkgconfig_dirs(is_dir=existing.__contains__, brew_prefix=prefixes.get)
    assert dirs == ["/opt/homebrew/opt/curl/lib/pkgconfig", "/custom/brew/opt/jpeg-turbo/lib/pkgconfig",
                    "/opt/homebrew/opt/jpeg-turbo/lib/pkgconfig", "/usr/local/opt/curl/lib/pkgconfig"]


def test_homebrew_dirs_without_brew_or_kegs():
    assert S.homebrew_pkgconfig_dirs(is_dir=lambda p: False, brew_prefix=None) == []
    intel = S.homebrew_pkgconfig_dirs(is_dir=lambda p: p.startswith("/usr/local/"), brew_prefix=lambda f: None)
    assert intel == ["/usr/local/opt/curl/lib/pkgconfig", "/usr/local/opt/jpeg-turbo/lib/pkgconfig"]


def test_pkg_config_path_keeps_the_users_entries_first():
    sep = os.pathsep
    assert S.with_pkg_config_path(None, ["/a", "/b"]) == f"/a{sep}/b"
    assert S.with_pkg_config_path("", []) == ""
    assert S.with_pkg_config_path(f"/mine{sep}/a", ["/a", "/b"]) == f"/mine{sep}/a{sep}/b"


# ------------------------------------------------------------------------------------------- messages and options


def test_install_hint_per_platform():
    assert S.install_hint([CURL, JPEG], "linux") == (
        "hivedata: missing system libraries: apt-get install libcurl4-openssl-dev libjpeg62-turbo-dev")
    assert S.install_hint([JPEG], "linux") == "hivedata: missing system libraries: apt-get install libjpeg62-turbo-dev"
    assert S.install_hint([CURL, JPEG], "darwin", have_pkg_config=False) == (
        "hivedata: missing system libraries: brew install curl jpeg-turbo pkg-config")
    assert S.install_hint([JPEG], "darwin") == "hivedata: missing system libraries: brew install jpeg-turbo"


def test_compiler_hint_per_platform():
    assert "xcode-select --install" in S.compiler_hint("darwin")
    assert "apt-get install build-essential" in S.compiler_hint("linux")


def test_build_options_from_the_environment():
    plain, plain_link = S.compile_and_link_args({})
    assert {"-O3", "-Wall", "-Wextra", "-fvisibility=hidden"} <= set(plain) and "-Werror" not in plain
    assert plain_link == []
    asan, asan_link = S.compile_and_link_args({"HIVEDATA_SANITIZE": "1"})
    assert "-O3" not in asan and "-fsanitize=address,undefined" in asan and "-Wextra" in asan
    assert asan_link == ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    strict, _ = S.compile_and_link_args({"HIVEDATA_WERROR": "1"})
    assert strict[-1] == "-Werror"


def test_c_compiler_command_may_carry_a_wrapper():
    assert S.c_compiler({"CC": "ccache clang -arch arm64"}) == ["ccache", "clang", "-arch", "arm64"]
    assert S.c_compiler({}) != []


# ------------------------------------------------------------------------------------------- real boundaries


def test_header_probe_with_the_real_compiler(tmp_path):
    cc = S.c_compiler(os.environ)
    assert S.header_compiles(cc, "stdint.h")
    assert not S.header_compiles(cc, "hivedata_no_such_header.h")
    (tmp_path / "hivedata_probe_only.h").write_text("#define HIVEDATA_PROBE 1\n")
    assert S.header_compiles(cc, "hivedata_probe_only.h", include_dirs=[str(tmp_path)])
    assert not S.header_compiles(["/nonexistent/cc"], "stdint.h")
    ghost = S.Library("libghost", "ghost", "hivedata_ghost.h", "libghost-dev", "ghost")
    assert S.missing_libraries(cc, S.NativeFlags(), [CURL, ghost]) == [ghost]


def test_ijg_libjpeg_headers_count_as_missing_libjpeg_turbo(tmp_path):
    """Homebrew's "jpeg" (IJG libjpeg 9) has a jpeglib.h without the turbo extensions csrc/ uses."""
    cc = S.c_compiler(os.environ)
    (tmp_path / "jpeglib.h").write_text("typedef enum { JCS_UNKNOWN, JCS_RGB } J_COLOR_SPACE;\n")  # IJG-like
    assert S.missing_libraries(cc, S.NativeFlags(include_dirs=[str(tmp_path)]), [JPEG]) == [JPEG]
    assert S.missing_libraries(cc, S.NativeFlags(), [JPEG]) == []  # this machine's libjpeg-turbo


def test_this_machine_has_pkg_config_and_both_libraries():
    flags, tool = S.discover(os.environ)
    assert tool is not None, "pkg-config is missing: scripts/bootstrap.sh installs it"
    assert {"curl", "jpeg"} <= set(flags.libraries)
    assert S.missing_libraries(S.c_compiler(os.environ), flags) == []


def test_keg_only_homebrew_prefix_wins_over_the_system_pc(tmp_path):
    """The macOS path with the real pkg-config: a jpeg-turbo keg laid out like Homebrew's is found first."""
    keg = tmp_path / "opt" / "jpeg-turbo"
    (keg / "lib" / "pkgconfig").mkdir(parents=True)
    (keg / "lib" / "pkgconfig" / "libjpeg.pc").write_text(
        f"prefix={keg}\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include\n\n"
        "Name: libjpeg\nDescription: test keg\nVersion: 3.0.0\nLibs: -L${libdir} -ljpeg\nCflags: -I${includedir}\n")
    flags, tool = S.discover({**os.environ, "PKG_CONFIG_PATH": ""}, "darwin", homebrew_roots=[str(tmp_path)])
    assert tool is not None
    assert str(keg / "include") in flags.include_dirs
    assert str(keg / "lib") in flags.library_dirs
    assert {"curl", "jpeg"} <= set(flags.libraries)
    linux, _ = S.discover({**os.environ, "PKG_CONFIG_PATH": ""}, "linux", homebrew_roots=[str(tmp_path)])
    assert str(keg / "lib") not in linux.library_dirs  # Homebrew folders are a macOS matter


def _run_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp_path / "t"),
           "--build-lib", str(tmp_path / "l")]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_setup_py_names_the_missing_packages_in_one_line(tmp_path):
    cc = " ".join(S.c_compiler(os.environ))
    proc = _run_setup(tmp_path, CC=f"{cc} -nostdinc")  # a compiler that finds no system header at all
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == S.install_hint([CURL, JPEG], sys.platform)
    assert not (tmp_path / "t").exists() or not list((tmp_path / "t").rglob("*.o"))  # stopped before compiling


def test_setup_py_names_the_missing_compiler(tmp_path):
    proc = _run_setup(tmp_path, CC="hivedata-no-such-cc")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == S.compiler_hint(sys.platform)


def test_build_clang_script_tells_how_to_install_clang(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_clang.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "CLANG_CXX": "hivedata-no-such-clang++"})
    assert proc.returncode == 1
    expected = "xcode-select --install" if sys.platform == "darwin" else "apt-get install clang"
    assert expected in proc.stderr and "hivedata-no-such-clang++" in proc.stderr
