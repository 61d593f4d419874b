"""load_existing_shards against a real fake-gcs-server: the local cache, incremental re-walks, corrupt caches.

These tests are about the local cache, so they pass shared=False (no index in the bucket);
test_shared_shard_index.py covers the shared one."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from hivedata.gcs.fetch import Fetcher
from hivedata.sources.shards import ShardIndex
from hivedata.sources.webdataset import index_existing_shards, load_existing_shards, shard_cache_path


def make_shard(samples: list[tuple[str, bytes, int]]) -> bytes:
    """A WebDataset tar: <key>.jpg and <key>.cls per (key, image bytes, label)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for key, data, label in samples:
            for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def shard_samples(s: int, n: int = 3, label_offset: int = 0) -> list[tuple[str, bytes, int]]:
    rng = np.random.default_rng(s)
    return [(f"s{s}_{j:03d}", rng.bytes(700 + 300 * j), (s + j + label_offset) % 4) for j in range(n)]


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Object names of every request through Fetcher.fetch (the shard readers' ranged GETs), still over real
    HTTP."""
    seen: list[str] = []
    real = Fetcher.fetch

    def counting(self, requests, **kw):
        def named(rs):
            for r in rs:
                seen.append(r if isinstance(r, str) else r.object if hasattr(r, "object") else r[0])
                yield r
        return real(self, named(requests), **kw)

    monkeypatch.setattr(Fetcher, "fetch", counting)
    return seen


@pytest.fixture
def shards(emulator, bucket) -> dict[str, list[tuple[str, bytes, int]]]:
    """Three shards under gs://bucket/wds/ (numbers 0, 2, 4: room to add one in between)."""
    out = {}
    for s in (0, 2, 4):
        name = f"wds/shard-{s:06d}.tar"
        out[name] = shard_samples(s)
        emulator.upload(bucket, name, make_shard(out[name]))
    emulator.upload(bucket, "wds/README.txt", b"not a shard")
    return out


def same(a: ShardIndex, b: ShardIndex) -> None:
    assert a.shard_names == b.shard_names and a.classes == b.classes
    for field in ("shard_sizes", "shard_generations", "shard", "starts", "sizes", "labels"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist(), field
    assert [a.key(i) for i in range(len(a))] == [b.key(i) for i in range(len(b))]


def check_content(index: ShardIndex, bucket: str, shards: dict[str, list[tuple[str, bytes, int]]]) -> None:
    want = {key: (name, data, label) for name, samples in shards.items() for key, data, label in samples}
    assert sorted(index.key(i) for i in range(len(index))) == sorted(want)
    with Fetcher(bucket) as f:
        for i in range(len(index)):
            name, data, label = want[index.key(i)]
            assert index.name(i) == name and int(index.labels[i]) == label
            assert f.read(index.name(i), int(index.starts[i]), int(index.sizes[i])) == data


def test_second_call_reads_no_tar_header(bucket, shards, reads, tmp_path):
    url = f"gs://{bucket}/wds"
    first = load_existing_shards(url, shared=False, cache_dir=tmp_path, workers=2)
    assert set(reads) == set(shards)
    path = shard_cache_path(f"{url}/", cache_dir=tmp_path)
    assert path.parent == tmp_path and path.exists()
    check_content(first, bucket, shards)
    same(first, index_existing_shards(bucket, "wds/", workers=2))
    reads.clear()
    second = load_existing_shards(url + "/", shared=False, cache_dir=tmp_path)
    assert reads == []
    same(first, second)
    assert second.url == f"gs://{bucket}/wds/" and second.endpoint == first.endpoint


def test_a_rewritten_shard_alone_is_walked_again(emulator, bucket, shards, reads, tmp_path):
    url = f"gs://{bucket}/wds"
    first = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    name = "wds/shard-000002.tar"
    shards[name] = shard_samples(2, label_offset=1)  # same keys and sizes, other labels: only the generation says
    emulator.upload(bucket, name, make_shard(shards[name]))
    reads.clear()
    second = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    assert set(reads) == {name}
    assert second.shard_sizes.tolist() == first.shard_sizes.tolist()
    assert second.shard_generations.tolist() != first.shard_generations.tolist()
    check_content(second, bucket, shards)
    same(second, index_existing_shards(bucket, "wds/"))
    reads.clear()
    same(second, load_existing_shards(url, shared=False, cache_dir=tmp_path))
    assert reads == []


def test_added_and_removed_shards_are_picked_up(emulator, bucket, shards, reads, tmp_path):
    url = f"gs://{bucket}/wds"
    load_existing_shards(url, shared=False, cache_dir=tmp_path)
    name = "wds/shard-000001.tar"  # sorts between the first two: later shards are renumbered
    shards[name] = shard_samples(1, n=5)
    emulator.upload(bucket, name, make_shard(shards[name]))
    reads.clear()
    added = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    assert set(reads) == {name}
    assert added.shard_names == sorted(shards) and added.shard.tolist() == [0] * 3 + [1] * 5 + [2] * 3 + [3] * 3
    check_content(added, bucket, shards)
    same(added, index_existing_shards(bucket, "wds/"))

    gone = "wds/shard-000000.tar"
    req = urllib.request.Request(f"{emulator.url}/storage/v1/b/{bucket}/o/{quote(gone, safe='')}", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
    del shards[gone]
    reads.clear()
    removed = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    assert reads == []
    check_content(removed, bucket, shards)
    same(removed, index_existing_shards(bucket, "wds/"))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_cache_is_rebuilt_with_a_warning(bucket, shards, reads, tmp_path, caplog, damage):
    url = f"gs://{bucket}/wds"
    first = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    path = shard_cache_path(url, cache_dir=tmp_path)
    data = path.read_bytes()
    path.write_bytes(os.urandom(256) if damage == "garbage" else data[:len(data) // 2])
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="hivedata.sources.shards"):
        rebuilt = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    assert any("unreadable shard index cache" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    assert set(reads) == set(shards)
    same(first, rebuilt)
    same(first, ShardIndex.load(path))


def test_refresh_walks_every_shard(bucket, shards, reads, tmp_path):
    url = f"gs://{bucket}/wds"
    first = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    reads.clear()
    again = load_existing_shards(url, shared=False, cache_dir=tmp_path, refresh=True)
    assert set(reads) == set(shards)
    same(first, again)


def test_caches_are_per_prefix_and_class_map(emulator, bucket, shards, reads, tmp_path):
    url = f"gs://{bucket}/wds"
    named = load_existing_shards(url, shared=False, cache_dir=tmp_path, classes=["a", "b", "c", "d"])
    plain = load_existing_shards(url, shared=False, cache_dir=tmp_path)
    assert named.classes == ["a", "b", "c", "d"] and plain.classes == ["0", "1", "2", "3"]
    assert named.labels.tolist() == plain.labels.tolist()
    assert shard_cache_path(url, cache_dir=tmp_path, classes=named.classes) != shard_cache_path(url, cache_dir=tmp_path)
    emulator.upload(bucket, "wds2/shard-000000.tar", make_shard(shard_samples(9)))
    reads.clear()
    # gs://bucket/wds means the folder wds/, not wds2/
    same(plain, load_existing_shards(url, shared=False, cache_dir=tmp_path))
    assert reads == []
    other = load_existing_shards(f"gs://{bucket}/wds2", shared=False, cache_dir=tmp_path)
    assert other.shard_names == ["wds2/shard-000000.tar"] and len(other) == 3


def test_no_shards_names_the_prefix(bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"gs://{bucket}/nothing/"):
        load_existing_shards(f"gs://{bucket}/nothing", cache_dir=tmp_path)


def test_default_cache_dir_follows_hivedata_cache(_isolated_cache: Path):
    path = shard_cache_path("gs://b/wds/")
    assert path.parent == _isolated_cache / "index" and path.name.endswith(".shards.npz")
