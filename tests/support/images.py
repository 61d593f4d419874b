"""Small real and hostile images for loader and decoder tests."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def natural_image(w: int, h: int, seed: int) -> Image.Image:
    """A smooth gradient plus noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def jpeg(img: Image.Image, **kw) -> bytes:
    """JPEG bytes of an image (quality 90 unless given)."""
    buf = io.BytesIO()
    kw.setdefault("quality", 90)
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    """PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def huge_header(data: bytes, w: int = 60000, h: int = 60000) -> bytes:
    """The JPEG with its SOF dimensions patched to w x h (a decompression bomb's header)."""
    b = bytearray(data)
    i = 2
    while i < len(b) - 9:
        if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 7] = h.to_bytes(2, "big")
            b[i + 7:i + 9] = w.to_bytes(2, "big")
            return bytes(b)
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    raise ValueError("no SOF marker")


def hostile_set(seed: int = 0) -> dict[str, bytes | None]:
    """name -> bytes; the value says nothing about validity: see HOSTILE_BAD."""
    good = natural_image(320, 240, seed)
    base = jpeg(good)
    return {
        "truncated.JPEG": base[: len(base) // 2],
        "random.JPEG": os.urandom(5000),
        "png_named.JPEG": png(good),
        "empty.JPEG": b"",
        "bomb.JPEG": huge_header(base),
        "cmyk.JPEG": jpeg(good.convert("CMYK")),
        "gray.JPEG": jpeg(good.convert("L")),
        "progressive.JPEG": jpeg(good, progressive=True),
    }


# samples that must be skipped (png_named decodes through the Pillow fallback)
HOSTILE_BAD = {"truncated.JPEG", "random.JPEG", "empty.JPEG", "bomb.JPEG"}
