"""tar_scan.scan_tar against the member-by-member walk (read_tar_members) on tricky tars, over an in-memory
reader (the tar bytes are the boundary faked here; test_shard_windows.py reads them from the emulator)."""

from __future__ import annotations

import os
import random
import tarfile

import pytest

from hivedata import _native
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.tar_scan import scan_tar
from hivedata.sources.webdataset import read_tar_members
from tests.support.tars import tar_of

# window, read_through: tiny windows (members span many), jumps over every member's data, the defaults
SETTINGS = [dict(window=1024, read_through=0), dict(window=1536, read_through=700), dict(window=8192,
            read_through=1 << 30), dict(window=64 << 10, read_through=2048), dict()]


class Reads:
    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, []

    def __call__(self, start: int, length: int) -> bytes:
        assert 0 <= start and 0 <= length and start + length <= len(self.data), (start, length)
        self.calls.append((start, length))
        return self.data[start:start + length]


def outcome(fn, data: bytes):
    try:
        return fn(Reads(data), len(data), "gs://b/s.tar")
    except ValueError as e:
        assert "gs://b/s.tar" in str(e)
        return "error"


def check_same(data: bytes) -> None:
    want = outcome(read_tar_members, data)
    for kw in SETTINGS:
        got = outcome(lambda r, n, w, kw=kw: scan_tar(r, n, w, **kw), data)
        assert (got if got == "error" else got.members) == want, kw
        if got == "error":
            continue
        for (_, at, length, _), crc in zip(got.members, got.crcs, strict=True):
            assert crc in (NO_CRC, _native.crc32c(data[at:at + length]))
        assert got.object_crc in (None, _native.crc32c(data))


TRICKY = {
    "ustar": ([(f"k{j:03d}.jpg", s) for j, s in enumerate([0, 1, 511, 512, 513, 1024, 3000, 70_000])],
              tarfile.USTAR_FORMAT),
    "gnu long names": ([("n" * 150 + f"{j}.jpg", 700 * j) for j in range(6)], tarfile.GNU_FORMAT),
    "pax long names": ([("p/" * 90 + f"{j}.cls", 3) for j in range(6)], tarfile.PAX_FORMAT),
    "pax non-ascii": ([(f"\u00e9t\u00e9/{j}\u4e2d.jpg", 100 + j) for j in range(4)], tarfile.PAX_FORMAT),
    "large members": ([("a.jpg", 5_000_000), ("a.cls", 1), ("b.jpg", 10), ("c.jpg", 3_000_000)], tarfile.PAX_FORMAT),
    "empty": ([], tarfile.PAX_FORMAT),
}


@pytest.mark.parametrize("case", sorted(TRICKY))
def test_same_members_as_the_member_by_member_walk(case):
    members, fmt = TRICKY[case]
    data = tar_of(members, fmt, dirs=True)
    check_same(data)
    assert len(read_tar_members(Reads(data), len(data), "x")) == len(members)


def test_random_tars_and_truncations_agree():
    rng = random.Random(7)
    for trial in range(60):
        sizes = [rng.choice([0, 1, 511, 512, 513, rng.randint(0, 40_000)]) for _ in range(rng.randint(1, 25))]
        names = ["x" * rng.choice([1, 99, 100, 101, 250]) + f"{j}.jpg" for j in range(len(sizes))]
        fmt = rng.choice([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
        data = tar_of(list(zip(names, sizes, strict=True)), fmt, seed=trial, dirs=trial % 2 == 0)
        check_same(data)
        check_same(data[:rng.randint(0, len(data))])


def test_a_truncated_tar_names_the_shard():
    data = tar_of([("a.jpg", 5000), ("a.cls", 1)])[:3000]
    with pytest.raises(ValueError, match="gs://b/x.tar.*'a.jpg'.*runs past the end"):
        scan_tar(Reads(data), len(data), "gs://b/x.tar", window=1024)


def test_jpeg_sized_members_many_per_get_and_every_crc():
    data = tar_of([(f"{j:04d}.{ext}", 110_000 if ext == "jpg" else 2) for j in range(100) for ext in ("jpg", "cls")])
    reads = Reads(data)
    scan = scan_tar(reads, len(data), "s", window=4 << 20)
    assert len(scan.members) == 200 and len(reads.calls) == -(-len(data) // (4 << 20))  # read whole, in order
    assert [c for c, _ in reads.calls] == [i * (4 << 20) for i in range(len(reads.calls))]
    assert scan.object_crc == _native.crc32c(data) and NO_CRC not in scan.crcs
    assert scan.reads == len(reads.calls) and scan.bytes_read == len(data)


def test_a_large_member_is_jumped_over():
    big = 20 << 20
    data = tar_of([("a.jpg", 1000), ("b.mp4", big), ("b.cls", 1), ("c.jpg", 1000)])
    reads = Reads(data)
    scan = scan_tar(reads, len(data), "s", window=1 << 20, read_through=1 << 20)
    assert scan.bytes_read < 3 << 20 and len(reads.calls) == 2  # the big member's data is never read
    assert scan.crcs[1] == NO_CRC and NO_CRC not in (scan.crcs[0], scan.crcs[2], scan.crcs[3])
    assert scan.object_crc is None  # not read whole: the caller cannot check it against GCS
    assert scan.members == read_tar_members(Reads(data), len(data), "s")


def test_a_short_read_is_an_error_naming_the_shard():
    data = tar_of([("a.jpg", 10_000)])
    with pytest.raises(ValueError, match="gs://b/s.tar.*got 100"):
        scan_tar(lambda s, n: data[s:s + 100], len(data), "gs://b/s.tar")


def test_an_oversized_extended_header_is_refused():
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 17 << 20
    data = header.tobuf(format=tarfile.USTAR_FORMAT) + os.urandom(17 << 20) + bytes(1024)
    with pytest.raises(ValueError, match="gs://b/s.tar.*extended header"):
        scan_tar(Reads(data), len(data), "gs://b/s.tar")


def test_window_must_hold_a_header_and_a_block():
    with pytest.raises(ValueError, match="window"):
        scan_tar(Reads(b""), 0, "s", window=512)


def test_a_member_name_that_is_not_utf8_names_the_shard_and_the_bytes():
    """A tar written with latin-1 names: indexing it fails naming the shard and the member, not with a bare
    UnicodeEncodeError when the index stores the keys."""
    import io

    from hivedata.sources.webdataset import samples_from_members

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as t:
        for name, data in (("caf\u00e9.jpg", b"\xff\xd8jpeg"), ("caf\u00e9.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    assert b"caf\xe9.jpg" in data  # the raw latin-1 byte, not UTF-8
    members = read_tar_members(Reads(data), len(data), "gs://b/latin1.tar")
    assert scan_tar(Reads(data), len(data), "gs://b/latin1.tar").members == members  # both readers agree
    with pytest.raises(ValueError, match=r"gs://b/latin1.tar: member name b'caf\\xe9' is not UTF-8"):
        samples_from_members(members, 0, "gs://b/latin1.tar")
