"""CacheWriter: background disk cache writes, bounded, flushable, restarted after fork."""

from __future__ import annotations

import numpy as np

from hivedata.loader.cache_writer import CacheWriter
from hivedata.loader.disk_cache import CacheKey, DiskCache
from tests.support.forking import in_forked_child


def test_writes_land_after_flush_and_the_buffer_may_be_reused(tmp_path):
    cache = DiskCache(tmp_path, 10**7)
    w = CacheWriter(cache)
    buf = np.arange(1000, dtype=np.uint8)
    for i in range(20):
        buf[:] = i
        assert w.put(CacheKey("b", f"o{i}", 1), buf)  # copied: the arena is reused right away
    w.flush()
    for i in range(20):
        assert cache.get(CacheKey("b", f"o{i}", 1)) == bytes([i]) * 1000
    w.close()
    assert cache.stats()["puts"] == 20


def test_too_much_pending_is_dropped_not_blocked(tmp_path):
    cache = DiskCache(tmp_path, 10**7)
    w = CacheWriter(cache, max_pending_bytes=1500)
    results = [w.put(CacheKey("b", f"o{i}", 1), b"x" * 1000) for i in range(50)]
    w.close()
    assert not all(results) and w.dropped == results.count(False) > 0
    assert cache.stats()["puts"] == results.count(True)


def _child(root, q) -> None:
    cache = DiskCache(root, 10**7)
    w = _child.writer
    w.cache = cache
    ok = w.put(CacheKey("b", "child", 1), b"c" * 10)
    w.flush()
    q.put((ok and cache.get(CacheKey("b", "child", 1)) == b"c" * 10, None))


def test_a_forked_child_gets_its_own_writer_thread(tmp_path):
    cache = DiskCache(tmp_path, 10**7)
    w = CacheWriter(cache)
    w.put(CacheKey("b", "parent", 1), b"p")  # the parent's thread is running
    _child.writer = w
    ok, _, code = in_forked_child(_child, str(tmp_path))
    assert ok and code == 0
    w.close()
    assert cache.get(CacheKey("b", "parent", 1)) == b"p"
