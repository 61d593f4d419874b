"""The fetch engine and the Loader over HTTPS (fake-gcs-server with a private CA, HTTP/2 by ALPN)."""

from __future__ import annotations

import os
import time

import pytest

from hivedata.errors import TlsError
from hivedata.gcs.auth import TokenSource
from hivedata.gcs.fetch import Fetcher
from hivedata.gcs.json_client import GcsJsonClient
from hivedata.gcs.tls import CA_BUNDLE_VARIABLES, TlsConfigError
from hivedata.gcs.transport import Transport

MANY = 96  # extra objects for the connection-pool tests


@pytest.fixture(scope="module")
def many(https_gcs) -> dict[str, bytes]:
    out = {f"many/{i:03d}.bin": os.urandom(4_000 + 13 * i) for i in range(MANY)}
    for name, data in out.items():
        https_gcs.emulator.upload(https_gcs.bucket, name, data)
    return out


@pytest.fixture(autouse=True)
def _no_trusted_bundles(monkeypatch):
    """Each test starts with no CA bundle trusted per endpoint (trust() is process-wide)."""
    from hivedata.gcs import tls

    monkeypatch.setattr(tls, "_trusted", {})


@pytest.fixture
def no_ca_variables(monkeypatch):
    for var in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


class _Creds:  # a google.auth-like credentials object with a fixed token
    token = "ya29.TEST"
    expiry = None

    def refresh(self, request):  # pragma: no cover - never expires
        pass


def _read_all(f: Fetcher, objects: dict[str, bytes]) -> None:
    got = {it.request.object: bytes(it.data) for it in f.fetch(sorted(objects))}
    assert got == objects


def test_https_with_ca_bundle_reads_over_http2(https_gcs):
    with Fetcher(https_gcs.bucket, endpoint=https_gcs.url, ca_bundle=https_gcs.ca) as f:
        _read_all(f, https_gcs.objects)
        st = f.stats()
    assert st["http2"] == len(https_gcs.objects) and st["connects"] >= 1


@pytest.mark.parametrize("variable", CA_BUNDLE_VARIABLES)
def test_ca_variables_are_honoured_by_engine_and_listing(https_gcs, no_ca_variables, variable):
    no_ca_variables.setenv(variable, str(https_gcs.ca))
    with Fetcher(https_gcs.bucket, endpoint=https_gcs.url) as f:
        _read_all(f, https_gcs.objects)
    pages = GcsJsonClient(https_gcs.url, TokenSource("anonymous")).list_pages(https_gcs.bucket, "train/")
    assert {o.name for page in pages for o in page.objects} == set(https_gcs.objects)


def test_wrong_ca_is_a_clear_tls_error_not_retried(https_gcs, wrong_ca):
    name = sorted(https_gcs.objects)[0]
    with Fetcher(https_gcs.bucket, endpoint=https_gcs.url, ca_bundle=wrong_ca, max_attempts=5) as f:
        t0 = time.perf_counter()
        with pytest.raises(TlsError) as ei:
            f.read(name)
        assert time.perf_counter() - t0 < 5 and f.stats()["retries"] == 0
    msg = str(ei.value)
    assert https_gcs.url in msg and str(wrong_ca) in msg and name in msg and "ca_bundle" in msg


def test_listing_with_the_wrong_ca_is_a_tls_error(https_gcs, wrong_ca, no_ca_variables):
    from hivedata.gcs.tls import trust

    trust(https_gcs.url, wrong_ca)
    with pytest.raises(TlsError, match="could not be verified") as ei:
        list(GcsJsonClient(https_gcs.url, TokenSource("anonymous")).list_pages(https_gcs.bucket, "train/"))
    assert str(wrong_ca) in str(ei.value) and https_gcs.url in str(ei.value)


def test_missing_ca_file_is_named(https_gcs, tmp_path):
    with pytest.raises(TlsConfigError, match="nope.pem"):
        Fetcher(https_gcs.bucket, endpoint=https_gcs.url, ca_bundle=tmp_path / "nope.pem")


def test_token_is_never_sent_in_clear_text_to_another_host():
    with Fetcher("bkt", endpoint="http://192.0.2.1:9", credentials=TokenSource(_Creds())) as f:
        with pytest.raises(TlsConfigError, match="plain http"):
            f.read("x")
        assert f.stats()["submitted"] == 0  # refused before anything was sent
    client = GcsJsonClient("http://192.0.2.1:9", TokenSource(_Creds()), max_attempts=1)
    with pytest.raises(TlsConfigError, match="plain http"):
        client.object_meta("bkt", "x")


def test_http2_streams_spread_over_a_bounded_pool(https_gcs, many):
    transport = Transport(ca_bundle=str(https_gcs.ca), max_in_flight=64, streams_per_connection=8)
    with Fetcher(https_gcs.bucket, endpoint=https_gcs.url, transport=transport) as f:
        _read_all(f, many)
        st = f.stats()
    assert st["http2"] == MANY
    assert 2 <= st["connects"] <= 64 // 8  # not all on one connection, not one per GET


def test_http11_is_available(https_gcs, many):
    with Fetcher(https_gcs.bucket, endpoint=https_gcs.url, ca_bundle=https_gcs.ca, http_version="1.1",
                 max_in_flight=16) as f:
        _read_all(f, many)
        st = f.stats()
    assert st["http2"] == 0 and 1 <= st["connects"] <= 16


def test_loader_over_https_with_ca_bundle(https_gcs):
    from hivedata import Loader

    url = f"gs://{https_gcs.bucket}/train/"
    with Loader(url, endpoint=https_gcs.url, ca_bundle=https_gcs.ca, batch_size=2, train=False, image_size=32,
                credentials="anonymous") as loader:
        batches = list(loader)
        st = loader.stats()
    assert sum(len(labels) for _, labels in batches) == len(https_gcs.objects)
    assert st["skipped"] == 0 and st["http2"] == len(https_gcs.objects)


def test_train_flags_trust_the_ca_bundle(https_gcs, no_ca_variables, tmp_path):
    from hivedata.train.cli import open_checked, trust_ca_bundle
    from hivedata.train.config import parse_args

    no_ca_variables.setenv("STORAGE_EMULATOR_HOST", https_gcs.url)
    bad = parse_args(["--bucket", https_gcs.bucket, "--ca_bundle", str(tmp_path / "missing.pem")])
    assert "missing.pem" in trust_ca_bundle(bad)
    args = parse_args(["--bucket", https_gcs.bucket, "--train_prefix", "train", "--val_prefix", "train",
                       "--ca_bundle", str(https_gcs.ca)])
    assert trust_ca_bundle(args) is None
    problem, sources = open_checked(args)  # lists the bucket over HTTPS through the trusted bundle
    assert problem is None and len(sources[0]) == len(https_gcs.objects)
