"""Coalesced ranged reads, block shuffle and the disk cache against a real fake-gcs-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hivedata.loader.loader import Loader
from hivedata.loader.run_format import RECORD
from hivedata.tools.pack import pack
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset
from tests.support.fault_proxy import FaultProxy

SPEC = SyntheticSpec(num_classes=4, train_per_class=30, val_per_class=0, seed=21, min_short_side=48,
                     max_short_side=80, special_fraction=0.0)
N = 4 * 30
EVAL = dict(train=False, image_size=32, backend="native", workers=1, drop_last=False)
BLOCK = dict(shuffle="block", block_size=16, coalesce_gap=4096)


@pytest.fixture(scope="module")
def data(gcs_emulator) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(bucket, every sample's eval-transformed image and label read per object, in the shard index's order)."""
    name = "block-reads"
    gcs_emulator.create_bucket(name)
    upload_dataset(name, SPEC, train_prefix="train", val_prefix="val", progress=False)
    packed = pack(f"gs://{name}/train", f"gs://{name}/packed", shard_size=128 * 1024, progress=False,
                  log=lambda s: None)  # the default, random order
    with Loader(f"gs://{name}/train", batch_size=N, shuffle=False, **EVAL) as ref:
        (images, labels), = list(ref)
        assert ref.stats()["gets"] == N and ref.stats()["skipped"] == 0
        position = {ref.index.name(i)[len("train/"):].rsplit(".", 1)[0]: i for i in range(N)}
    where = torch.tensor([position[packed.key(j)] for j in range(N)])  # shard sample j = listed sample where[j]
    assert sorted(where.tolist()) == list(range(N)) and where.tolist() != list(range(N))
    LISTED[name] = (images, labels)
    return name, images[where], labels[where]


LISTED: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # bucket -> images, labels in the listing's order


def shards(name: str) -> str:
    return f"gs://{name}/packed/train.index.npz"


def check_epoch(loader: Loader, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Reads one epoch and checks every batch against the per-object reference; returns the GETs made."""
    before = loader.stats().get("gets", 0)
    loader.set_epoch(epoch)
    want = list(loader.sampler.batches(epoch))
    got = list(loader)
    assert len(got) == len(want)
    for (x, y), ind in zip(got, want, strict=True):
        assert torch.equal(y, labels[ind]) and torch.equal(x, images[ind])
    return loader.stats()["gets"] - before


def test_block_shuffle_reads_the_same_samples_with_far_fewer_gets(data):
    name, images, labels = data
    with Loader(shards(name), batch_size=16, seed=5, **BLOCK, **EVAL) as blk:
        gets = check_epoch(blk, 0, images, labels)
        assert len(set(blk.sampler.batches(0).__next__().tolist())) == 16
        assert sorted(np.concatenate(list(blk.sampler.batches(1))).tolist()) == list(range(N))
    with Loader(shards(name), batch_size=16, seed=5, shuffle=True, coalesce_gap=4096, **EVAL) as glob:
        global_gets = check_epoch(glob, 0, images, labels)
    assert gets * 4 <= N, (gets, N)  # per object: N GETs
    assert gets * 2 <= global_gets, (gets, global_gets)


def test_block_shuffle_resumes_exactly_and_refuses_another_order(data):
    name, _, _ = data
    kw = dict(batch_size=8, train=True, image_size=32, backend="native", seed=3, workers=1, **BLOCK)
    with Loader(shards(name), **kw) as full:
        want = [(x, y) for x, y in full]
    with Loader(shards(name), **kw) as part:
        it = iter(part)
        next(it), next(it), next(it)
        state = part.state_dict()
        it.close()
    assert state["order"].startswith("block:16:8:")
    with Loader(shards(name), **kw) as resumed:
        resumed.load_state_dict(state)
        rest = list(resumed)
    assert len(rest) == len(want) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, want[3:], strict=True))
    with Loader(shards(name), **(kw | dict(shuffle=True))) as other, pytest.raises(ValueError, match="order"):
        other.load_state_dict(state)


def test_coalesced_reads_survive_connection_resets(data, gcs_emulator):
    name, images, labels = data
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("reset_mid_body", count=4, fraction=0.5, match="packed/train-")
        with Loader(shards(name), batch_size=16, seed=1, endpoint=proxy.url, **BLOCK, **EVAL) as blk:
            check_epoch(blk, 0, images, labels)
            assert blk.stats()["retries"] >= 4
        assert proxy.stats["reset_mid_body"] == 4


def test_a_failed_coalesced_read_names_the_shard_and_replaces_only_its_samples(data, gcs_emulator):
    name, _, _ = data
    with Loader(shards(name), batch_size=40, **BLOCK, **EVAL) as probe:
        victim = probe.index.shard_names[1]
        in_victim = int(np.count_nonzero(probe.index.shard == 1))
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("status", status=403, count=10_000, match=victim)
        with Loader(shards(name), batch_size=40, endpoint=proxy.url, max_missing=in_victim, **BLOCK,
                    **EVAL) as budgeted:
            got = sum(len(y) for _, y in budgeted)
            st = budgeted.stats()
        assert got == N and st["missing"] == in_victim and st["skipped"] == 0
        assert st["fetch_failed"] < st["missing"]  # one refused GET covered several samples (not split: a 403)
        assert st["splits"] == 0
        assert all(victim in s for s in st["missing_names"])
        with Loader(shards(name), batch_size=40, endpoint=proxy.url, **BLOCK,
                    **EVAL) as strict, pytest.raises(PermissionError, match=victim):
            list(strict)  # on_error="skip" (the default) does not cover a refused read


def test_a_coalesced_read_past_the_end_is_split_and_only_the_bad_member_is_lost(data):
    name, images, labels = data
    with Loader(shards(name), batch_size=N, shuffle=False, **EVAL) as probe:
        index = probe.index
    last = int(np.flatnonzero(index.shard == 0)[-1])  # the last member of shard 0, read with its neighbours
    index.sizes = index.sizes.copy()
    index.sizes[last] = int(index.shard_sizes[0]) - int(index.starts[last]) + 4096  # runs past the shard's end
    with Loader(index, batch_size=N, shuffle=False, max_missing=1, **EVAL) as ld:
        (x, y), = list(ld)
        st = ld.stats()
    assert st["splits"] >= 1 and st["missing"] == 1 and st["skipped"] == 0
    assert index.shard_names[0] in st["missing_names"][0]
    good = [i for i in range(N) if i != last]
    assert torch.equal(x[good], images[good]) and torch.equal(y[good], labels[good])


# -- the disk cache ----------------------------------------------------------------------------------------

def cache_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.parametrize("source", ["shards", "objects"])
def test_second_epoch_comes_from_the_disk_cache(data, tmp_path, source):
    name, images, labels = data
    if source == "objects":
        images, labels = LISTED[name]
    url = shards(name) if source == "shards" else f"gs://{name}/train"
    kw = dict(BLOCK) if source == "shards" else dict(shuffle=True)
    with Loader(url, batch_size=16, cache_dir=tmp_path, **kw, **EVAL) as cached:
        first = check_epoch(cached, 0, images, labels)
        assert first > 0 and cached.stats()["cache"]["misses"] == N and cached.stats()["cache"]["puts"] == N
        assert check_epoch(cached, 1, images, labels) == 0
        assert cached.stats()["cache"]["hits"] == N
    with Loader(url, batch_size=16, cache_dir=tmp_path, **kw, **EVAL) as again:  # a later run, same machine
        assert check_epoch(again, 2, images, labels) == 0


def test_a_corrupt_cache_entry_is_refetched(data, tmp_path):
    name, images, labels = data
    with Loader(shards(name), batch_size=16, cache_dir=tmp_path, **BLOCK, **EVAL) as cached:
        check_epoch(cached, 0, images, labels)
        key = cached.source.cache_key(7)  # the cache keeps many entries per run file: find sample 7's
        victim, offset = cached.cache.disk.locate(key)
        raw = bytearray(victim.read_bytes())
        raw[offset + RECORD.size + len(key.text().encode()) + 10] ^= 0xFF  # a flipped payload byte
        victim.write_bytes(bytes(raw))
        assert check_epoch(cached, 1, images, labels) == 1
        assert cached.stats()["cache"]["corrupt"] == 1


def test_cache_stays_within_its_size(data, tmp_path):
    name, images, labels = data
    with Loader(shards(name), batch_size=16, **BLOCK, **EVAL) as probe:
        total = int(probe.index.sizes.sum())
    limit = total // 3
    with Loader(shards(name), batch_size=16, cache_dir=tmp_path, cache_size=limit, **BLOCK, **EVAL) as cached:
        check_epoch(cached, 0, images, labels)
        gets = check_epoch(cached, 1, images, labels)
        st = cached.stats()["cache"]
    on_disk = sum(p.stat().st_size for p in cache_files(tmp_path))
    assert on_disk <= limit * 1.1
    assert st["evictions"] > 0 and st["hits"] > 0 and gets > 0


def test_two_processes_share_one_cache(data, gcs_emulator, tmp_path):
    name, images, labels = data
    script = textwrap.dedent(f"""
        import hashlib, json
        from hivedata.loader.loader import Loader
        with Loader({shards(name)!r}, batch_size=16, cache_dir={str(tmp_path)!r}, shuffle="block", block_size=16,
                    train=False, image_size=32, backend="native", workers=1, drop_last=False,
                    endpoint={gcs_emulator.url!r}) as ld:
            for epoch in range(3):
                ld.set_epoch(epoch)
                for x, y in ld:
                    print(hashlib.sha256(x.numpy().tobytes()).hexdigest(), y.tolist(), flush=True)
            print("STATS", json.dumps(ld.stats()["cache"] | {{"gets": ld.stats()["gets"]}}))
    """)
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    import hashlib

    with Loader(shards(name), batch_size=16, shuffle="block", block_size=16, **EVAL) as ref:
        want = []
        for epoch in range(3):
            for ind in ref.sampler.batches(epoch):
                want.append(f"{hashlib.sha256(images[ind].numpy().tobytes()).hexdigest()} {labels[ind].tolist()}")
    for out in outs:
        lines = out.splitlines()
        assert lines[:-1] == want
        st = json.loads(lines[-1].removeprefix("STATS "))
        assert st["corrupt"] == 0 and st["hits"] >= 2 * N and st["gets"] < 2 * N  # epochs 2 and 3 from the cache


def test_objects_without_a_generation_are_not_cached(data, tmp_path):
    name, images, labels = data
    with Loader(shards(name), batch_size=16, **BLOCK, **EVAL) as probe:
        index = probe.index
    index.shard_generations = np.zeros_like(index.shard_generations)  # e.g. an index of a local copy
    with Loader(index, batch_size=16, cache_dir=tmp_path, **BLOCK, **EVAL) as ld:
        check_epoch(ld, 0, images, labels)
        assert check_epoch(ld, 1, images, labels) > 0
        assert ld.stats()["cache"]["puts"] == 0 and cache_files(tmp_path) == []
