"""`python -m hivedata pack SRC DST`: pack an ILSVRC-layout dataset into WebDataset tar shards + an index.

SRC is a gs:// prefix (listed with the index) or a local directory (``<class>/<file>.JPEG``); DST a
gs:// prefix or a local directory. Shards are planned up front (members ``<key>.jpg`` + ``<key>.cls``,
at most --shard-size bytes each), so every sample's offset is known before packing and a re-run
skips the shards that already exist with their planned size. Samples go in a seeded random order by
default (a shard then holds every class, so block-shuffled batches do too); a digest of the plan is
written first (``<stem>.plan``) and a re-run with a different plan is refused instead of mixing two.
The index object is written last; it records each member's crc32c, which every ranged read checks
(GCS sends no checksum for a byte range). A resumed pack reads the shards it skips back once (a
whole-object download, checksummed) to record their members' crc32c.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivedata import _native
from hivedata.gcs.paths import parse_gcs_url
from hivedata.sources.base import SampleSource
from hivedata.sources.reading import read_samples
from hivedata.sources.resolve import SourceOptions, open_source
from hivedata.sources.shards import ShardIndex
from hivedata.sources.tar_layout import archive_size, member_header, padded


@dataclass
class Source:
    """The samples to pack: a SampleSource (a gs:// prefix or a local folder), a WebDataset key per sample."""

    samples: SampleSource
    keys: list[str]
    fetcher: Any = None  # reads the samples' objects (a gs:// source)

    def __post_init__(self) -> None:
        self.classes: list[str] = list(self.samples.classes)
        self.sizes: list[int] = self.samples.sizes.tolist()
        self.labels: list[int] = self.samples.labels.tolist()

    def __len__(self) -> int:
        return len(self.keys)

    def read_many(self, nums: list[int]) -> list[bytes]:
        """The bytes of samples `nums`."""
        return read_samples(self.samples, nums, self.fetcher)

    def describe(self, i: int) -> str:
        """Sample i's origin."""
        return self.samples.describe(i)

    def close(self) -> None:
        """Closes the fetcher."""
        if self.fetcher is not None:
            self.fetcher.close()


@dataclass
class PlannedShard:
    """One shard's name, its samples and where each one's image bytes start, and its total size."""

    name: str
    samples: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    size: int = 0


def _key(rel: str) -> str:
    """WebDataset key of a sample: its path relative to SRC without the extension (no dots allowed)."""
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return stem.replace(".", "_")


def open_pack_source(url: str, *, fetch_in_flight: int = 64) -> Source:
    """Samples of an ILSVRC-layout gs:// prefix (through the cached listing index) or local directory."""
    from hivedata.gcs.fetch import Fetcher
    from hivedata.gcs.paths import storage_endpoint

    if not url.startswith("gs://") and not Path(url).is_dir():
        raise FileNotFoundError(f"pack: source directory {url} does not exist")
    samples = open_source(url, SourceOptions(storage_endpoint(None), "auto"))
    base = samples.url.rstrip("/") + "/"
    names = [samples.describe(i) for i in range(len(samples))]
    keys = [_key(n[len(base):] if n.startswith(base) else n) for n in names]
    fetcher = Fetcher(samples.bucket, max_in_flight=fetch_in_flight) if samples.bucket else None
    return Source(samples, keys, fetcher)


def sample_order(n: int, order: str, seed: int) -> list[int]:
    """The packing order: 'random' (seeded permutation, the default) or 'sorted' (class by class)."""
    if order == "sorted":
        return list(range(n))
    if order != "random":
        raise ValueError(f"pack order must be 'random' or 'sorted', not {order!r}")
    picks = list(range(n))
    random.Random(seed).shuffle(picks)
    return picks


def plan_shards(src: Source, shard_size: int, stem: str, order: list[int] | None = None) -> list[PlannedShard]:
    """Assigns samples, in `order` (default: as listed), to shards of at most shard_size bytes (a bigger one alone)."""
    shards: list[PlannedShard] = []
    cur = PlannedShard(f"{stem}-{0:06d}.tar")
    pos = 0
    for i in (range(len(src)) if order is None else order):
        img = member_header(f"{src.keys[i]}.jpg", src.sizes[i])
        cls_text = str(src.labels[i]).encode()
        cls = member_header(f"{src.keys[i]}.cls", len(cls_text))
        need = len(img) + padded(src.sizes[i]) + len(cls) + padded(len(cls_text))
        if cur.samples and archive_size(pos + need) > shard_size:
            cur.size = archive_size(pos)
            shards.append(cur)
            cur, pos = PlannedShard(f"{stem}-{len(shards):06d}.tar"), 0
        cur.samples.append(i)
        cur.starts.append(pos + len(img))
        pos += need
    if cur.samples:
        cur.size = archive_size(pos)
        shards.append(cur)
    return shards


def build_tar(src: Source, shard: PlannedShard, data: list[bytes]) -> bytes:
    """The shard's bytes; refuses a sample whose size changed since it was listed."""
    out = bytearray()
    for i, blob in zip(shard.samples, data, strict=True):
        if len(blob) != src.sizes[i]:
            raise ValueError(f"pack: {src.describe(i)} has {len(blob)} bytes, the listing said {src.sizes[i]}; "
                             "re-index the source (it changed while packing)")
        cls_text = str(src.labels[i]).encode()
        for name, payload in ((f"{src.keys[i]}.jpg", blob), (f"{src.keys[i]}.cls", cls_text)):
            out += member_header(name, len(payload))
            out += payload
            out += bytes(padded(len(payload)) - len(payload))
    out += bytes(shard.size - len(out))  # end-of-archive blocks and record padding
    if len(out) != shard.size:
        raise AssertionError(f"pack: {shard.name} came out at {len(out)} bytes, planned {shard.size}")
    return bytes(out)


class Destination:
    """Where shards go: a local directory (temp file + rename) or a gs:// prefix (atomic object uploads)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("gs://"):
            where = parse_gcs_url(url)
            self.bucket_name, self.prefix = where.bucket, where.prefix.rstrip("/")
            self._bucket: Any = None
        else:
            self.bucket_name, self.prefix = "", str(Path(url).resolve())
            Path(self.prefix).mkdir(parents=True, exist_ok=True)

    @property
    def is_gcs(self) -> bool:
        """True for a gs:// destination."""
        return bool(self.bucket_name)

    def object_name(self, name: str) -> str:
        """The full object name (gs://) or path (local) of `name`."""
        if self.is_gcs:
            return f"{self.prefix}/{name}" if self.prefix else name
        return os.path.join(self.prefix, name)

    def _blobs(self) -> Any:
        if self._bucket is None:
            from hivedata.gcs.storage import storage_client

            self._bucket = storage_client().bucket(self.bucket_name)
        return self._bucket

    def existing(self, name: str) -> tuple[int, int] | None:
        """(size, generation) of `name` if it exists."""
        if self.is_gcs:
            blob = self._blobs().get_blob(self.object_name(name))
            return None if blob is None else (int(blob.size), int(blob.generation))
        path = self.object_name(name)
        return (os.path.getsize(path), 0) if os.path.exists(path) else None

    def write(self, name: str, data: bytes) -> int:
        """Writes `name` atomically; returns its generation (0 locally)."""
        if self.is_gcs:
            blob = self._blobs().blob(self.object_name(name))
            blob.upload_from_string(data, content_type="application/x-tar", checksum="crc32c")
            return int(blob.generation or 0)
        path = self.object_name(name)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return 0

    def read_all(self, name: str, generation: int = 0) -> bytes:
        """Every byte of `name` (gs://: that generation if not 0, a whole-object download, crc32c-checked)."""
        if self.is_gcs:
            blob = self._blobs().blob(self.object_name(name), generation=generation or None)
            return blob.download_as_bytes(checksum="crc32c")
        return Path(self.object_name(name)).read_bytes()

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of `name`."""
        if self.is_gcs:
            return self._blobs().blob(self.object_name(name)).download_as_bytes(start=start, end=start + length - 1)
        with open(self.object_name(name), "rb") as f:
            f.seek(start)
            return f.read(length)


def member_crcs(src: Source, shard: PlannedShard, tar: bytes) -> list[int]:
    """The crc32c of each sample's image bytes inside `tar`, the shard as planned (read back to resume)."""
    if len(tar) != shard.size:
        raise ValueError(f"pack: {shard.name} has {len(tar)} bytes, planned {shard.size}")
    view = memoryview(tar)
    return [_native.crc32c(view[a:a + src.sizes[i]]) for i, a in zip(shard.samples, shard.starts, strict=True)]


def index_name(stem: str) -> str:
    """Name of the index object written beside the shards."""
    return f"{stem}.index.npz"


def plan_digest(src: Source, shards: list[PlannedShard]) -> str:
    """A digest of what every shard will hold (names, keys, sizes, labels, offsets)."""
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.name} {s.size}\n".encode())
        for i, start in zip(s.samples, s.starts, strict=True):
            h.update(f"{src.keys[i]} {src.sizes[i]} {src.labels[i]} {start}\n".encode())
    return h.hexdigest()


def _check_plan(dst: Destination, stem: str, digest: str) -> None:
    """Refuses to resume shards written with another plan; records this plan otherwise."""
    name = f"{stem}.plan"
    if dst.existing(name) is not None:
        have = dst.read_range(name, 0, 64).decode(errors="replace").strip()
        if have != digest:
            raise ValueError(f"pack: {dst.object_name(name)} records shards packed with another plan (a different "
                             "source, --shard-size, --order or --seed); pack into a new DST or delete the old shards")
        return
    dst.write(name, digest.encode())


def pack(src_url: str, dst_url: str, *, shard_size: int = 256 * 10**6, stem: str | None = None,
         verify: int = 0, progress: bool = True, log: Callable[[str], None] = print, order: str = "random",
         seed: int = 0) -> ShardIndex:
    """Packs SRC into shards under DST (resuming), writes the index, optionally verifies `verify` samples."""
    if shard_size < 64 * 1024:
        raise ValueError(f"shard size {shard_size} is too small (at least 64 KiB)")
    src = open_pack_source(src_url)
    try:
        return _pack(src, dst_url, shard_size=shard_size, stem=stem or (src_url.rstrip("/").rsplit("/", 1)[-1]
                                                                        or "shards"),
                     verify=verify, progress=progress, log=log, order=order, seed=seed)
    finally:
        src.close()


def _pack(src: Source, dst_url: str, *, shard_size: int, stem: str, verify: int, progress: bool,
          log: Callable[[str], None], order: str, seed: int) -> ShardIndex:
    from tqdm.auto import tqdm

    dst = Destination(dst_url)
    shards = plan_shards(src, shard_size, stem, sample_order(len(src), order, seed))
    _check_plan(dst, stem, plan_digest(src, shards))
    generations: list[int] = [0] * len(shards)
    crcs: list[list[int]] = [[] for _ in shards]
    skipped = 0
    bar = tqdm(total=sum(s.size for s in shards), unit="B", unit_scale=True, desc=f"packing {len(shards)} shards",
               disable=not progress)
    with ThreadPoolExecutor(1) as writer:  # the next shard is fetched while this one is written
        pending = None
        for n, shard in enumerate(shards):
            have = dst.existing(shard.name)
            if have is not None and have[0] == shard.size:
                generations[n] = have[1]
                crcs[n] = member_crcs(src, shard, dst.read_all(shard.name, have[1]))
                skipped += 1
                bar.update(shard.size)
                continue
            images = src.read_many(shard.samples)
            crcs[n] = [_native.crc32c(b) for b in images]
            data = build_tar(src, shard, images)
            if pending is not None:
                pending.result()
            pending = writer.submit(lambda n=n, s=shard, d=data: (generations.__setitem__(n, dst.write(s.name, d)),
                                                                  bar.update(s.size)))
        if pending is not None:
            pending.result()
    bar.close()
    samples = [(n, start, src.sizes[i], src.labels[i], src.keys[i])
               for n, s in enumerate(shards) for i, start in zip(s.samples, s.starts, strict=True)]
    index = ShardIndex.build(dst.bucket_name, dst.prefix, src.classes, [dst.object_name(s.name) for s in shards],
                             [s.size for s in shards], generations, samples, crcs=[c for cs in crcs for c in cs])
    dst.write(index_name(stem), index.to_bytes())
    log(f"pack: {len(src)} samples in {len(shards)} shards ({skipped} already there) -> "
        f"{dst.object_name(index_name(stem))}")
    if verify:
        verify_packed(src, dst, index, verify)
        log(f"pack: verified {min(verify, len(index))} samples byte for byte")
    return index


def verify_packed(src: Source, dst: Destination, index: ShardIndex, count: int, seed: int = 0) -> None:
    """Compares `count` random packed samples with their originals; raises naming the first mismatch."""
    picks = random.Random(seed).sample(range(len(index)), min(count, len(index)))
    originals = src.read_many(picks)
    for i, want in zip(picks, originals, strict=True):
        shard_name = index.shard_names[int(index.shard[i])].rsplit("/", 1)[-1]
        got = dst.read_range(shard_name, int(index.starts[i]), int(index.sizes[i]))
        if got != want:
            raise ValueError(f"pack --verify: sample {index.key(i)} in {shard_name} differs from {src.describe(i)}")
