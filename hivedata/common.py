"""Small things every stage shares, one place each: image file extensions, byte sizes, the local cache root."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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
