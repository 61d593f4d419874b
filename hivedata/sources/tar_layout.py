"""The tar layout of WebDataset shards: member headers we write, and headers we parse back.

A shard is a plain POSIX tar: for each sample ``<key>.jpg`` then ``<key>.cls`` (the label as decimal
text), each member a 512-byte header (more for long names) followed by its data padded to 512 bytes,
then two zero blocks, padded to tarfile's 10 KiB record. Headers are a pure function of (name, size),
so the position of every sample in a shard is known before any byte of it is written.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

BLOCK = 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads the archive to a multiple of this


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of a regular-file member: fixed mode, owner and mtime, so packing is reproducible."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "hivedata"
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def padded(size: int) -> int:
    """size rounded up to whole 512-byte blocks."""
    return -(-size // BLOCK) * BLOCK


def archive_size(payload_end: int) -> int:
    """Total size of a tar whose last member ends at payload_end: two zero blocks, then record padding."""
    end = payload_end + 2 * BLOCK
    return -(-end // RECORD) * RECORD


@dataclass(frozen=True)
class Member:
    """One member as read back from a tar: its name, where its data starts, its size, and a data prefix."""

    name: str
    data_offset: int
    size: int


def parse_header(block: bytes, offset: int) -> tuple[str, int, bytes] | None:
    """(name, size, type) of the header block at `offset`, or None at the end-of-archive marker."""
    if len(block) < BLOCK:
        raise ValueError(f"truncated tar header at offset {offset}")
    if block[:BLOCK] == bytes(BLOCK):
        return None
    try:
        info = tarfile.TarInfo.frombuf(block[:BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise ValueError(f"bad tar header at offset {offset}: {e}") from e
    return info.name, info.size, info.type


def pax_path(data: bytes) -> str | None:
    """The `path` record of a PAX extended header's data, if any (ValueError for a malformed record)."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        digits = data[pos:space]
        length = int(digits) if digits.isdigit() else -1
        if length <= space - pos or pos + length > len(data):  # "<length> <key>=<value>\n", length counting all
            raise ValueError(f"bad PAX record at byte {pos} of an extended header")
        record = data[space + 1:pos + length - 1]  # without the trailing newline
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += length
    return None
