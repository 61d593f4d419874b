"""The native fetch engine against a real fake-gcs-server: bytes, ranges, errors, pools."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from hivedata.errors import BufferTooSmallError, RangeError
from hivedata.gcs.fetch import Fetcher, ReadRequest


@pytest.fixture
def objects(emulator, bucket) -> dict[str, bytes]:
    rng = random.Random(7)
    out = {}
    sizes = [1, 2, 100, 4096, 65_537, 300_000, 1_200_000] + [rng.randint(1, 200_000) for _ in range(40)]
    for i, size in enumerate(sizes):
        name = f"data/cls{i % 3}/obj {i}+é.bin"
        out[name] = os.urandom(size)
        emulator.upload(bucket, name, out[name])
    return out


def test_whole_objects_match_uploaded_bytes(bucket, objects):
    names = sorted(objects)
    with Fetcher(bucket) as f:
        got = {it.request.object: bytes(it.data) for it in f.fetch(names)}
        assert got == objects
        st = f.stats()
    assert st["succeeded"] == len(objects) and st["failed"] == 0
    assert st["bytes"] == sum(len(v) for v in objects.values())


def test_results_in_request_order_and_completion_order(bucket, objects):
    names = sorted(objects)
    with Fetcher(bucket, max_in_flight=8) as f:
        in_order = [it.request.object for it in f.fetch(names, order="request")]
        assert in_order == names
        indices = [it.index for it in f.fetch(names, order="completion")]
        assert sorted(indices) == list(range(len(names)))


def test_fetch_into_caller_buffers_and_arena(bucket, objects):
    names = sorted(objects)
    sizes = [len(objects[n]) for n in names]
    with Fetcher(bucket) as f:
        batch = f.fetch_batch(names, sizes)
        for i, n in enumerate(names):
            assert batch.view(i).tobytes() == objects[n]
        buf = bytearray(max(sizes))
        n = f.read_into(names[-1], buf)
        assert bytes(buf[:n]) == objects[names[-1]]


def test_random_ranges(bucket, objects):
    rng = random.Random(1)
    reqs = []
    for name, data in objects.items():
        size = len(data)
        reqs += [ReadRequest(name, 0, 1), ReadRequest(name, size - 1, 1), ReadRequest(name, 0, size)]
        a = rng.randrange(size)
        reqs.append(ReadRequest(name, a, rng.randint(1, size - a)))
        reqs.append(ReadRequest(name, a))  # open-ended: through the end
    with Fetcher(bucket) as f:
        for it in f.fetch(reqs):
            r = it.request
            want = objects[r.object][r.start:] if r.length is None else objects[r.object][r.start:r.start + r.length]
            assert bytes(it.data) == want, r


@pytest.mark.parametrize("start,length,match", [
    (-1, 5, "invalid byte range"),
    (0, 0, "invalid byte range"),
    (10**9, 5, "starts past the end"),
])
def test_bad_ranges_are_refused(bucket, objects, start, length, match):
    name = sorted(objects)[3]
    with Fetcher(bucket) as f, pytest.raises(RangeError, match=match) as ei:
        f.read(name, start, length)
    assert ei.value.object == name and ei.value.bucket == bucket
    assert isinstance(ei.value, ValueError)


def test_range_past_the_end_is_refused(bucket, objects):
    name = sorted(objects)[3]
    size = len(objects[name])
    with Fetcher(bucket) as f, pytest.raises(RangeError, match="extends past the end"):
        f.read(name, size - 2, 10)


def test_missing_object_is_file_not_found(bucket, objects):
    with Fetcher(bucket) as f:
        with pytest.raises(FileNotFoundError, match="no-such-object") as ei:
            f.read("data/no-such-object.JPEG")
        assert ei.value.object == "data/no-such-object.JPEG" and ei.value.status == 404
        items = list(f.fetch([sorted(objects)[0], "missing-1", sorted(objects)[1]], errors="return"))
        assert [it.ok for it in items] == [True, False, True]
        assert isinstance(items[1].error, FileNotFoundError)


def test_missing_bucket_is_file_not_found(emulator):
    with Fetcher("no-such-bucket-xyz") as f, pytest.raises(FileNotFoundError, match="no-such-bucket-xyz"):
        f.read("a.JPEG")


def test_buffer_too_small_names_object(bucket, objects):
    name = max(objects, key=lambda n: len(objects[n]))
    with Fetcher(bucket) as f, pytest.raises(BufferTooSmallError, match="buffer holds 10") as ei:
        f.read_into(name, bytearray(10))
    assert ei.value.object == name


def test_read_only_buffer_is_rejected(bucket, objects):
    with Fetcher(bucket) as f, pytest.raises((BufferError, TypeError, ValueError)):
        f.read_into(sorted(objects)[0], b"immutable bytes")


def test_many_requests_through_two_connections(bucket, objects):
    names = sorted(objects) * 10
    with Fetcher(bucket, max_in_flight=64, max_connections=2) as f:
        n = 0
        for it in f.fetch(names, order="completion"):
            assert bytes(it.data) == objects[it.request.object]
            n += 1
    assert n == len(names)


def test_one_fetch_at_a_time_per_fetcher(bucket, objects):
    with Fetcher(bucket) as f:
        it = f.fetch(sorted(objects))
        next(it)
        with pytest.raises(RuntimeError, match="already iterating"):
            next(f.fetch(sorted(objects)))
        it.close()  # abandoning mid-way cancels the rest and frees the fetcher
        assert len(list(f.fetch(sorted(objects)))) == len(objects)


def test_closed_fetcher_refuses_work(bucket, objects):
    f = Fetcher(bucket)
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.read(sorted(objects)[0])


def test_empty_object_name_is_refused(bucket):
    with Fetcher(bucket) as f, pytest.raises(ValueError, match="empty"):
        f.read("")


def test_numpy_views_as_buffers(bucket, objects):
    names = sorted(objects)[:5]
    arena = np.zeros(sum(len(objects[n]) for n in names) + 7, dtype=np.uint8)
    with Fetcher(bucket) as f:
        f.fetch_batch(names, [len(objects[n]) for n in names], arena=arena)
    assert arena[-7:].sum() == 0  # nothing written past the batch
    assert arena[: len(objects[names[0]])].tobytes() == objects[names[0]]


def test_zero_byte_object(emulator, bucket):
    emulator.upload(bucket, "empty.JPEG", b"")
    emulator.upload(bucket, "one.JPEG", b"x")
    with Fetcher(bucket) as f:
        assert f.read("empty.JPEG") == b""
        batch = f.fetch_batch(["empty.JPEG", "one.JPEG", "empty.JPEG"], [0, 1, 0])
        assert [batch.view(i).tobytes() for i in range(3)] == [b"", b"x", b""]


def test_work_submitted_right_after_a_cancel_is_not_cancelled(bucket, objects):
    # cancel_all() is carried out by the I/O thread later: it must only reach what was submitted before it
    small = [n for n in sorted(objects) if len(objects[n]) < 5000]
    with Fetcher(bucket, max_in_flight=4) as f:
        for _ in range(60):
            it = f.fetch(small)
            next(it)
            it.close()
            got = {x.request.object: bytes(x.data) for x in f.fetch(small[:2])}
            assert got == {n: objects[n] for n in small[:2]}
