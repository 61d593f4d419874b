"""The HTTPS emulator (tests/support/tls.py, Emulator(scheme="https")): verified against its CA, refused otherwise."""

from __future__ import annotations

import shutil
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from hivedata.tools.emulator import Emulator

try:
    from tests.support.delay_line import DelayLine
    from tests.support.tls import make_tls
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.delay_line import DelayLine
    from tests.support.tls import make_tls


def _media_url(base: str, bucket: str, name: str) -> str:
    return f"{base}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"


def test_https_emulator_verifies_against_its_ca(https_gcs) -> None:
    assert https_gcs.url.startswith("https://127.0.0.1:")
    r = requests.get(f"{https_gcs.url}/storage/v1/b/{https_gcs.bucket}/o", verify=str(https_gcs.ca), timeout=10)
    r.raise_for_status()
    assert sorted(o["name"] for o in r.json()["items"]) == sorted(https_gcs.objects)
    name, data = next(iter(https_gcs.objects.items()))
    r = requests.get(_media_url(https_gcs.url, https_gcs.bucket, name), verify=str(https_gcs.ca), timeout=10)
    assert r.status_code == 200 and r.content == data and data[:2] == b"\xff\xd8"


def test_https_emulator_is_refused_with_the_wrong_ca_or_the_system_store(https_gcs, wrong_ca: Path) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_gcs.url}/storage/v1/b", verify=str(wrong_ca), timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_gcs.url}/storage/v1/b", timeout=10)  # a private CA is in no system store


def test_https_emulator_speaks_h2_over_alpn(https_gcs) -> None:
    ctx = ssl.create_default_context(cafile=str(https_gcs.ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", https_gcs.emulator.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_emulator_start_fails_fast_when_its_certificate_does_not_verify(https_gcs, wrong_ca: Path) -> None:
    tls = https_gcs.tls
    em = Emulator(scheme="https", cert_file=tls.cert, key_file=tls.key, ca=wrong_ca, export_env=False,
                  backend="memory")
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="does not verify"):
        em.start(timeout=15)
    assert time.monotonic() - t < 10 and not em.running


def test_emulator_scheme_arguments_are_checked(https_gcs, emulator) -> None:
    tls = https_gcs.tls
    assert emulator.url.startswith("http://") and emulator.ssl_context is None  # the default is unchanged
    with pytest.raises(ValueError, match="cert_file and key_file"):
        Emulator(scheme="https")
    with pytest.raises(ValueError, match="https"):
        Emulator(cert_file=tls.cert, key_file=tls.key)
    with pytest.raises(ValueError, match="scheme"):
        Emulator(scheme="ftp")
    with pytest.raises(ValueError, match="verify"):
        Emulator(scheme="https", cert_file=tls.cert, key_file=tls.key, ca=ssl._create_unverified_context())


def test_https_through_the_delay_line(https_gcs) -> None:
    rtt = 0.040
    with DelayLine("127.0.0.1", https_gcs.emulator.port, rtt_ms=rtt * 1000, scheme="https") as line, \
            requests.Session() as s:
        t = time.perf_counter()
        r = s.get(f"{line.url}/storage/v1/b/{https_gcs.bucket}/o", verify=str(https_gcs.ca), timeout=10)
        first = time.perf_counter() - t
        r.raise_for_status()
        t = time.perf_counter()
        s.get(f"{line.url}/storage/v1/b/{https_gcs.bucket}/o", verify=str(https_gcs.ca), timeout=10)
        again = time.perf_counter() - t
    # new connection: TCP handshake + TLS 1.3 handshake + the request = 3 round trips; kept alive: 1
    assert first >= 3 * rtt * 0.95, first
    assert rtt * 0.95 <= again < first, (again, first)


def test_make_tls_with_the_openssl_command(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    files = make_tls(tmp_path, method="openssl")
    ctx = files.client_context()
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv.load_cert_chain(files.cert, files.key)
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]

        def accept() -> None:
            c, _ = ls.accept()
            with srv.wrap_socket(c, server_side=True) as t:
                t.sendall(b"ok")

        th = threading.Thread(target=accept)
        th.start()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as t:
            assert t.recv(2) == b"ok"
        th.join()
