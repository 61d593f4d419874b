"""The disk cache's run file: many entries in one immutable file, with their index in its footer.

Layout (little endian)::

    file header   b"HVDR", format version (u32), 8 reserved bytes                     16 bytes
    records       per entry: key text length (u32), crc32c of the payload (u32),
                  payload length (u64), the key text, the payload                    16 + key + payload
    table         the entries' 64-bit key hashes (i64[n]), then their record offsets (u64[n])
    trailer       b"HVDT", version (u32), n (u64), table offset (u64), crc32c of the table (u32),
                  crc32c of the 28 trailer bytes before it (u32)                        32 bytes

A run is written to a temp file and renamed into place, so a visible run is whole unless the disk lost what
was written (a crash without fsync): read_table rejects a file whose header, trailer or table does not
check out, and every hit checks its record's key text and payload crc32c (see DiskCache).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO, NamedTuple

import numpy as np

from hivedata import _native

VERSION = 2
FILE_MAGIC, TRAILER_MAGIC = b"HVDR", b"HVDT"
FILE_HEADER = struct.Struct("<4sI8x")
RECORD = struct.Struct("<IIQ")  # key text length, crc32c of the payload, payload length
TRAILER = struct.Struct("<4sIQQII")
OVERHEAD = FILE_HEADER.size + TRAILER.size  # a run's bytes besides its records and table
PER_ENTRY = RECORD.size + 16  # an entry's bytes besides its key text and payload: record header, table row


class RunFormatError(ValueError):
    """A run file that is damaged (or not a run file at all)."""


class NewerRunFormat(RunFormatError):
    """A run file of a format version this code does not read (written by a newer hivedata)."""


class RunTable(NamedTuple):
    """A run file's entries: key hashes, record offsets, and where its records end (the table's offset)."""

    hashes: np.ndarray  # int64
    offsets: np.ndarray  # int64
    data_end: int


def key_hash(ktext: bytes) -> int:
    """The signed 64-bit hash of a key text that the in-memory index and the run tables use."""
    return int.from_bytes(hashlib.blake2b(ktext, digest_size=8).digest(), "little", signed=True)


def entry_size(ktext: bytes, nbytes: int) -> int:
    """Bytes an entry of this key text and payload length takes in a run (header and trailer not counted)."""
    return PER_ENTRY + len(ktext) + nbytes


def write_run(f: BinaryIO, entries: list[tuple[bytes, int, memoryview]]) -> tuple[RunTable, int]:
    """Writes a whole run of (key text, key hash, payload) to F; its table and total size."""
    f.write(FILE_HEADER.pack(FILE_MAGIC, VERSION))
    pos, offsets = FILE_HEADER.size, []
    for ktext, _, view in entries:
        offsets.append(pos)
        f.write(RECORD.pack(len(ktext), _native.crc32c(view), view.nbytes) + ktext)
        f.write(view)
        pos += RECORD.size + len(ktext) + view.nbytes
    hashes = np.array([h for _, h, _ in entries], dtype=np.int64)
    offs = np.array(offsets, dtype=np.int64)
    table = hashes.tobytes() + offs.tobytes()
    head = TRAILER.pack(TRAILER_MAGIC, VERSION, len(entries), pos, _native.crc32c(table), 0)[:-4]
    f.write(table)
    f.write(head + struct.pack("<I", _native.crc32c(head)))
    return RunTable(hashes, offs, pos), pos + len(table) + TRAILER.size


def read_table(fd: int, size: int) -> RunTable:
    """The table of the run file open as FD (SIZE bytes long); RunFormatError if anything does not check out."""
    if size < OVERHEAD:
        raise RunFormatError(f"{size} bytes, shorter than an empty run")
    magic, version = FILE_HEADER.unpack(os.pread(fd, FILE_HEADER.size, 0))
    if magic != FILE_MAGIC:
        raise RunFormatError("no run file header")
    if version != VERSION:
        raise NewerRunFormat(f"format version {version}, this code reads {VERSION}")
    raw = os.pread(fd, TRAILER.size, size - TRAILER.size)
    magic, version, n, table_off, table_crc, crc = TRAILER.unpack(raw)
    if magic != TRAILER_MAGIC or version != VERSION or _native.crc32c(raw[:-4]) != crc:
        raise RunFormatError("no intact trailer at the end (truncated, grown or overwritten)")
    if table_off < FILE_HEADER.size or table_off + 16 * n + TRAILER.size != size:
        raise RunFormatError(f"a table of {n} entries at {table_off} does not fit {size} bytes")
    table = os.pread(fd, 16 * n, table_off)
    if len(table) != 16 * n or _native.crc32c(table) != table_crc:
        raise RunFormatError("table checksum mismatch")
    hashes = np.frombuffer(table, dtype=np.int64, count=n)
    offsets = np.frombuffer(table, dtype=np.int64, count=n, offset=8 * n)
    if n and (offsets.min() < FILE_HEADER.size or offsets.max() > table_off - RECORD.size):
        raise RunFormatError("a record offset outside the records")
    return RunTable(hashes, offsets, table_off)
