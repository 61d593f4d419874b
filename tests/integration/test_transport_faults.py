"""Field faults through the fault proxy in front of the real emulator: every answer is the bytes or a clear error.

Statuses and resets, a stalled body, a 200 to a Range request, a Content-Range that is not the one asked
for, a gzip-stored object, and stragglers (1% of GETs delayed by seconds) against the Loader's batch wait.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import urllib.request

import pytest

from hivedata import Loader
from hivedata.errors import FetchError
from hivedata.gcs.fetch import Fetcher, ReadRequest
from hivedata.tools.synthetic import SyntheticSpec
from tests.support.buckets import dataset_bucket
from tests.support.fault_proxy import FaultProxy

FAST_RETRY = dict(backoff_base_s=0.01, backoff_max_s=0.05)
SPEC = SyntheticSpec(num_classes=4, train_per_class=50, val_per_class=1, min_short_side=64, max_short_side=80)


@pytest.fixture(scope="module")
def objects(gcs_emulator) -> tuple[str, dict[str, bytes]]:
    bucket = "transport-faults"
    gcs_emulator.create_bucket(bucket)
    out = {f"obj/{i:03d}.bin": os.urandom(30_000 + 1_009 * i) for i in range(48)}  # > 32: hedging starts
    for name, data in out.items():
        gcs_emulator.upload(bucket, name, data)
    return bucket, out


@pytest.fixture(scope="module")
def images(gcs_emulator) -> str:
    """200 small JPEGs in 4 class folders under train/."""
    return dataset_bucket(gcs_emulator, "transport-images", SPEC)


@pytest.fixture
def proxy(gcs_emulator):
    with FaultProxy(gcs_emulator.url) as p:
        yield p


def _read_all(f: Fetcher, objects: dict[str, bytes]) -> None:
    got = {it.request.object: bytes(it.data) for it in f.fetch(sorted(objects))}
    assert got == objects


@pytest.mark.parametrize("status,count", [(503, 1), (503, 3), (429, 3), (408, 1), (500, 1), (502, 1), (504, 1)])
def test_retryable_statuses_give_identical_bytes(objects, proxy, status, count):
    bucket, data = objects
    proxy.add_fault("status", status=status, count=count, match="obj/005")
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _read_all(f, data)
        assert f.stats()["retries"] == count
    assert proxy.stats[f"status_{status}"] == count


def test_ten_503s_exhaust_the_attempts_with_a_clear_error(objects, proxy):
    bucket, data = objects
    proxy.add_fault("status", status=503, count=10, match="obj/007")
    with Fetcher(bucket, endpoint=proxy.url, max_attempts=8, **FAST_RETRY) as f:
        with pytest.raises(FetchError, match=r"HTTP 503.*gave up after 8 attempts") as ei:
            f.read("obj/007.bin")
    assert ei.value.object == "obj/007.bin"


def test_a_stalled_body_is_hedged_not_waited_out(objects, proxy):
    bucket, data = objects
    proxy.add_fault("stall_mid_body", count=1, fraction=0.3, delay=8.0, match="obj/011")
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        t0 = time.perf_counter()
        _read_all(f, data)
        took = time.perf_counter() - t0
        st = f.stats()
    assert proxy.stats["stall_mid_body"] == 1
    assert took < 4.0 and st["hedges"] >= 1 and st["hedge_wins"] >= 1


def test_a_200_to_a_range_is_never_taken_as_the_range(objects, proxy):
    bucket, data = objects
    name = "obj/003.bin"
    whole = data[name]
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        proxy.add_fault("ignore_range", count=1, match="obj/003")
        with pytest.raises(FetchError, match="ignored the Range header") as ei:
            f.read(name, 100, 500)
        assert ei.value.object == name and f.stats()["retries"] == 0
        proxy.add_fault("ignore_range", count=1, match="obj/003")
        with pytest.raises(FetchError, match="ignored the Range header"):
            f.read(name, 0, 500)  # the first 500 bytes: a whole-object answer is not them
        proxy.add_fault("ignore_range", count=1, match="obj/003")
        assert f.read(name, 0, len(whole)) == whole  # the range is the whole object: the 200 is it
        assert f.read(name, 100, 500) == whole[100:600]
    assert proxy.stats["ignore_range"] == 3


def test_a_content_range_that_is_not_the_one_asked_for_is_retried(objects, proxy):
    bucket, data = objects
    name = "obj/004.bin"
    proxy.add_fault("shift_range", count=2, match="obj/004")
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        assert f.read(name, 1000, 2000) == data[name][1000:3000]
        assert f.stats()["retries"] == 2
    assert proxy.stats["shift_range"] == 2


def test_broken_and_corrupted_bodies_give_identical_bytes(objects, proxy):
    bucket, data = objects
    proxy.add_fault("reset_mid_body", count=2, fraction=0.5)
    proxy.add_fault("corrupt_body", count=2)
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _read_all(f, data)
        st = f.stats()
    assert st["checksum_failures"] == 2 and st["network_errors"] == 2


def test_gzip_stored_object_is_refused_clearly(gcs_emulator, objects):
    bucket, _ = objects
    meta = json.dumps({"name": "gz/photo.JPEG", "contentEncoding": "gzip"}).encode()
    body = (b"--B\r\nContent-Type: application/json\r\n\r\n" + meta + b"\r\n--B\r\nContent-Type: image/jpeg\r\n\r\n"
            + gzip.compress(os.urandom(5000)) + b"\r\n--B--\r\n")
    req = urllib.request.Request(f"{gcs_emulator.url}/upload/storage/v1/b/{bucket}/o?uploadType=multipart",
                                 data=body, method="POST", headers={"Content-Type": "multipart/related; boundary=B"})
    urllib.request.urlopen(req, timeout=10).close()
    with Fetcher(bucket, endpoint=gcs_emulator.url, **FAST_RETRY) as f:
        with pytest.raises(FetchError, match="stored gzip-encoded") as ei:
            f.read("gz/photo.JPEG")
        assert f.stats()["retries"] == 0
    assert ei.value.object == "gz/photo.JPEG"


def test_stragglers_do_not_hold_a_batch(images, proxy):
    slow = [f"_{i}.JPEG" for i in (3, 17, 31)]  # 3 of 200 GETs (1.5%) answer after 5 s
    for suffix in slow:
        proxy.add_fault("slow_first_byte", count=1, delay=5.0, match=f"0{suffix}")
    waits = []
    with Loader(f"gs://{images}/train/", endpoint=proxy.url, batch_size=20, train=False, image_size=32,
                workers=2) as loader:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            waits.append(time.perf_counter() - t0)
        st = loader.stats()
    assert proxy.stats["slow_first_byte"] == len(slow)
    assert len(waits) == 10 and max(waits) < 2.5, waits  # without hedging: 5 s
    assert 1 <= st["hedges"] <= 0.02 * 200 + 256 / 16 and st["hedge_wins"] >= 1  # 2% plus a burst


def test_read_ahead_grows_when_latency_dominates(images, proxy):
    proxy.add_fault("slow_first_byte", count=10_000, delay=0.15)  # every GET: 150 ms to first byte
    with Loader(f"gs://{images}/train/", endpoint=proxy.url, batch_size=10, train=False, image_size=32,
                workers=2) as loader:
        for _ in loader:
            time.sleep(0.01)
        st = loader.stats()
    assert st["prefetch"] > 2 and st["slots"] == st["prefetch"] + 2


def test_ranged_read_requests_keep_their_bytes(objects, proxy):
    bucket, data = objects
    reqs = [ReadRequest(n, 7 * i, 1000 + i) for i, n in enumerate(sorted(data))]
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        got = {it.request.object: bytes(it.data) for it in f.fetch(reqs)}
    assert got == {r.object: data[r.object][r.start:r.start + r.length] for r in reqs}


def test_loader_refreshes_a_rejected_token_once(images, proxy):
    from hivedata.gcs.auth import TokenSource

    class Creds:  # a google.auth-like credentials object; each refresh hands out a new token
        token, expiry, refreshes = "ya29.FIRST", None, 0

        def refresh(self, request):
            Creds.refreshes += 1
            self.token = f"ya29.FRESH-{Creds.refreshes}"

    proxy.add_fault("status", status=401, count=1, match="_7.JPEG")
    with Loader(f"gs://{images}/train/", endpoint=proxy.url, credentials=TokenSource(Creds()), batch_size=50,
                train=False, image_size=32, workers=2) as loader:
        n = sum(len(labels) for _, labels in loader)
        st = loader.stats()
    assert n == 200 and st["token_refreshes"] == 1 and Creds.refreshes == 1 and proxy.stats["status_401"] == 1
