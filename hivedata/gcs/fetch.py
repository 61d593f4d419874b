"""Parallel reads of GCS objects (whole or byte ranges) through the native fetch engine."""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hivedata import _native
from hivedata.common import back_to_back
from hivedata.gcs.auth import TokenFeed, token_source
from hivedata.gcs.paths import storage_endpoint
from hivedata.gcs.transport import Transport


@dataclass(frozen=True)
class ReadRequest:
    """One read: a whole object (length None, start 0) or `length` bytes from `start`."""

    object: str
    start: int = 0
    length: int | None = None
    generation: int | None = None


@dataclass
class FetchItem:
    """The outcome of one request: `data` is a view of the bytes, `error` the exception if it failed."""

    index: int
    request: ReadRequest
    data: memoryview | None
    error: BaseException | None
    attempts: int
    latency_s: float

    @property
    def ok(self) -> bool:
        """True when the bytes arrived intact."""
        return self.error is None


@dataclass
class Batch:
    """Whole objects read into one arena: object i is arena[offsets[i]:offsets[i] + sizes[i]]."""

    arena: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def view(self, i: int) -> memoryview:
        """The bytes of object i (no copy)."""
        o = int(self.offsets[i])
        return memoryview(self.arena)[o:o + int(self.sizes[i])]


_live: weakref.WeakSet[Fetcher] = weakref.WeakSet()
_atexit_registered = False
_tags = itertools.count(1)


def _close_all() -> None:
    """At interpreter exit: stops every Fetcher's I/O thread; a thread still inside fetch() gets RuntimeError.

    close() waits until every thread waiting in the engine has left it, and the engine's memory is freed by
    the last one to let go of it, so nothing a live thread uses is freed here.
    """
    for f in list(_live):
        f.close()


def _as_request(r: str | ReadRequest | tuple) -> ReadRequest:
    if isinstance(r, ReadRequest):
        return r
    if isinstance(r, str):
        return ReadRequest(r)
    return ReadRequest(*r)


class Fetcher:
    """Reads objects of one bucket in parallel with keep-alive connections, retries and crc32c checks.

    Configuration guide (all keyword-only):
      endpoint          None: STORAGE_EMULATOR_HOST if set, else https://storage.googleapis.com.
      credentials       "auto" (ADC; anonymous for an emulator or without ADC), "anonymous", or
                        a google.auth Credentials object. A token never travels over plain http to
                        another machine (refused); a 401 fetches a fresh token once and retries.
      ca_bundle         PEM file of trusted CAs (else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE / SSL_CERT_FILE,
                        else the system store); a certificate that fails is a TlsError, not retried.
      http_version      "2" (default; streams over a few connections) or "1.1".
      max_in_flight     GETs at once (256). max_connections: None = per protocol (see Transport).
      max_attempts      tries per request, first included (8); retry_budget_s bounds their total time.
      backoff_base_s /  exponential backoff with full jitter between tries; 429 honours Retry-After.
      backoff_max_s
      request_timeout_s one attempt's limit; low_speed_time_s aborts an attempt stalled below 1 KB/s and
                        first_byte_timeout_s one with no response; both are retried.
      hedge_budget      share of GETs that may get a hedged second GET when slow (0.02; 0 disables).
      verify_crc32c     check whole-object reads against x-goog-hash (True).
      transport         a hivedata.gcs.transport.Transport instead of the keywords above.

    One `fetch()` iteration at a time per Fetcher; use several Fetchers for concurrent streams.
    """

    def __init__(self, bucket: str, *, endpoint: str | None = None, credentials: Any = "auto",
                 ca_bundle: str | os.PathLike | None = None, http_version: str = "2", max_in_flight: int = 256,
                 max_connections: int | None = None, max_attempts: int = 8, retry_budget_s: float = 60.0,
                 backoff_base_s: float = 0.05, backoff_max_s: float = 5.0, connect_timeout_s: float = 10.0,
                 request_timeout_s: float = 120.0, low_speed_time_s: float = 5.0, first_byte_timeout_s: float = 5.0,
                 hedge_budget: float = 0.02, verify_crc32c: bool = True, transport: Transport | None = None) -> None:
        global _atexit_registered
        if not bucket:
            raise ValueError("bucket name is empty")
        self.bucket = bucket
        self.endpoint = storage_endpoint(endpoint)
        self._tokens = token_source(credentials, self.endpoint)
        if transport is None:
            transport = Transport(
                ca_bundle=ca_bundle, http_version=http_version, max_in_flight=max_in_flight,
                max_connections=max_connections, max_attempts=max_attempts, retry_budget_s=retry_budget_s,
                backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s, connect_timeout_s=connect_timeout_s,
                request_timeout_s=request_timeout_s, low_speed_time_s=low_speed_time_s,
                first_byte_timeout_s=first_byte_timeout_s, hedge_budget=hedge_budget, verify_crc32c=verify_crc32c)
        self.transport = transport
        self._engine = _native.FetchEngine(endpoint=self.endpoint, **transport.native(self.endpoint))
        self.max_in_flight = transport.max_in_flight
        self._feed = TokenFeed(self._tokens, self.endpoint, self._engine.set_token)
        self._busy = threading.Lock()
        self._pid = os.getpid()
        _live.add(self)
        if not _atexit_registered:
            atexit.register(_close_all)
            _atexit_registered = True

    # -- plumbing ---------------------------------------------------------------------------------------
    def _submit(self, items: list[tuple[int, ReadRequest, Any]]) -> None:
        self._feed.update()
        self._engine.submit([(tag, self.bucket, r.object, r.start, r.length, r.generation, buf)
                             for tag, r, buf in items])

    def _drain(self) -> None:
        """Cancels whatever is outstanding and waits until the engine holds nothing of ours."""
        self._engine.cancel_all()
        while self._engine.outstanding:
            self._engine.poll(timeout=1.0)

    # -- public API -------------------------------------------------------------------------------------
    def fetch(self, requests: Iterable[str | ReadRequest | tuple], *, buffers: Sequence[Any] | None = None,
              order: str = "request", errors: str = "raise", window: int | None = None) -> Iterator[FetchItem]:
        """Reads every request, `window` at a time, yielding FetchItems in request or completion order.

        buffers[i], when given, is a writable contiguous buffer that request i lands in (zero copy);
        otherwise the engine allocates. errors="raise" raises the first failure (FileNotFoundError,
        PermissionError, hivedata.errors.FetchError ...) after cancelling the rest; "return" yields it.
        """
        if order not in ("request", "completion"):
            raise ValueError(f"order must be 'request' or 'completion', not {order!r}")
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        if os.getpid() != self._pid:  # forked child: the parent's iteration does not exist here
            self._busy = threading.Lock()
            self._feed.forget()
            self._pid = os.getpid()
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Fetcher is already iterating a fetch(); use one Fetcher per stream")
        try:
            yield from self._fetch(iter(requests), buffers, order, errors, window or 4 * self.max_in_flight)
        finally:  # closed meanwhile (another thread, interpreter exit): the engine holds nothing any more
            if not self._engine.closed and self._engine.outstanding:
                self._drain()
            self._busy.release()

    def _fetch(self, reqs: Iterator, buffers: Sequence[Any] | None, order: str, errors: str,
               window: int) -> Iterator[FetchItem]:
        pending: dict[int, tuple[int, ReadRequest, Any]] = {}  # tag -> (index, request, buffer)
        done: dict[int, FetchItem] = {}
        next_index = 0  # next to submit
        next_yield = 0  # request order: next to yield
        exhausted = False
        while True:
            batch = []
            while not exhausted and len(pending) < window:
                try:
                    r = _as_request(next(reqs))
                except StopIteration:
                    exhausted = True
                    break
                buf = buffers[next_index] if buffers is not None else None
                tag = next(_tags)
                pending[tag] = (next_index, r, buf)
                batch.append((tag, r, buf))
                next_index += 1
            if batch:
                self._submit(batch)
            if not pending:
                break
            results = self._engine.poll()
            if self._engine.token_wanted:  # a GET was refused with 401: it waits for a fresh token
                self._feed.update(rejected=True)
            for res in results:
                index, r, buf = pending.pop(res.tag)
                if res.ok:
                    data = memoryview(buf).cast("B")[:res.nbytes] if buf is not None else memoryview(res.data)
                    item = FetchItem(index, r, data, None, res.attempts, res.latency_s)
                else:
                    item = FetchItem(index, r, None, res.error, res.attempts, res.latency_s)
                    if errors == "raise":
                        raise item.error
                if order == "completion":
                    yield item
                else:
                    done[index] = item
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1

    def fetch_batch(self, objects: Sequence[str], sizes: Sequence[int], *,
                    arena: np.ndarray | None = None) -> Batch:
        """Reads whole objects of known sizes into one contiguous arena (allocated when not given)."""
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        if len(sizes_arr) != len(objects):
            raise ValueError(f"{len(objects)} objects but {len(sizes_arr)} sizes")
        offsets = back_to_back(sizes_arr)
        total = int(sizes_arr.sum())
        if arena is None:
            arena = np.empty(total, dtype=np.uint8)
        elif arena.nbytes < total:
            raise ValueError(f"arena holds {arena.nbytes} bytes, the batch needs {total}")
        views = [arena[o:o + s] for o, s in zip(offsets.tolist(), sizes_arr.tolist(), strict=True)]
        for _ in self.fetch(objects, buffers=views, order="completion"):
            pass
        return Batch(arena, offsets, sizes_arr)

    def read(self, object: str, start: int = 0, length: int | None = None) -> bytes:  # noqa: A002
        """Reads one object (or a byte range of it) and returns its bytes."""
        item = next(self.fetch([ReadRequest(object, start, length)]))
        return bytes(item.data)

    def read_into(self, object: str, buffer: Any, start: int = 0, length: int | None = None) -> int:  # noqa: A002
        """Reads one object (or range) into `buffer`; returns the number of bytes written."""
        item = next(self.fetch([ReadRequest(object, start, length)], buffers=[buffer]))
        return len(item.data)

    def stats(self) -> dict[str, float]:
        """Counters: submitted, succeeded, failed, retries, bytes, latency p50/p99 ..."""
        return self._engine.stats()

    def close(self) -> None:
        """Stops the engine's I/O thread; in-flight reads are abandoned, a fetch() in another thread raises."""
        self._engine.close()
        _live.discard(self)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
