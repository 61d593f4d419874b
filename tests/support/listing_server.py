"""A GCS-like listing server: the JSON API's objects.list over sorted in-memory names, with a fixed latency.

fake-gcs-server walks its whole bucket for every list request, so a page costs time in proportion to the
bucket; Google Cloud Storage answers a page in tens of milliseconds whatever the bucket holds, and answers
concurrent requests concurrently. This server models that: each bucket is a sorted list of names (Python
string order = code-point order = the UTF-8 byte order GCS sorts by), a request is answered with bisect in
time that does not grow with the bucket, and every request sleeps ``latency_ms`` before answering (a sleep,
so it costs no CPU). It is a threaded HTTP/1.1 server (keep-alive, one thread per connection), so requests
from several client connections overlap as they do against GCS.

What it implements: ``GET /storage/v1/b/<bucket>/o`` with

* ``prefix``: names that start with it;
* ``startOffset`` (inclusive) and ``endOffset`` (exclusive): names in [startOffset, endOffset);
* ``delimiter``: a name whose remainder after ``prefix`` holds the delimiter is rolled up into
  ``prefixes`` (prefix + remainder up to and including the delimiter), once per page; a rolled-up prefix
  is reported when at least one object in the requested range rolls into it;
* ``maxResults`` (default and cap 1000): items and prefixes together, as GCS counts them; a page never ends
  inside a rolled-up prefix, so no prefix is repeated on the next page;
* ``pageToken``: opaque (base64 of the next name); ``nextPageToken`` only when more entries remain;
* ``fields``: the subfields named in ``items(...)`` are the only ones each item carries; without a mask,
  items carry a fuller resource (kind, id, bucket, contentType, ...), as GCS sends them.

Sizes and generations are derived from each name's position (stable for a given name list). ``GET
/_sim/stats`` answers ``{"requests", "empty_pages", "items", "prefixes", "max_in_flight"}`` (most requests
sleeping at once) (``?reset=1`` zeroes them after
reading); stats requests are not counted. Unknown buckets answer 404, other paths 404.

Where it differs from fake-gcs-server v1.54 (tests/integration/test_listing_server.py checks that the two agree
everywhere else): the emulator ignores field masks, counts only items against maxResults when a delimiter is
given and reports every prefix of the whole listing on each page, and filters rolled-up prefixes by
comparing the prefix string itself with startOffset/endOffset.

``ListingServer`` runs in a thread of this process (for tests); ``ListingServerProcess`` runs it in a child
process, so its CPU (JSON encoding) is not the measuring process's. Command line::

    python tests/support/listing_server.py --latency_ms 30 --bucket NAME=NAMES_FILE [--bucket ...]

(one name per line in NAMES_FILE) prints ``listening on HOST:PORT`` once it accepts connections and runs
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["ListingServer", "ListingServerProcess", "main"]

MAX_RESULTS = 1000
_MAX_CODE = 0x10FFFF
_PATH = re.compile(r"^/storage/v1/b/([^/]+)/o$")


def _after_all_with(prefix: str) -> str | None:
    """The smallest string above every string that starts with `prefix`; None when there is none."""
    p = prefix
    while p:
        c = ord(p[-1])
        if c < _MAX_CODE:
            c += 1
            if 0xD800 <= c <= 0xDFFF:
                c = 0xE000
            return p[:-1] + chr(c)
        p = p[:-1]
    return None


def _item_fields(fields: str | None) -> list[str] | None:
    """Subfields of items(...) in a fields mask; None: no mask (a full resource)."""
    if not fields:
        return None
    m = re.search(r"items\(([^)]*)\)", fields)
    if m:
        return [f.strip() for f in m.group(1).split(",") if f.strip()]
    return [] if "items" not in fields else None


class _Bucket:
    def __init__(self, name: str, names: list[str]) -> None:
        self.name = name
        self.names = sorted(set(names))
        if len(self.names) != len(names):
            raise ValueError(f"bucket {name!r}: object names repeat")
        self.index = {n: i for i, n in enumerate(self.names)}

    def resource(self, i: int, fields: list[str] | None) -> dict:
        name = self.names[i]
        full = {"kind": "storage#object", "id": f"{self.name}/{name}/{1_700_000_000_000_000 + i}", "name": name,
                "bucket": self.name, "generation": str(1_700_000_000_000_000 + i), "metageneration": "1",
                "contentType": "image/jpeg", "storageClass": "STANDARD", "size": str(100_000 + (i * 7919) % 50_000),
                "updated": "2024-01-01T00:00:00.000Z"}
        return full if fields is None else {k: full[k] for k in fields if k in full}

    def list(self, q: dict[str, str]) -> dict:
        prefix = q.get("prefix", "")
        delim = q.get("delimiter") or None
        lo_name = max(prefix, q.get("startOffset", ""))
        token = q.get("pageToken")
        if token:
            lo_name = max(lo_name, base64.urlsafe_b64decode(token.encode()).decode())
        hi_name = _after_all_with(prefix) if prefix else None
        end = q.get("endOffset")
        if end:
            hi_name = end if hi_name is None else min(hi_name, end)
        names = self.names
        lo = bisect_left(names, lo_name)
        hi = len(names) if hi_name is None else max(lo, bisect_left(names, hi_name))
        limit = min(int(q.get("maxResults", MAX_RESULTS)), MAX_RESULTS)
        if limit < 1:
            raise ValueError("maxResults must be positive")
        fields = _item_fields(q.get("fields"))
        items: list[dict] = []
        prefixes: list[str] = []
        k = lo
        while k < hi and len(items) + len(prefixes) < limit:
            name = names[k]
            cut = name.find(delim, len(prefix)) if delim else -1
            if cut < 0:
                items.append(self.resource(k, fields))
                k += 1
                continue
            rolled = name[:cut + len(delim)]
            prefixes.append(rolled)
            after = _after_all_with(rolled)
            k = hi if after is None else max(k + 1, min(hi, bisect_left(names, after, k, hi)))
        doc: dict = {"kind": "storage#objects"}
        if items:
            doc["items"] = items
        if prefixes:
            doc["prefixes"] = prefixes
        if k < hi:
            doc["nextPageToken"] = base64.urlsafe_b64encode(names[k].encode()).decode()
        return doc


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no wait for a delayed ACK between
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, doc: dict) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/_sim/stats":
            self._send(200, self.server.read_stats(reset=q.get("reset") == "1"))
            return
        m = _PATH.match(url.path)
        if not m:
            self._send(404, {"error": {"code": 404, "message": f"no such path {url.path}"}})
            return
        self.server.enter()
        try:
            time.sleep(self.server.latency_s)
        finally:
            self.server.leave()
        bucket = self.server.buckets.get(unquote(m.group(1)))
        if bucket is None:
            self._send(404, {"error": {"code": 404, "message": f"no such bucket {unquote(m.group(1))}"}})
            return
        try:
            doc = bucket.list(q)
        except (ValueError, UnicodeDecodeError) as e:
            self._send(400, {"error": {"code": 400, "message": str(e)}})
            return
        self.server.count(doc)
        self._send(200, doc)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], buckets: dict[str, list[str]], latency_ms: float) -> None:
        super().__init__(addr, _Handler)
        self.buckets = {name: _Bucket(name, names) for name, names in buckets.items()}
        self.latency_s = latency_ms / 1000.0
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "empty_pages": 0, "items": 0, "prefixes": 0, "max_in_flight": 0}
        self._in_flight = 0

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def count(self, doc: dict) -> None:
        n_items, n_prefixes = len(doc.get("items", ())), len(doc.get("prefixes", ()))
        with self._lock:
            self._stats["requests"] += 1
            self._stats["empty_pages"] += n_items + n_prefixes == 0
            self._stats["items"] += n_items
            self._stats["prefixes"] += n_prefixes

    def read_stats(self, reset: bool = False) -> dict:
        with self._lock:
            out = dict(self._stats)
            if reset:
                self._stats = dict.fromkeys(self._stats, 0)
        return out


class ListingServer:
    """The server in a thread of this process; a context manager. `url` is http://host:port."""

    def __init__(self, buckets: dict[str, list[str]], *, latency_ms: float = 0.0, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, 0), buckets, latency_ms)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """http://host:port"""
        return f"http://{self.host}:{self.port}"

    def stats(self, reset: bool = False) -> dict:
        """Requests, empty pages, items and prefixes answered so far."""
        return self._server.read_stats(reset)

    def __enter__(self) -> ListingServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="listing-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class ListingServerProcess:
    """The server in a child process (its CPU is not this process's); a context manager."""

    def __init__(self, buckets: dict[str, list[str]], *, latency_ms: float = 0.0, workdir: str | Path) -> None:
        self.args = [sys.executable, str(Path(__file__).resolve()), "--latency_ms", str(latency_ms)]
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, names in buckets.items():
            path = workdir / f"{name}.names"
            if any("\n" in n for n in names):
                raise ValueError(f"bucket {name!r}: a name holds a newline; this command line cannot pass it")
            path.write_text("\n".join(names) + "\n", encoding="utf-8")
            self.args += ["--bucket", f"{name}={path}"]
        self.host, self.port = "127.0.0.1", 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """http://host:port"""
        return f"http://{self.host}:{self.port}"

    def stats(self, reset: bool = False) -> dict:
        """Requests, empty pages, items and prefixes answered so far (asked over HTTP)."""
        import requests

        return requests.get(f"{self.url}/_sim/stats", params={"reset": "1" if reset else "0"}, timeout=10).json()

    def start(self, timeout: float = 60.0) -> ListingServerProcess:
        """Starts the child and waits for its `listening on` line."""
        from tests.support.listening_child import start_listening_child  # the parent only (see close)

        self._proc, self.host, self.port = start_listening_child(self.args, "listing server", timeout)
        return self

    def close(self) -> None:
        """Stops the child."""
        if self._proc is None:
            return
        from tests.support.listening_child import stop_child  # the parent only: the child runs this file as a script

        stop_child(self._proc)
        self._proc = None

    def __enter__(self) -> ListingServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: serve the given buckets until SIGTERM / SIGINT."""
    ap = argparse.ArgumentParser(description="A GCS-like objects.list server over in-memory names.")
    ap.add_argument("--bucket", action="append", default=[], help="NAME=FILE (one object name per line)")
    ap.add_argument("--latency_ms", type=float, default=30.0, help="slept before answering each list request")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    args = ap.parse_args(argv)
    buckets: dict[str, list[str]] = {}
    for spec in args.bucket:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            ap.error(f"--bucket expects NAME=FILE, got {spec!r}")
        buckets[name] = [n for n in Path(path).read_text(encoding="utf-8").split("\n") if n]
    host, _, port = args.listen.rpartition(":")
    server = _Server((host, int(port)), buckets, args.latency_ms)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
