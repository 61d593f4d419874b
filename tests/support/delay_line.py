"""A user-space TCP delay line: a long link between a client and a loopback server, without netem.

``DelayLine(upstream_host, upstream_port, rtt_ms=50)`` listens on loopback and forwards every accepted
connection to the upstream. Every chunk read in either direction is stamped and released to the other side
one-way delay (rtt/2) later, whatever else is in flight: the data is pipelined like on a real long link,
so throughput is not limited to a chunk per delay. It knows nothing of the protocol (TLS, HTTP/1.1, HTTP/2
pass through untouched; certificates still name 127.0.0.1). Also modelled:

* the TCP handshake: bytes a client sends within one rtt of connecting leave as if sent after it (the
  client's connect() returns at once on loopback; on a real link it returns after one round trip);
* end of stream: a half-close (FIN) travels with the same delay, after the data before it;
* backpressure: at most ``max_buffer`` bytes wait per direction of a connection; past that the line stops
  reading that side and TCP flow control pushes back on the sender (bounded memory; like a TCP window, it
  also caps one connection's throughput at max_buffer / one-way delay, 320 MB/s at the defaults and 50 ms).

One selector thread serves every connection. Use it as a context manager::

    with DelayLine("127.0.0.1", emulator.port, rtt_ms=50, scheme="https") as line:
        requests.get(line.url + "/storage/v1/b", verify=ca)

``DelayLineProcess`` runs the same line in a child process (``python tests/support/delay_line.py``), so
its CPU is not the measuring process's. Command line::

    python tests/support/delay_line.py --upstream 127.0.0.1:4443 --rtt_ms 50 [--listen 127.0.0.1:0]
                                       [--max_buffer 8388608]

prints ``listening on HOST:PORT`` (flushed) once it accepts connections and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import errno
import heapq
import itertools
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["DelayLine", "DelayLineProcess", "main"]

RECV_SIZE = 256 * 1024
DEFAULT_MAX_BUFFER = 8 * 1024 * 1024
_EOF = b""  # queued marker: the source closed its sending side


class _Direction:
    """One way of one connection: chunks read from `src`, waiting to be written to `dst` when due."""

    __slots__ = ("conn", "src", "dst", "queue", "buffered", "reading", "eof_sent", "blocked", "scheduled",
                 "not_before")

    def __init__(self, conn: _Conn, src: socket.socket, dst: socket.socket, not_before: float) -> None:
        self.conn, self.src, self.dst = conn, src, dst
        self.queue: collections.deque[list] = collections.deque()  # [due, memoryview or _EOF]
        self.buffered = 0
        self.reading = True  # src not yet at EOF
        self.eof_sent = False  # dst shut down for writing
        self.blocked = False  # dst's send buffer is full: wait for EVENT_WRITE
        self.scheduled: float | None = None  # due time of the heap entry for this direction
        self.not_before = not_before  # data read earlier leaves as if read at this time (the handshake)


class _Conn:
    """A client socket, its upstream socket and the two directions between them."""

    __slots__ = ("client", "upstream", "up", "down", "connected", "closed", "masks")

    def __init__(self, client: socket.socket, upstream: socket.socket, handshake_until: float) -> None:
        self.client, self.upstream = client, upstream
        self.up = _Direction(self, client, upstream, handshake_until)  # client -> upstream
        self.down = _Direction(self, upstream, client, 0.0)  # upstream -> client
        self.connected = False  # the non-blocking connect to the upstream finished
        self.closed = False
        self.masks: dict[socket.socket, int] = {client: 0, upstream: 0}


class DelayLine:
    """A loopback TCP forwarder to host:port that delays each direction by rtt_ms / 2 (pipelined)."""

    def __init__(self, upstream_host: str, upstream_port: int, *, rtt_ms: float = 50.0,
                 listen_host: str = "127.0.0.1", listen_port: int = 0, scheme: str = "http",
                 max_buffer: int = DEFAULT_MAX_BUFFER, handshake: bool = True) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be >= 0, got {rtt_ms}")
        if max_buffer < RECV_SIZE:
            raise ValueError(f"max_buffer must be >= {RECV_SIZE}, got {max_buffer}")
        self.upstream = (upstream_host, int(upstream_port))
        self.rtt_s = rtt_ms / 1000.0
        self.delay_s = self.rtt_s / 2
        self.scheme = scheme
        self.max_buffer = max_buffer
        self.handshake = handshake
        self._listen = (listen_host, int(listen_port))
        self._sel: selectors.BaseSelector | None = None
        self._lsock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._conns: set[_Conn] = set()
        self._heap: list[tuple[float, int, _Direction]] = []
        self._seq = itertools.count()
        self.connections = 0  # accepted so far
        self.bytes = {"up": 0, "down": 0}  # forwarded so far
        self.host, self.port = listen_host, 0

    # -- public -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """scheme://host:port of the listening side."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> DelayLine:
        """Binds the listening socket and starts the forwarding thread."""
        if self._thread is not None:
            return self
        family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(self._listen)
        self._lsock.listen(512)
        self._lsock.setblocking(False)
        self.host, self.port = self._lsock.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="delay-line", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops forwarding and closes every socket (connections in progress are cut)."""
        if self._thread is None:
            return
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=10)
        self._thread = None
        for c in list(self._conns):
            self._abort(c)
        for s in (self._lsock, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def __enter__(self) -> DelayLine:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        sel = self._sel
        while not self._stop:
            timeout = None
            if self._heap:
                timeout = max(0.0, self._heap[0][0] - time.monotonic())
            for key, mask in sel.select(timeout):
                data = key.data
                if data == "listen":
                    self._accept()
                elif data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                else:
                    conn, sock = data
                    if conn.closed:
                        continue
                    if mask & selectors.EVENT_WRITE:
                        if sock is conn.upstream and not conn.connected:
                            self._finish_connect(conn)
                        else:
                            d = conn.up if sock is conn.upstream else conn.down
                            d.blocked = False
                            self._flush(d)
                    if mask & selectors.EVENT_READ and not conn.closed:
                        self._read(conn.up if sock is conn.client else conn.down)
                    if not conn.closed:
                        self._update(conn)
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                due, _, d = heapq.heappop(self._heap)
                if d.scheduled != due or d.conn.closed:
                    continue  # stale entry
                d.scheduled = None
                self._flush(d)
                if not d.conn.closed:
                    self._update(d.conn)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            conn = _Conn(client, upstream, now + self.rtt_s if self.handshake else 0.0)
            err = upstream.connect_ex(self.upstream)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                client.close()
                upstream.close()
                continue
            self.connections += 1
            self._conns.add(conn)
            conn.masks[upstream] = selectors.EVENT_WRITE  # tells when the connect finished
            self._sel.register(upstream, selectors.EVENT_WRITE, (conn, upstream))
            conn.masks[client] = selectors.EVENT_READ
            self._sel.register(client, selectors.EVENT_READ, (conn, client))

    def _finish_connect(self, conn: _Conn) -> None:
        err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._abort(conn)
            return
        conn.connected = True
        self._flush(conn.up)

    def _read(self, d: _Direction) -> None:
        """Reads what the source has (up to the buffer limit) and queues it, due one-way delay from now."""
        while d.reading and d.buffered < self.max_buffer:
            try:
                chunk = d.src.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._abort(d.conn)
                return
            due = max(time.monotonic(), d.not_before) + self.delay_s
            if not chunk:
                d.reading = False
                d.queue.append([due, _EOF])
            else:
                d.queue.append([due, memoryview(chunk)])
                d.buffered += len(chunk)
                self.bytes["up" if d is d.conn.up else "down"] += len(chunk)
            if len(d.queue) == 1:
                self._flush(d)
            if d.conn.closed or len(chunk) < RECV_SIZE:
                return

    def _flush(self, d: _Direction) -> None:
        """Writes every chunk that is due; schedules the next one or waits for the socket to drain."""
        conn = d.conn
        if conn.closed or d.blocked or (d is conn.up and not conn.connected):
            return
        now = time.monotonic()
        q = d.queue
        while q:
            due, data = q[0]
            if due > now:
                if d.scheduled != due:
                    d.scheduled = due
                    heapq.heappush(self._heap, (due, next(self._seq), d))
                return
            if data is _EOF:
                q.popleft()
                try:
                    d.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    self._abort(conn)
                    return
                d.eof_sent = True
                if conn.up.eof_sent and conn.down.eof_sent:
                    self._abort(conn)  # both halves done: an orderly close
                return
            try:
                n = d.dst.send(data)
            except (BlockingIOError, InterruptedError):
                d.blocked = True
                return
            except OSError:
                self._abort(conn)
                return
            d.buffered -= n
            if n < len(data):
                q[0][1] = data[n:]
                d.blocked = True
                return
            q.popleft()

    def _update(self, conn: _Conn) -> None:
        """Sets each socket's selector interest from the state of the two directions."""
        for sock, out_dir, in_dir in ((conn.client, conn.up, conn.down), (conn.upstream, conn.down, conn.up)):
            mask = 0
            if sock is conn.upstream and not conn.connected:
                mask = selectors.EVENT_WRITE
            else:
                if out_dir.reading and out_dir.buffered < self.max_buffer:
                    mask |= selectors.EVENT_READ
                if in_dir.blocked:
                    mask |= selectors.EVENT_WRITE
            if mask != conn.masks[sock]:
                if conn.masks[sock] == 0:
                    self._sel.register(sock, mask, (conn, sock))
                elif mask == 0:
                    self._sel.unregister(sock)
                else:
                    self._sel.modify(sock, mask, (conn, sock))
                conn.masks[sock] = mask

    def _abort(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if conn.masks.get(sock):
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()
        conn.up.queue.clear()
        conn.down.queue.clear()


class DelayLineProcess:
    """The same delay line in a child process (its CPU is not this process's); a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int, *, rtt_ms: float = 50.0,
                 listen_host: str = "127.0.0.1", scheme: str = "http", max_buffer: int = DEFAULT_MAX_BUFFER,
                 handshake: bool = True) -> None:
        self.args = [sys.executable, str(Path(__file__).resolve()), "--upstream", f"{upstream_host}:{upstream_port}",
                     "--listen", f"{listen_host}:0", "--rtt_ms", str(rtt_ms), "--max_buffer", str(max_buffer)]
        if not handshake:
            self.args.append("--no_handshake")
        self.rtt_s = rtt_ms / 1000.0
        self.scheme = scheme
        self.host, self.port = listen_host, 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """scheme://host:port of the listening side."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> DelayLineProcess:
        """Starts the child and waits for its `listening on` line."""
        from tests.support.listening_child import start_listening_child  # the parent only (see close)

        self._proc, self.host, self.port = start_listening_child(self.args, "delay line", timeout)
        return self

    def close(self) -> None:
        """Stops the child."""
        if self._proc is None:
            return
        from tests.support.listening_child import stop_child  # the parent only: the child runs this file as a script

        stop_child(self._proc)
        self._proc = None

    def __enter__(self) -> DelayLineProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    """Command line: run a delay line until SIGTERM / SIGINT."""
    ap = argparse.ArgumentParser(description="A loopback TCP delay line (each direction delayed by rtt/2).")
    ap.add_argument("--upstream", type=_hostport, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any free)")
    ap.add_argument("--rtt_ms", type=float, default=50.0, help="round-trip time added (each way: half)")
    ap.add_argument("--max_buffer", type=int, default=DEFAULT_MAX_BUFFER, help="bytes queued per direction")
    ap.add_argument("--no_handshake", action="store_true", help="do not model the TCP handshake's round trip")
    args = ap.parse_args(argv)
    line = DelayLine(*args.upstream, rtt_ms=args.rtt_ms, listen_host=args.listen[0], listen_port=args.listen[1],
                     max_buffer=args.max_buffer, handshake=not args.no_handshake)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with line:
        host = f"[{line.host}]" if ":" in line.host else line.host
        print(f"listening on {host}:{line.port}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
