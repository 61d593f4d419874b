"""Tests for tests/support/fault_proxy.py against a tiny in-process HTTP/1.1 upstream."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

try:
    from tests.support.fault_proxy import FaultProxy
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.fault_proxy import FaultProxy

BLOB = random.Random(1234).randbytes(300_000)
OBJ_PATH = "/download/storage/v1/b/bkt/o/train%2Fshard-0001.tar?alt=media"
OTHER_PATH = "/download/storage/v1/b/bkt/o/val%2Fshard-0007.tar?alt=media"


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request handled
        self.peers: set[tuple[str, int]] = set()  # distinct client (proxy-side) connections

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: the proxy aborts upstream connections on purpose in some tests."""


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Upstream

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging."""

    def _record(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.command, self.path))
            self.server.peers.add(self.client_address)

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Authorization", self.headers.get("Authorization", ""))
        self.send_header("X-Echo-Range", self.headers.get("Range", ""))
        self.send_header("X-Echo-Custom", self.headers.get("X-Custom", ""))
        self.send_header("X-Echo-Host", self.headers.get("Host", ""))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, 50_000, 7_000):
                piece = BLOB[start : min(start + 7_000, 50_000)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/close"):
            self.close_connection = True
            self._send(200, b"bye", {"Connection": "close"})
            return
        range_header = self.headers.get("Range")
        if range_header is None:
            self._send(200, BLOB, {"Content-Type": "application/octet-stream"})
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if not m or m.group(1) == m.group(2) == "":
            self._send(416, b"bad range")
            return
        if m.group(1) == "":
            first, last = len(BLOB) - int(m.group(2)), len(BLOB) - 1
        else:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(BLOB) - 1, len(BLOB) - 1)
        self._send(206, BLOB[first : last + 1], {"Content-Range": f"bytes {first}-{last}/{len(BLOB)}"})

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        reply = {"method": self.command, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self._send(200, json.dumps(reply).encode(), {"Content-Type": "application/json"})

    do_PUT = do_POST


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as p:
        yield p
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy-")]


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=10)


def _get(conn: http.client.HTTPConnection, path: str = OBJ_PATH, **headers: str) -> tuple[int, bytes, object]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def test_forwards_get_range_and_headers_on_one_keepalive_connection(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    conn = _connect(proxy)
    status, body, resp = _get(conn, Authorization="Bearer tok-123", **{"X-Custom": "abc"})
    assert status == 200
    assert body == BLOB
    assert resp.getheader("Content-Length") == str(len(BLOB))
    assert resp.getheader("X-Echo-Authorization") == "Bearer tok-123"
    assert resp.getheader("X-Echo-Custom") == "abc"
    assert resp.getheader("X-Echo-Host") == proxy.url.removeprefix("http://")  # Host passed through
    sock = conn.sock

    for first, last in [(100, 199), (0, 0), (len(BLOB) - 10, len(BLOB) + 50)]:
        status, body, resp = _get(conn, Range=f"bytes={first}-{last}", Authorization="Bearer tok-123")
        assert status == 206
        assert body == BLOB[first : last + 1]
        assert resp.getheader("X-Echo-Range") == f"bytes={first}-{last}"
        assert resp.getheader("Content-Range") == f"bytes {first}-{min(last, len(BLOB) - 1)}/{len(BLOB)}"
    status, body, _ = _get(conn, Range="bytes=-5")
    assert (status, body) == (206, BLOB[-5:])

    assert conn.sock is sock  # the client connection was kept alive throughout
    assert len(upstream.peers) == 1  # ... and so was the proxy's upstream connection
    stats = proxy.stats
    assert stats["requests"] == stats["forwarded"] == 5
    assert stats["connections"] == 1
    assert upstream.seen == [("GET", OBJ_PATH)] * 5
    conn.close()


def test_head_post_put_and_chunked_upstream(proxy: FaultProxy, upstream: _Upstream) -> None:
    conn = _connect(proxy)
    conn.request("HEAD", OBJ_PATH)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(BLOB))
    assert resp.read() == b""

    for method, payload in [("POST", b"x" * 70_000), ("PUT", b"hello"), ("POST", b"")]:
        conn.request(method, "/upload/storage/v1/b/bkt/o?uploadType=media&name=a", body=payload)
        resp = conn.getresponse()
        assert resp.status == 200
        reply = json.loads(resp.read())
        assert reply == {
            "method": method,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }

    # Chunked request body is forwarded with a Content-Length.
    conn.request("PUT", "/upload/x", body=iter([b"abc", b"defg"]), encode_chunked=True)
    resp = conn.getresponse()
    assert json.loads(resp.read())["size"] == 7

    # Chunked upstream response is de-chunked and re-sent with a Content-Length.
    status, body, resp = _get(conn, "/chunked")
    assert status == 200
    assert body == BLOB[:50_000]
    assert resp.getheader("Content-Length") == "50000"
    assert resp.getheader("Transfer-Encoding") is None
    conn.close()


def test_upstream_close_reconnects(proxy: FaultProxy, upstream: _Upstream) -> None:
    conn = _connect(proxy)
    sock = None
    for _ in range(3):
        status, body, _ = _get(conn, "/close")
        assert (status, body) == (200, b"bye")
        sock = sock or conn.sock
        assert conn.sock is sock  # Connection: close from upstream is not propagated to the client
        status, body, _ = _get(conn, Range="bytes=5-9")
        assert (status, body) == (206, BLOB[5:10])
    assert len(upstream.peers) == 4  # one upstream connection per /close, plus the first
    assert proxy.stats["upstream_errors"] == 0
    conn.close()


def test_status_faults_then_success_on_same_connection(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.add_fault("status", count=2, status=503)
    proxy.add_fault("status", count=1, status=429)
    conn = _connect(proxy)
    conn.connect()
    sock = conn.sock
    results = []
    for _ in range(4):
        status, body, resp = _get(conn)
        results.append(status)
        if status == 429:
            assert resp.getheader("Retry-After") == "0"
        if status != 200:
            assert json.loads(body)["error"]["code"] == status
            assert resp.getheader("Content-Length") == str(len(body))
    assert results == [503, 503, 429, 200]
    assert conn.sock is sock
    stats = proxy.stats
    assert stats["status_503"] == 2
    assert stats["status_429"] == 1
    assert stats["requests"] == 4
    assert stats["forwarded"] == 1
    assert len(upstream.seen) == 1  # faulted requests never reach the upstream
    assert proxy.pending_faults == 0
    conn.close()


def test_reset_mid_body(proxy: FaultProxy) -> None:
    proxy.add_fault("reset_mid_body", count=1, fraction=0.5)
    conn = _connect(proxy)
    conn.request("GET", OBJ_PATH)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(BLOB))  # headers announce the full body
    received = bytearray()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while True:
            piece = resp.read(8192)
            if not piece:
                raise http.client.IncompleteRead(bytes(received))
            received += piece
    assert 0 < len(received) <= len(BLOB) // 2
    assert bytes(received) == BLOB[: len(received)]
    conn.close()

    stats = proxy.stats
    assert stats["reset_mid_body"] == 1
    assert stats["forwarded"] == 1
    conn = _connect(proxy)  # the next request is served normally
    assert _get(conn)[:2] == (200, BLOB)
    conn.close()


def test_reset_mid_body_on_range_with_zero_fraction(proxy: FaultProxy) -> None:
    proxy.add_fault("reset_mid_body", count=1, fraction=0.0)
    conn = _connect(proxy)
    conn.request("GET", OBJ_PATH, headers={"Range": "bytes=0-999"})
    resp = conn.getresponse()
    assert resp.status == 206
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()


def test_reset_before_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.add_fault("reset_before_response", count=1)
    conn = _connect(proxy)
    conn.request("GET", OBJ_PATH)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.getresponse()
    conn.close()
    assert upstream.seen == []
    assert proxy.stats["reset_before_response"] == 1
    assert proxy.stats["forwarded"] == 0
    conn = _connect(proxy)
    assert _get(conn)[:2] == (200, BLOB)
    conn.close()


def test_slow_first_byte(proxy: FaultProxy) -> None:
    delay = 0.3
    proxy.add_fault("slow_first_byte", count=1, delay=delay)
    conn = _connect(proxy)
    started = time.monotonic()
    status, body, _ = _get(conn, Range="bytes=10-19")
    elapsed = time.monotonic() - started
    assert (status, body) == (206, BLOB[10:20])
    assert elapsed >= delay
    assert proxy.stats["slow_first_byte"] == 1
    assert proxy.stats["forwarded"] == 1
    assert _get(conn)[:2] == (200, BLOB)  # the rule was consumed; the connection stays usable
    conn.close()


def test_match_filters_requests(proxy: FaultProxy) -> None:
    proxy.add_fault("status", count=1, status=500, match="train/shard-0001")  # matches the decoded path
    proxy.add_fault("status", count=1, status=408, match="val%2F")  # matches the raw path
    conn = _connect(proxy)
    assert _get(conn, "/download/storage/v1/b/bkt/o/unrelated?alt=media")[0] == 200
    assert _get(conn, OTHER_PATH)[0] == 408
    assert _get(conn, OTHER_PATH)[0] == 200
    assert _get(conn, OBJ_PATH)[0] == 500
    assert _get(conn, OBJ_PATH)[0] == 200
    assert proxy.stats["status_500"] == 1
    assert proxy.stats["status_408"] == 1
    conn.close()


def test_rules_consumed_in_order(proxy: FaultProxy) -> None:
    proxy.add_fault("status", count=1, status=503)
    proxy.add_fault("status", count=2, status=429)
    proxy.add_fault("status", count=1, status=500)
    conn = _connect(proxy)
    assert [_get(conn)[0] for _ in range(6)] == [503, 429, 429, 500, 200, 200]

    # A request consumes the first rule that matches, skipping earlier rules that do not.
    proxy.add_fault("status", count=1, status=503, match="val%2F")
    proxy.add_fault("status", count=1, status=500)
    assert _get(conn, OBJ_PATH)[0] == 500
    assert _get(conn, OBJ_PATH)[0] == 200
    assert _get(conn, OTHER_PATH)[0] == 503

    proxy.add_fault("status", count=5, status=503)
    proxy.clear_faults()
    assert proxy.pending_faults == 0
    assert _get(conn)[0] == 200
    conn.close()


def test_concurrent_connections_share_rules(proxy: FaultProxy) -> None:
    proxy.add_fault("status", count=7, status=503)
    statuses: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            conn = _connect(proxy)
            rng = random.Random(seed)
            for _ in range(5):
                first = rng.randrange(len(BLOB))
                status, body, _ = _get(conn, Range=f"bytes={first}-{first + 999}")
                if status == 206:
                    assert body == BLOB[first : first + 1000]
                with lock:
                    statuses.append(status)
            conn.close()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(statuses).count(503) == 7
    assert len(statuses) == 80
    stats = proxy.stats
    assert stats["requests"] == 80
    assert stats["forwarded"] == 73
    assert stats["status_503"] == 7


def test_stop_is_quick_and_closes_everything(upstream: _Upstream) -> None:
    proxy = FaultProxy(f"127.0.0.1:{upstream.server_address[1]}").start()
    port = int(proxy.url.rsplit(":", 1)[1])
    idle = [_connect(proxy) for _ in range(5)]
    for conn in idle:
        assert _get(conn, Range="bytes=0-9")[0] == 206  # leaves keep-alive connections open
    proxy.add_fault("slow_first_byte", count=1, delay=30.0)
    stuck = _connect(proxy)
    stuck.request("GET", OBJ_PATH)  # the proxy now sleeps for 30 s on this one
    time.sleep(0.1)

    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 5.0
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy-")]
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        stuck.getresponse()
    with pytest.raises(ConnectionError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    for conn in [*idle, stuck]:
        conn.close()
    proxy.stop()  # idempotent


def test_validation() -> None:
    with pytest.raises(ValueError):
        FaultProxy("http://10.1.2.3:4443")
    with pytest.raises(ValueError):
        FaultProxy("https://127.0.0.1:4443")
    with pytest.raises(ValueError):
        FaultProxy("storage.googleapis.com:443")
    proxy = FaultProxy("localhost:4443")
    with pytest.raises(RuntimeError):
        _ = proxy.url
    with pytest.raises(ValueError):
        proxy.add_fault("explode", count=1)
    with pytest.raises(ValueError):
        proxy.add_fault("status", count=1)
    with pytest.raises(ValueError):
        proxy.add_fault("reset_mid_body", count=1, fraction=1.5)
    proxy.stop()  # never started: harmless
