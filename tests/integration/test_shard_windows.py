"""Existing shards read in windows (index_existing_shards) against a real fake-gcs-server: the same index as the
member-by-member walk on tricky tars, far fewer GETs, crcs that match the bytes, and damaged or changed shards
read again or refused by name."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from hivedata import _native
from hivedata.errors import ChecksumError, IndexStaleError
from hivedata.gcs.auth import token_source
from hivedata.gcs.fetch import Fetcher
from hivedata.gcs.json_client import GcsJsonClient
from hivedata.gcs.small_objects import SmallObjects
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.webdataset import index_existing_shards, scan_shard, walk_shards
from tests.support.fault_proxy import FaultProxy
from tests.support.tars import tar_of, webdataset_tar

SIZES = [0, 1, 511, 512, 513, 3000, 4096, 9000, 70_000]


def samples(seed: int, n: int, key: str = "k") -> list[tuple[str, bytes, int]]:
    rng = np.random.default_rng(seed)
    return [(f"{key}{j:03d}", rng.bytes(SIZES[j % len(SIZES)]), j % 5) for j in range(n)]


TRICKY = {  # shard -> (samples, tar format)
    "tricky/a-ustar.tar": (samples(1, 12), tarfile.USTAR_FORMAT),
    "tricky/b-gnu-long.tar": (samples(2, 7, key="g" * 140 + "/"), tarfile.GNU_FORMAT),
    "tricky/c-pax-long.tar": (samples(3, 7, key="p/" * 80 + "\u00e9t\u00e9-"), tarfile.PAX_FORMAT),
    "tricky/d-large.tar": ([("big", bytes(300_000), 1), ("small", b"x", 2)], tarfile.PAX_FORMAT),
    "tricky/e-tiny.tar": ([(f"t{j}", bytes([j]), j % 3) for j in range(40)], tarfile.PAX_FORMAT),
}


@pytest.fixture
def tricky(emulator, bucket) -> str:
    for name, (group, fmt) in TRICKY.items():
        emulator.upload(bucket, name, webdataset_tar(group, fmt))
    return bucket


@pytest.fixture
def proxy(emulator):
    with FaultProxy(emulator.url) as p:
        yield p


def same(a, b) -> None:
    assert a.shard_names == b.shard_names and a.classes == b.classes
    for field in ("shard_sizes", "shard_generations", "shard", "starts", "sizes", "labels"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist(), field
    assert [a.key(i) for i in range(len(a))] == [b.key(i) for i in range(len(b))]


@pytest.mark.parametrize("window,read_through", [(1024, 0), (4096, 1024), (64 << 10, 16 << 10), (4 << 20, 2 << 20)])
def test_windows_give_the_index_of_the_member_walk(tricky, proxy, window, read_through):
    before = proxy.stats["requests"]
    walked = index_existing_shards(tricky, "tricky/", endpoint=proxy.url, window=None, workers=2)
    walk_gets = proxy.stats["requests"] - before
    before = proxy.stats["requests"]
    scanned = index_existing_shards(tricky, "tricky/", endpoint=proxy.url, window=window, read_through=read_through,
                                    workers=2)
    scan_gets = proxy.stats["requests"] - before
    same(walked, scanned)
    assert walked.crcs is None and len(walked) == sum(len(g) for g, _ in TRICKY.values())
    with Fetcher(tricky) as f:
        crcs = scanned.crcs if scanned.crcs is not None else np.full(len(scanned), NO_CRC)
        for i in range(len(scanned)):
            n = int(scanned.sizes[i])
            data = f.read(scanned.name(i), int(scanned.starts[i]), n) if n else b""  # (no empty ranged GET)
            assert crcs[i] in (NO_CRC, _native.crc32c(data)), scanned.describe(i)
    big = [i for i in range(len(scanned)) if scanned.name(i) == "tricky/d-large.tar"]
    if read_through < 300_000 and window < 300_000:  # the big member is jumped: that shard is not read whole
        assert all(crcs[i] == NO_CRC for i in big)
    if window == 4 << 20:  # each shard read whole in one GET, plus its crc32c look-up
        assert NO_CRC not in crcs.tolist()
        assert scan_gets == 1 + 2 * len(TRICKY)  # the listing, then per shard a GET and a crc32c look-up
        assert walk_gets > 5 * scan_gets


def test_a_truncated_shard_is_named(emulator, bucket):
    data = webdataset_tar(samples(4, 6))
    emulator.upload(bucket, "cut/s-0.tar", data[:len(data) - 9000])
    for window in (None, 4096):
        with pytest.raises(ValueError, match=f"gs://{bucket}/cut/s-0.tar.*runs past the end"):
            index_existing_shards(bucket, "cut/", window=window)


def test_a_damaged_transfer_is_read_again_and_a_lasting_one_fails_named(emulator, bucket, proxy):
    emulator.upload(bucket, "dmg/s-0.tar", webdataset_tar(samples(5, 9)))
    clean = index_existing_shards(bucket, "dmg/")
    proxy.add_fault("corrupt_body", count=1, match=f"download/storage/v1/b/{bucket}/o/dmg/s-0.tar")
    again = index_existing_shards(bucket, "dmg/", endpoint=proxy.url)
    assert proxy.stats["corrupt_body"] == 1 and proxy.pending_faults == 0
    same(clean, again)
    assert again.crcs.tolist() == clean.crcs.tolist() and NO_CRC not in clean.crcs.tolist()
    proxy.add_fault("corrupt_body", count=1000, match=f"download/storage/v1/b/{bucket}/o/dmg/s-0.tar")
    with pytest.raises(ValueError, match=f"gs://{bucket}/dmg/s-0.tar"):
        index_existing_shards(bucket, "dmg/", endpoint=proxy.url)
    proxy.clear_faults()


def test_member_bytes_that_do_not_match_the_stored_crc32c_are_read_again(emulator, bucket):
    """A flipped data byte (not a header): the tar parses, only the shard's crc32c can tell."""
    rng = np.random.default_rng(6)
    emulator.upload(bucket, "flip/s-0.tar", webdataset_tar([(f"k{j}", rng.bytes(5000), j) for j in range(4)]))
    meta = next(o for page in GcsJsonClient(emulator.url, token_source("anonymous", emulator.url)).list_pages(
        bucket, "flip/") for o in page.objects)
    flips = [1]
    with Fetcher(bucket) as f, SmallObjects(emulator.url, token_source("anonymous", emulator.url)) as objects:
        def read(start: int, length: int) -> bytes:
            data = bytearray(f.read(meta.name, start, length))
            if flips[0] > 0 and len(data) > 2000:
                data[1500] ^= 0x40  # inside the first sample's image
                flips[0] -= 1
            return bytes(data)

        shard = scan_shard(meta, 0, read, objects, bucket=bucket, window=1 << 20)
        assert flips == [0] and shard.verified
        with Fetcher(bucket) as g:
            assert shard.crcs[0] == _native.crc32c(g.read(meta.name, shard.samples[0][1], shard.samples[0][2]))
        flips[0] = 2
        with pytest.raises(ChecksumError, match=f"gs://{bucket}/flip/s-0.tar"):
            scan_shard(meta, 0, read, objects, bucket=bucket, window=1 << 20)


def test_a_shard_rewritten_while_indexed_is_stale_not_mixed(emulator, bucket):
    emulator.upload(bucket, "rw/s-0.tar", webdataset_tar(samples(7, 4)))
    tokens = token_source("anonymous", emulator.url)
    listed = [o for page in GcsJsonClient(emulator.url, tokens).list_pages(bucket, "rw/") for o in page.objects]
    emulator.upload(bucket, "rw/s-0.tar", webdataset_tar(samples(8, 4)))
    with pytest.raises(IndexStaleError, match=f"gs://{bucket}/rw/s-0.tar.*changed"):
        walk_shards(bucket, listed, [0], emulator.url, tokens, None, 1)


def test_members_other_than_samples_and_no_images(emulator, bucket):
    emulator.upload(bucket, "odd/s-0.tar", tar_of([("README", 100), ("a.jpg", 2000), ("a.cls", b"3"),
                                                  ("a.json", 50), ("dir/", 0)], dirs=True))
    index = index_existing_shards(bucket, "odd/")
    assert [index.key(0)] == ["a"] and index.labels.tolist() == [3] and index.crcs is not None
