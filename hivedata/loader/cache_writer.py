"""Disk cache writes on one background thread, so the training thread never waits on the disk."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from hivedata.loader.disk_cache import CacheKey, DiskCache
from hivedata.loader.run_format import PER_ENTRY

log = logging.getLogger(__name__)

_FLUSH = object()  # queued by flush(): write what is gathered now


def gathered_size(key: CacheKey, data: bytes) -> int:
    """An entry's bytes in a run, not less than what it takes (its key text estimated: no json here)."""
    return len(data) + PER_ENTRY + len(key.bucket) + len(key.object) + len(key.endpoint) + 64


class CacheWriter:
    """Queues copies of fetched bytes for the disk cache; drops (and counts) what exceeds max_pending_bytes.

    The thread gathers entries into runs and writes each with DiskCache.put_many once it holds the cache's
    run_bytes, once its first entry has waited max_age_s, or at flush() or close(). So the cache gets a
    few large files, and other processes see an entry at most max_age_s (plus their refresh delay) after
    it was queued. The thread starts with the first put and is started afresh in a forked child (the
    parent's is not there). Writes still queued or gathered when the interpreter exits are lost, which a
    cache may afford: runs are written atomically, so nothing half-written is ever read.
    """

    def __init__(self, cache: DiskCache, max_pending_bytes: int = 256 << 20, max_age_s: float = 5.0) -> None:
        self.cache, self.max_pending_bytes, self.max_age_s = cache, max_pending_bytes, max_age_s
        self._pid = -1
        self.dropped = 0

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="hivedata-cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        run: list[tuple[CacheKey, bytes]] = []
        size, deadline = 0, 0.0
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()) if run else None)
            except queue.Empty:  # the oldest gathered entry has waited max_age_s
                self._write(run)
                run, size = [], 0
                continue
            if item is None or item is _FLUSH:
                self._write(run)
                run, size = [], 0
                self._queue.task_done()
                if item is None:
                    return
                continue
            if not run:
                deadline = time.monotonic() + self.max_age_s
            run.append(item)
            size += gathered_size(*item)
            if size >= self.cache.run_bytes:
                self._write(run)
                run, size = [], 0

    def _write(self, run: list[tuple[CacheKey, bytes]]) -> None:
        if not run:
            return
        try:
            self.cache.put_many(run)
        except Exception:  # noqa: BLE001 - a cache write must never take the loader down
            log.exception("disk cache: writing %d entries (%s, ...) failed", len(run), run[0][0].object)
        finally:
            with self._lock:
                self._pending -= sum(len(data) for _, data in run)
            for _ in run:
                self._queue.task_done()

    def put(self, key: CacheKey, data: Any) -> bool:
        """Queues a copy of `data` for `key`; False (counted in `dropped`) when too much is pending."""
        if self._pid != os.getpid():
            self._start()
        blob = bytes(memoryview(data).cast("B"))
        with self._lock:
            if self._pending + len(blob) > self.max_pending_bytes:
                self.dropped += 1
                return False
            self._pending += len(blob)
        self._queue.put((key, blob))
        return True

    def flush(self) -> None:
        """Waits until every queued write is on disk."""
        if self._pid == os.getpid():
            self._queue.put(_FLUSH)
            self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        if self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._pid = -1
