"""crc32c in shard indexes and read plans, checked by the native pipeline and by Python reads (no network)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hivedata import _native
from hivedata.errors import ChecksumError, DataFormatError
from hivedata.loader.loader import Loader
from hivedata.sources import MemorySource
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.reading import read_samples
from hivedata.sources.shards import ShardIndex
from tests.support.images import jpeg, natural_image

N = 12
OLD_KEYS = ("meta", "bucket", "prefix", "endpoint", "classes", "shard_names", "shard_sizes", "shard_generations",
            "shard", "starts", "sizes", "labels", "keys_blob", "key_offsets")


@pytest.fixture(scope="module")
def samples() -> list[bytes]:
    return [jpeg(natural_image(40 + 4 * (i % 3), 32 + 4 * (i % 4), seed=i)) for i in range(N)]


def _index(crcs=None) -> ShardIndex:
    samples = [(0, 512, 100, 0, "a/0"), (0, 1536, 200, 1, "a/1"), (1, 512, 50, 1, "b/2")]
    return ShardIndex.build("bkt", "p", ["x", "y"], ["p/s-0.tar", "p/s-1.tar"], [4096, 2048], [7, 8], samples,
                            crcs=crcs)


def test_index_round_trip_keeps_each_members_crc():
    index = _index([0xFFFFFFFF, 0, NO_CRC])
    back = ShardIndex.from_bytes(index.to_bytes())
    assert back.crcs.dtype == np.int64 and back.crcs.tolist() == [0xFFFFFFFF, 0, NO_CRC]
    plan = back.plan(np.array([2, 0, 1]))
    assert plan.crcs.tolist() == [NO_CRC, 0xFFFFFFFF, 0]  # in the plan's sample order
    assert plan.name(0) == "gs://bkt/p/s-1.tar#b/2" and plan.name(2) == "gs://bkt/p/s-0.tar#a/1"


def test_an_index_written_before_crcs_loads_with_every_member_unverified():
    new = np.load(io.BytesIO(_index([1, 2, 3]).to_bytes()))
    buf = io.BytesIO()
    np.savez(buf, **{k: new[k] for k in OLD_KEYS})  # exactly the keys an older pack wrote
    old = ShardIndex.from_bytes(buf.getvalue(), what="gs://bkt/p/old.index.npz")
    assert old.crcs is None and len(old) == 3 and old.key(2) == "b/2"
    assert old.plan(np.arange(3)).crcs is None
    assert "crcs" not in np.load(io.BytesIO(old.to_bytes())).files  # and it stays without them


@pytest.mark.parametrize("crcs, why", [
    (np.array([1, 2]), "3 integers"),
    (np.array([1.0, 2.0, 3.0]), "3 integers"),
    (np.array([1, -2, 3]), "32-bit"),
    (np.array([1, 2, 1 << 32]), "32-bit"),
])
def test_bad_crcs_are_refused_naming_the_index(crcs, why):
    index = _index()
    index.crcs = crcs
    with pytest.raises(DataFormatError, match=f"gs://bkt/x.index.npz: .*{why}"):
        ShardIndex.from_bytes(index.to_bytes(), what="gs://bkt/x.index.npz")


def _memory(samples, crcs) -> MemorySource:
    src = MemorySource.from_bytes(samples, [i % 3 for i in range(N)], ["a", "b", "c"],
                                  names=[f"mem/{i}.JPEG" for i in range(N)])
    return MemorySource(src.arena, src.offsets, src.sizes, src.labels, src.classes,
                        names=[f"mem/{i}.JPEG" for i in range(N)], crcs=crcs)


def _loader(source, **kw) -> Loader:
    return Loader(source, **(dict(batch_size=4, train=False, image_size=16, backend="native", workers=1) | kw))


def test_present_samples_are_checked_and_counted(samples):
    crcs = np.array([_native.crc32c(s) for s in samples])
    with _loader(_memory(samples, crcs)) as ld:
        assert sum(len(y) for _, y in ld) == N
        st = ld.stats()
    assert (st["verified"], st["unverified"], st["checksum_errors"], st["skipped"]) == (N, 0, 0, 0)
    with _loader(_memory(samples, None)) as ld:
        list(ld)
        assert (ld.stats()["verified"], ld.stats()["unverified"]) == (0, N)


def test_a_present_sample_that_misses_its_crc_fails_named(samples):
    crcs = np.array([_native.crc32c(s) for s in samples])
    crcs[5] ^= 1
    with _loader(_memory(samples, crcs), on_error="raise") as ld, \
            pytest.raises(ChecksumError, match=r"crc32c mismatch in mem/5\.JPEG .*already present") as caught:
        list(ld)
    assert caught.value.object == "mem/5.JPEG"
    with _loader(_memory(samples, crcs), max_missing=1) as ld:  # unreadable, not a bad image: budgeted
        assert sum(len(y) for _, y in ld) == N  # replaced by a good sample of its batch
        st = ld.stats()
    assert st["missing"] == 1 and st["skipped"] == 0 and st["checksum_errors"] == 1 and st["verified"] == N - 1
    assert st["checksum_retries"] == 0  # bytes in memory are not read again
    assert "mem/5.JPEG" in st["missing_names"][0] and "crc32c mismatch" in st["missing_names"][0]


def test_python_reads_check_the_crc_too(samples):
    crcs = np.array([_native.crc32c(s) for s in samples])
    assert read_samples(_memory(samples, crcs), [3, 1]) == [samples[3], samples[1]]
    crcs[1] = NO_CRC
    assert read_samples(_memory(samples, crcs), [1]) == [samples[1]]  # unknown: read unverified
    crcs[3] ^= 0x80000000
    with pytest.raises(ChecksumError, match=r"^mem/3\.JPEG: crc32c mismatch"):
        read_samples(_memory(samples, crcs), [1, 3])


def test_the_pipeline_refuses_a_plan_with_the_wrong_number_of_crcs(samples):
    src = _memory(samples, np.array([_native.crc32c(s) for s in samples]))
    plan = src.plan(np.arange(3))
    plan.crcs = plan.crcs[:2]
    p = _native.Pipeline(endpoint="http://127.0.0.1:1", decode=False)
    try:
        with pytest.raises(ValueError, match="2 crcs for 3 samples"):
            p.submit(0, plan, [0, 0, 0], src.arena, None)
        plan.crcs = np.array([1, 2, 1 << 32])
        with pytest.raises(ValueError, match="32-bit"):
            p.submit(1, plan, [0, 0, 0], src.arena, None)
    finally:
        p.close()
