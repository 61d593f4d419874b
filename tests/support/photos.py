"""Photo-like test JPEGs and the plain-Pillow evaluation reference shared by the backend tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(w: int = 500, h: int = 375, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (low-frequency colour fields plus gradients)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((8, 10, 3)) * 255).astype(np.uint8))
    img = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(np.float32)
    img += np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    """Encoded bytes (JPEG quality 92 unless given)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 92} | kw if fmt == "JPEG" else kw))
    return buf.getvalue()


def jpeg(w=500, h=375, seed=0, mode="RGB", **kw) -> bytes:
    """A photo() as a JPEG, optionally converted to another mode first."""
    img = photo(w, h, seed)
    return encode(img if mode == "RGB" else img.convert(mode), **kw)


def reference_eval(data: bytes, out: int = 224, shorter: int = 256) -> np.ndarray:
    """torchvision-style eval with plain Pillow: resize shorter side to 256 (BILINEAR), centre crop 224."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    nw, nh = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - out) / 2)), int(round((nh - out) / 2))
    return np.asarray(img.crop((left, top, left + out, top + out)))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
