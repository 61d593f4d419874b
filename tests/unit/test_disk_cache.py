"""The local disk cache of object bytes: hits, key separation, corruption, LRU eviction, processes.

Entries live in run files (run_format); DiskCache.put writes a run of one entry, so these tests find an
entry's run with DiskCache.locate where the per-file cache's tests computed root/<2 hex>/<sha256>.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from hivedata.loader import run_format
from hivedata.loader.disk_cache import CacheKey, DiskCache, default_data_cache_dir, parse_cache_size
from tests.support.threads import run_threads


def entry_path(cache: DiskCache, key: CacheKey) -> Path:
    """The run file holding KEY's entry (each put writes a run of one entry)."""
    found = cache.locate(key)
    assert found is not None, f"{key} is not indexed"
    return found[0]


def run_size(key: CacheKey, nbytes: int) -> int:
    """The bytes of a run holding only KEY's entry of NBYTES."""
    return run_format.OVERHEAD + run_format.entry_size(key.text().encode(), nbytes)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in files(root))


def payload(i: int) -> bytes:
    """Deterministic bytes of key number I (lengths vary so torn or mixed reads would show)."""
    return np.random.default_rng(i).integers(0, 256, 500 + (i * 7919) % 2500, dtype=np.uint8).tobytes()


def key_of(i: int) -> CacheKey:
    return CacheKey("bkt", f"shard-{i % 10:02d}.tar", 7, i * 4096, len(payload(i)))


def test_miss_put_hit(tmp_path):
    cache = DiskCache(tmp_path / "c", 1 << 20)
    key = CacheKey("bkt", "train/n01440764/a.JPEG", 1712345678901234)
    data = os.urandom(5000)
    out = np.zeros(len(data), np.uint8)
    assert not cache.get_into(key, out)
    assert cache.get(key) is None
    cache.put(key, data)
    assert cache.get(key) == data
    assert cache.get_into(key, out) and out.tobytes() == data
    buf = bytearray(len(data))
    assert cache.get_into(key, memoryview(buf)) and bytes(buf) == data
    cache.put(key, np.frombuffer(data, np.uint8))  # arrays are accepted too; rewriting a key is fine
    assert cache.get(key) == data
    s = cache.stats()
    assert (s["hits"], s["misses"], s["corrupt"], s["puts"]) == (4, 2, 0, 2)
    assert s["bytes_read"] == 4 * len(data) and s["bytes_written"] == 2 * len(data)
    assert entry_path(cache, key).is_file() and entry_path(cache, key).suffix == ".run"
    assert not [p for p in files(tmp_path / "c") if p.name.startswith(".tmp")]


def test_empty_payload(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    key = CacheKey("b", "empty", 1)
    cache.put(key, b"")
    assert cache.get(key) == b""
    assert cache.get_into(key, bytearray())


def test_keys_differing_by_generation_or_range_do_not_collide(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    keys = [CacheKey("b", "s.tar", 1), CacheKey("b", "s.tar", 2), CacheKey("b", "s.tar", 1, 0, 100),
            CacheKey("b", "s.tar", 1, 512, 100), CacheKey("b", "s.tar", 1, 0, 101), CacheKey("c", "s.tar", 1),
            CacheKey("b", "s.tar2", 1)]
    assert len({k.text() for k in keys}) == len(keys)
    for i, k in enumerate(keys):
        cache.put(k, bytes([i]) * (k.length if k.length > 0 else 50))
    for i, k in enumerate(keys):
        assert cache.get(k) == bytes([i]) * (k.length if k.length > 0 else 50)
    assert cache.stats()["hits"] == len(keys)


def payload_offset(cache: DiskCache, key: CacheKey) -> int:
    """Where KEY's payload starts in its run file."""
    return cache.locate(key)[1] + run_format.RECORD.size + len(key.text().encode())


def test_flipped_payload_byte_is_detected_and_forgotten(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    key, data = key_of(3), payload(3)
    cache.put(key, data)
    path = entry_path(cache, key)
    raw = bytearray(path.read_bytes())
    raw[payload_offset(cache, key) + len(data) // 2] ^= 0x01
    path.write_bytes(raw)
    assert not cache.get_into(key, np.empty(len(data), np.uint8))
    assert cache.locate(key) is None  # forgotten (its run stays: a run holds other entries too)
    s = cache.stats()
    assert s["corrupt"] == 1 and s["hits"] == 0 and s["misses"] == 1
    assert cache.get(key) is None and cache.stats()["corrupt"] == 1  # a plain miss from now on
    assert DiskCache(tmp_path, 1 << 20).get(key) is None  # another process finds the damage too
    cache.put(key, data)
    assert cache.get(key) == data
    assert DiskCache(tmp_path, 1 << 20).get(key) == data  # the newer run wins over the damaged one


@pytest.mark.parametrize("reader", ["get", "get_into"])
@pytest.mark.parametrize("damage", ["truncate_payload", "zero_bytes", "header_only", "bad_magic", "grown"])
def test_damaged_entry_is_a_corrupt_miss(tmp_path, damage, reader):
    writer = DiskCache(tmp_path, 1 << 20)
    key, data = key_of(5), payload(5)
    writer.put(key, data)
    path = entry_path(writer, key)
    raw = path.read_bytes()
    path.write_bytes({"truncate_payload": raw[:-7], "zero_bytes": b"", "header_only": raw[:10],
                      "bad_magic": b"XXXX" + raw[4:], "grown": raw + b"\0"}[damage])
    got = writer.get(key)  # the writer indexed the run before the damage: its entry may still read whole
    assert got is None or got == data
    cache = DiskCache(tmp_path, 1 << 20)  # a process opening the cache now: the run's footer does not check out
    assert not (cache.get(key) if reader == "get" else cache.get_into(key, bytearray(len(data))))
    assert not path.exists()
    s = cache.stats()
    assert (s["corrupt"], s["misses"], s["hits"]) == (1, 1, 0)


def test_hash_collision_is_caught_by_the_key_text(tmp_path):
    a = key_of(1)
    b = CacheKey(a.bucket, a.object[:-1] + "x", a.generation, a.start, a.length)  # key texts of equal length
    assert len(a.text()) == len(b.text()) and a.text() != b.text()
    entry = (a.text().encode(), run_format.key_hash(b.text().encode()), memoryview(payload(1)))
    with open(tmp_path / "0000000000000001-1-00000000.run", "wb") as f:  # b's hash leads to a's record
        run_format.write_run(f, [entry])
    cache = DiskCache(tmp_path, 1 << 20)
    assert not cache.get_into(b, bytearray(len(payload(1))))
    assert cache.stats()["corrupt"] == 1 and cache.locate(b) is None


def test_wrong_length_request_is_a_plain_miss(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    key = CacheKey("b", "o", 1)
    cache.put(key, b"x" * 100)
    assert not cache.get_into(key, bytearray(99))
    assert not cache.get_into(key, bytearray(101))
    s = cache.stats()
    assert (s["misses"], s["corrupt"]) == (2, 0)
    assert entry_path(cache, key).exists()
    assert cache.get_into(key, bytearray(100))


def test_vanished_entry_is_a_plain_miss(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    key = CacheKey("b", "o", 1)
    cache.put(key, b"abc")
    entry_path(cache, key).unlink()  # another process evicted it
    assert cache.get(key) is None
    assert (cache.stats()["misses"], cache.stats()["corrupt"]) == (1, 0)


def _six_keys() -> tuple[list[CacheKey], int]:
    keys = [CacheKey("b", f"obj-{i}", 1) for i in range(6)]
    return keys, run_size(keys[0], 1000)  # a run of one entry: header, record, key text, payload, table, trailer


def test_eviction_keeps_total_under_max_and_drops_oldest(tmp_path):
    keys, entry = _six_keys()
    cache = DiskCache(tmp_path, int(4.5 * entry))
    base = time.time() - 1000
    for i, k in enumerate(keys):
        cache.put(k, bytes([i]) * 1000)
        assert entry_path(cache, k).stat().st_size == entry
        os.utime(entry_path(cache, k), (base + i, base + i))  # explicit recency: no timing flakiness
        assert disk_bytes(tmp_path) <= cache.max_bytes
    paths = {k: entry_path(DiskCache(tmp_path, 1 << 20), k) for k in keys[2:]}
    assert [cache.locate(k) is not None for k in keys] == [False, False, True, True, True, True]
    assert sorted(files(tmp_path)) == sorted(paths.values())
    assert cache.stats()["evictions"] == 2
    assert [cache.get(k) for k in keys[2:]] == [bytes([i]) * 1000 for i in range(2, 6)]


def test_hit_refreshes_recency(tmp_path):
    keys, entry = _six_keys()
    cache = DiskCache(tmp_path, int(4.5 * entry))
    base = time.time() - 1000
    for i, k in enumerate(keys[:4]):
        cache.put(k, bytes([i]) * 1000)
        os.utime(entry_path(cache, k), (base + i, base + i))
    paths = [entry_path(cache, k) for k in keys[:4]]
    assert cache.get_into(keys[0], bytearray(1000))  # the oldest becomes the most recent
    assert paths[0].stat().st_mtime > base + 100
    cache.put(keys[4], b"\4" * 1000)
    assert [p.exists() for p in paths] == [True, False, True, True]
    assert [cache.locate(k) is not None for k in keys[:5]] == [True, False, True, True, True]
    assert cache.get(keys[0]) == b"\0" * 1000


def test_entry_bigger_than_max_is_not_stored(tmp_path):
    cache = DiskCache(tmp_path, 1000)
    small, big = CacheKey("b", "small", 1), CacheKey("b", "big", 1)
    cache.put(small, b"s" * 100)
    os.utime(entry_path(cache, small), (time.time() - 100,) * 2)
    cache.put(big, b"z" * 1000)  # with header and key text it exceeds max_bytes
    assert cache.get(big) is None
    assert cache.get(small) == b"s" * 100  # and storing it did not flush the rest
    assert files(tmp_path) == [entry_path(cache, small)]
    s = cache.stats()
    assert (s["puts"], s["evictions"], s["bytes_written"]) == (1, 0, 100)


def test_stale_temp_files_are_cleaned_by_a_scan_and_clear(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    now = time.time()
    temps = {}
    for name, age in [("stale", 7200), ("young", 10), ("middle", 600)]:
        temps[name] = tmp_path / f".tmp-1-2-{name}"
        temps[name].write_bytes(b"partial")
        os.utime(temps[name], (now - age, now - age))
    cache.put(CacheKey("b", "o", 1), b"data")  # the first put scans
    assert {n for n, p in temps.items() if p.exists()} == {"young", "middle"}
    cache.clear()
    assert cache.get(CacheKey("b", "o", 1)) is None
    assert sorted(p.name for p in files(tmp_path)) == [".tmp-1-2-middle", ".tmp-1-2-young"]


def test_unwritable_directory_counts_put_errors_and_never_raises(tmp_path, monkeypatch, caplog):
    root = tmp_path / "c"
    cache = DiskCache(root, 1 << 20)
    if os.geteuid() == 0:  # root ignores the mode bits: make the rename fail instead
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(os, "replace", refuse)
    else:
        os.chmod(root, 0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="hivedata.loader.disk_cache"):
            cache.put(CacheKey("b", "o", 1), b"x" * 10)
            cache.put(CacheKey("b", "p", 1), b"y" * 10)
        assert cache.get(CacheKey("b", "o", 1)) is None
    finally:
        os.chmod(root, 0o700)
    s = cache.stats()
    assert (s["put_errors"], s["puts"], s["bytes_written"]) == (2, 0, 0)
    assert len([r for r in caplog.records if r.name == "hivedata.loader.disk_cache"]) == 1  # logged once
    assert files(root) == []  # no temp file left behind


def test_threads_share_one_cache(tmp_path):
    cache = DiskCache(tmp_path, 40_000)
    bad, gets = [], [0] * 4

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        for _ in range(600):  # a count, not a deadline: a loaded machine does the same work, only slower
            i = int(rng.integers(60))
            if rng.random() < 0.5:
                cache.put(key_of(i), payload(i))
            else:
                gets[t] += 1
                got = cache.get(key_of(i))
                if got is not None and got != payload(i):
                    bad.append(i)

    run_threads(work, 4)
    s = cache.stats()
    assert not bad and s["corrupt"] == 0
    assert s["hits"] + s["misses"] == sum(gets) and s["hits"] > 0 and s["evictions"] > 0
    assert disk_bytes(tmp_path) <= cache.max_bytes


N_KEYS, MP_MAX = 120, 48_000


def _hammer(cache: DiskCache, seed: int, ops: int, results) -> None:
    """One process: random puts, get_into and get of shared keys; every hit must be the key's payload."""
    rng = np.random.default_rng(seed)
    mismatches = 0
    for _ in range(ops):
        i = int(rng.integers(N_KEYS))
        key, want, r = key_of(i), payload(i), rng.random()
        if r < 0.4:
            out = np.empty(len(want), np.uint8)
            mismatches += cache.get_into(key, out) and out.tobytes() != want
        elif r < 0.6:
            got = cache.get(key)
            mismatches += got is not None and got != want
        else:
            cache.put(key, want)
    results.put((seed, mismatches, cache.stats()))


def test_processes_share_a_directory_without_torn_reads(tmp_path):
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method")
    ctx = mp.get_context("fork")
    cache = DiskCache(tmp_path, MP_MAX)  # made before the fork: the children inherit it
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(cache, seed, 1500, results)) for seed in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(m for _, m, _ in got) == 0
    total = {name: sum(s[name] for _, _, s in got) for name in got[0][2]}
    assert total["corrupt"] == 0  # a torn file would fail its checksum
    assert total["hits"] > 50 and total["puts"] > 50 and total["evictions"] > 0
    assert not [p for p in files(tmp_path) if p.name.startswith(".tmp")]
    largest = max(run_size(key_of(i), len(payload(i))) for i in range(N_KEYS))  # a put writes a run of one entry
    all_keys = sum(run_size(key_of(i), len(payload(i))) for i in range(N_KEYS))
    bound = MP_MAX + len(procs) * (MP_MAX // 16 + largest)  # the overshoot documented on DiskCache
    assert disk_bytes(tmp_path) <= bound < all_keys


def test_max_bytes_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        DiskCache(tmp_path, 0)


def test_default_data_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HIVEDATA_CACHE", str(tmp_path))
    assert default_data_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("HIVEDATA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_cache_dir() == tmp_path / "home" / ".cache" / "hivedata" / "data"


@pytest.mark.parametrize("text, size", [("20GB", 20 * 10**9), ("512MiB", 512 << 20), ("1.5G", 1_500_000_000),
                                        (1000, 1000), ("1000", 1000), (" 2 KiB ", 2048), ("0", 0)])
def test_parse_cache_size(text, size):
    assert parse_cache_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-1", "fooMB", "infGB", "1.5", -5, 1.5, True, None])
def test_parse_cache_size_rejects(text):
    with pytest.raises(ValueError, match="cache size") as err:
        parse_cache_size(text)
    assert repr(text) in str(err.value)
