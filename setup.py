"""Builds hivedata._native (pybind11, C++17) against the system libcurl and libjpeg-turbo.

Compiler and linker flags come from pkg-config (with Homebrew's keg-only prefixes added on macOS), or
plain ``-lcurl -ljpeg`` without pkg-config. A missing library stops the build with one line naming the
package to install. Environment: CC/CXX pick the compiler (gcc and clang both work),
HIVEDATA_BUILD_JOBS the parallel compile jobs, HIVEDATA_SANITIZE=1 an ASan+UBSan build,
HIVEDATA_WERROR=1 turns warnings into errors. The pure functions below are unit-tested
(tests/unit/test_build_config.py); nothing runs at import unless this file is the main script.
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent


class Library(NamedTuple):
    """One system library the extension links, and where each platform gets it."""

    module: str  # pkg-config module
    link_name: str  # -l<link_name> without pkg-config
    header: str  # the header probed before compiling
    debian: str  # apt-get package
    homebrew: str  # brew formula
    probe_body: str = "return 0;"  # main()'s body in the probe: what this header must declare


LIBRARIES = (
    Library("libcurl", "curl", "curl/curl.h", "libcurl4-openssl-dev", "curl"),
    # JCS_EXT_RGBX (like jpeg_crop_scanline) is libjpeg-turbo's: IJG libjpeg (Homebrew's "jpeg") lacks it
    Library("libjpeg", "jpeg", "jpeglib.h", "libjpeg62-turbo-dev", "jpeg-turbo", "return (int)JCS_EXT_RGBX;"),
)
HOMEBREW_ROOTS = ("/opt/homebrew", "/usr/local")  # Apple silicon, Intel
BASE_COMPILE_ARGS = ("-O3", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter")
SANITIZE_ARGS = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1")

# args -> pkg-config's stdout, or None when it fails for them (module unknown)
PkgConfig = Callable[[list[str]], "str | None"]


@dataclass
class NativeFlags:
    """What setuptools needs to compile and link against the system libraries."""

    include_dirs: list[str] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)
    extra_compile_args: list[str] = field(default_factory=list)
    extra_link_args: list[str] = field(default_factory=list)

    def extend(self, other: "NativeFlags") -> None:
        """Adds other's flags: folders and libraries once each, other flags in order (they may come in pairs)."""
        for name in ("include_dirs", "library_dirs", "libraries"):
            mine = getattr(self, name)
            mine.extend(x for x in getattr(other, name) if x not in mine)
        self.extra_compile_args += other.extra_compile_args
        self.extra_link_args += other.extra_link_args


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def flags_from_pkg_config(cflags: str, libs: str) -> NativeFlags:
    """Splits `pkg-config --cflags` and `--libs` output into setuptools fields."""
    flags = NativeFlags()
    for tok in shlex.split(cflags):
        if tok.startswith("-I") and len(tok) > 2:
            flags.include_dirs.append(tok[2:])
        else:
            flags.extra_compile_args.append(tok)
    toks = shlex.split(libs)
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.startswith("-L") and len(tok) > 2:
            flags.library_dirs.append(tok[2:])
        elif tok.startswith("-l") and len(tok) > 2:
            flags.libraries.append(tok[2:])
        elif tok == "-framework" and i + 1 < len(toks):  # macOS: "-framework Foo" is one flag
            flags.extra_link_args += [tok, toks[i + 1]]
            i += 1
        else:
            flags.extra_link_args.append(tok)
        i += 1
    return flags


def native_flags(pkg_config: PkgConfig | None, libraries: Iterable[Library] = LIBRARIES) -> NativeFlags:
    """Flags for every library: from pkg-config where it knows the module, else plain -l<name>."""
    flags = NativeFlags()
    for lib in libraries:
        cflags = pkg_config(["--cflags", lib.module]) if pkg_config else None
        libs = pkg_config(["--libs", lib.module]) if pkg_config else None
        if cflags is None or libs is None:
            flags.extend(NativeFlags(libraries=[lib.link_name]))
        else:
            flags.extend(flags_from_pkg_config(cflags, libs))
    return flags


def homebrew_pkgconfig_dirs(is_dir: Callable[[str], bool] = os.path.isdir,
                            brew_prefix: Callable[[str], "str | None"] | None = None,
                            roots: Iterable[str] = HOMEBREW_ROOTS,
                            libraries: Iterable[Library] = LIBRARIES) -> list[str]:
    """Existing pkgconfig folders of Homebrew's keg-only formulae (jpeg-turbo, curl): brew's answer first."""
    libraries = list(libraries)
    candidates = []
    if brew_prefix is not None:
        for lib in libraries:
            prefix = brew_prefix(lib.homebrew)
            if prefix:
                candidates.append(f"{prefix.rstrip('/')}/lib/pkgconfig")
    candidates += [f"{root}/opt/{lib.homebrew}/lib/pkgconfig" for root in roots for lib in libraries]
    return _unique(c for c in candidates if is_dir(c))


def with_pkg_config_path(current: str | None, extra: Iterable[str]) -> str:
    """PKG_CONFIG_PATH with extra folders after the user's own (the user's win, Homebrew's beat the defaults)."""
    return os.pathsep.join(_unique([*(current or "").split(os.pathsep), *extra]))


def install_hint(missing: Iterable[Library], platform: str, have_pkg_config: bool = True) -> str:
    """The one-line error naming what to install for the missing libraries on this platform."""
    missing = list(missing)
    if platform == "darwin":
        formulae = [lib.homebrew for lib in missing] + ([] if have_pkg_config else ["pkg-config"])
        return f"hivedata: missing system libraries: brew install {' '.join(formulae)}"
    return f"hivedata: missing system libraries: apt-get install {' '.join(lib.debian for lib in missing)}"


def compiler_hint(platform: str) -> str:
    """The one-line error when there is no C/C++ compiler."""
    if platform == "darwin":
        return "hivedata: no C compiler found: install the Xcode command line tools (xcode-select --install)"
    return "hivedata: no C compiler found: install build-essential (apt-get install build-essential)"


def compile_and_link_args(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Extra compile and link arguments for the build options in env (HIVEDATA_SANITIZE, HIVEDATA_WERROR)."""
    compile_args, link_args = list(BASE_COMPILE_ARGS), []
    if env.get("HIVEDATA_SANITIZE"):
        compile_args = [f for f in compile_args if f != "-O3"] + list(SANITIZE_ARGS)
        link_args += SANITIZE_ARGS
    if env.get("HIVEDATA_WERROR"):
        compile_args.append("-Werror")
    return compile_args, link_args


def c_compiler(env: Mapping[str, str]) -> list[str]:
    """The C compiler command the header probe uses: $CC, else the one Python was built with, else cc."""
    return shlex.split(env.get("CC") or sysconfig.get_config_var("CC") or "cc")


def header_compiles(cc: list[str], header: str, include_dirs: Iterable[str] = (),
                    extra_args: Iterable[str] = (), body: str = "return 0;") -> bool:
    """True when cc compiles a main() with body after including header (the real compiler, no linking)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(f"#include <stddef.h>\n#include <stdio.h>\n#include <{header}>\n"
                       f"int main(void) {{ {body} }}\n")
        cmd = [*cc, *(f"-I{d}" for d in include_dirs), *extra_args, "-c", str(src), "-o", str(Path(tmp) / "p.o")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def missing_libraries(cc: list[str], flags: NativeFlags, libraries: Iterable[Library] = LIBRARIES) -> list[Library]:
    """The libraries whose header the compiler cannot find (or finds without what we use) with these flags."""
    return [lib for lib in libraries
            if not header_compiles(cc, lib.header, flags.include_dirs, flags.extra_compile_args, lib.probe_body)]


def pkg_config_tool(env: Mapping[str, str]) -> str | None:
    """The pkg-config executable ($PKG_CONFIG, pkg-config or pkgconf), or None when there is none."""
    for name in (env.get("PKG_CONFIG"), "pkg-config", "pkgconf"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def run_pkg_config(tool: str, env: Mapping[str, str]) -> PkgConfig:
    """A PkgConfig that runs the real tool with env."""
    def query(args: list[str]) -> str | None:
        proc = subprocess.run([tool, *args], capture_output=True, text=True, env=dict(env))
        return proc.stdout.strip() if proc.returncode == 0 else None
    return query


def brew_prefix(formula: str) -> str | None:
    """`brew --prefix formula` (the opt path, whether or not it is installed), or None without brew."""
    brew = shutil.which("brew")
    if brew is None:
        return None
    proc = subprocess.run([brew, "--prefix", formula], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def discover(env: Mapping[str, str], platform: str = sys.platform,
             homebrew_roots: Iterable[str] = HOMEBREW_ROOTS) -> tuple[NativeFlags, str | None]:
    """Flags for this machine and the pkg-config tool used (None: pkg-config missing, plain -l flags)."""
    env = dict(env)
    if platform == "darwin":
        dirs = homebrew_pkgconfig_dirs(brew_prefix=brew_prefix, roots=homebrew_roots)
        env["PKG_CONFIG_PATH"] = with_pkg_config_path(env.get("PKG_CONFIG_PATH"), dirs)
    tool = pkg_config_tool(env)
    return native_flags(run_pkg_config(tool, env) if tool else None), tool


def _main() -> None:
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
    from setuptools import setup

    ParallelCompile("HIVEDATA_BUILD_JOBS").install()  # one compiler per core unless set
    flags, tool = discover(os.environ)

    class CheckedBuildExt(build_ext):
        """build_ext that names the missing system package instead of dumping compiler errors."""

        def run(self):
            cc = c_compiler(os.environ)
            if not cc or shutil.which(cc[0]) is None:
                sys.exit(compiler_hint(sys.platform))
            missing = missing_libraries(cc, flags)
            if missing:
                sys.exit(install_hint(missing, sys.platform, have_pkg_config=tool is not None))
            super().run()

    compile_args, link_args = compile_and_link_args(os.environ)
    ext = Pybind11Extension(
        "hivedata._native",
        sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cc")),
        cxx_std=17,
        include_dirs=flags.include_dirs,
        library_dirs=flags.library_dirs,
        libraries=flags.libraries,
        extra_compile_args=compile_args + flags.extra_compile_args,
        extra_link_args=link_args + flags.extra_link_args,
    )
    setup(ext_modules=[ext], cmdclass={"build_ext": CheckedBuildExt})


if __name__ == "__main__":  # also under pip: setuptools' build backend runs this file as __main__
    _main()
