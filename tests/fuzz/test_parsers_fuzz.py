"""Hypothesis fuzzing of the Python parsers of untrusted bytes (contracts: tests/fuzz/contracts.py).

Off in the normal suite (the corpus replay, tests/unit/test_fuzz_replay.py, runs there); scripts/fuzz.sh
runs it with HIVEDATA_FUZZ_SECONDS=<seconds per test> (or HIVEDATA_FUZZ_EXAMPLES=<examples per test>):

    HIVEDATA_FUZZ_SECONDS=60 python -m pytest tests/fuzz -m fuzz -s

Inputs: the seed corpus mutated (bit flips, overwritten / inserted / deleted ranges, truncation, splices of
tar numeric fields and npz arrays), structured hostile inputs (tar headers with chosen fields, npz archives
with arrays of the wrong type or shape, JSON listings of any shape), and plain random bytes. Reproducers
already filed as open in tests/fuzz/crashes/ are counted, not failed on, so a run keeps looking for new ones;
each test prints what it saw.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import contracts

SECONDS = float(os.environ.get("HIVEDATA_FUZZ_SECONDS", "0"))
EXAMPLES = int(os.environ.get("HIVEDATA_FUZZ_EXAMPLES", "0"))
pytestmark = [pytest.mark.fuzz]  # deselected by default (pyproject addopts); scripts/fuzz.sh selects them


def seeds(harness: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((contracts.CORPUS / harness).iterdir())]


# ------------------------------------------------------------------------------------------ mutations

INTERESTING = [b"0", b"-1", b"7777777", b"77777777777", b"\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
               b"\xff" * 12, b"\x00", b" ", b"\n", b"=", b"99999999999999999999", b"1e9", b"nan", b"-0",
               b"2147483648", b"\xc3\x28", b"\xed\xa0\x80"]


@st.composite
def mutated(draw, base: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 6))
        n = len(data)
        at = draw(st.integers(0, max(n - 1, 0)))
        if op == 0 and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == 2:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == 3 and n:
            del data[at:at + draw(st.integers(1, 600))]
        elif op == 4:
            del data[draw(st.integers(0, n)):]
        elif op == 5:
            chunk = draw(st.sampled_from(INTERESTING))
            data[at:at + len(chunk)] = chunk
        else:  # a tar header field (name 0, size 124, checksum 148, type 156, ustar magic 257) of some block
            block = draw(st.integers(0, max(n // 512 - 1, 0))) * 512
            off = block + draw(st.sampled_from([0, 100, 124, 136, 148, 156, 157, 257, 345]))
            chunk = draw(st.sampled_from(INTERESTING))
            data[off:off + len(chunk)] = chunk
    return bytes(data)


def tar_member(name: str, data: bytes, *, size: int | None = None, type_: bytes = tarfile.REGTYPE,
               fmt: int = tarfile.USTAR_FORMAT, pax: dict | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.type = type_
    if pax:
        info.pax_headers = pax
    head = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    return head + data + bytes(-len(data) % 512)


@st.composite
def hostile_tar(draw) -> bytes:
    """Archives whose header fields (size, type, PAX records, long names) are chosen, then checksummed."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from([b"0", b"\0", b"7", b"x", b"L", b"g", b"5", b"2", b"K", b"S"]))
        data = draw(st.one_of(st.binary(max_size=1100),
                              st.builds(lambda recs: "".join(recs).encode(), st.lists(st.sampled_from(
                                  ["5 a=\n", "0 path=x\n", "-3 path=y\n", "12 path=a.jpg\n", "9999 path=z\n",
                                   "x path=q\n", "14 path=\xff.jpg\n", "3 \n", " "]), max_size=4))))
        name = draw(st.sampled_from(["a.jpg", "a.cls", "k/b.jpeg", "x", ".cls", "a.b.cls", "\udcff.jpg"]))
        try:
            header = bytearray(tar_member(name, b"", size=0, type_=kind))
        except (ValueError, UnicodeEncodeError):
            continue
        size_field = draw(st.one_of(st.just(None), st.sampled_from(
            [b"-0000000001\0", b"77777777777\0", b"\x80" + bytes(10) + b"\x01", b"\xff" * 12, b"00000000000\0",
             b"99999999999\0", b"        \0\0\0\0"])))
        size = len(data)
        if size_field is None:
            header[124:136] = f"{size:011o}\0".encode()
        else:
            header[124:136] = size_field
        header[148:156] = b"        "
        header[148:156] = f"{sum(header[:512]):06o}\0 ".encode()
        out += bytes(header) + data + bytes(-len(data) % 512)
    if draw(st.booleans()):
        out += bytes(1024)
    return out


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


_ARRAY = st.one_of(
    st.builds(lambda s: np.array(s), st.text(max_size=8)),
    st.builds(lambda v: np.array(v, dtype=np.int64), st.lists(st.integers(-2**63, 2**63 - 1), max_size=5)),
    st.builds(lambda v: np.array(v, dtype=np.int64), st.integers(-2**63, 2**63 - 1)),  # 0-d
    st.builds(lambda v: np.array(v, dtype=np.float64), st.lists(st.floats(), max_size=4)),
    st.builds(lambda v: np.array(v, dtype=str), st.lists(st.text(max_size=5), max_size=4)),
    st.builds(lambda v: np.frombuffer(v, dtype=np.uint8), st.binary(max_size=16)),
    st.builds(lambda: np.zeros((2, 3), np.int32)),
    st.builds(lambda: np.array([], dtype=np.complex128)),
    st.builds(lambda: np.array([True, False])),
)


@st.composite
def hostile_npz(draw) -> bytes:
    """A valid index's arrays with some replaced by arrays of another type or shape, dropped, or added."""
    with np.load(io.BytesIO(draw(st.sampled_from(seeds("shard_index"))))) as z:
        arrays = {k: z[k] for k in z.files}
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(arrays) + ["crcs", "extra"]))
        if draw(st.integers(0, 4)) == 0:
            arrays.pop(key, None)
        else:
            arrays[key] = draw(_ARRAY)
    return npz(arrays)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["items", "prefixes", "nextPageToken", "name", "size", "generation", "kind", "x"]),
        inner, max_size=5),
    max_leaves=20)


@st.composite
def hostile_listing(draw) -> bytes:
    shape = draw(st.integers(0, 3))
    if shape == 0:  # the right keys with values of any type
        item = draw(st.dictionaries(st.sampled_from(["name", "size", "generation", "x"]), _JSON, max_size=4))
        body = {"items": draw(st.one_of(st.just([item]), _JSON)), "prefixes": draw(_JSON)}
        if draw(st.booleans()):
            body["nextPageToken"] = draw(_JSON)
        return json.dumps(body).encode()
    if shape == 1:
        return json.dumps(draw(_JSON)).encode()
    if shape == 2:
        return draw(mutated(seeds("listing")))
    return draw(st.binary(max_size=200))


STRATEGIES = {
    "tar": st.one_of(mutated(seeds("tar")), hostile_tar(), st.binary(max_size=3000)),
    "shard_index": st.one_of(mutated(seeds("shard_index")), hostile_npz(), st.binary(max_size=600)),
    "labels": st.one_of(mutated(seeds("labels")), st.binary(max_size=400),
                        st.text(alphabet=st.sampled_from("ImageId,Predictiontrg \n\r\t0123456789.-_\x85\u2028nJPEG"),
                                max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))),
    "listing": hostile_listing(),
}


# ---------------------------------------------------------------------------------------------- driver


def fuzz(harness: str) -> None:
    check = contracts.CHECKS[harness]
    known = contracts.open_crashes()
    seen: Counter[str] = Counter()
    new: list[tuple[bytes, contracts.ContractViolation]] = []
    execs = 0

    @settings(max_examples=EXAMPLES or 2000, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[harness])
    def one(data: bytes) -> None:
        nonlocal execs
        execs += 1
        try:
            check(data)
        except contracts.ContractViolation as v:
            seen[v.signature] += 1
            if v.signature not in known and len(new) < 20:
                new.append((data, v))

    start = time.monotonic()
    cpu0 = time.process_time()
    one()
    while SECONDS and time.monotonic() - start < SECONDS and not new:
        one()
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    print(f"\n[{harness}] {execs} inputs in {wall:.0f} s wall / {cpu:.0f} s CPU; "
          f"violations: {dict(seen) or 'none'}; new (not filed as open): {len({v.signature for _, v in new})}")
    if new:
        out = contracts.FUZZ_DIR.parents[1] / "build" / "fuzz" / "artifacts"
        out.mkdir(parents=True, exist_ok=True)
        for i, (data, v) in enumerate(new):
            (out / f"{harness}-{i}.bin").write_bytes(data)
            print(f"  {out}/{harness}-{i}.bin: {v}")
        raise new[0][1]


@pytest.mark.parametrize("harness", sorted(STRATEGIES))
def test_fuzz(harness: str) -> None:
    fuzz(harness)
