"""tests/support/delay_line.py: round trips take the configured rtt, bulk data is pipelined, memory is bounded."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    from tests.support.delay_line import RECV_SIZE, DelayLine, DelayLineProcess
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.delay_line import RECV_SIZE, DelayLine, DelayLineProcess


def _server(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    ls = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(c: socket.socket) -> None:
        with c:
            try:
                handler(c)
            except OSError:
                pass

    def loop() -> None:
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield ls.getsockname()[1]
    finally:
        stop.set()
        ls.close()


def _echo(c: socket.socket) -> None:
    while data := c.recv(1 << 20):
        c.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    yield from _server(_echo)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _ping(s: socket.socket) -> float:
    t = time.perf_counter()
    s.sendall(b"p")
    assert s.recv(16) == b"p"
    return time.perf_counter() - t


def test_round_trip_takes_the_configured_rtt(echo_port: int) -> None:
    rtt = 0.060
    with DelayLine("127.0.0.1", echo_port, rtt_ms=rtt * 1000) as line:
        assert line.url == f"http://127.0.0.1:{line.port}"
        t0 = time.perf_counter()
        with _connect(line.port) as s:
            first = _ping(s)  # the first bytes also wait out the modelled TCP handshake
            first_total = time.perf_counter() - t0
            rtts = [_ping(s) for _ in range(4)]
    assert first_total >= 2 * rtt * 0.95, first_total
    assert first < 2 * rtt + 0.2
    for r in rtts:
        assert rtt * 0.95 <= r < rtt + 0.1, rtts


def test_zero_rtt_and_no_handshake_pass_straight_through(echo_port: int) -> None:
    with DelayLine("127.0.0.1", echo_port, rtt_ms=0) as line, _connect(line.port) as s:
        assert max(_ping(s) for _ in range(3)) < 0.05
    with DelayLine("127.0.0.1", echo_port, rtt_ms=40, handshake=False) as line, _connect(line.port) as s:
        assert 0.038 <= _ping(s) < 0.04 + 0.1


def test_bulk_transfer_is_pipelined_not_stop_and_wait(echo_port: int) -> None:
    rtt, n = 0.050, 20 << 20
    payload = os.urandom(n)
    with DelayLine("127.0.0.1", echo_port, rtt_ms=rtt * 1000) as line, _connect(line.port) as s:
        _ping(s)  # connected, handshake modelled

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # the FIN travels through the line after the data

        t = time.perf_counter()
        sender = threading.Thread(target=send)
        sender.start()
        h, got = hashlib.sha256(), 0
        while data := s.recv(1 << 20):
            h.update(data)
            got += len(data)
        wall = time.perf_counter() - t
        sender.join()
    assert got == n and h.digest() == hashlib.sha256(payload).digest()
    stop_and_wait = n / RECV_SIZE * rtt  # one chunk per round trip: 4 s here
    assert rtt <= wall < stop_and_wait / 4, wall
    assert line.bytes == {"up": n + 1, "down": n + 1}


def test_memory_per_connection_is_bounded() -> None:
    n, limit = 32 << 20, RECV_SIZE * 2  # more than the kernel socket buffers on both sides hold

    def blast(c: socket.socket) -> None:
        c.sendall(bytes(n))

    gen = _server(blast)
    port = next(gen)
    try:
        with DelayLine("127.0.0.1", port, rtt_ms=10, max_buffer=limit) as line, _connect(port=line.port) as s:
            time.sleep(0.3)  # the client reads nothing yet: the line must stop reading the upstream
            peak = max((c.down.buffered for c in list(line._conns)), default=0)
            got = 0
            while got < n and (data := s.recv(1 << 20)):
                got += len(data)
    finally:
        gen.close()
    assert 0 < peak <= limit + RECV_SIZE
    assert got == n


def test_refused_upstream_closes_the_client() -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead = tmp.getsockname()[1]  # nothing listens here once closed
    with DelayLine("127.0.0.1", dead, rtt_ms=10) as line, _connect(line.port) as s:
        s.sendall(b"hello")
        try:
            assert s.recv(16) == b""
        except ConnectionResetError:
            pass


def test_process_form_runs_the_command_line(echo_port: int) -> None:
    with DelayLineProcess("127.0.0.1", echo_port, rtt_ms=40, scheme="https") as line:
        assert line.pid is not None and line.url == f"https://127.0.0.1:{line.port}"
        with _connect(line.port) as s:
            _ping(s)
            assert 0.038 <= _ping(s) < 0.04 + 0.1
    assert line.pid is None
