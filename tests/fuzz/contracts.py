"""What each untrusted-bytes entry point promises, as one check per harness.

Shared by the Hypothesis fuzz tests (tests/fuzz/test_parsers_fuzz.py) and the corpus replay in the normal
suite (tests/unit/test_fuzz_replay.py). A check returns normally when the parser kept its contract (a
result, or the error it documents) and raises ContractViolation otherwise, with a short `signature`
(harness, exception type, innermost hivedata frame) so one defect found a thousand ways counts once.

Contracts:
  decode       hivedata._native.decode_image: a result dict, or a hivedata.errors.BadImageError.
  tar          webdataset.read_tar_members (+ samples_from_members on its result): members inside the shard,
               or a ValueError whose message names the shard; and it terminates (bounded time). The windowed
               tar_scan.scan_tar (small windows, so members span them) must give the same members or also
               raise such a ValueError, and every crc it reports must be that of the member's bytes.
  shard_index  ShardIndex.from_bytes: an index, or a hivedata error (DataFormatError / IndexStaleError);
               an index it returns then passes shared_index.check_shard_index or gets a DataFormatError.
  labels       parse_labels / parse_ground_truth on the text, parse_synsets_mat on the bytes: a result, or a
               LabelsError.
  listing      GcsJsonClient.list_pages against a loopback server answering the body: pages of ObjectMeta
               (str name, int size and generation) or a hivedata error naming the bucket.
"""

from __future__ import annotations

import json
import signal
import struct
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from hivedata.errors import BadImageError, HivedataError, LabelsError

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"
CRASHES = FUZZ_DIR / "crashes"
SHARD = "gs://fuzz-bucket/shards/s-000.tar"
BUCKET = "fuzz-bucket"
TIME_LIMIT_S = 5.0  # one parse of at most a few hundred KB; more than this is a hang


class ContractViolation(AssertionError):
    def __init__(self, harness: str, message: str, signature: str) -> None:
        super().__init__(f"[{harness}] {message}")
        self.harness = harness
        self.signature = signature


class _Hang(BaseException):  # BaseException: a parser's `except Exception` must not swallow it
    pass


@contextmanager
def time_limit(seconds: float = TIME_LIMIT_S) -> Iterator[None]:
    """Raises _Hang in the main thread after `seconds` (SIGALRM; a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _where(exc: BaseException) -> str:
    """file:function of the innermost frame inside hivedata/ (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/hivedata/" in f.filename.replace("\\", "/")] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.name}"


def _violation(harness: str, exc: BaseException, what: str = "") -> ContractViolation:
    kind = "hang" if isinstance(exc, _Hang) else type(exc).__name__
    detail = "no result within the time limit" if isinstance(exc, _Hang) else f"{kind}: {str(exc)[:200]}"
    # a hang is stopped wherever the alarm lands, so its signature carries no place
    sig = f"{harness}:hang" if isinstance(exc, _Hang) else f"{harness}:{kind}@{_where(exc)}"
    v = ContractViolation(harness, f"{what}{detail} ({sig})", sig)
    v.__cause__ = exc
    return v


# ------------------------------------------------------------------------------------------------ decode

DECODE_PREFIX = 12


def decode_params(data: bytes) -> tuple[dict, bytes] | None:
    """decode_image keyword arguments and JPEG bytes from a decode-harness input (decode_fuzzer.cc layout)."""
    if len(data) < DECODE_PREFIX:
        return None
    b0, b1, b2 = data[0], data[1], data[2]
    kw: dict = {"out_h": 1 + b0 % 97, "out_w": 1 + b1 % 97, "train": bool(b2 & 1),
                "flip_p": 1.0 if b2 & 2 else 0.5, "sample_seed": struct.unpack("<Q", data[3:11])[0],
                "max_pixels": (1 + data[11] % 16) << 20}
    if b2 & 4:
        kw["scale"], kw["ratio"] = (0.001, 1.0), (0.05, 20.0)
    if b2 & 8:
        kw["eval_crop_ratio"] = 1.0
    return kw, data[DECODE_PREFIX:]


def check_decode(data: bytes) -> None:
    from hivedata import _native

    parsed = decode_params(data)
    if parsed is None:
        return
    kw, jpeg = parsed
    out = np.empty((kw["out_h"], kw["out_w"], 3), np.uint8)
    try:
        info = _native.decode_image(jpeg, out, name="fuzz.JPEG", **kw)
    except BadImageError as e:
        if e.object != "fuzz.JPEG":
            raise ContractViolation("decode", f"error does not name the object: {e}", "decode:unnamed") from e
        return
    except Exception as e:
        raise _violation("decode", e) from e
    if not (info["src_w"] * info["src_h"] <= kw["max_pixels"] and info["scale_num"] in (1, 2, 4, 8)):
        raise ContractViolation("decode", f"implausible result {info}", "decode:result")


# --------------------------------------------------------------------------------------------------- tar


def check_tar(data: bytes) -> None:
    _check_tar_walk(data)
    _check_tar_scan(data)


def _check_tar_scan(data: bytes) -> None:
    """scan_tar agrees with read_tar_members (members, or a ValueError naming the shard) with windows of 1536
    bytes and 700 bytes read through (data spans windows and some is jumped over)."""
    from hivedata import _native
    from hivedata.sources.read_plan import NO_CRC
    from hivedata.sources.tar_scan import scan_tar
    from hivedata.sources.webdataset import read_tar_members

    def read(start: int, length: int) -> bytes:
        if start < 0 or length < 0 or start + length > len(data):
            raise ContractViolation("tar", f"scan read({start}, {length}) outside a {len(data)}-byte shard",
                                    "tar:scan-read-out-of-range")
        return data[start:start + length]

    outcomes = []
    for fn in (read_tar_members, lambda r, n, w: scan_tar(r, n, w, window=1536, read_through=700)):
        try:
            with time_limit():
                outcomes.append(fn(read, len(data), SHARD))
        except ContractViolation:
            raise
        except ValueError as e:
            if SHARD not in str(e):
                raise _violation("tar", e, "scan error does not name the shard: ") from e
            outcomes.append(None)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            raise _violation("tar", e) from e
    walked, scanned = outcomes
    if (walked is None) != (scanned is None) or (scanned is not None and scanned.members != walked):
        raise ContractViolation("tar", f"scan_tar gave {'an error' if scanned is None else 'members'}, "
                                f"read_tar_members {'an error' if walked is None else 'members'} (or others)",
                                "tar:scan-differs")
    if scanned is not None:
        for (name, at, length, _), crc in zip(scanned.members, scanned.crcs, strict=True):
            if crc != NO_CRC and crc != _native.crc32c(data[at:at + length]):
                raise ContractViolation("tar", f"scan_tar's crc of {name!r} is wrong", "tar:scan-crc")


def _check_tar_walk(data: bytes) -> None:
    from hivedata.sources.webdataset import read_tar_members, samples_from_members

    calls = 0

    def read(start: int, length: int) -> bytes:
        nonlocal calls
        calls += 1
        if start < 0 or length < 0 or start + length > len(data):
            raise ContractViolation("tar", f"read({start}, {length}) outside a {len(data)}-byte shard",
                                    "tar:read-out-of-range")
        if calls > len(data) // 512 + 8:  # each step moves past at least one header block
            raise ContractViolation("tar", f"{calls} reads of a {len(data)}-byte shard: not moving forward",
                                    "tar:no-progress")
        return data[start:start + length]

    try:
        with time_limit():
            members = read_tar_members(read, len(data), SHARD)
            samples_from_members(members, 0, SHARD)
    except ContractViolation:
        raise
    except ValueError as e:
        if SHARD not in str(e) and not isinstance(e, HivedataError):
            raise _violation("tar", e, "error does not name the shard: ") from e
        return
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _violation("tar", e) from e
    for name, at, length, head in members:
        if not (isinstance(name, str) and 512 <= at and 0 <= length and at + length <= len(data)
                and len(head) == min(length, 512)):
            raise ContractViolation("tar", f"member {name!r} at {at}+{length} outside a {len(data)}-byte shard",
                                    "tar:member-out-of-range")


# ------------------------------------------------------------------------------------------- shard index


def check_shard_index(data: bytes) -> None:
    from hivedata.sources.shards import ShardIndex
    from hivedata.sources.shared_index import check_shard_index

    try:
        with time_limit():
            index = ShardIndex.from_bytes(data, what="gs://fuzz-bucket/x.index.npz")
            check_shard_index(index, bucket=index.bucket, prefix=index.prefix, what="gs://fuzz-bucket/x.index.npz")
    except HivedataError:
        return
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _violation("shard_index", e) from e


# ------------------------------------------------------------------------------------------------ labels


def check_labels(data: bytes) -> None:
    from hivedata.sources.labels import parse_ground_truth, parse_labels, parse_synsets_mat

    text = data.decode("utf-8", "replace")
    for name, fn, arg in (("parse_labels", parse_labels, text), ("parse_ground_truth", parse_ground_truth, text),
                          ("parse_synsets_mat", parse_synsets_mat, data)):
        try:
            with time_limit():
                fn(arg)
        except LabelsError:
            continue
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            raise _violation("labels", e, f"{name}: ") from e


# ----------------------------------------------------------------------------------------------- listing


class _Server:
    """A loopback HTTP server answering every listing request with the current body (pages after the first: {})."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = outer.body if "pageToken=" not in self.path else b"{}"
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"


_server: _Server | None = None
_client = None


def check_listing(body: bytes, status: int = 200) -> None:
    global _server, _client
    from hivedata.gcs.auth import TokenSource
    from hivedata.gcs.json_client import GcsJsonClient, ObjectMeta

    if _server is None:
        _server = _Server()
        _client = GcsJsonClient(_server.endpoint, TokenSource("anonymous", endpoint=_server.endpoint),
                                max_attempts=1, timeout=10)
    _server.body, _server.status = body, status
    try:
        with time_limit(15):
            pages = list(_client.list_pages(BUCKET, "p/", delimiter="/"))
    except HivedataError as e:
        if getattr(e, "bucket", None) != BUCKET and BUCKET not in str(e):
            raise ContractViolation("listing", f"error does not name the bucket: {e!r}", "listing:unnamed") from e
        return
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _violation("listing", e) from e
    for page in pages:
        for o in page.objects:
            if not (isinstance(o, ObjectMeta) and isinstance(o.name, str) and type(o.size) is int
                    and type(o.generation) is int):
                raise ContractViolation("listing", f"bad object {o!r}", "listing:bad-object")
        if not all(isinstance(p, str) for p in page.prefixes):
            raise ContractViolation("listing", f"non-string prefixes {page.prefixes!r}", "listing:bad-prefix")


CHECKS = {"decode": check_decode, "tar": check_tar, "shard_index": check_shard_index, "labels": check_labels,
          "listing": check_listing}


# ----------------------------------------------------------------------------------------------- crashes


def open_crashes() -> dict[str, str]:
    """signature -> reason for every reproducer marked open in tests/fuzz/crashes/*.json."""
    out = {}
    for meta in sorted(CRASHES.glob("*.json")):
        m = json.loads(meta.read_text())
        if m.get("status") == "open":
            out[m["signature"]] = m["reason"]
    return out
