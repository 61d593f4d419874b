"""Builds hivedata._native (pybind11, C++17) against the system libcurl and libjpeg-turbo."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("HIVEDATA_BUILD_JOBS").install()  # one compiler per core

ROOT = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cc"))

# header -> Debian package that provides it
REQUIRED_HEADERS = {
    "curl/curl.h": "libcurl4-openssl-dev",
    "jpeglib.h": "libjpeg62-turbo-dev",
}


def _missing_headers() -> list[str]:
    """Debian packages whose headers the compiler cannot find."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    missing = []
    for header, package in REQUIRED_HEADERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text(f"#include <stddef.h>\n#include <stdio.h>\n#include <{header}>\n"
                           "int main(void) { return 0; }\n")
            cmd = cc.split() + ["-c", str(src), "-o", str(Path(tmp) / "probe.o")]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                missing.append(package)
    return missing


class CheckedBuildExt(build_ext):
    """build_ext that names the missing system package instead of dumping compiler errors."""

    def run(self):
        if shutil.which((os.environ.get("CC") or "cc").split()[0]) is None:
            sys.exit("hivedata: no C compiler found: install build-essential (apt-get install build-essential)")
        missing = _missing_headers()
        if missing:
            sys.exit(f"hivedata: missing system libraries: apt-get install {' '.join(missing)}")
        super().run()


extra_compile = ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"]
extra_link = []
if os.environ.get("HIVEDATA_SANITIZE"):
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    extra_compile = [f for f in extra_compile if f != "-O3"] + flags
    extra_link += flags

ext = Pybind11Extension(
    "hivedata._native",
    SOURCES,
    cxx_std=17,
    libraries=["curl", "jpeg"],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(ext_modules=[ext], cmdclass={"build_ext": CheckedBuildExt})
