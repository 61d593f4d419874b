"""The shard index shared through the bucket, against a real fake-gcs-server (HTTP counted by the FaultProxy):
written by the first peer, read instead of the shards by the next, invalidated by a rewritten shard, ignored
with a warning when damaged, written conditionally, and a peer that may not write goes on."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import urllib.request
from urllib.parse import quote

import numpy as np
import pytest

from hivedata.gcs.auth import token_source
from hivedata.gcs.small_objects import SmallObjects
from hivedata.sources import shared_index
from hivedata.sources.shards import ShardIndex
from hivedata.sources.shared_index import SHARED_DIR, shared_index_name, write_shared_index
from hivedata.sources.webdataset import index_existing_shards, load_existing_shards
from tests.support.fault_proxy import FaultProxy
from tests.support.tars import webdataset_tar

SHARDS = 4
PER_SHARD = 6
LOG = "hivedata.sources.shared_index"


def shard_samples(s: int, label_offset: int = 0) -> list[tuple[str, bytes, int]]:
    rng = np.random.default_rng(s)
    return [(f"s{s}_{j:03d}", rng.bytes(2000 + 700 * j), (s + j + label_offset) % 3) for j in range(PER_SHARD)]


@pytest.fixture
def shards(emulator, bucket) -> str:
    for s in range(SHARDS):
        emulator.upload(bucket, f"wds/shard-{s:06d}.tar", webdataset_tar(shard_samples(s)))
    return bucket


@pytest.fixture
def proxy(emulator):
    with FaultProxy(emulator.url) as p:
        yield p


@pytest.fixture(autouse=True)
def _forget_warnings(monkeypatch):
    monkeypatch.setattr(shared_index, "_warned", set())  # "warn once" is per process: per test here


class Peer:
    """One peer: its own local cache directory; counts its HTTP requests through the proxy."""

    def __init__(self, proxy: FaultProxy, bucket: str, cache_dir) -> None:
        self.proxy, self.bucket, self.cache_dir = proxy, bucket, cache_dir
        self.requests = 0

    def load(self, **kw) -> ShardIndex:
        before = self.proxy.stats["requests"]
        index = load_existing_shards(f"gs://{self.bucket}/wds", endpoint=self.proxy.url, cache_dir=self.cache_dir,
                                     **kw)
        self.requests = self.proxy.stats["requests"] - before
        return index


def same(a: ShardIndex, b: ShardIndex) -> None:
    assert a.shard_names == b.shard_names and a.classes == b.classes
    for field in ("shard_sizes", "shard_generations", "shard", "starts", "sizes", "labels"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist(), field
    assert [a.key(i) for i in range(len(a))] == [b.key(i) for i in range(len(b))]
    assert (a.crcs is None) == (b.crcs is None) and (a.crcs is None or a.crcs.tolist() == b.crcs.tolist())


def objects(emulator) -> SmallObjects:
    return SmallObjects(emulator.url, token_source("anonymous", emulator.url))


def shared_object(emulator, bucket: str, classes=None) -> tuple[bytes, int] | None:
    with objects(emulator) as o:
        return o.download(bucket, shared_index_name("wds/", classes))


def test_name_is_beside_the_shards_and_never_a_shard():
    name = shared_index_name("data/wds/", None)
    assert name.startswith(f"data/wds/{SHARED_DIR}webdataset-") and name.endswith(".npz")
    assert shared_index_name("data/wds/", ["a", "b"]) != name != shared_index_name("data/other/", None)
    assert shared_index_name("", None).startswith(SHARED_DIR)


def test_the_second_peer_reads_the_shared_index_not_the_shards(emulator, shards, proxy, tmp_path):
    first = Peer(proxy, shards, tmp_path / "a").load()
    got = shared_object(emulator, shards)
    assert got is not None
    same(first, ShardIndex.from_bytes(got[0]))
    assert first.crcs is not None  # read whole and checked against GCS's crc32c: verified samples
    second = Peer(proxy, shards, tmp_path / "b")
    index = second.load()
    same(first, index)
    assert index.endpoint == proxy.url
    assert second.requests == 2  # the listing and the shared index: no shard read, nothing written
    assert shared_object(emulator, shards)[1] == got[1]
    same(first, index_existing_shards(shards, "wds/"))


def test_a_rewritten_shard_alone_is_read_again_and_the_shared_index_replaced(emulator, shards, proxy, tmp_path):
    first = Peer(proxy, shards, tmp_path / "a").load()
    generation = shared_object(emulator, shards)[1]
    emulator.upload(shards, "wds/shard-000002.tar", webdataset_tar(shard_samples(2, label_offset=1)))
    later = Peer(proxy, shards, tmp_path / "b")
    index = later.load()
    assert later.requests == 2 + 2 + 1  # listing, shared index; one shard GET and its crc32c; the new index
    assert index.shard_generations.tolist() != first.shard_generations.tolist()
    same(index, index_existing_shards(shards, "wds/"))
    data, replaced = shared_object(emulator, shards)
    assert replaced != generation
    same(index, ShardIndex.from_bytes(data))
    third = Peer(proxy, shards, tmp_path / "c")
    same(index, third.load())
    assert third.requests == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other prefix", "sample outside its shard"])
def test_a_damaged_shared_index_is_ignored_with_a_warning_and_replaced(emulator, shards, proxy, tmp_path, caplog,
                                                                        damage):
    good = Peer(proxy, shards, tmp_path / "a").load()
    name = shared_index_name("wds/", None)
    data = shared_object(emulator, shards)[0]
    if damage == "garbage":
        bad = os.urandom(300)
    elif damage == "truncated":
        bad = data[:len(data) // 2]
    elif damage == "other prefix":
        bad = dataclasses.replace(good, prefix="elsewhere/").to_bytes()
    else:
        starts = good.starts.copy()
        starts[3] = good.shard_sizes[good.shard[3]] - 10
        bad = dataclasses.replace(good, starts=starts).to_bytes()
    emulator.upload(shards, name, bad)
    peer = Peer(proxy, shards, tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger=LOG):
        index = peer.load()
    assert any("ignoring the shared shard index" in r.getMessage() and name in r.getMessage() for r in caplog.records)
    same(good, index)
    assert peer.requests == 2 + 2 * SHARDS + 1  # every shard read again, then the index replaced
    same(good, ShardIndex.from_bytes(shared_object(emulator, shards)[0]))


def test_a_read_only_peer_warns_once_and_goes_on(emulator, shards, proxy, tmp_path, caplog):
    proxy.add_fault("status", count=100, status=403, match="/upload/")
    with caplog.at_level(logging.WARNING, logger=LOG):
        one = Peer(proxy, shards, tmp_path / "a").load()
        two = Peer(proxy, shards, tmp_path / "b").load()
    assert proxy.stats.get("status_403", 0) == 2  # both tried to write
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot write" in r.getMessage()]
    assert len(warnings) == 1 and "read-only" in warnings[0].getMessage()
    assert shared_object(emulator, shards) is None
    same(one, two)
    same(one, index_existing_shards(shards, "wds/"))
    proxy.clear_faults()


def test_writes_are_conditional(emulator, shards, tmp_path, caplog):
    index = load_existing_shards(f"gs://{shards}/wds", cache_dir=tmp_path, shared=False)
    with objects(emulator) as o:
        assert write_shared_index(o, index, None, replaces=0)
        data, generation = o.download(shards, shared_index_name("wds/", None))
        other = dataclasses.replace(index, labels=(index.labels + 1) % 3)
        with caplog.at_level(logging.INFO, logger=LOG):
            assert not write_shared_index(o, other, None, replaces=0)  # a peer that saw no index: too late
        assert any("another peer wrote" in r.getMessage() for r in caplog.records)
        assert write_shared_index(o, other, None, replaces=generation)  # the generation it read: replaces it
        _, newer = o.download(shards, shared_index_name("wds/", None))
        assert not write_shared_index(o, index, None, replaces=generation)  # a stale peer cannot go back
        assert o.download(shards, shared_index_name("wds/", None))[1] == newer


def test_peers_at_once_agree(emulator, shards, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda k: load_existing_shards(f"gs://{shards}/wds", cache_dir=tmp_path / str(k)),
                            range(3)))
    for index in got[1:]:
        same(got[0], index)
    same(got[0], ShardIndex.from_bytes(shared_object(emulator, shards)[0]))


def test_class_maps_have_their_own_shared_index(emulator, shards, tmp_path):
    plain = load_existing_shards(f"gs://{shards}/wds", cache_dir=tmp_path / "a")
    named = load_existing_shards(f"gs://{shards}/wds", cache_dir=tmp_path / "b", classes=["x", "y", "z"])
    assert named.classes == ["x", "y", "z"] and plain.classes == ["0", "1", "2"]
    assert shared_object(emulator, shards) is not None and shared_object(emulator, shards, ["x", "y", "z"]) is not None


@pytest.mark.parametrize("how", ["shared=False", "HIVEDATA_SHARED_INDEX=0"])
def test_turned_off_it_is_neither_read_nor_written(emulator, shards, proxy, tmp_path, monkeypatch, how):
    peer = Peer(proxy, shards, tmp_path / "a")
    if how == "shared=False":
        peer.load(shared=False)
    else:
        monkeypatch.setenv("HIVEDATA_SHARED_INDEX", "0")
        peer.load()
    assert peer.requests == 1 + 2 * SHARDS and shared_object(emulator, shards) is None


def test_the_shared_index_is_not_a_shard(emulator, shards, tmp_path):
    load_existing_shards(f"gs://{shards}/wds", cache_dir=tmp_path / "a")
    url = f"{emulator.url}/storage/v1/b/{shards}/o?prefix={quote('wds/')}"
    with urllib.request.urlopen(url, timeout=10) as r:
        names = [o["name"] for o in json.load(r)["items"]]
    assert any(SHARED_DIR in n for n in names)
    assert len(index_existing_shards(shards, "wds/").shard_names) == SHARDS
