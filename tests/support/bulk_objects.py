"""Many small objects in a filesystem-backed fake-gcs-server at once, written straight into its data directory.

Uploading 200,000 objects over HTTP takes long; fake-gcs-server's filesystem backend keeps each object as a
file under <root>/<bucket>/<name> with its attributes in the extended attribute ``user.metadata`` (JSON).
``fill_bucket`` uploads one object over HTTP, takes the attributes the emulator wrote for it as a template,
and writes the rest directly (same bytes, so the checksums in the template stay true; each gets its own
generation). The emulator reads its directory on every request, so the objects are listed at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hivedata.tools.emulator import Emulator

ATTR = "user.metadata"


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object name {name!r} cannot be stored as a file by the filesystem backend")


def fill_bucket(emulator: Emulator, bucket: str, names: Sequence[str], data: bytes = b"x" * 64,
                threads: int = 4) -> int:
    """Creates `bucket` holding one object (`data`) per name; returns how many were written."""
    root = emulator.filesystem_root
    if root is None:
        raise ValueError("fill_bucket needs a running emulator with the filesystem backend")
    if not names:
        raise ValueError(f"no object names to write into bucket {bucket!r}")
    for n in names:
        _check_name(n)
    known = set(names)
    for n in names:
        parts = n.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in known:
                raise ValueError(f"object {'/'.join(parts[:k])!r} would be a folder of {n!r} in the filesystem "
                                 "backend: it cannot hold both")
    emulator.create_bucket(bucket)
    emulator.upload(bucket, names[0], data)
    seed = Path(root) / bucket / names[0]
    template = json.loads(os.getxattr(seed, ATTR))
    base_gen = int(template["Generation"])
    head, tail = json.dumps({**template, "Generation": 0}).split('"Generation": 0')

    def write(chunk: range) -> None:
        made: set[Path] = set()
        for i in chunk:
            path = Path(root) / bucket / names[i]
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
            os.setxattr(path, ATTR, f'{head}"Generation": {base_gen + i}{tail}'.encode())

    step = max(1, (len(names) - 1 + threads - 1) // threads)
    chunks = [range(s, min(len(names), s + step)) for s in range(1, len(names), step)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, chunks))
    return len(names)
