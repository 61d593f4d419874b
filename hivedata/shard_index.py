"""Where every sample lives inside tar shards: (shard, byte offset, length, label, key), compact.

The loader reads a sample as one ranged GET of exactly its bytes. The index is one ``.npz`` object
beside the shards (``<name>.index.npz``); for shards we did not write (any WebDataset tar set) it is
built once by reading the tar headers with ranged GETs, then cached locally.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexStaleError
from .index import Located
from .tar_layout import BLOCK, padded, parse_header, pax_path

SHARD_INDEX_FORMAT = 1
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def _blob(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


@dataclass
class ShardIndex(Located):
    """Samples inside tar shards under gs://bucket/prefix; quacks like Index for the loader (plus `starts`)."""

    bucket: str
    prefix: str
    classes: list[str]
    shard_names: list[str]  # object names (full, under prefix)
    shard_sizes: np.ndarray  # int64
    shard_generations: np.ndarray  # int64 (0: any)
    shard: np.ndarray  # int32 per sample
    starts: np.ndarray  # int64: first byte of the sample's image inside its shard
    sizes: np.ndarray  # int64
    labels: np.ndarray  # int32
    keys_blob: np.ndarray  # uint8
    key_offsets: np.ndarray  # int64, len + 1
    endpoint: str = ""

    @property
    def generations(self) -> np.ndarray:
        """Per sample: the generation of its shard (reads pin it, so a rewritten shard is noticed)."""
        return self.shard_generations[self.shard]

    def name(self, i: int) -> str:
        """The object that holds sample i (its shard)."""
        return self.shard_names[int(self.shard[i])]

    def names(self) -> list[str]:
        """Per sample, the shard object holding it."""
        return [self.shard_names[s] for s in self.shard.tolist()]

    def key(self, i: int) -> str:
        """Sample i's WebDataset key."""
        a, b = int(self.key_offsets[i]), int(self.key_offsets[i + 1])
        return self.keys_blob[a:b].tobytes().decode()

    def to_bytes(self) -> bytes:
        """The index as .npz bytes (what save() writes and the pack command uploads)."""
        buf = io.BytesIO()
        np.savez(buf, meta=np.array([SHARD_INDEX_FORMAT], dtype=np.int64), bucket=np.array(self.bucket),
                 prefix=np.array(self.prefix), endpoint=np.array(self.endpoint),
                 classes=np.array(self.classes, dtype=str), shard_names=np.array(self.shard_names, dtype=str),
                 shard_sizes=self.shard_sizes, shard_generations=self.shard_generations, shard=self.shard,
                 starts=self.starts, sizes=self.sizes, labels=self.labels, keys_blob=self.keys_blob,
                 key_offsets=self.key_offsets)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "shard index") -> ShardIndex:
        """Parses to_bytes() output; `what` names the object in errors."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["meta"][0]) != SHARD_INDEX_FORMAT:
                    raise IndexStaleError(f"{what} has format {int(z['meta'][0])}, expected {SHARD_INDEX_FORMAT}")
                return cls(bucket=str(z["bucket"]), prefix=str(z["prefix"]), endpoint=str(z["endpoint"]),
                           classes=[str(c) for c in z["classes"]], shard_names=[str(s) for s in z["shard_names"]],
                           shard_sizes=z["shard_sizes"], shard_generations=z["shard_generations"], shard=z["shard"],
                           starts=z["starts"], sizes=z["sizes"], labels=z["labels"], keys_blob=z["keys_blob"],
                           key_offsets=z["key_offsets"])
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{what} is not a hivedata shard index: {e}") from e

    def save(self, path: str | Path) -> None:
        """Writes the index atomically to a local file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ShardIndex:
        """Reads a local index file."""
        return cls.from_bytes(Path(path).read_bytes(), what=str(path))

    @classmethod
    def build(cls, bucket: str, prefix: str, classes: Sequence[str], shard_names: Sequence[str],
              shard_sizes: Sequence[int], shard_generations: Sequence[int], samples: Sequence[tuple],
              endpoint: str = "") -> ShardIndex:
        """From shard metadata and (shard number, start, size, label, key) per sample."""
        keys_blob, key_offsets = _blob([s[4] for s in samples])
        col = list(zip(*samples, strict=True)) if samples else [[], [], [], [], []]
        return cls(bucket=bucket, prefix=prefix, classes=list(classes), shard_names=list(shard_names),
                   shard_sizes=np.array(shard_sizes, dtype=np.int64),
                   shard_generations=np.array(shard_generations, dtype=np.int64),
                   shard=np.array(col[0], dtype=np.int32), starts=np.array(col[1], dtype=np.int64),
                   sizes=np.array(col[2], dtype=np.int64), labels=np.array(col[3], dtype=np.int32),
                   keys_blob=keys_blob, key_offsets=key_offsets, endpoint=endpoint)


def read_tar_members(read: Any, size: int, what: str) -> list[tuple[str, int, int, bytes]]:
    """(name, data offset, size, first bytes of data) of every regular member, by walking the headers.

    `read(start, length)` returns bytes of the tar; each step reads the header plus one more block,
    so small members (a `.cls` label) come with their data and need no extra request.
    """
    out = []
    pos, long_name = 0, None
    while pos + BLOCK <= size:
        chunk = read(pos, min(2 * BLOCK, size - pos))
        header = parse_header(chunk, pos)
        if header is None:
            break
        name, length, kind = header
        data_at = pos + BLOCK
        head = chunk[BLOCK:BLOCK + min(length, BLOCK)]
        if len(head) < min(length, BLOCK) or data_at + length > size:
            raise ValueError(f"{what}: member {name!r} at offset {pos} runs past the end of the shard")
        if kind in (b"x", b"L"):  # PAX extended header / GNU long name: they name the next member
            data = head if length <= BLOCK else read(data_at, length)
            long_name = pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind in (b"0", b"\0", b"7"):
            out.append((long_name or name, data_at, length, head))
            long_name = None
        else:
            long_name = None
        pos = data_at + padded(length)
    return out


def samples_from_members(members: list[tuple[str, int, int, bytes]], shard_no: int, what: str,
                         class_of: dict[str, int] | None = None) -> list[tuple]:
    """Groups members by WebDataset key: the image member's range and the label from `<key>.cls`."""
    groups: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    order: list[str] = []
    for name, at, length, head in members:
        base = name.rsplit("/", 1)[-1]
        if "." not in base:
            continue
        dot = len(name) - len(base) + base.index(".")
        key, ext = name[:dot], name[dot + 1:].lower()
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key][ext] = (at, length, head)
    samples = []
    for key in order:
        g = groups[key]
        image = next((g[e] for e in IMAGE_SUFFIXES if e in g), None)
        if image is None:
            continue
        if "cls" in g:
            text = g["cls"][2][:g["cls"][1]].decode().strip()
            try:
                label = int(text)
            except ValueError:
                if class_of is None or text not in class_of:
                    raise ValueError(f"{what}: {key}.cls holds {text!r}, not a class number") from None
                label = class_of[text]
        else:
            raise ValueError(f"{what}: sample {key!r} has no .cls member (its label)")
        samples.append((shard_no, image[0], image[1], label, key))
    return samples


def index_existing_shards(bucket: str, prefix: str, *, endpoint: str | None = None, credentials: Any = "auto",
                          classes: Sequence[str] | None = None, workers: int = 8) -> ShardIndex:
    """Indexes WebDataset tar shards under gs://bucket/prefix by walking their headers with ranged GETs."""
    import threading

    from .auth import TokenSource
    from .fetch import Fetcher
    from .gcs_json import GcsJsonClient
    from .gcs_paths import storage_endpoint

    ep = storage_endpoint(endpoint)
    tokens = credentials if isinstance(credentials, TokenSource) else TokenSource(credentials, endpoint=ep)
    listed = (o for page in GcsJsonClient(ep, tokens).list_pages(bucket, prefix) for o in page.objects)
    shards = sorted((o for o in listed if o.name.endswith(".tar")), key=lambda o: o.name)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under gs://{bucket}/{prefix}")
    class_of = {c: i for i, c in enumerate(classes)} if classes else None
    local = threading.local()  # a Fetcher streams one request at a time: one per worker thread
    opened: list[Fetcher] = []

    def one(n: int) -> list[tuple]:
        if not hasattr(local, "fetcher"):
            local.fetcher = Fetcher(bucket, endpoint=ep, credentials=tokens, max_in_flight=2)
            opened.append(local.fetcher)
        o = shards[n]
        what = f"gs://{bucket}/{o.name}"
        members = read_tar_members(lambda s, ln: local.fetcher.read(o.name, s, ln), o.size, what)
        return samples_from_members(members, n, what, class_of)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            per_shard = list(pool.map(one, range(len(shards))))
    finally:
        for f in opened:
            f.close()
    samples = [s for group in per_shard for s in group]
    n_classes = max((s[3] for s in samples), default=-1) + 1
    names = list(classes) if classes else [str(i) for i in range(n_classes)]
    return ShardIndex.build(bucket, prefix, names, [o.name for o in shards], [o.size for o in shards],
                            [o.generation for o in shards], samples, endpoint=ep)


def load_shard_index(url: str, *, endpoint: str | None = None, credentials: Any = "auto") -> ShardIndex:
    """Reads a shard index object (gs://bucket/<stem>.index.npz) or a local index file."""
    if not url.startswith("gs://"):
        return ShardIndex.load(url)
    from .auth import TokenSource
    from .gcs_json import GcsJsonClient
    from .gcs_paths import parse_gcs_url, storage_endpoint

    where = parse_gcs_url(url)
    bucket, name = where.bucket, where.prefix
    ep = storage_endpoint(endpoint)
    tokens = credentials if isinstance(credentials, TokenSource) else TokenSource(credentials, endpoint=ep)
    index = ShardIndex.from_bytes(GcsJsonClient(ep, tokens).download(bucket, name), what=url)
    index.endpoint = ep
    return index
