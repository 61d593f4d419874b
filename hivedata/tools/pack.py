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

import contextlib
import hashlib
import io
import os
import queue
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hivedata import _native
from hivedata.gcs.paths import parse_gcs_url
from hivedata.sources.base import SampleSource
from hivedata.sources.reading import read_plan_into, read_samples
from hivedata.sources.resolve import SourceOptions, open_source
from hivedata.sources.shards import ShardIndex
from hivedata.sources.tar_layout import archive_size, member_header, padded
from hivedata.tools.throughput import ThroughputMeter


@dataclass
class Source:
    """The samples to pack: a SampleSource (a gs:// prefix or a local folder), a WebDataset key per sample.

    `fetchers` read the samples' objects (a gs:// source): one per concurrent reader, since a Fetcher
    iterates one fetch() at a time; reader() lends one.
    """

    samples: SampleSource
    keys: list[str]
    fetchers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.classes: list[str] = list(self.samples.classes)
        self.sizes: list[int] = self.samples.sizes.tolist()
        self.labels: list[int] = self.samples.labels.tolist()
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for f in self.fetchers or [None]:
            self._idle.put(f)

    def __len__(self) -> int:
        return len(self.keys)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        """A fetcher no other thread uses meanwhile (None for a local source); waits for one."""
        f = self._idle.get()
        try:
            yield f
        finally:
            self._idle.put(f)

    def read_many(self, nums: list[int]) -> list[bytes]:
        """The bytes of samples `nums`."""
        with self.reader() as f:
            return read_samples(self.samples, nums, f)

    def describe(self, i: int) -> str:
        """Sample i's origin."""
        return self.samples.describe(i)

    def close(self) -> None:
        """Closes the fetchers."""
        for f in self.fetchers:
            f.close()


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


def open_pack_source(url: str, *, fetch_in_flight: int = 64, readers: int = 1) -> Source:
    """Samples of an ILSVRC-layout gs:// prefix (through the cached listing index) or local directory;
    `readers` fetchers of `fetch_in_flight` concurrent GETs each read it."""
    from hivedata.gcs.fetch import Fetcher
    from hivedata.gcs.paths import storage_endpoint

    if not url.startswith("gs://") and not Path(url).is_dir():
        raise FileNotFoundError(f"pack: source directory {url} does not exist")
    samples = open_source(url, SourceOptions(storage_endpoint(None), "auto"))
    base = samples.url.rstrip("/") + "/"
    names = [samples.describe(i) for i in range(len(samples))]
    keys = [_key(n[len(base):] if n.startswith(base) else n) for n in names]
    fetchers = [Fetcher(samples.bucket, max_in_flight=fetch_in_flight) for _ in range(readers if samples.bucket else 0)]
    return Source(samples, keys, fetchers)


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


def layout_tar(src: Source, shard: PlannedShard, out: np.ndarray) -> None:
    """Writes the shard's headers and .cls members into `out` (shard.size zeroed bytes); image bytes go later."""
    pos = 0
    for i, start in zip(shard.samples, shard.starts, strict=True):
        img = member_header(f"{src.keys[i]}.jpg", src.sizes[i])
        out[pos:pos + len(img)] = np.frombuffer(img, dtype=np.uint8)
        pos += len(img)
        if pos != start:
            raise AssertionError(f"pack: {shard.name}: {src.keys[i]}.jpg lands at {pos}, planned {start}")
        pos += padded(src.sizes[i])
        cls_text = str(src.labels[i]).encode()
        member = member_header(f"{src.keys[i]}.cls", len(cls_text)) + cls_text
        out[pos:pos + len(member)] = np.frombuffer(member, dtype=np.uint8)
        pos += len(member) - len(cls_text) + padded(len(cls_text))
    if archive_size(pos) != shard.size:
        raise AssertionError(f"pack: {shard.name} came out at {archive_size(pos)} bytes, planned {shard.size}")


def read_tar(src: Source, shard: PlannedShard) -> tuple[np.ndarray, list[int]]:
    """The shard's bytes (read straight into place: one buffer of shard.size) and its images' crc32c."""
    out = np.zeros(shard.size, dtype=np.uint8)
    layout_tar(src, shard, out)
    nums = np.asarray(shard.samples, dtype=np.int64)
    plan = src.samples.plan(nums)
    starts = shard.starts
    if all(len(s.members) == 1 and s.length == src.sizes[shard.samples[s.members[0]]] for s in plan.spans):
        spans = [replace(s, offset=starts[s.members[0]]) for s in plan.spans]  # each image straight into the tar
        plan = replace(plan, offsets=np.asarray(starts, dtype=np.int64), spans=spans, arena_size=shard.size)
        with src.reader() as fetcher:
            read_plan_into(src.samples, plan, out, fetcher)
    else:  # reads that cover several samples (a shard source): through an arena of their own
        for start, blob in zip(starts, src.read_many(shard.samples), strict=True):
            out[start:start + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    return out, member_crcs(src, shard, out)


class _BufferReader(io.RawIOBase):
    """A seekable, read-only file over a buffer, so an upload reads the shard without a copy of all of it."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        out = bytes(self._view[self._pos:end])
        self._pos = max(self._pos, end)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)


class Destination:
    """Where shards go: a local directory (temp file + rename) or a gs:// prefix (atomic object uploads)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("gs://"):
            where = parse_gcs_url(url)
            self.bucket_name, self.prefix = where.bucket, where.prefix.rstrip("/")
            self._local = threading.local()  # one storage client per thread (uploads run in several)
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
        bucket = getattr(self._local, "bucket", None)
        if bucket is None:
            from hivedata.gcs.storage import storage_client

            bucket = self._local.bucket = storage_client().bucket(self.bucket_name)
        return bucket

    def listing(self, stem: str) -> dict[str, tuple[int, int]]:
        """(size, generation) of every object named `<stem>-*` here, by name: one listing, not a GET per shard."""
        if self.is_gcs:
            where = self.object_name(f"{stem}-")
            blobs = self._blobs().client.list_blobs(self.bucket_name, prefix=where,
                                                    fields="items(name,size,generation),nextPageToken")
            cut = len(where) - len(stem) - 1
            return {b.name[cut:]: (int(b.size), int(b.generation)) for b in blobs}
        with os.scandir(self.prefix) as entries:
            return {e.name: (e.stat().st_size, 0) for e in entries if e.name.startswith(f"{stem}-") and e.is_file()}

    def existing(self, name: str) -> tuple[int, int] | None:
        """(size, generation) of `name` if it exists."""
        if self.is_gcs:
            blob = self._blobs().get_blob(self.object_name(name))
            return None if blob is None else (int(blob.size), int(blob.generation))
        path = self.object_name(name)
        return (os.path.getsize(path), 0) if os.path.exists(path) else None

    def write(self, name: str, data: bytes | np.ndarray) -> int:
        """Writes `name` (bytes or a uint8 buffer) atomically; returns its generation (0 locally)."""
        if self.is_gcs:
            from google.cloud.storage.retry import DEFAULT_RETRY

            blob = self._blobs().blob(self.object_name(name))
            size = memoryview(data).nbytes
            # the same name with the same bytes: a retried upload is harmless
            blob.upload_from_file(_BufferReader(data), size=size, content_type="application/x-tar",
                                  checksum="crc32c", retry=DEFAULT_RETRY)
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


def member_crcs(src: Source, shard: PlannedShard, tar: bytes | np.ndarray) -> list[int]:
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


DEFAULT_UPLOADS = 8  # shards uploaded at once
DEFAULT_READERS = 2  # shards read at once (each with its own fetcher)
DEFAULT_MAX_MEMORY = 4 * 10**9  # shard buffers held at once, at most about this many bytes


def shards_in_memory(shard_size: int, uploads: int, readers: int, max_memory: int) -> int:
    """How many shards may be held at once: one per reader and uploader, within max_memory (at least one)."""
    per_shard = shard_size + min(shard_size, 100 * 2**20)  # the buffer, and the chunk an upload copies out of it
    return max(1, min(uploads + readers, max_memory // per_shard))


def pack(src_url: str, dst_url: str, *, shard_size: int = 256 * 10**6, stem: str | None = None,
         verify: int = 0, progress: bool = True, log: Callable[[str], None] = print, order: str = "random",
         seed: int = 0, uploads: int = DEFAULT_UPLOADS, readers: int = DEFAULT_READERS,
         max_memory: int = DEFAULT_MAX_MEMORY, fetch_in_flight: int = 64) -> ShardIndex:
    """Packs SRC into shards under DST (resuming), writes the index, optionally verifies `verify` samples.

    `readers` shards are read at once (each with `fetch_in_flight` GETs in flight) and `uploads` shards
    uploaded at once, holding at most max_memory bytes of shards; uploads=1, readers=1 is the sequential
    pipeline of earlier versions (the next shard is read while one is uploaded).
    """
    if shard_size < 64 * 1024:
        raise ValueError(f"shard size {shard_size} is too small (at least 64 KiB)")
    for what, n in (("uploads", uploads), ("readers", readers), ("fetch_in_flight", fetch_in_flight)):
        if n < 1:
            raise ValueError(f"pack: {what} must be at least 1, got {n}")
    src = open_pack_source(src_url, fetch_in_flight=fetch_in_flight, readers=readers)
    try:
        return _pack(src, dst_url, shard_size=shard_size, stem=stem or (src_url.rstrip("/").rsplit("/", 1)[-1]
                                                                        or "shards"),
                     verify=verify, progress=progress, log=log, order=order, seed=seed, uploads=uploads,
                     readers=readers, max_memory=max_memory)
    finally:
        src.close()


class _Packer:
    """Reads shards (`readers` threads) and uploads them (`uploads` threads), `slots` shards held at once."""

    def __init__(self, src: Source, dst: Destination, shards: list[PlannedShard], *, uploads: int, readers: int,
                 slots: int, meter: ThroughputMeter) -> None:
        self.src, self.dst, self.shards, self.meter = src, dst, shards, meter
        self.generations: list[int] = [0] * len(shards)
        self.crcs: list[list[int]] = [[] for _ in shards]
        self.skipped = 0
        self._slots = threading.BoundedSemaphore(slots)
        self._failed = threading.Event()
        self._read_pool = ThreadPoolExecutor(readers, thread_name_prefix="pack-read")
        self._upload_pool = ThreadPoolExecutor(uploads, thread_name_prefix="pack-upload")

    def run(self, existing: dict[str, tuple[int, int]]) -> None:
        """Packs every shard not already there (with its planned size); raises the first failure."""
        reads: list[Future] = []
        try:
            for n, shard in enumerate(self.shards):
                while not self._slots.acquire(timeout=0.2):  # a held slot frees when its shard is uploaded
                    if self._failed.is_set():
                        break
                if self._failed.is_set():
                    break
                have = existing.get(shard.name)
                resume = have if have is not None and have[0] == shard.size else None
                self.skipped += resume is not None
                reads.append(self._read_pool.submit(self._read, n, shard, resume))
            uploads = [f.result() for f in reads]  # the first failed read raises here
            for f in uploads:
                if f is not None:
                    f.result()
        finally:
            self._failed.set()  # stops the loop above if we got here by an exception
            for f in reads:
                f.cancel()
            self._read_pool.shutdown(wait=True, cancel_futures=True)
            self._upload_pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, n: int, shard: PlannedShard, resume: tuple[int, int] | None) -> Future | None:
        """Reads shard n (or, when it is there already, its members' crc32c) and hands it to an uploader."""
        handed = False  # the upload releases the slot from then on
        try:
            if self._failed.is_set():
                raise RuntimeError("pack: stopped after another shard failed")
            if resume is not None:  # a whole-object download, checksummed; its members' crc32c for the index
                self.generations[n] = resume[1]
                self.crcs[n] = member_crcs(self.src, shard, self.dst.read_all(shard.name, resume[1]))
                self.meter.add(len(shard.samples), shard.size, skipped=True)
                return None
            data, self.crcs[n] = read_tar(self.src, shard)
            upload = self._upload_pool.submit(self._upload, n, shard, data)
            handed = True
            return upload
        except BaseException:
            self._failed.set()
            raise
        finally:
            if not handed:
                self._slots.release()

    def _upload(self, n: int, shard: PlannedShard, data: np.ndarray) -> None:
        try:
            if self._failed.is_set():
                raise RuntimeError("pack: stopped after another shard failed")
            self.generations[n] = self.dst.write(shard.name, data)
            self.meter.add(len(shard.samples), shard.size)
        except BaseException:
            self._failed.set()
            raise
        finally:
            del data
            self._slots.release()


def _pack(src: Source, dst_url: str, *, shard_size: int, stem: str, verify: int, progress: bool,
          log: Callable[[str], None], order: str, seed: int, uploads: int = DEFAULT_UPLOADS,
          readers: int = DEFAULT_READERS, max_memory: int = DEFAULT_MAX_MEMORY) -> ShardIndex:
    dst = Destination(dst_url)
    shards = plan_shards(src, shard_size, stem, sample_order(len(src), order, seed))
    _check_plan(dst, stem, plan_digest(src, shards))
    meter = ThroughputMeter(len(src), sum(s.size for s in shards), what=f"pack {len(shards)} shards", log=log,
                            enabled=progress)
    slots = shards_in_memory(max((s.size for s in shards), default=0), uploads, readers, max_memory)
    packer = _Packer(src, dst, shards, uploads=uploads, readers=readers, slots=slots, meter=meter)
    packer.run(dst.listing(stem))
    if progress:
        summary = meter.finish()
        if not meter.tty:
            log(summary)
    samples = [(n, start, src.sizes[i], src.labels[i], src.keys[i])
               for n, s in enumerate(shards) for i, start in zip(s.samples, s.starts, strict=True)]
    index = ShardIndex.build(dst.bucket_name, dst.prefix, src.classes, [dst.object_name(s.name) for s in shards],
                             [s.size for s in shards], packer.generations, samples,
                             crcs=[c for cs in packer.crcs for c in cs])
    dst.write(index_name(stem), index.to_bytes())
    log(f"pack: {len(src)} samples in {len(shards)} shards ({packer.skipped} already there) -> "
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
