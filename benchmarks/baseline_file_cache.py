# BENCHMARK BASELINE ONLY: hivedata/loader/disk_cache.py verbatim as of commit 0a47d62 (the per-file cache,
# one file per entry), kept so benchmarks/cache_bench.py can measure it against the run-file cache in one run.
# Not used by hivedata itself.
# ruff: noqa
"""Optional local disk cache of fetched object bytes (whole objects or tar shard ranges), shared by processes.

Entry file ``root/<2 hex>/<sha256 hex of key.text()>``: a fixed header (magic, format version, payload
length, zlib.crc32 of the payload, key text length), the key text, the payload. Writers ``os.replace`` a
unique temp file into place, so readers see a whole entry, never a torn one; the checksum catches what a
crash or power loss left (no fsync), and such an entry is deleted and read as a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import struct
import threading
import time
import weakref
import zlib
from pathlib import Path

import numpy as np

from hivedata.common import cache_root, parse_size
from hivedata.sources.base import CacheKey

log = logging.getLogger(__name__)

_MAGIC = b"HVDC"
_VERSION = 1
_HEADER = struct.Struct("<4sIQII")  # magic, format version, payload length, crc32 of payload, key text length
_TMP = ".tmp-"  # temp file prefix: .tmp-<pid>-<thread id>-<random>
_TMP_YOUNG_S = 60.0  # a temp file younger than this is a writer at work: neither counted nor touched
_TMP_STALE_S = 3600.0  # one older than this is a killed writer's leftover: deleted by the next scan
_LOW_WATER = 0.9  # eviction goes down to this fraction of max_bytes
_STAT_NAMES = ("hits", "misses", "corrupt", "puts", "evictions", "put_errors", "bytes_read", "bytes_written")


class DiskCache:
    """Size-bounded LRU cache of byte payloads in a directory that several processes may share.

    Recency is an entry file's mtime (a hit touches it), shared by every process. A put scans the
    directory when this process's estimate (the total at its last scan + the bytes it wrote since)
    exceeds max_bytes, or once it has written max_bytes/16 since its last scan; a scan that finds more
    than max_bytes evicts the least recently used entries down to 0.9 * max_bytes. So a lone process
    stays within max_bytes, and P processes sharing the directory overshoot it by at most about
    P * (max_bytes/16 + the largest entry). An entry larger than max_bytes is not stored. Thread safe
    (a lock guards only the counters and estimates); fork safe (no threads, no open files kept).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int) -> None:
        """Create ROOT if needed; MAX_BYTES (> 0) bounds the bytes of the entry files kept there."""
        if int(max_bytes) <= 0:
            raise ValueError(f"disk cache size must be > 0 bytes, got {max_bytes!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._rescan_every = max(1, self.max_bytes // 16)
        self._lock = threading.Lock()
        self._scanned = 0  # entry bytes found by the last scan
        self._since = self._rescan_every  # bytes this process wrote since: the first put scans
        self._scanning = False
        self._warned = False
        self._stats = dict.fromkeys(_STAT_NAMES, 0)
        _INSTANCES.add(self)

    def get_into(self, key: CacheKey, out: memoryview | np.ndarray) -> bool:
        """Fill OUT with KEY's payload if an intact entry of exactly OUT's size is cached (else OUT is undefined)."""
        view = memoryview(out).cast("B")
        if view.readonly:
            raise TypeError("get_into needs a writable buffer")
        return self._read(key, view) is not None

    def get(self, key: CacheKey) -> bytes | None:
        """KEY's payload if an intact entry is cached, else None."""
        return None if (data := self._read(key, None)) is None else bytes(data)  # bytes already: no copy

    def put(self, key: CacheKey, data: bytes | memoryview | np.ndarray) -> None:
        """Store DATA under KEY; best effort: an OSError is counted and logged once, never raised."""
        view = memoryview(data).cast("B")
        path, ktext = self._entry(key)
        size = _HEADER.size + len(ktext) + view.nbytes
        if size > self.max_bytes:
            return
        header = _HEADER.pack(_MAGIC, _VERSION, view.nbytes, zlib.crc32(view), len(ktext))
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, f"{_TMP}{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(6)}")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header + ktext)
                f.write(view)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._lock:
                self._stats["put_errors"] += 1
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("disk cache %s: cannot store an entry (%s); going on without caching it", self.root, e)
            return
        with self._lock:
            self._stats["puts"] += 1
            self._stats["bytes_written"] += view.nbytes
            self._since += size
            scan = not self._scanning and (
                self._since >= self._rescan_every or self._scanned + self._since > self.max_bytes)
            self._scanning = self._scanning or scan
        if scan:
            self._scan()

    def stats(self) -> dict[str, int]:
        """Counters: hits, misses (corrupt entries included), corrupt, puts, evictions, put_errors, payload bytes."""
        with self._lock:
            return dict(self._stats)

    def clear(self) -> None:
        """Delete every entry (and stale temp files); temp files of writers at work are left alone."""
        now = time.time()
        for e in _cache_files(self.root):
            with contextlib.suppress(OSError):
                if not e.name.startswith(_TMP) or now - e.stat().st_mtime > _TMP_STALE_S:
                    os.unlink(e.path)
        with self._lock:
            self._scanned = 0
            self._since = 0

    def _entry(self, key: CacheKey) -> tuple[str, bytes]:
        """The entry file of KEY and KEY's text as stored in it."""
        ktext = key.text().encode()
        digest = hashlib.sha256(ktext).hexdigest()
        return os.path.join(self.root, digest[:2], digest), ktext

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._stats[name] += n

    def _read(self, key: CacheKey, view: memoryview | None) -> bytes | memoryview | None:
        """KEY's checked payload (read into VIEW when given), or None after counting the miss."""
        path, ktext = self._entry(key)
        try:
            with open(path, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                header = f.read(_HEADER.size)
                bad = (b"", 0, 0, 0, -1)  # a short header
                magic, version, size, crc, klen = _HEADER.unpack(header) if len(header) == _HEADER.size else bad
                if (magic, version, klen) != (_MAGIC, _VERSION, len(ktext)) or f.read(klen) != ktext \
                        or st.st_size != _HEADER.size + klen + size:
                    return self._corrupt(path, st)
                if view is not None and view.nbytes != size:
                    self._add(misses=1)  # a well-formed entry; the caller asked for another length
                    return None
                data: bytes | memoryview = f.readall() if view is None else view[:_readinto(f, view)]
                if len(data) != size or zlib.crc32(data) != crc:  # short read or damaged payload
                    return self._corrupt(path, st)
        except OSError:  # never stored, evicted by another process since, or unreadable
            self._add(misses=1)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recency, shared with every process using this directory
        self._add(hits=1, bytes_read=size)
        return data

    def _corrupt(self, path: str, st: os.stat_result) -> None:
        """Count a corrupt entry and delete it unless a writer has replaced it since it was opened."""
        self._add(corrupt=1, misses=1)
        log.debug("disk cache: deleting corrupt entry %s", path)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == st.st_ino:
                os.unlink(path)

    def _scan(self) -> None:
        """Sweep until what other threads wrote during a sweep no longer puts the estimate over max_bytes."""
        try:
            again = True
            while again:
                with self._lock:
                    since0 = self._since
                total, evicted = self._sweep()
                with self._lock:
                    self._scanned = total
                    self._since -= since0  # what other threads wrote meanwhile: maybe unseen
                    self._stats["evictions"] += evicted
                    again = self._since > 0 and self._scanned + self._since > self.max_bytes
                    self._scanning = again  # cleared with that decision, so no skipped put goes unscanned
        except BaseException:
            self._scanning = False
            raise

    def _sweep(self) -> tuple[int, int]:
        """Total the entries, delete stale temp files, evict least recently used ones if over: (total, evicted)."""
        now, total, evicted, entries = time.time(), 0, 0, []
        for e in _cache_files(self.root):
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not e.name.startswith(_TMP):
                entries.append((st.st_mtime_ns, e.path, st.st_size))
                total += st.st_size
            elif now - st.st_mtime > _TMP_STALE_S:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
            elif now - st.st_mtime >= _TMP_YOUNG_S:
                total += st.st_size  # a slow or dead writer's file still takes the space
        if total > self.max_bytes:
            for _, path, size in sorted(entries):
                if total <= self.max_bytes * _LOW_WATER:
                    break
                try:
                    os.unlink(path)
                    evicted += 1
                except OSError as e:
                    if not isinstance(e, FileNotFoundError):  # else another process evicted it first
                        continue
                total -= size
        return total, evicted


def _scandir(path: str | os.PathLike) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _cache_files(root: Path) -> list[os.DirEntry]:
    """The files in the <2 hex> folders under ROOT (anything else there is not the cache's)."""
    dirs = [d.path for d in _scandir(root) if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
    return [e for d in dirs for e in _scandir(d)]


def _readinto(f, view: memoryview) -> int:
    got = 0
    while got < view.nbytes and (n := f.readinto(view[got:])):
        got += n
    return got


_INSTANCES: weakref.WeakSet[DiskCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_INSTANCES):  # a lock held by another thread at fork time would never be released
        cache._lock = threading.Lock()
        cache._scanning = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_data_cache_dir() -> Path:
    """$HIVEDATA_CACHE/data, else ~/.cache/hivedata/data."""
    return cache_root() / "data"


def parse_cache_size(text: str | int) -> int:
    """'20GB', '512MiB', '1.5G' or a byte count -> bytes (>= 0); ValueError naming TEXT otherwise."""
    size = -1
    with contextlib.suppress(ValueError, OverflowError):  # 'fooMB', 'nanGB', 'infGB'
        if isinstance(text, str):
            size = parse_size(text)
        elif isinstance(text, (int, np.integer)) and not isinstance(text, bool):
            size = int(text)
    if size < 0:
        raise ValueError(f"cache size {text!r} is not a size like 20GB, 512MiB, 1.5G or a byte count")
    return size
