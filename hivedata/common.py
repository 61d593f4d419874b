"""Small things every stage shares, one place each: image file extensions, byte sizes, the local cache root."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

# file extensions (lower case, no dot) read as images; anything else in a prefix or a shard is not a sample
IMAGE_EXTENSIONS = ("jpeg", "jpg", "png", "webp")


def is_image_name(name: str) -> bool:
    """True when `name` ends in one of IMAGE_EXTENSIONS (any case)."""
    base = name.rsplit("/", 1)[-1]
    return "." in base and base.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def back_to_back(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Offsets (int64) of items of `sizes` laid end to end: 0, sizes[0], sizes[0] + sizes[1], ..."""
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], out=offsets[1:])
    return offsets


def string_blob(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 blob (uint8) and len + 1 offsets into it: compact to keep and to save."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '500k' or a plain byte count -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "k": 10**3, "m": 10**6, "g": 10**9, "b": 1}
    for unit, mult in units.items():
        if t.endswith(unit) and t[:-len(unit)]:
            return int(float(t[:-len(unit)]) * mult)
    try:
        return int(t)
    except ValueError:
        raise ValueError(f"shard size {text!r} is not a size like 256MB or 1GiB") from None


def cache_root() -> Path:
    """$HIVEDATA_CACHE, else ~/.cache/hivedata: where every local cache of hivedata lives."""
    return Path(os.environ.get("HIVEDATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hivedata"))


class UsableCpus(NamedTuple):
    """How many CPUs this process may keep busy, and what said so."""

    count: int
    source: str  # "affinity" / "cpu_count", or "cgroup v2 cpu.max" / "cgroup v1 cfs quota" when a quota is lower


def usable_cpus(root: str | os.PathLike = "/", *,
                affinity: Callable[[], int | None] | None = None) -> UsableCpus:
    """CPUs this process may use: its CPU affinity (else os.cpu_count()), lowered to a cgroup CPU quota rounded up.

    The quota is read from cgroup v2 ``cpu.max`` ("quota period" or "max ...") or cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of this process's cgroup (/proc/self/cgroup) and every
    ancestor (a parent's quota binds its children), all found under `root` (tests pass a fake tree).
    `affinity` returns the affinity's CPU count (None: unknown); default: len(os.sched_getaffinity(0)).
    """
    n = (affinity or _affinity_count)()
    count, source = (n, "affinity") if n else (os.cpu_count() or 1, "cpu_count")
    quotas = list(_cgroup_quotas(Path(root)))
    if quotas:
        cpus, where = min(quotas)
        limit = max(1, math.ceil(cpus - 1e-9))
        if limit < count:
            count, source = limit, where
    return UsableCpus(count, source)


def _affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):  # macOS, Windows: no affinity call
        return None


def _cgroup_quotas(root: Path) -> Iterator[tuple[float, str]]:
    """(CPUs, which file kind) for every CPU quota that binds this process's cgroup."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    mounts = root / "sys/fs/cgroup"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2 (unified): cpu.max
            for base in (mounts, mounts / "unified"):
                for d in _up_from(base, rel):
                    q = _v2_quota(d / "cpu.max")
                    if q is not None:
                        yield q, "cgroup v2 cpu.max"
        elif "cpu" in controllers.split(","):  # cgroup v1: cfs quota / period
            for base in dict.fromkeys((mounts / controllers, mounts / "cpu", mounts / "cpu,cpuacct")):
                for d in _up_from(base, rel):
                    q = _v1_quota(d)
                    if q is not None:
                        yield q, "cgroup v1 cfs quota"


def _up_from(base: Path, rel: str) -> Iterator[Path]:
    """base/rel and each of its ancestors up to base (those that exist): the cgroup's own limits and its parents'."""
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    for i in range(len(parts), -1, -1):
        d = base.joinpath(*parts[:i])
        if d.is_dir():
            yield d


def _v2_quota(path: Path) -> float | None:
    try:
        quota, *period = path.read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period[0]) if period else 100_000
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_quota(d: Path) -> float | None:
    try:
        q = int((d / "cpu.cfs_quota_us").read_text())
        p = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota
