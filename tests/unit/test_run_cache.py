"""The disk cache's run files: many entries a file, the in-memory index, other processes' runs, old layouts."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from hivedata.loader import disk_cache, run_format
from hivedata.loader.cache_writer import CacheWriter
from hivedata.loader.disk_cache import CacheKey, DiskCache
from hivedata.loader.run_format import RunTable
from hivedata.loader.run_index import RunIndex
from tests.support.forking import in_forked_child


def key_of(i: int) -> CacheKey:
    return CacheKey("bkt", f"shard-{i % 97:03d}.tar", 11, i * 8192, 100 + i % 900)


def payload(i: int, salt: int = 0) -> bytes:
    return np.random.default_rng([i, salt]).integers(0, 256, 100 + i % 900, dtype=np.uint8).tobytes()


def runs(root) -> list:
    return sorted(p for p in root.iterdir() if p.suffix == ".run")


def test_put_many_packs_entries_into_few_runs(tmp_path):
    cache = DiskCache(tmp_path, 1 << 30, run_bytes=64 << 10)
    items = [(key_of(i), payload(i)) for i in range(2000)]
    cache.put_many(items)
    total = sum(p.stat().st_size for p in runs(tmp_path))
    assert len(runs(tmp_path)) == cache.stats()["runs"] <= total // (60 << 10) + 1  # about full runs only
    assert cache.stats()["puts"] == 2000 and cache.stats()["bytes_written"] == sum(len(d) for _, d in items)
    fresh = DiskCache(tmp_path, 1 << 30)  # another process: indexes every run from the footers
    for c in (cache, fresh):
        for i in range(0, 2000, 7):
            out = np.empty(len(payload(i)), np.uint8)
            assert c.get_into(key_of(i), out) and out.tobytes() == payload(i)
    assert fresh.stats()["hits"] == len(range(0, 2000, 7)) and fresh.stats()["corrupt"] == 0


def test_runs_another_process_writes_are_found_on_a_miss(tmp_path):
    reader, writer = DiskCache(tmp_path, 1 << 30), DiskCache(tmp_path, 1 << 30)
    assert reader.get(key_of(1)) is None  # the reader has indexed the (empty) directory
    ok, _, code = in_forked_child(_put_in_child, str(tmp_path))
    assert ok and code == 0
    writer.put(key_of(2), payload(2))
    time.sleep(disk_cache._REFRESH_S * 1.2)  # a miss looks again only this long after the last look
    assert reader.get(key_of(1)) == payload(1) and reader.get(key_of(2)) == payload(2)
    assert reader.stats()["misses"] == 1


def _put_in_child(root, q) -> None:
    DiskCache(root, 1 << 30).put(key_of(1), payload(1))
    q.put((True, None))


def test_a_forked_child_reads_through_the_inherited_index(tmp_path):
    cache = DiskCache(tmp_path, 1 << 30)
    cache.put_many([(key_of(i), payload(i)) for i in range(50)])
    assert cache.get(key_of(3)) == payload(3)
    _child_reads.cache = cache
    ok, info, code = in_forked_child(_child_reads)
    assert ok and code == 0, info


def _child_reads(q) -> None:
    cache = _child_reads.cache
    good = all(cache.get(key_of(i)) == payload(i) for i in range(50))
    cache.put(key_of(99), payload(99))  # writing works in the child too (fresh locks)
    q.put((good and cache.get(key_of(99)) == payload(99), cache.stats()))


def test_runs_evicted_by_another_process_read_as_plain_misses(tmp_path):
    reader = DiskCache(tmp_path, 1 << 30)
    reader.put_many([(key_of(i), payload(i)) for i in range(20)])
    DiskCache(tmp_path, 1 << 30).clear()
    assert reader.get(key_of(5)) is None
    s = reader.stats()
    assert (s["misses"], s["corrupt"]) == (1, 0)
    assert reader.locate(key_of(6)) is None  # the whole run is forgotten


def test_a_rewritten_key_reads_its_newest_bytes(tmp_path):
    cache = DiskCache(tmp_path, 1 << 30)
    key = key_of(4)
    cache.put(key, payload(4, salt=1))
    cache.put_many([(key, payload(4, salt=2)), (key_of(5), payload(5)), (key, payload(4, salt=3))])
    assert cache.get(key) == payload(4, salt=3)
    assert DiskCache(tmp_path, 1 << 30).get(key) == payload(4, salt=3)


def test_a_big_index_folds_and_loads_in_bulk(tmp_path):
    n = 70_000  # more than the index keeps in its dict before folding into the sorted arrays
    cache = DiskCache(tmp_path, 1 << 30, run_bytes=1 << 20)
    keys = [CacheKey("b", "s.tar", 1, i * 16, 16) for i in range(n)]
    cache.put_many([(k, i.to_bytes(16, "little")) for i, k in enumerate(keys)])
    again = list(range(0, n, 1000))
    cache.put_many([(keys[i], (i + 1).to_bytes(16, "little")) for i in again])
    fresh = DiskCache(tmp_path, 1 << 30)
    pick = np.random.default_rng(0).choice(n, 300, replace=False).tolist() + again
    for c in (cache, fresh):
        for i in pick:
            assert c.get(keys[i]) == (i + (i in again)).to_bytes(16, "little"), i
    assert len(fresh._index) >= n


def test_the_old_per_file_layout_is_deleted_never_read(tmp_path, caplog):
    key, data = key_of(1), payload(1)
    import hashlib
    digest = hashlib.sha256(key.text().encode()).hexdigest()
    (tmp_path / digest[:2]).mkdir()
    (tmp_path / digest[:2] / digest).write_bytes(b"HVDC" + bytes(20) + data)  # an entry of format 1
    (tmp_path / "notes.txt").write_text("not the cache's")
    with caplog.at_level(logging.WARNING, logger="hivedata.loader.disk_cache"):
        cache = DiskCache(tmp_path, 1 << 20)
        assert cache.get(key) is None
    assert not (tmp_path / digest[:2]).exists() and (tmp_path / "notes.txt").exists()
    assert [r.getMessage() for r in caplog.records if "old one-file-per-entry layout" in r.getMessage()]
    assert cache.stats()["corrupt"] == 0
    cache.put(key, data)
    assert cache.get(key) == data


def test_a_run_of_a_newer_format_is_skipped_not_deleted(tmp_path, caplog):
    path = tmp_path / "00000000000000ff-1-00000000.run"
    path.write_bytes(run_format.FILE_HEADER.pack(run_format.FILE_MAGIC, run_format.VERSION + 1) + bytes(64))
    with caplog.at_level(logging.WARNING, logger="hivedata.loader.disk_cache"):
        cache = DiskCache(tmp_path, 1 << 20)
        assert cache.get(key_of(1)) is None
    assert path.exists() and cache.stats()["corrupt"] == 0
    assert any("format version" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("where", ["trailer", "table"])
def test_a_run_whose_footer_fails_its_checksum_is_deleted(tmp_path, where):
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put_many([(key_of(i), payload(i)) for i in range(5)])
    path, = runs(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-run_format.TRAILER.size - (8 if where == "table" else -8)] ^= 0x40
    path.write_bytes(bytes(raw))
    fresh = DiskCache(tmp_path, 1 << 20)
    assert fresh.get(key_of(2)) is None and not path.exists()
    assert fresh.stats()["corrupt"] == 1


def test_eviction_deletes_whole_runs_oldest_first(tmp_path):
    cache = DiskCache(tmp_path, 200_000, run_bytes=20_000)
    base = time.time() - 1000
    for r in range(8):  # 8 runs of ~20 KB, each older than the next
        cache.put_many([(key_of(r * 100 + i), payload(r * 100 + i)) for i in range(40)])
        for p in runs(tmp_path):
            if p.stat().st_mtime > base + 100:
                os.utime(p, (base + r, base + r))
    before = cache.stats()["evictions"]
    cache.put_many([(key_of(900 + i), payload(900 + i)) for i in range(200)])
    total = sum(p.stat().st_size for p in runs(tmp_path))
    assert total <= cache.max_bytes and cache.stats()["evictions"] > before
    alive = [any(cache.locate(key_of(r * 100 + i)) for i in range(40)) for r in range(8)]
    assert alive == sorted(alive) and not alive[0]  # the oldest runs went first, whole
    assert all(cache.get(key_of(900 + i)) == payload(900 + i) for i in range(190, 200))


def test_cache_writer_gathers_puts_into_runs(tmp_path):
    cache = DiskCache(tmp_path, 1 << 30, run_bytes=50_000)
    w = CacheWriter(cache)
    for i in range(200):
        assert w.put(key_of(i), payload(i))
    w.flush()
    assert cache.stats()["puts"] == 200 and cache.stats()["runs"] <= 200 * 1000 // 50_000 + 2
    assert all(cache.get(key_of(i)) == payload(i) for i in range(200))
    w.close()


def test_cache_writer_writes_a_partial_run_once_it_is_old(tmp_path):
    cache = DiskCache(tmp_path, 1 << 30)  # runs of 16 MiB: a few puts never fill one
    w = CacheWriter(cache, max_age_s=0.2)
    w.put(key_of(1), payload(1))
    deadline = time.monotonic() + 30
    while not runs(tmp_path) and time.monotonic() < deadline:  # no flush: the age alone writes it
        time.sleep(0.05)
    assert DiskCache(tmp_path, 1 << 30).get(key_of(1)) == payload(1)
    w.close()


def table(hashes: list[int], offsets: list[int]) -> RunTable:
    return RunTable(np.array(hashes, np.int64), np.array(offsets, np.int64), 1 << 20)


def test_run_index_newest_name_wins_whatever_order_runs_arrive_in():
    idx = RunIndex()
    idx.add("0002-b.run", table([10, 20], [16, 100]))
    idx.add("0001-a.run", table([10, 30], [16, 200]))  # older, found later: its copy of 10 loses
    assert idx.lookup(10) == (0, 16) and idx.lookup(30) == (1, 200) and idx.lookup(40) is None
    idx.forget(10, 1, 16)  # not the entry the index holds: kept
    assert idx.lookup(10) == (0, 16)
    idx.forget(10, 0, 16)
    assert idx.lookup(10) is None
    idx.drop(1)
    assert idx.lookup(30) is None and idx.lookup(20) == (0, 100)
    bulk = RunIndex()
    n = 1 << 17  # enough for the bulk path
    bulk.add_many([("0003-c.run", table(list(range(n)), [16] * n)), ("0001-a.run", table([5, n + 1], [32, 48]))])
    assert bulk.lookup(5) == (0, 16) and bulk.lookup(n + 1) == (1, 48) and bulk.lookup(n + 2) is None
