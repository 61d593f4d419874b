"""Fault-injecting HTTP/1.1 reverse proxy for integration tests (standard library only).

Put a :class:`FaultProxy` between an HTTP client and a loopback upstream (e.g. fake-gcs-server), point
the client at :attr:`FaultProxy.url`, and queue faults with :meth:`FaultProxy.add_fault`::

    with FaultProxy("http://127.0.0.1:4443") as proxy:
        proxy.add_fault("status", count=2, status=503, match="/o/train%2F")
        proxy.add_fault("reset_mid_body", count=1, fraction=0.25)
        ...  # run the client against proxy.url
        assert proxy.stats["status_503"] == 2

Fault kinds (``count`` = how many matching requests the rule fires on, in arrival order):

* ``"status"``: answer at once with ``status`` and a short JSON body (Content-Length, keep-alive kept);
  the upstream is not contacted. 429 answers carry ``Retry-After: 0``.
* ``"reset_mid_body"``: forward, send the headers and ``fraction`` of the body, then abort the client
  connection with a TCP RST.
* ``"reset_before_response"``: read the request, then RST the client connection without replying.
* ``"slow_first_byte"``: wait ``delay`` seconds before sending anything back, then forward normally.
* ``"corrupt_body"``: forward, but flip the bits of the first body byte (length unchanged).
* ``"ignore_range"``: forward without the request's Range header (the upstream answers 200, whole object).
* ``"shift_range"``: forward, but answer a 206 with a Content-Range that starts one byte later (body unchanged).
* ``"stall_mid_body"``: forward, send the headers and ``fraction`` of the body, then send nothing for ``delay``
  seconds and close the connection (for this kind ``delay`` is the stall, not a wait before acting).

``delay`` is honoured by every kind (it is waited before the fault acts). ``match`` is a substring of
the request target (path and query), tested against both the raw and the percent-decoded form, so
``match="dir/obj"`` also hits ``/o/dir%2Fobj``. A request consumes at most one rule: the first queued
rule that has count left and matches.

Everything else is forwarded faithfully: method, request target, headers (Host, Authorization, Range,
...) and body; the response status, headers and body come back unchanged except for hop-by-hop headers.
An upstream response that is chunked or delimited by connection close is de-chunked / buffered and sent
to the client with a Content-Length. Request bodies may use Content-Length or chunked encoding (the
latter is forwarded with a Content-Length); ``Expect: 100-continue`` is answered by the proxy itself.

Each client connection gets one daemon thread and its own persistent upstream connection, re-opened
when the upstream closed it. Only the configured loopback upstream is ever connected to.
"""

from __future__ import annotations

import http
import ipaddress
import json
import selectors
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, replace
from types import TracebackType
from typing import BinaryIO

try:  # Linux: lets reset_mid_body wait until the partial body has been delivered before the RST.
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - non-Linux
    fcntl = None  # type: ignore[assignment]
    _TIOCOUTQ = None

__all__ = ["FAULT_KINDS", "Exchange", "FaultProxy"]

FAULT_KINDS = ("status", "reset_mid_body", "reset_before_response", "slow_first_byte", "corrupt_body",
               "ignore_range", "shift_range", "stall_mid_body")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
_MAX_LINE = 65536  # longest request/status/header line accepted
_MAX_HEADERS = 256
_CHUNK = 256 * 1024  # streaming unit for response bodies
_UPSTREAM_TIMEOUT = 60.0  # seconds; bounds a hung upstream
_DRAIN_TIMEOUT = 2.0  # reset_mid_body: how long to wait for the partial body to be acknowledged
_JOIN_TIMEOUT = 2.0  # stop(): total budget for joining connection threads

Headers = list[tuple[str, str]]


class _Abort(Exception):
    """The client connection must be dropped (client gone, protocol error, proxy stopping)."""


class _UpstreamClosed(Exception):
    """The upstream closed the connection before sending a response."""


class _BadMessage(Exception):
    """A malformed HTTP message was received."""


@dataclass(frozen=True)
class Exchange:
    """One relayed request: method, percent-decoded target (path and query), status, body bytes sent back."""

    method: str
    target: str
    status: int
    body_bytes: int


@dataclass
class _FaultRule:
    kind: str
    remaining: int
    match: str | None
    status: int | None
    delay: float
    fraction: float

    def matches(self, target: str, decoded_target: str) -> bool:
        """Whether this rule applies to a request with the given (raw and decoded) target."""
        return self.match is None or self.match in target or self.match in decoded_target

    @property
    def counter(self) -> str:
        """Name of the stats counter incremented when this rule fires."""
        return f"status_{self.status}" if self.kind == "status" else self.kind


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: Headers
    keep_alive: bool
    has_body: bool


def _values(headers: Headers, name: str) -> list[str]:
    """All values of header ``name`` (case-insensitive), in order."""
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def _tokens(headers: Headers, name: str) -> set[str]:
    """Lower-cased comma-separated tokens of all ``name`` headers."""
    return {t.strip().lower() for v in _values(headers, name) for t in v.split(",") if t.strip()}


def _content_length(headers: Headers) -> int | None:
    """The Content-Length of a message, None if absent; raises _BadMessage if invalid."""
    values = {v.strip() for v in _values(headers, "content-length")}
    if not values:
        return None
    if len(values) != 1:
        raise _BadMessage("conflicting Content-Length headers")
    (value,) = values
    if not value.isdigit():
        raise _BadMessage(f"bad Content-Length {value!r}")
    return int(value)


def _wants_keep_alive(version: str, headers: Headers) -> bool:
    """HTTP persistence rules for a message of the given version and headers."""
    tokens = _tokens(headers, "connection")
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _strip_hop_by_hop(headers: Headers) -> Headers:
    """Headers minus hop-by-hop ones (including those named in Connection)."""
    drop = _HOP_BY_HOP | _tokens(headers, "connection")
    return [(k, v) for k, v in headers if k.lower() not in drop]


def _readline(rfile: BinaryIO) -> bytes:
    """One line (with terminator); b"" at EOF; raises _BadMessage if over-long."""
    line = rfile.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _BadMessage("line too long")
    return line


def _read_headers(rfile: BinaryIO) -> Headers:
    """Header fields up to and including the blank line."""
    headers: Headers = []
    while True:
        line = _readline(rfile)
        if not line:
            raise _BadMessage("EOF inside headers")
        if line in (b"\r\n", b"\n"):
            return headers
        if len(headers) >= _MAX_HEADERS:
            raise _BadMessage("too many headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _BadMessage(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip()))


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes; raises _BadMessage on a premature EOF."""
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise _BadMessage(f"EOF after {len(data)} of {n} body bytes")
    return data


def _read_chunked(rfile: BinaryIO) -> bytes:
    """A whole chunked body (trailers discarded), de-chunked."""
    parts: list[bytes] = []
    while True:
        line = _readline(rfile)
        if not line:
            raise _BadMessage("EOF inside chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadMessage(f"bad chunk size {size_text[:40]!r}") from None
        if size == 0:
            _read_headers(rfile)  # trailer section
            return b"".join(parts)
        parts.append(_read_exact(rfile, size))
        if _readline(rfile) not in (b"\r\n", b"\n"):
            raise _BadMessage("missing CRLF after chunk")


def _encode_head(start_line: str, headers: Headers) -> bytes:
    """Serialize a start line and header fields, including the terminating blank line."""
    lines = [start_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _shifted_range(value: str) -> str:
    """'bytes a-b/n' -> 'bytes a+1-b/n' (a range that is not the one asked for)."""
    unit, _, rest = value.partition(" ")
    first, sep, tail = rest.partition("-")
    return f"{unit} {int(first) + 1}{sep}{tail}" if first.isdigit() else value


def _reason(code: int) -> str:
    """Standard reason phrase for a status code."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _parse_upstream(upstream: str) -> tuple[str, int]:
    """(host, port) of a loopback ``http://host:port`` or ``host:port`` upstream; ValueError otherwise."""
    raw = upstream if "://" in upstream else f"http://{upstream}"
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme != "http":
        raise ValueError(f"only plain http upstreams are supported, got {upstream!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"upstream must not have a path or query, got {upstream!r}")
    host = parts.hostname
    port = parts.port or 80
    if not host:
        raise ValueError(f"upstream has no host: {upstream!r}")
    if host == "localhost":
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"upstream host must be a loopback IP or 'localhost', got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"upstream must be on loopback, got {host!r}")
    return str(address), port


def _shutdown_quietly(sock: socket.socket | None) -> None:
    """shutdown(SHUT_RDWR) ignoring errors; wakes a thread blocked on the socket."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _close_quietly(obj: socket.socket | BinaryIO | None) -> None:
    """close() ignoring errors."""
    if obj is not None:
        try:
            obj.close()
        except OSError:
            pass


class _ClientConnection:
    """One accepted client connection, served sequentially by its own thread."""

    def __init__(self, proxy: FaultProxy, sock: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.sock = sock
        self.rfile: BinaryIO = sock.makefile("rb")
        self.lock = threading.Lock()  # guards socket teardown against stop()
        self.closed = False
        self.upstream: socket.socket | None = None
        self.upstream_rfile: BinaryIO | None = None
        self.thread = threading.Thread(target=self.run, name=f"fault-proxy-conn-{number}", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve requests until the client goes away, a fault ends the connection, or the proxy stops."""
        try:
            while not self.proxy._stopping.is_set():
                if not self._serve_one():
                    break
        except (_Abort, _BadMessage, OSError, ValueError):
            pass
        finally:
            self.close()
            self.proxy._forget(self)

    def interrupt(self) -> None:
        """Wake the serving thread (called by stop()); it then closes everything itself."""
        with self.lock:
            if not self.closed:
                _shutdown_quietly(self.sock)
                _shutdown_quietly(self.upstream)

    def close(self) -> None:
        """Close client and upstream sockets (idempotent)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            _close_quietly(self.rfile)
            _close_quietly(self.sock)
            self._close_upstream_locked()

    def _close_upstream(self) -> None:
        with self.lock:
            self._close_upstream_locked()

    def _close_upstream_locked(self) -> None:
        _close_quietly(self.upstream_rfile)
        _close_quietly(self.upstream)
        self.upstream = None
        self.upstream_rfile = None

    def _reset(self) -> None:
        """Abort the client connection with a TCP RST (SO_LINGER on, zero timeout, close)."""
        with self.lock:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds (at least), unless the proxy stops first (then _Abort)."""
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if self.proxy._stopping.wait(remaining):
                raise _Abort("proxy stopping")

    def _wait_delivered(self) -> None:
        """Best effort: wait until everything sent to the client has been acknowledged."""
        if fcntl is None or _TIOCOUTQ is None:
            return
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        while time.monotonic() < deadline and not self.proxy._stopping.is_set():
            try:
                raw = fcntl.ioctl(self.sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
            except (OSError, ValueError):
                return
            if struct.unpack("i", raw)[0] <= 0:
                return
            time.sleep(0.002)

    # -- request handling ----------------------------------------------------------------------------

    def _serve_one(self) -> bool:
        """Handle one request; return whether the client connection stays open."""
        try:
            request = self._read_request_head()
        except _BadMessage:
            self._send_simple(400, keep_alive=False)
            return False
        if request is None:
            return False
        proxy = self.proxy
        proxy._count("requests")
        with proxy._lock:
            proxy._last_headers = {k.lower(): v for k, v in request.headers}
        fault = proxy._take_fault(request.target)
        if request.has_body and "100-continue" in _tokens(request.headers, "expect"):
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = self._read_request_body(request)
        except _BadMessage:
            self._send_simple(400, keep_alive=False)
            return False
        if fault is not None:
            proxy._count(fault.counter)
            if fault.delay > 0 and fault.kind != "stall_mid_body":
                self._sleep(fault.delay)
            if fault.kind == "reset_before_response":
                self._reset()
                return False
            if fault.kind == "status":
                assert fault.status is not None
                extra = [("Retry-After", "0")] if fault.status == 429 else []
                self._send_simple(
                    fault.status,
                    keep_alive=request.keep_alive,
                    head_only=request.method == "HEAD",
                    extra=extra,
                )
                return request.keep_alive
        return self._forward(request, body, fault)

    def _read_request_head(self) -> _Request | None:
        """Parse the next request line and headers; None on a clean EOF between requests."""
        line = _readline(self.rfile)
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between requests
            line = _readline(self.rfile)
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadMessage(f"bad request line {line[:80]!r}")
        method, target, version = parts
        headers = _read_headers(self.rfile)
        has_body = "chunked" in _tokens(headers, "transfer-encoding") or bool(_content_length(headers))
        return _Request(method, target, version, headers, _wants_keep_alive(version, headers), has_body)

    def _read_request_body(self, request: _Request) -> bytes:
        """The request body (de-chunked if needed)."""
        if "chunked" in _tokens(request.headers, "transfer-encoding"):
            return _read_chunked(self.rfile)
        return _read_exact(self.rfile, _content_length(request.headers) or 0)

    def _send_simple(
        self, code: int, *, keep_alive: bool, head_only: bool = False, extra: Headers | None = None
    ) -> None:
        """Send a small proxy-generated JSON response (GCS error shape)."""
        payload = b""
        headers: Headers = []
        if code not in (204, 304):
            message = f"fault-proxy: injected {code} {_reason(code)}"
            payload = json.dumps({"error": {"code": code, "message": message}}).encode()
            headers = [
                ("Content-Type", "application/json; charset=UTF-8"),
                ("Content-Length", str(len(payload))),
            ]
        headers.extend(extra or [])
        if not keep_alive:
            headers.append(("Connection", "close"))
        head = _encode_head(f"HTTP/1.1 {code} {_reason(code)}", headers)
        try:
            self.sock.sendall(head if head_only else head + payload)
        except OSError:
            raise _Abort("client gone") from None

    # -- forwarding ----------------------------------------------------------------------------------

    def _connect_upstream(self) -> None:
        sock = socket.create_connection(self.proxy._upstream_addr, timeout=_UPSTREAM_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            if self.closed:
                sock.close()
                raise _Abort("proxy stopping")
            self.upstream = sock
            self.upstream_rfile = sock.makefile("rb")

    def _exchange(self, data: bytes) -> tuple[str, int, str, Headers]:
        """Send a request upstream and read the final response head, reconnecting once if stale."""
        for attempt in range(2):
            fresh = self.upstream is None
            if fresh:
                self._connect_upstream()
            assert self.upstream is not None and self.upstream_rfile is not None
            try:
                self.upstream.sendall(data)
                return self._read_response_head()
            except TimeoutError:
                raise
            except (_UpstreamClosed, ConnectionError):
                # A kept-alive upstream connection may have been closed by the upstream meanwhile.
                self._close_upstream()
                if fresh or attempt or self.proxy._stopping.is_set():
                    raise
        raise AssertionError("unreachable")

    def _read_response_head(self) -> tuple[str, int, str, Headers]:
        """Status line and headers of the next final (non-1xx) upstream response."""
        assert self.upstream_rfile is not None
        while True:
            line = _readline(self.upstream_rfile)
            if not line:
                raise _UpstreamClosed()
            version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
            code_text, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code_text.isdigit():
                raise _BadMessage(f"bad status line {line[:80]!r}")
            code = int(code_text)
            headers = _read_headers(self.upstream_rfile)
            if code == 101:
                raise _BadMessage("protocol upgrades are not supported")
            if code >= 200:
                return version, code, reason or _reason(code), headers

    def _forward(self, request: _Request, body: bytes, fault: _FaultRule | None) -> bool:
        """Forward one request upstream and relay the response; return whether to keep the client."""
        proxy = self.proxy
        out_headers = _strip_hop_by_hop(request.headers)
        if fault is not None and fault.kind == "ignore_range":
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "range"]
        if "chunked" in _tokens(request.headers, "transfer-encoding"):
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            out_headers.append(("Content-Length", str(len(body))))
        data = _encode_head(f"{request.method} {request.target} HTTP/1.1", out_headers) + body
        try:
            version, code, reason, headers = self._exchange(data)
        except (OSError, _UpstreamClosed, _BadMessage):
            if proxy._stopping.is_set():
                raise _Abort("proxy stopping") from None
            proxy._count("upstream_errors")
            self._close_upstream()
            self._send_simple(502, keep_alive=False, head_only=request.method == "HEAD")
            return False
        proxy._count("forwarded")
        assert self.upstream_rfile is not None
        urfile = self.upstream_rfile

        upstream_keep = _wants_keep_alive(version, headers)
        resp_headers = _strip_hop_by_hop(headers)
        body_buffer: bytes | None = None
        length: int | None
        try:
            if request.method == "HEAD" or code in (204, 304):
                length = 0
            elif "chunked" in _tokens(headers, "transfer-encoding"):
                body_buffer = _read_chunked(urfile)
            elif (length := _content_length(headers)) is None:
                body_buffer = urfile.read()  # delimited by connection close
                upstream_keep = False
        except (OSError, _BadMessage):
            proxy._count("upstream_errors")
            self._close_upstream()
            self._send_simple(502, keep_alive=False, head_only=request.method == "HEAD")
            return False
        if body_buffer is not None:
            length = len(body_buffer)
            resp_headers = [(k, v) for k, v in resp_headers if k.lower() != "content-length"]
            resp_headers.append(("Content-Length", str(length)))
        assert length is not None
        if not request.keep_alive:
            resp_headers.append(("Connection", "close"))
        if fault is not None and fault.kind == "shift_range":
            resp_headers = [(k, _shifted_range(v) if k.lower() == "content-range" else v) for k, v in resp_headers]
        head = _encode_head(f"HTTP/1.1 {code} {reason}", resp_headers)

        resetting = fault is not None and fault.kind in ("reset_mid_body", "stall_mid_body")
        to_send = min(length, int(length * fault.fraction)) if resetting and fault is not None else length
        sent = 0
        pending = head
        try:
            while sent < to_send:
                want = min(_CHUNK, to_send - sent)
                if body_buffer is not None:
                    piece = body_buffer[sent : sent + want]
                else:
                    try:
                        piece = urfile.read(want)
                    except OSError:
                        piece = b""
                    if not piece:  # upstream broke off mid-body: the client must see a short body too
                        proxy._count("upstream_errors")
                        if pending:
                            self.sock.sendall(pending)
                        self._close_upstream()
                        return False
                if sent == 0 and piece and fault is not None and fault.kind == "corrupt_body":
                    piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
                self.sock.sendall(pending + piece if pending else piece)
                pending = b""
                sent += len(piece)
            if pending:
                self.sock.sendall(pending)
        except OSError:
            raise _Abort("client gone") from None

        proxy._record(Exchange(request.method, urllib.parse.unquote(request.target), code, sent))
        if resetting and fault is not None and fault.kind == "stall_mid_body":
            self._close_upstream()
            self._sleep(fault.delay)  # the client sees a connection that went silent
            return False
        if resetting:
            self._close_upstream()  # the rest of the upstream body is abandoned
            self._wait_delivered()
            self._reset()
            return False
        if not upstream_keep:
            self._close_upstream()
        return request.keep_alive


class FaultProxy:
    """Fault-injecting HTTP/1.1 reverse proxy in front of one loopback upstream (for tests)."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure the proxy; nothing listens until start()."""
        self._upstream_addr = _parse_upstream(upstream)
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._rules: list[_FaultRule] = []
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "forwarded",
                "connections",
                "upstream_errors",
                "status_503",
                "status_429",
                "reset_mid_body",
                "slow_first_byte",
                "reset_before_response",
                "corrupt_body",
            ),
            0,
        )
        self._last_headers: dict[str, str] = {}
        self._exchanges: list[Exchange] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[_ClientConnection] = set()
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind the listening socket and start accepting connections; returns self."""
        with self._lock:
            if self._started:
                raise RuntimeError("FaultProxy can only be started once")
            self._started = True
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.create_server((self._host, self._port), family=family, backlog=512)
        listener.setblocking(False)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wakeup = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fault-proxy-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and all client connections, and join the proxy's threads (bounded)."""
        if not self._started or self._stopping.is_set():
            self._stopping.set()
            return
        self._stopping.set()
        if self._wakeup is not None:
            try:
                self._wakeup[1].send(b"x")
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.interrupt()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for conn in connections:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
            conn.close()  # in case the thread is wedged somewhere unexpected
        if self._wakeup is not None:
            for sock in self._wakeup:
                _close_quietly(sock)

    def __enter__(self) -> FaultProxy:
        """Start the proxy (if not yet started) and return it."""
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the proxy."""
        self.stop()

    @property
    def url(self) -> str:
        """Base URL clients should use, e.g. ``http://127.0.0.1:40123``."""
        if self._listener is None:
            raise RuntimeError("FaultProxy is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def last_headers(self) -> dict[str, str]:
        """Headers of the most recent request, names lower-cased."""
        with self._lock:
            return dict(self._last_headers)

    @property
    def port(self) -> int:
        """Listening port (0 before start() when an ephemeral port was requested)."""
        return self._port

    # -- faults and stats ----------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        count: int,
        match: str | None = None,
        status: int | None = None,
        delay: float = 0.0,
        fraction: float = 0.5,
    ) -> None:
        """Queue a rule that fires on the next ``count`` requests whose target contains ``match``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count < 0:
            raise ValueError("count must be >= 0")
        if kind == "status":
            if status is None or not 200 <= status <= 599:
                raise ValueError("a 'status' fault needs status=<200..599>")
        elif status is not None:
            raise ValueError(f"status= only applies to 'status' faults, not {kind!r}")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if count == 0:
            return
        rule = _FaultRule(kind, count, match, status, float(delay), float(fraction))
        with self._lock:
            self._rules.append(rule)

    def clear_faults(self) -> None:
        """Drop every queued fault rule (counters are kept)."""
        with self._lock:
            self._rules.clear()

    @property
    def pending_faults(self) -> int:
        """Total number of fault firings still queued."""
        with self._lock:
            return sum(rule.remaining for rule in self._rules)

    @property
    def stats(self) -> dict[str, int]:
        """Snapshot of the counters ("requests", "forwarded", "status_<code>", one per fault kind, ...)."""
        with self._lock:
            return dict(self._stats)

    @property
    def exchanges(self) -> list[Exchange]:
        """Every forwarded request whose response body was relayed (in part, for a mid-body fault), in order."""
        with self._lock:
            return list(self._exchanges)

    # -- internals -----------------------------------------------------------------------------------

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] = self._stats.get(name, 0) + 1

    def _take_fault(self, target: str) -> _FaultRule | None:
        """Consume one firing of the first queued rule matching ``target``."""
        decoded = urllib.parse.unquote(target)
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.remaining > 0 and rule.matches(target, decoded):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        del self._rules[index]
                    return replace(rule)
        return None

    def _forget(self, conn: _ClientConnection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wakeup is not None
        listener = self._listener
        number = 0
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wakeup[0], selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is not listener:
                            continue
                        try:
                            sock, _addr = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            if self._stopping.is_set():
                                return
                            time.sleep(0.01)  # e.g. EMFILE: back off instead of spinning
                            continue
                        if self._stopping.is_set():
                            _close_quietly(sock)
                            return
                        sock.settimeout(None)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        number += 1
                        conn = _ClientConnection(self, sock, number)
                        with self._lock:
                            self._connections.add(conn)
                            self._stats["connections"] += 1
                        conn.thread.start()
            finally:
                _close_quietly(listener)
