"""Member tables of tar shards from large ranged reads: windows of megabytes, several members per GET.

`scan_tar` walks the same headers as `webdataset.read_tar_members` (one small GET per member) and returns
the same members, but reads the shard in windows (default 4 MiB) and parses every header a window holds.
Reading goes on contiguously through a member's data when the bytes to skip are at most `read_through`
(JPEG-sized members: the whole shard is read, ~36 members per 4 MiB GET); a larger member is jumped over
by starting the next window at the next header. A member whose data passed through a window gets its
crc32c; when the windows covered the whole object their running crc32c is the object's, which the caller
can compare with the crc32c GCS stores (ranged reads carry no checksum of their own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hivedata import _native
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.tar_layout import BLOCK, padded, parse_header, pax_path

DEFAULT_WINDOW = 4 << 20  # bytes per GET
DEFAULT_READ_THROUGH = 2 << 20  # read up to this many unneeded bytes instead of a new GET
MAX_EXTENDED_HEADER = 16 << 20  # a PAX / GNU long-name header's data larger than this is refused

Reader = Callable[[int, int], bytes]


def _extend_crc(crc: int, data: bytes | memoryview) -> int:
    import google_crc32c  # google-cloud-storage depends on it; C implementation, GB/s

    return google_crc32c.extend(crc, bytes(data) if isinstance(data, memoryview) else data)


@dataclass
class TarScan:
    """What scan_tar found: members as read_tar_members gives them, their crc32c, and what it cost."""

    members: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)  # per member: crc32c of its data, NO_CRC when not read whole
    reads: int = 0  # GETs issued
    bytes_read: int = 0
    object_crc: int | None = None  # crc32c of bytes [0, size) when every byte was read in order, else None


class _Windows:
    """A sliding buffer over bytes [start, end) of a shard, refilled with reads of at least `window` bytes."""

    def __init__(self, read: Reader, size: int, what: str, window: int, read_through: int) -> None:
        self.read, self.size, self.what = read, size, what
        self.window, self.read_through = window, read_through
        self.buf: bytes = b""
        self.start = self.end = 0
        self.crc = 0
        self.in_order = True  # every byte of [0, end) has been read, in order (self.crc is theirs)
        self.reads = self.bytes_read = 0

    def cover(self, lo: int, hi: int) -> None:
        """Makes the buffer hold bytes [lo, hi) (lo never moves backwards; hi <= size)."""
        if self.start <= lo and hi <= self.end:
            return
        at = self.end if lo - self.end <= self.read_through else lo  # go on reading, or jump
        length = min(max(hi - at, self.window), self.size - at)
        data = self.read(at, length)
        self.reads += 1
        self.bytes_read += len(data)
        if len(data) != length:
            raise ValueError(f"{self.what}: asked for {length} bytes at offset {at}, got {len(data)} "
                             "(the shard changed or was truncated while it was read)")
        if at == self.end:
            if self.in_order:
                self.crc = _extend_crc(self.crc, data)
            keep = min(max(lo, self.start), self.end) - self.start  # drop what lies before lo
            self.buf = self.buf[keep:] + data
            self.start += keep
        else:
            self.in_order = False
            self.buf, self.start = data, at
        self.end = at + length

    def view(self, lo: int, hi: int) -> memoryview:
        """Bytes [lo, hi), which must be covered."""
        return memoryview(self.buf)[lo - self.start:hi - self.start]


def scan_tar(read: Reader, size: int, what: str, *, window: int = DEFAULT_WINDOW,
             read_through: int = DEFAULT_READ_THROUGH) -> TarScan:
    """Every regular member of a tar of `size` bytes, read with `read(start, length)` in large windows.

    Members, their order and the errors (ValueError naming `what`) are those of read_tar_members.
    """
    if window < 2 * BLOCK:
        raise ValueError(f"window must be at least {2 * BLOCK} bytes, got {window}")
    w = _Windows(read, size, what, window, max(0, read_through))
    out = TarScan()
    pos, long_name = 0, None
    while pos + BLOCK <= size:
        w.cover(pos, pos + BLOCK)
        try:
            header = parse_header(bytes(w.view(pos, pos + BLOCK)), pos)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        if header is None:
            break
        name, length, kind = header
        if length < 0:
            raise ValueError(f"{what}: member {name!r} at offset {pos} has a negative size ({length})")
        data_at = pos + BLOCK
        if data_at + length > size:
            raise ValueError(f"{what}: member {name!r} at offset {pos} runs past the end of the shard")
        if kind in (b"x", b"L"):
            if length > MAX_EXTENDED_HEADER:
                raise ValueError(f"{what}: member {name!r} at offset {pos} is an extended header of {length} "
                                 f"bytes (more than {MAX_EXTENDED_HEADER})")
            w.cover(data_at, data_at + length)
            data = bytes(w.view(data_at, data_at + length))
            try:
                long_name = pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            except ValueError as e:
                raise ValueError(f"{what}: member {name!r} at offset {pos}: {e}") from None
        elif kind in (b"0", b"\0", b"7"):
            data_end = data_at + length
            w.cover(data_at, data_end if data_end - w.end <= w.read_through else data_at + min(length, BLOCK))
            head = bytes(w.view(data_at, data_at + min(length, BLOCK)))
            crc = _native.crc32c(w.view(data_at, data_end)) if data_end <= w.end else NO_CRC
            out.members.append((long_name or name, data_at, length, head))
            out.crcs.append(crc)
            long_name = None
        else:
            long_name = None
        pos = data_at + padded(length)
    if w.in_order and w.end < size and size - w.end <= w.read_through:  # the end-of-archive padding
        w.cover(w.end, size)
    out.reads, out.bytes_read = w.reads, w.bytes_read
    out.object_crc = w.crc if w.in_order and w.end == size else None
    return out
