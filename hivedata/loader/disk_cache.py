"""Optional local disk cache of fetched object bytes (whole objects or tar shard ranges), shared by processes.

Entries live in run files ``root/<16 hex time_ns>-<pid>-<8 hex>.run`` that hold many entries each, with their
index in the file's footer (see run_format): CacheWriter gathers what a loader fetches into runs of up to
run_bytes (max_bytes / 64, at most 64 MiB), so a 200 GB cache is a few thousand files, not millions.
A run is written to a temp file and renamed into place, never changed afterwards, and evicted whole.

Each process keeps an index of every run (key hash -> run, offset; ~16 bytes an entry, see run_index),
built from the runs' footers on its first read and kept current from then on: its own runs as it writes
them, other processes' runs when a miss finds the directory changed (looked at no more than every 0.25 s).
Every hit checks its record's key text and payload crc32c; a damaged entry is counted as corrupt, logged
and read as a miss (a later put of the key supersedes it), a run whose footer does not check out is
deleted, and no damage ever yields wrong bytes. The per-file cache of format 1 (``root/<2 hex>/<sha256>``)
is never read: its files are deleted, with a log line, the first time this cache lists the directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from hivedata import _native
from hivedata.common import cache_root, parse_size
from hivedata.loader.run_format import (
    OVERHEAD,
    RECORD,
    NewerRunFormat,
    RunFormatError,
    entry_size,
    key_hash,
    read_table,
    write_run,
)
from hivedata.loader.run_index import RunIndex
from hivedata.sources.base import CacheKey

log = logging.getLogger(__name__)

_TMP = ".tmp-"  # temp file prefix: .tmp-<pid>-<thread id>-<random>
_TMP_YOUNG_S = 60.0  # a temp file younger than this is a writer at work: neither counted nor touched
_TMP_STALE_S = 3600.0  # one older than this is a killed writer's leftover: deleted by the next scan
_LOW_WATER = 0.9  # eviction goes down to this fraction of max_bytes
_REFRESH_S = 0.25  # a miss looks for runs other processes wrote at most this often
_TOUCH_S = 1.0  # a hit refreshes its run's mtime (the shared recency) at most this often per process
_RUN_MAX = 64 << 20
_RUN_NAME = re.compile(r"[0-9a-f]{16}-\d+-[0-9a-f]{8}\.run")
_LEGACY_DIR = re.compile(r"[0-9a-f]{2}")  # format 1: root/<2 hex>/<sha256 hex of the key text>
_LEGACY_ENTRY = re.compile(r"[0-9a-f]{64}")
_STAT_NAMES = ("hits", "misses", "corrupt", "puts", "runs", "evictions", "put_errors", "bytes_read",
               "bytes_written")


class DiskCache:
    """Size-bounded cache of byte payloads in run files in a directory that several processes may share.

    Recency is a run file's mtime (a hit touches it), shared by every process; eviction deletes whole runs,
    least recently used first, and stats only the run files (thousands), never the entries. A put scans
    the directory when this process's estimate (the total at its last scan + the bytes it wrote since)
    exceeds max_bytes, or once it has written max_bytes/16 since its last scan; a scan that finds more
    than max_bytes evicts runs down to 0.9 * max_bytes. So a lone process stays within max_bytes, and P
    processes sharing the directory overshoot it by at most about P * (max_bytes/16 + the largest run).
    An entry that would not fit in max_bytes alone is not stored. put() writes a run of one entry;
    put_many() (what CacheWriter calls) writes runs of run_bytes (and at most one entry more). Thread
    safe; fork safe (no threads, no open files kept; a child inherits the index).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, run_bytes: int | None = None) -> None:
        """Create ROOT if needed; MAX_BYTES (> 0) bounds the bytes of the run files kept there."""
        if int(max_bytes) <= 0:
            raise ValueError(f"disk cache size must be > 0 bytes, got {max_bytes!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._dir = os.fspath(self.root) + os.sep
        self.max_bytes = int(max_bytes)
        self.run_bytes = int(run_bytes) if run_bytes else min(_RUN_MAX, max(1, self.max_bytes // 64))
        self._rescan_every = max(1, self.max_bytes // 16)
        self._lock = threading.Lock()  # counters, estimates, the index
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._scanned = 0  # run file bytes found by the last scan
        self._since = self._rescan_every  # bytes this process wrote since: the first put scans
        self._scanning = False
        self._warned = False
        self._stats = dict.fromkeys(_STAT_NAMES, 0)
        self._index = RunIndex()
        self._loaded = False
        self._refreshed_at = -math.inf
        self._seen_mtime: int | None = None
        self._touched: dict[int, float] = {}
        self._last_ns = 0  # the time in the name of the last run this process wrote
        self._reported: set[str] = set()  # runs whose damage was logged as a warning
        _INSTANCES.add(self)

    # -- reads -------------------------------------------------------------------------------------------

    def get_into(self, key: CacheKey, out: memoryview | np.ndarray) -> bool:
        """Fill OUT with KEY's payload if an intact entry of exactly OUT's size is cached (else OUT is undefined)."""
        view = memoryview(out).cast("B")
        if view.readonly:
            raise TypeError("get_into needs a writable buffer")
        return self._read(key, view) is not None

    def get(self, key: CacheKey) -> bytes | None:
        """KEY's payload if an intact entry is cached, else None."""
        return None if (data := self._read(key, None)) is None else bytes(data)  # bytes already: no copy

    def locate(self, key: CacheKey) -> tuple[Path, int] | None:
        """Where KEY's entry is: (its run file, the offset of its record), or None when it is not indexed."""
        found = self._find(key_hash(key.text().encode()))
        return None if found is None else (self.root / found[2], found[1])

    def _find(self, h: int) -> tuple[int, int, str, int] | None:
        """(file number, record offset, run name, end of its records) of key hash H, looking again on a miss."""
        if not self._loaded:
            self._refresh(force=True)
        for _ in range(2):
            with self._lock:
                if (at := self._index.lookup(h)) is not None:
                    fid, off = at
                    return fid, off, self._index.names[fid], self._index.data_end[fid]
            if not self._refresh():
                return None
        return None

    def _read(self, key: CacheKey, view: memoryview | None) -> bytes | memoryview | None:
        """KEY's checked payload (read into VIEW when given), or None after counting the miss."""
        ktext = key.text().encode()
        h = key_hash(ktext)
        if (found := self._find(h)) is None:
            self._add(misses=1)
            return None
        fid, off, name, end = found
        path = self._dir + name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:  # evicted by another process since, or unreadable
            if isinstance(e, FileNotFoundError):
                with self._lock:
                    self._index.drop(fid)
            self._add(misses=1)
            return None
        try:
            head = bytearray(RECORD.size + len(ktext))
            got = os.preadv(fd, [head, view], off) if view is not None else os.preadv(fd, [head], off)
            klen, crc, size = RECORD.unpack_from(head) if got >= RECORD.size else (-1, 0, 0)
            if got < len(head) or klen != len(ktext) or head[RECORD.size:] != ktext:
                return self._corrupt(h, fid, off, name, "its record header or key text does not match")
            if off + len(head) + size > end:
                return self._corrupt(h, fid, off, name, f"a payload length of {size} runs past the records")
            if view is not None and view.nbytes != size:
                self._add(misses=1)  # a well-formed entry; the caller asked for another length
                return None
            if view is None:
                data: bytes | memoryview = os.pread(fd, size, off + len(head))
                got = len(head) + len(data)
            else:
                data = view
            if got != len(head) + size or _native.crc32c(data) != crc:  # short read or damaged payload
                return self._corrupt(h, fid, off, name, "its payload fails its crc32c")
        except OSError:
            self._add(misses=1)
            return None
        finally:
            os.close(fd)
        self._touch(fid, path)
        self._add(hits=1, bytes_read=size)
        return data

    def _touch(self, fid: int, path: str) -> None:
        """Marks run FID recently used for every process (its mtime), at most every _TOUCH_S per process."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(fid, -math.inf) < _TOUCH_S:
                return
            self._touched[fid] = now
        with contextlib.suppress(OSError):
            os.utime(path)

    def _corrupt(self, h: int, fid: int, off: int, name: str, why: str) -> None:
        """Counts and logs a damaged entry and forgets it, so it reads as a miss until written again."""
        with self._lock:
            self._stats["corrupt"] += 1
            self._stats["misses"] += 1
            self._index.forget(h, fid, off)
            first = name not in self._reported
            self._reported.add(name)
        log.log(logging.WARNING if first else logging.DEBUG,
                "disk cache %s: the entry at offset %d of run %s is damaged (%s); read as a miss", self.root, off,
                name, why)

    # -- writes ------------------------------------------------------------------------------------------

    def put(self, key: CacheKey, data: bytes | memoryview | np.ndarray) -> None:
        """Store DATA under KEY (as a run of one entry); best effort: an OSError is counted and logged once."""
        self.put_many([(key, data)])

    def put_many(self, items: list[tuple[CacheKey, bytes | memoryview | np.ndarray]]) -> None:
        """Store each (key, data) of ITEMS in runs that close once they hold run_bytes; best effort, like put."""
        runs: list[list[tuple[bytes, int, memoryview]]] = []
        run: list[tuple[bytes, int, memoryview]] = []
        size = OVERHEAD
        for key, data in items:
            view = memoryview(data).cast("B")
            ktext = key.text().encode()
            n = entry_size(ktext, view.nbytes)
            if OVERHEAD + n > self.max_bytes:
                continue
            if run and size >= self.run_bytes:  # a run closes once it holds run_bytes
                runs.append(run)
                run, size = [], OVERHEAD
            run.append((ktext, key_hash(ktext), view))
            size += n
        if run:
            runs.append(run)
        for run in runs:
            self._write_run(run)

    def _write_run(self, run: list[tuple[bytes, int, memoryview]]) -> None:
        pid = os.getpid()
        with self._lock:  # names sort by when they were written: the newest copy of a key wins
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            name = f"{self._last_ns:016x}-{pid}-{secrets.token_hex(4)}.run"
        tmp = os.path.join(self.root, f"{_TMP}{pid}-{threading.get_ident()}-{secrets.token_hex(6)}")
        try:
            with open(tmp, "wb") as f:
                table, size = write_run(f, run)
            os.replace(tmp, os.path.join(self.root, name))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._lock:
                self._stats["put_errors"] += len(run)
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("disk cache %s: cannot store entries (%s); going on without caching them", self.root, e)
            return
        with self._lock:
            self._index.add(name, table)
            self._stats["puts"] += len(run)
            self._stats["runs"] += 1
            self._stats["bytes_written"] += sum(view.nbytes for _, _, view in run)
            self._since += size
            scan = not self._scanning and (
                self._since >= self._rescan_every or self._scanned + self._since > self.max_bytes)
            self._scanning = self._scanning or scan
        if scan:
            self._scan()

    # -- the directory -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: hits, misses (corrupt entries included), corrupt, puts, runs written, run files evicted,
        put_errors, payload bytes read and written."""
        with self._lock:
            return dict(self._stats)

    def clear(self) -> None:
        """Delete every run (and stale temp files); temp files of writers at work are left alone."""
        now = time.time()
        runs, temps, legacy = _listing(self.root)
        self._purge_legacy(legacy)
        for e in runs.values():
            with contextlib.suppress(OSError):
                os.unlink(e.path)
        for e in temps:
            with contextlib.suppress(OSError):
                if now - e.stat(follow_symlinks=False).st_mtime > _TMP_STALE_S:
                    os.unlink(e.path)
        with self._lock:
            self._index.drop_all()
            self._scanned = 0
            self._since = 0

    def _refresh(self, force: bool = False) -> bool:
        """Indexes runs written since the last look and forgets vanished ones; True when anything changed."""
        now = time.monotonic()
        if not force and now - self._refreshed_at < _REFRESH_S:
            return False
        if not self._refresh_lock.acquire(blocking=not self._loaded):
            return False  # another thread is at it
        try:
            if (force and self._loaded) or (not force and now - self._refreshed_at < _REFRESH_S):
                return False  # done by another thread meanwhile
            self._refreshed_at = now
            try:
                mtime = os.stat(self.root).st_mtime_ns
            except OSError:
                return False
            if self._loaded and mtime == self._seen_mtime:
                return False
            with self._lock:
                known = self._index.alive_names()
            runs, _, legacy = _listing(self.root)
            self._purge_legacy(legacy)
            tables = [(name, t) for name in runs.keys() - known.keys()
                      if (t := self._load_table(runs[name].path, name)) is not None]
            with self._lock:
                self._index.add_many(tables)
                gone = [fid for name, fid in known.items() if name not in runs]
                for fid in gone:
                    self._index.drop(fid)
                self._loaded = True
            # a change within the same clock tick as the mtime seen would not move it: look again next time
            self._seen_mtime = mtime if time.time_ns() - mtime > 50_000_000 else None
            return bool(tables or gone)
        finally:
            self._refresh_lock.release()

    def _load_table(self, path: str, name: str):
        """The table of run PATH; None (after deleting a damaged run) when it cannot be read."""
        try:
            with open(path, "rb", buffering=0) as f:
                return read_table(f.fileno(), os.fstat(f.fileno()).st_size)
        except NewerRunFormat as e:
            if name not in self._reported:
                self._reported.add(name)
                log.warning("disk cache %s: skipping run %s (%s)", self.root, name, e)
        except RunFormatError as e:
            self._add(corrupt=1)
            log.warning("disk cache %s: deleting damaged run %s (%s)", self.root, name, e)
            with contextlib.suppress(OSError):
                os.unlink(path)
        except OSError:  # evicted meanwhile, or unreadable
            pass
        return None

    def _purge_legacy(self, dirs: list[os.DirEntry]) -> None:
        """Deletes the entries of the old one-file-per-entry layout (format 1), which this cache never reads."""
        if not dirs:
            return
        log.warning("disk cache %s: deleting the entries of the old one-file-per-entry layout (format 1) in %d "
                    "folders; this version does not read them", self.root, len(dirs))
        now, deleted = time.time(), 0
        for d in dirs:
            for e in _scandir(d.path):
                with contextlib.suppress(OSError):
                    old_tmp = e.name.startswith(_TMP) and now - e.stat(follow_symlinks=False).st_mtime > _TMP_YOUNG_S
                    if _LEGACY_ENTRY.fullmatch(e.name) or old_tmp:
                        os.unlink(e.path)
                        deleted += 1
            with contextlib.suppress(OSError):
                os.rmdir(d.path)
        log.info("disk cache %s: deleted %d entries of the old layout", self.root, deleted)

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._stats[name] += n

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
        """Total the runs, delete stale temp files, evict least recently used runs if over: (total, evicted)."""
        now, total, evicted = time.time(), 0, 0
        with self._lock:
            known = self._index.alive_names()
        runs, temps, legacy = _listing(self.root)
        self._purge_legacy(legacy)
        entries = []
        for name, e in runs.items():
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append((st.st_mtime_ns, name, st.st_size))
            total += st.st_size
        for e in temps:
            with contextlib.suppress(OSError):
                st = e.stat(follow_symlinks=False)
                if now - st.st_mtime > _TMP_STALE_S:
                    os.unlink(e.path)
                elif now - st.st_mtime >= _TMP_YOUNG_S:
                    total += st.st_size  # a slow or dead writer's file still takes the space
        gone = {name for name in known if name not in runs}
        if total > self.max_bytes:
            for _, name, size in sorted(entries):
                if total <= self.max_bytes * _LOW_WATER:
                    break
                try:
                    os.unlink(os.path.join(self.root, name))
                    evicted += 1
                except OSError as e:
                    if not isinstance(e, FileNotFoundError):  # else another process evicted it first
                        continue
                gone.add(name)
                total -= size
        with self._lock:
            for name in gone:
                if (fid := self._index.by_name.get(name)) is not None:
                    self._index.drop(fid)
        return total, evicted


def _scandir(path: str | os.PathLike) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _listing(root: Path) -> tuple[dict[str, os.DirEntry], list[os.DirEntry], list[os.DirEntry]]:
    """ROOT's run files by name, temp files, and folders of the old per-file layout (anything else is not ours)."""
    runs, temps, legacy = {}, [], []
    for e in _scandir(root):
        if _RUN_NAME.fullmatch(e.name):
            runs[e.name] = e
        elif e.name.startswith(_TMP):
            temps.append(e)
        elif _LEGACY_DIR.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
            legacy.append(e)
    return runs, temps, legacy


_INSTANCES: weakref.WeakSet[DiskCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_INSTANCES):  # a lock held by another thread at fork time would never be released
        cache._lock = threading.Lock()
        cache._refresh_lock = threading.Lock()
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
