"""Tar shards for tests: any members (names, sizes, formats), and WebDataset samples (<key>.jpg + <key>.cls)."""

from __future__ import annotations

import io
import random
import tarfile


def tar_of(members: list[tuple[str, int | bytes]], fmt: int = tarfile.PAX_FORMAT, seed: int = 0,
           dirs: bool = False) -> bytes:
    """A tar of (name, size of random data | the data) members; dirs=True adds a directory every third member."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for j, (name, content) in enumerate(members):
            data = content if isinstance(content, bytes) else rng.randbytes(content)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
            if dirs and j % 3 == 0:
                d = tarfile.TarInfo(f"folder{j}")
                d.type = tarfile.DIRTYPE
                t.addfile(d)
    return buf.getvalue()


def webdataset_tar(samples: list[tuple[str, bytes, int]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A WebDataset shard: <key>.jpg (the bytes) and <key>.cls (the label) per (key, bytes, label)."""
    members = [(f"{key}.{ext}", content) for key, data, label in samples
               for ext, content in (("jpg", data), ("cls", str(label).encode()))]
    return tar_of(members, fmt)
