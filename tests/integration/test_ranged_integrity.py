"""crc32c of packed shard members against a real fake-gcs-server behind the FaultProxy: a corrupted ranged read
is read again or fails named, is never decoded or cached as is; WebDataset shards read whole at indexing are
verified too, shards without crcs are read unverified."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from hivedata import _native
from hivedata.errors import ChecksumError
from hivedata.gcs.fetch import Fetcher
from hivedata.loader.disk_cache import DiskCache
from hivedata.loader.loader import Loader
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.shards import load_shard_index
from hivedata.sources.webdataset import index_existing_shards
from hivedata.tools.pack import pack
from hivedata.tools.synthetic import SyntheticSpec
from tests.support.buckets import dataset_bucket
from tests.support.fault_proxy import FaultProxy

SPEC = SyntheticSpec(num_classes=3, train_per_class=10, val_per_class=0, seed=5, min_short_side=48,
                     max_short_side=96, special_fraction=0.0)
N = 30
EVAL = dict(train=False, image_size=32, backend="native", workers=1, drop_last=False, shuffle=False)


@pytest.fixture(scope="module")
def packed(gcs_emulator) -> tuple[str, str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(bucket, index url, the clean run's batches of 8 in index order)."""
    name = dataset_bucket(gcs_emulator, "ranged-integrity", SPEC)
    pack(f"gs://{name}/train", f"gs://{name}/packed", shard_size=64 * 1024, progress=False, log=lambda s: None,
         order="sorted")
    url = f"gs://{name}/packed/train.index.npz"
    with Loader(url, batch_size=8, **EVAL) as clean:
        batches = [(x.clone(), y.clone()) for x, y in clean]
        st = clean.stats()
    assert (st["verified"], st["unverified"], st["checksum_retries"], st["skipped"]) == (N, 0, 0, 0)
    assert st["gets"] < N  # neighbours share GETs: the spans hold several members
    return name, url, batches


def victim(url: str) -> tuple[str, int]:
    """The second shard's object name and its first sample (the first member of every GET of that shard here)."""
    index = load_shard_index(url)
    return index.shard_names[1], int(np.flatnonzero(index.shard == 1)[0])


def same(a: list, b: list, skip: set[int] = frozenset(), batch: int = 8) -> bool:
    """Batches equal, except at the sample positions in `skip`."""
    if len(a) != len(b):
        return False
    for k, ((xa, ya), (xb, yb)) in enumerate(zip(a, b, strict=True)):
        keep = [j for j in range(len(ya)) if k * batch + j not in skip]
        if not (torch.equal(xa[keep], xb[keep]) and torch.equal(ya[keep], yb[keep])):
            return False
    return True


def test_pack_records_every_members_crc32c(packed):
    name, url, _ = packed
    index = load_shard_index(url)
    assert index.crcs is not None and len(index.crcs) == N and NO_CRC not in index.crcs.tolist()
    with Fetcher(name) as f:
        got = [_native.crc32c(f.read(index.name(i), int(index.starts[i]), int(index.sizes[i]))) for i in range(N)]
    assert got == index.crcs.tolist()
    again = pack(f"gs://{name}/train", f"gs://{name}/packed", shard_size=64 * 1024, progress=False,
                 log=lambda s: None, order="sorted")  # every shard there: their crcs are read back
    assert again.crcs.tolist() == index.crcs.tolist()


def test_one_corrupted_ranged_read_is_read_again_and_the_batch_is_identical(packed, gcs_emulator, tmp_path):
    name, url, clean = packed
    shard, _ = victim(url)
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("corrupt_body", count=1, match=shard)
        with Loader(url, batch_size=8, endpoint=proxy.url, cache_dir=tmp_path, **EVAL) as ld:
            first = [(x.clone(), y.clone()) for x, y in ld]
            st = ld.stats()
            assert proxy.stats["corrupt_body"] == 1
            assert same(first, clean)
            assert (st["verified"], st["checksum_retries"], st["checksum_errors"], st["skipped"]) == (N, 1, 0, 0)
            assert st["cache"]["puts"] == N
            gets = st["gets"]
            second = [(x.clone(), y.clone()) for x, y in ld]  # every sample from the cache: what was stored
            assert ld.stats()["gets"] == gets and ld.stats()["cache"]["hits"] == N
            assert same(second, clean)


def test_persistent_corruption_fails_naming_the_sample_and_is_never_cached(packed, gcs_emulator, tmp_path):
    name, url, clean = packed
    shard, first = victim(url)
    key = load_shard_index(url).key(first)
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("corrupt_body", count=10_000, match=shard)
        with Loader(url, batch_size=8, endpoint=proxy.url, on_error="raise", **EVAL) as strict:
            with pytest.raises(ChecksumError, match=re.escape(f"gs://{name}/{shard}#{key}: crc32c mismatch")) as e:
                list(strict)
            assert "read 3 times" in str(e.value) and e.value.object == shard
        # an unreadable sample is an outage, not a bad image: only a max_missing budget lets the epoch go on
        with Loader(url, batch_size=8, endpoint=proxy.url, cache_dir=tmp_path, max_missing=N, **EVAL) as skip:
            got = [(x.clone(), y.clone()) for x, y in skip]
            st = skip.stats()
            bad = st["checksum_errors"]
            assert bad >= 1 and st["missing"] == bad and st["skipped"] == 0 and st["checksum_retries"] == 2 * bad
            assert st["verified"] == N - bad and st["cache"]["puts"] == N - bad  # the failed ones are not cached
            assert all(shard in s and "crc32c mismatch" in s for s in st["missing_names"])
            assert f"gs://{name}/{shard}#{key}" in st["missing_names"][0]
            skipped = {i for i in range(N) if any(f"#{load_shard_index(url).key(i)}:" in s
                                                  for s in st["missing_names"])}
            assert first in skipped and len(skipped) == bad
            assert same(got, clean, skip=skipped)
            proxy.clear_faults()
            after = [(x.clone(), y.clone()) for x, y in skip]  # the failed samples are fetched (none cached)
            assert skip.stats()["cache"]["hits"] == N - bad and skip.stats()["cache"]["puts"] == N
            assert same(after, clean)


def test_coalesced_spans_are_checked_member_by_member(packed):
    _, url, _ = packed
    index = load_shard_index(url)
    kw = dict(batch_size=16, shuffle="block", block_size=16, coalesce_gap=4096, train=False, image_size=32,
              backend="native", workers=1, drop_last=False)
    with Loader(index, **kw) as ld:
        clean = [(x.clone(), y.clone()) for x, y in ld]
        st = ld.stats()
    assert st["gets"] < N / 2 and st["verified"] == N  # a few GETs, every member checked
    batch = next(b for b in ld.sampler.batches(0) if max(len(s.members) for s in index.plan(b, max_gap=4096).spans) > 2)
    span = max(index.plan(batch, max_gap=4096).spans, key=lambda s: len(s.members))
    middle = int(sorted(batch[list(span.members)], key=lambda i: index.starts[i])[1])  # inside its GET
    index.crcs = index.crcs.copy()
    index.crcs[middle] ^= 1  # the index and the bytes disagree about this member only
    with Loader(index, max_missing=1, **kw) as ld:  # an unreadable member is an outage: budgeted here
        got = [(x.clone(), y.clone()) for x, y in ld]
        bad = ld.stats()
    assert bad["checksum_errors"] == 1 and bad["missing"] == 1 and bad["verified"] == N - 1
    assert bad["checksum_retries"] == 2 and bad["gets"] == st["gets"] + 2  # re-read alone, twice
    assert f"#{index.key(middle)}: " in bad["missing_names"][0]
    at = int(index.starts[middle])
    assert f"bytes {at}..{at + int(index.sizes[middle])}" in bad["missing_names"][0]
    assert len(got) == len(clean) and sum(len(y) for _, y in got) == N


def test_a_cached_entry_that_misses_its_crc_is_fetched_again(packed, tmp_path):
    _, url, clean = packed
    index = load_shard_index(url)
    wrong = bytearray(b"\xff\xd8" + bytes(int(index.sizes[3]) - 2))  # intact as a cache entry, wrong as sample 3
    DiskCache(tmp_path, 1 << 30).put(index.cache_key(3), bytes(wrong))
    with Loader(url, batch_size=8, cache_dir=tmp_path, **EVAL) as ld:
        got = [(x.clone(), y.clone()) for x, y in ld]
        st = ld.stats()
        assert st["cache"]["crc_mismatches"] == 1 and st["cache"]["hits"] == 1 and st["skipped"] == 0
        assert same(got, clean)
        ld.cache.flush()
    with Fetcher(index.bucket) as f:
        fetched = f.read(index.name(3), int(index.starts[3]), int(index.sizes[3]))
    assert DiskCache(tmp_path, 1 << 30).get(index.cache_key(3)) == fetched  # rewritten with the fetched bytes


def test_webdataset_shards_read_whole_at_indexing_are_verified(packed):
    """Walked as anyone's tars: each shard is read whole in windows and matched against GCS's crc32c, so the
    samples get the same crcs pack recorded, and the loader checks them."""
    name, url, clean = packed
    packed_index = load_shard_index(url)
    with Loader(f"gs://{name}/packed/*.tar", batch_size=8, **EVAL) as ld:
        by_key = {ld.index.key(i): int(ld.index.crcs[i]) for i in range(len(ld.index))}
        got = [(x.clone(), y.clone()) for x, y in ld]
        st = ld.stats()
    assert by_key == {packed_index.key(i): int(packed_index.crcs[i]) for i in range(len(packed_index))}
    assert (st["verified"], st["unverified"], st["skipped"]) == (N, 0, 0)
    assert same(got, clean)


def test_webdataset_shards_walked_member_by_member_are_read_unverified(packed):
    name, _, clean = packed
    index = index_existing_shards(name, "packed/", window=None)  # no member's bytes read: no crcs
    assert index.crcs is None
    with Loader(index, batch_size=8, **EVAL) as ld:
        got = [(x.clone(), y.clone()) for x, y in ld]
        st = ld.stats()
    assert (st["verified"], st["unverified"], st["skipped"]) == (0, N, 0)
    assert same(got, clean)


def test_reads_outside_the_pipeline_read_a_corrupted_member_again_or_fail_named(packed, gcs_emulator):
    name, url, clean = packed
    shard, first = victim(url)
    key = load_shard_index(url).key(first)
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("corrupt_body", count=1, match=shard)
        with Loader(url, batch_size=8, endpoint=proxy.url, in_memory=True, **EVAL) as ld:  # one plan, Fetcher reads
            assert proxy.stats["corrupt_body"] == 1
            assert same([(x.clone(), y.clone()) for x, y in ld], clean)
            assert ld.stats()["verified"] == N  # and checked again in memory
        proxy.add_fault("corrupt_body", count=10_000, match=shard)
        with pytest.raises(ChecksumError, match=re.escape(f"gs://{name}/{shard}#{key}: crc32c mismatch")):
            Loader(url, batch_size=8, endpoint=proxy.url, in_memory=True, **EVAL)
