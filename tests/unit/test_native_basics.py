"""Native helpers that need no network: crc32c, URL encoding, engine argument checks."""

from __future__ import annotations

import os

import google_crc32c
import pytest

from hivedata import _native


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 4096, 100_003])
def test_crc32c_matches_reference(size):
    data = os.urandom(size)
    assert _native.crc32c(data) == google_crc32c.value(data)


def test_crc32c_known_vector():
    assert _native.crc32c(b"123456789") == 0xE3069283


def test_percent_encode_object_names():
    assert _native.percent_encode("train/n01440764/n01440764_1.JPEG") == "train%2Fn01440764%2Fn01440764_1.JPEG"
    assert _native.percent_encode("a b+é?#") == "a%20b%2B%C3%A9%3F%23"
    assert _native.percent_encode("AZaz09-._~") == "AZaz09-._~"


@pytest.mark.parametrize("kw", [dict(max_in_flight=0), dict(max_connections=0), dict(max_attempts=0)])
def test_engine_rejects_bad_options(kw):
    with pytest.raises(ValueError):
        _native.FetchEngine(endpoint="http://127.0.0.1:1", **kw)


def test_engine_without_work_polls_nothing_and_closes():
    e = _native.FetchEngine(endpoint="http://127.0.0.1:1")
    assert e.poll(timeout=0.01) == []
    assert e.outstanding == 0
    e.close()
    assert e.closed
    e.close()  # idempotent


def test_invalid_requests_fail_without_network():
    e = _native.FetchEngine(endpoint="http://127.0.0.1:1")
    e.submit([(1, "bkt", "", 0, None, None, None), (2, "bkt", "x", -5, 3, None, None),
              (3, "bkt", "x", 0, 100, None, bytearray(10))])
    res = {r.tag: r for r in e.poll(timeout=5)}
    assert set(res) == {1, 2, 3}
    assert res[1].kind == _native.ErrorKind.BAD_REQUEST
    assert res[2].kind == _native.ErrorKind.BAD_RANGE
    assert res[3].kind == _native.ErrorKind.BUFFER_TOO_SMALL
    with pytest.raises(ValueError, match="gs://bkt/x"):
        res[2].raise_for_status()
    e.close()


def test_duplicate_tags_are_refused():
    e = _native.FetchEngine(endpoint="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="twice"):
        e.submit([(1, "bkt", "a", 0, None, None, None), (1, "bkt", "b", 0, None, None, None)])
    e.close()


def test_unreachable_endpoint_gives_network_error_naming_object():
    e = _native.FetchEngine(endpoint="http://127.0.0.1:1", max_attempts=2, backoff_base_s=0.01)
    e.submit([(9, "bkt", "dir/obj.JPEG", 0, None, None, None)])
    (r,) = e.poll(timeout=30)
    assert not r.ok and r.kind == _native.ErrorKind.NETWORK and r.attempts == 2
    assert "gs://bkt/dir/obj.JPEG" in r.message
    e.close()
