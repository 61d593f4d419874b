"""Is the installed PIL Pillow-SIMD? And how to opt in to it.

Pillow-SIMD (https://github.com/uploadcare/pillow-simd) is a drop-in fork of Pillow whose resize,
convert and filters use SSE4/AVX2. It installs the same ``PIL`` package, so "which one is loaded"
cannot be answered from the import alone. :func:`pillow_is_simd` uses two signals, in this order:

1. Package metadata: the distribution that owns the loaded ``PIL/__init__.py``. If
   ``importlib.metadata.packages_distributions()`` names only ``Pillow-SIMD`` (or only ``Pillow``)
   for ``PIL`` that is the answer; if both are installed (a half-finished swap), the one whose
   recorded files include the loaded ``PIL/__init__.py`` wins.
2. The version string: every Pillow-SIMD release on PyPI carries a ``.postN`` suffix
   (``9.5.0.post2``, ``12.1.1.post0``), while Pillow releases never have had one. Used when the
   metadata is missing (vendored or zipped installs).

Neither signal says which instruction set the fork was compiled for; :func:`cpu_simd_flags` tells
what the CPU offers (Pillow-SIMD built with ``-mavx2`` dies with SIGILL on a CPU without AVX2).

Opting in is a user decision, never done by hivedata on its own: run ``scripts/install_pillow_simd.sh``
(see its header; ``python -m hivedata.loader.decoders.simd`` prints the current state and the command).
Nothing here imports PIL at module import time.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from pathlib import Path

SIMD_DIST = "pillow-simd"
PILLOW_DIST = "pillow"
_POST_RE = re.compile(r"\.post\d+$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pil_version() -> str:
    """``PIL.__version__`` of the PIL that Python imports."""
    import PIL

    return PIL.__version__


def _owner_of_loaded_pil() -> str | None:
    """Normalised name of the distribution that installed the PIL that is imported, or None if unknown."""
    import PIL

    try:
        owners = {_norm(d) for d in importlib.metadata.packages_distributions().get("PIL", [])}
    except Exception:  # broken metadata somewhere on sys.path must not break the check
        return None
    if len(owners) == 1:
        return owners.pop()
    if not owners:
        return None
    loaded = Path(PIL.__file__).resolve()
    for name in sorted(owners):
        try:
            dist = importlib.metadata.distribution(name)
            for f in dist.files or ():
                if f.name == "__init__.py" and f.parent.name == "PIL" and Path(dist.locate_file(f)).resolve() == loaded:
                    return name
        except Exception:
            continue
    return None


@functools.lru_cache(maxsize=1)
def pillow_is_simd() -> bool:
    """True when the imported PIL is Pillow-SIMD (see the module docstring for the heuristic). Cached."""
    owner = _owner_of_loaded_pil()
    if owner == SIMD_DIST:
        return True
    if owner == PILLOW_DIST:
        return False
    return bool(_POST_RE.search(pil_version()))


def cpu_simd_flags() -> frozenset[str]:
    """The SIMD extensions relevant to Pillow-SIMD this CPU reports (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return frozenset(flags & {"sse4_1", "sse4_2", "avx2", "avx512f"})
    return frozenset()


def install_script() -> Path:
    """Where the opt-in installer lives in a source checkout (it is not shipped inside the wheel)."""
    return Path(__file__).resolve().parents[2] / "scripts" / "install_pillow_simd.sh"


def describe() -> str:
    """One paragraph for logs and ``python -m hivedata.loader.decoders.simd``."""
    simd = pillow_is_simd()
    flags = ", ".join(sorted(cpu_simd_flags())) or "unknown"
    lines = [
        f"PIL {pil_version()} ({'Pillow-SIMD' if simd else 'Pillow'}); CPU SIMD: {flags}; cpus: {os.cpu_count()}",
    ]
    if not simd:
        lines.append(f"opt in to Pillow-SIMD with: bash {install_script()}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
