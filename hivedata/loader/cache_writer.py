"""Disk cache writes on one background thread, so the training thread never waits on the disk."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from hivedata.loader.disk_cache import CacheKey, DiskCache

log = logging.getLogger(__name__)


class CacheWriter:
    """Queues copies of fetched bytes for DiskCache.put; drops (and counts) what exceeds max_pending_bytes.

    The thread starts with the first put and is started afresh in a forked child (the parent's is not
    there). Writes still queued when the interpreter exits are lost, which a cache may afford: entries
    are written atomically, so nothing half-written is ever read.
    """

    def __init__(self, cache: DiskCache, max_pending_bytes: int = 256 << 20) -> None:
        self.cache, self.max_pending_bytes = cache, max_pending_bytes
        self._pid = -1
        self.dropped = 0

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[tuple[CacheKey, bytes] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="hivedata-cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            key, data = item
            try:
                self.cache.put(key, data)
            except Exception:  # noqa: BLE001 - a cache write must never take the loader down
                log.exception("disk cache: writing %s failed", key.object)
            finally:
                with self._lock:
                    self._pending -= len(data)
                self._queue.task_done()
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
            self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        if self._pid == os.getpid() and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._pid = -1
