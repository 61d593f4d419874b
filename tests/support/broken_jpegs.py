"""JPEGs damaged in one known way (below any crop, or with a libjpeg warning), and a valid progressive bomb."""

from __future__ import annotations

import struct

from tests.support.images import jpeg, natural_image


def good_jpeg(w: int = 500, h: int = 400, seed: int = 0, **kw) -> bytes:
    """A photo-like baseline JPEG."""
    return jpeg(natural_image(w, h, seed), **kw)


def scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the first SOS segment)."""
    i = 2
    while True:
        assert data[i] == 0xFF, "not at a marker"
        m, n = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:
            return i + 2 + n
        i += 2 + n


def truncated_bottom(data: bytes, keep: float = 0.8) -> bytes:
    """The first `keep` of the file: the bottom rows' data and the EOI marker are missing."""
    return data[:int(len(data) * keep)]


def corrupt_scan_at(data: bytes, at: float = 0.9, n: int = 64) -> bytes:
    """Entropy-coded data at `at` of the file overwritten with stuffed 0xFF bytes (all one-bits); the file
    keeps its length and EOI. The rows from there on decode to garbage; libjpeg-turbo 2.1 loses its place
    and, at the end, finds "N extraneous bytes before marker 0xd9" (a warning, not an error)."""
    k = max(scan_start(data), int(len(data) * at))
    k += k % 2  # whole FF 00 pairs, never splitting one
    assert k + 2 * n < len(data) - 2
    return data[:k] + b"\xff\x00" * n + data[k + 2 * n:]


def extraneous_before_eoi(data: bytes, junk: bytes = b"\x00\x01\x02") -> bytes:
    """Bytes between the end of the scan and EOI (libjpeg: "N extraneous bytes before marker 0xd9")."""
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + junk + data[-2:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def progressive_bomb(w: int, h: int, components: int = 3) -> bytes:
    """A valid progressive JPEG of w x h flat grey pixels (4:4:4): DC scans only, 1 bit per 8x8 block.

    One DC first scan per component, every DC difference 0 (a 1-bit Huffman code); no AC scans (libjpeg
    decodes the scans a file has). About w * h * components / 512 bytes, yet libjpeg keeps the whole
    image's coefficients (w * h * components * 2 bytes, zeroed as the scans reach them) until the end.
    """
    assert 1 <= w <= 65535 and 1 <= h <= 65535 and components in (1, 3)
    out = bytearray(b"\xff\xd8")
    out += _segment(0xDB, b"\x00" + bytes([1] * 64))  # DQT 0: all ones
    sof = bytes([8]) + struct.pack(">HH", h, w) + bytes([components])
    for c in range(components):
        sof += bytes([c + 1, 0x11, 0])
    out += _segment(0xC2, sof)
    # DC table 0: one code, '0' (1 bit) -> category 0 (difference 0)
    out += _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    nblocks = ((w + 7) // 8) * ((h + 7) // 8)
    for c in range(components):  # DC first scan of one component: Ss=0 Se=0 Ah=Al=0
        out += _segment(0xDA, bytes([1, c + 1, 0x00, 0, 0, 0x00]))
        out += bytes(nblocks // 8) + (b"\x7f" if nblocks % 8 else b"")  # zero bits, padded with ones
    out += b"\xff\xd9"
    return bytes(out)
