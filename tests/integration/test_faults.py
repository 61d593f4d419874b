"""Retries, budgets and error mapping through a fault-injecting proxy in front of the real emulator."""

from __future__ import annotations

import os

import pytest

from hivedata.errors import FetchError
from hivedata.gcs.fetch import Fetcher
from tests.support.fault_proxy import FaultProxy

FAST_RETRY = dict(backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def objects(emulator, bucket) -> dict[str, bytes]:
    out = {f"img/{i:03d}.JPEG": os.urandom(20_000 + 997 * i) for i in range(30)}
    for name, data in out.items():
        emulator.upload(bucket, name, data)
    return out


@pytest.fixture
def proxy(emulator):
    with FaultProxy(emulator.url) as p:
        yield p


def _fetch_all(f: Fetcher, objects: dict[str, bytes]) -> None:
    got = {it.request.object: bytes(it.data) for it in f.fetch(sorted(objects))}
    assert got == objects


def test_status_bursts_are_retried(bucket, objects, proxy):
    proxy.add_fault("status", status=503, count=12)
    proxy.add_fault("status", status=429, count=8)
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _fetch_all(f, objects)
        st = f.stats()
    assert proxy.stats["status_503"] == 12 and proxy.stats["status_429"] == 8
    assert st["retries"] == 20 and st["http_retryable"] == 20
    assert st["succeeded"] == len(objects) and st["failed"] == 0


def test_connection_resets_mid_body_are_retried(bucket, objects, proxy):
    proxy.add_fault("reset_mid_body", count=6, fraction=0.5)
    proxy.add_fault("reset_before_response", count=4)
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _fetch_all(f, objects)
        st = f.stats()
    assert proxy.stats["reset_mid_body"] == 6 and proxy.stats["reset_before_response"] == 4
    assert st["retries"] == 10 and st["network_errors"] == 10


def test_slow_first_bytes_are_waited_for_or_retried(bucket, objects, proxy):
    proxy.add_fault("slow_first_byte", count=3, delay=0.3)  # under the timeout: just slow
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _fetch_all(f, objects)
        assert f.stats()["retries"] == 0
    proxy.add_fault("slow_first_byte", count=2, delay=3.0)  # past the timeout: retried
    with Fetcher(bucket, endpoint=proxy.url, request_timeout_s=1.0, **FAST_RETRY) as f:
        _fetch_all(f, objects)
        assert f.stats()["retries"] == 2
    assert proxy.stats["slow_first_byte"] == 5


def test_exhausted_budget_names_the_object(bucket, objects, proxy):
    name = sorted(objects)[4]
    proxy.add_fault("status", status=503, count=100, match="004.JPEG")
    with Fetcher(bucket, endpoint=proxy.url, max_attempts=4, **FAST_RETRY) as f:
        with pytest.raises(FetchError, match=r"HTTP 503 .*004\.JPEG.*gave up after 4 attempts") as ei:
            f.read(name)
        assert ei.value.object == name and ei.value.status == 503
        # the engine stays usable after a failure
        assert f.read(sorted(objects)[0]) == objects[sorted(objects)[0]]
    assert proxy.stats["status_503"] == 4


def test_time_budget_bounds_retries(bucket, objects, proxy):
    proxy.add_fault("status", status=500, count=1000)
    with Fetcher(bucket, endpoint=proxy.url, max_attempts=1000, retry_budget_s=0.5,
                 backoff_base_s=0.05, backoff_max_s=0.1) as f:
        with pytest.raises(FetchError, match="gave up after"):
            f.read(sorted(objects)[0])
    assert 2 <= proxy.stats["status_500"] < 100


def test_forbidden_is_permission_error_and_not_retried(bucket, objects, proxy):
    proxy.add_fault("status", status=403, count=1)
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        with pytest.raises(PermissionError, match="HTTP 403") as ei:
            f.read(sorted(objects)[0])
        assert f.stats()["retries"] == 0
    assert ei.value.object == sorted(objects)[0]


def test_token_is_sent_but_never_shown(bucket, objects, proxy):
    from hivedata.gcs.auth import TokenSource

    class Creds:  # a google.auth-like credentials object; each refresh hands out a new token
        token = "ya29.SECRET-TOKEN-VALUE"
        expiry = None
        refreshes = 0

        def refresh(self, request):
            Creds.refreshes += 1
            self.token = f"ya29.SECRET-TOKEN-VALUE-{Creds.refreshes}"

    proxy.add_fault("status", status=401, count=1)  # an expired token: refreshed once, then the read succeeds
    with Fetcher(bucket, endpoint=proxy.url, credentials=TokenSource(Creds()), **FAST_RETRY) as f:
        assert f.read(sorted(objects)[0]) == objects[sorted(objects)[0]]
        assert Creds.refreshes == 1 and f.stats()["token_refreshes"] == 1
        assert proxy.last_headers.get("authorization") == "Bearer ya29.SECRET-TOKEN-VALUE-1"
        proxy.add_fault("status", status=401, count=2)  # refused again with the fresh token: an error
        with pytest.raises(PermissionError, match="HTTP 401") as ei:
            f.read(sorted(objects)[1])
        assert Creds.refreshes == 2
        assert f.read(sorted(objects)[2]) == objects[sorted(objects)[2]]
    assert "SECRET" not in str(ei.value) and "SECRET" not in repr(ei.value)
    assert ei.value.object == sorted(objects)[1]


def test_checksum_mismatch_is_retried_then_reported(bucket, objects, proxy):
    proxy.add_fault("corrupt_body", count=2)
    with Fetcher(bucket, endpoint=proxy.url, **FAST_RETRY) as f:
        _fetch_all(f, objects)
        assert f.stats()["checksum_failures"] == 2
    name = sorted(objects)[0]
    proxy.add_fault("corrupt_body", count=10)
    with Fetcher(bucket, endpoint=proxy.url, max_attempts=3, **FAST_RETRY) as f:
        with pytest.raises(FetchError, match="crc32c mismatch") as ei:
            f.read(name)
    assert ei.value.object == name
