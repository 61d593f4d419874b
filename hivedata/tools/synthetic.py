"""Deterministic synthetic "ImageNet-like" JPEG datasets in the ILSVRC layout.

Every image is a pure function of ``(spec.seed, split, label, index)``: a natural-looking background
(smooth random colour fields, gradient, blotchy texture, sensor-like noise) overlaid with class cues that
survive RandomResizedCrop + flips at low resolution -- a class colour palette, a class texture (stripes,
checker, dots, rings, waves, cross-hatch at a class orientation/frequency) over most of the image, and a few
class shapes.  A small ``special_fraction`` of images is grayscale, CMYK or progressive, like real ImageNet.
"""

from __future__ import annotations

import colorsys
import io
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

MAX_CLASSES = 20_000
VAL_LAYOUTS = ("folders", "flat")
SPECIAL_KINDS = ("gray", "cmyk", "progressive")

# Long/short side ratios, weighted roughly like ImageNet (4:3 dominates); 25% of images are portrait.
_ASPECTS = (1.0, 1.25, 4 / 3, 4 / 3, 4 / 3, 4 / 3, 1.5, 1.5, 16 / 9)
_PORTRAIT_PROB = 0.25
_NUM_PATTERNS = 6
_NUM_SHAPES = 5


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic dataset; everything generated is a pure function of these."""

    num_classes: int = 10
    train_per_class: int = 100
    val_per_class: int = 20
    seed: int = 0
    min_short_side: int = 300
    max_short_side: int = 500
    quality: int = 90
    special_fraction: float = 0.03
    val_layout: str = "folders"

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {self.num_classes}")
        if self.train_per_class < 0 or self.val_per_class < 0:
            raise ValueError(
                f"train_per_class and val_per_class must be >= 0, got {self.train_per_class}, "
                f"{self.val_per_class}"
            )
        if self.num_classes * self.val_per_class > 99_999_999:
            raise ValueError("too many val images for 8-digit ILSVRC2012_val_ numbering")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.min_short_side < 16:
            raise ValueError(f"min_short_side must be >= 16, got {self.min_short_side}")
        if self.max_short_side < self.min_short_side:
            raise ValueError(
                f"max_short_side ({self.max_short_side}) must be >= min_short_side ({self.min_short_side})"
            )
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")
        if not 0.0 <= self.special_fraction <= 1.0:
            raise ValueError(f"special_fraction must be in [0, 1], got {self.special_fraction}")
        if self.val_layout not in VAL_LAYOUTS:
            raise ValueError(f"val_layout must be one of {VAL_LAYOUTS}, got {self.val_layout!r}")


@dataclass(frozen=True)
class SampleRef:
    """One image of the dataset: its object/file name relative to the bucket/root, label, split, index."""

    name: str
    label: int
    split: str
    index: int


@dataclass(frozen=True)
class DatasetInfo:
    """What was written: location, prefixes, class ids, counts and total JPEG bytes."""

    bucket: str
    train_prefix: str
    val_prefix: str
    num_classes: int
    wnids: tuple[str, ...]
    num_train: int
    num_val: int
    total_bytes: int
    val_labels_object: str | None


# --------------------------------------------------------------------------------------------- naming


def wnids(num_classes: int) -> list[str]:
    """Deterministic, unique, increasing ImageNet-style ids (``n01440764``, ...); prefix-stable in n."""
    if not 0 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [0, {MAX_CLASSES}], got {num_classes}")
    steps = np.random.default_rng(0x1D5).integers(1, 4001, size=num_classes)  # max id stays < 10**8
    steps[:1] = 0  # the first id is n01440764 (tench), as in ImageNet
    return [f"n{int(i):08d}" for i in 1_440_764 + np.cumsum(steps)]


def val_labels_object(val_prefix: str) -> str:
    """Object name of the flat-layout val labels file: ``<val_prefix>_labels.txt``."""
    return f"{val_prefix.rstrip('/')}_labels.txt"


def _val_numbers(spec: SyntheticSpec) -> np.ndarray:
    """1-based ILSVRC2012_val_ numbers for val images, shuffled across classes like the real set."""
    n = spec.num_classes * spec.val_per_class
    return np.random.default_rng([spec.seed, 0xFA1]).permutation(n) + 1


def dataset_items(
    spec: SyntheticSpec, train_prefix: str = "train", val_prefix: str = "val"
) -> tuple[list[SampleRef], list[SampleRef]]:
    """Train and val sample references (in label, index order) with ILSVRC object names."""
    tp, vp = train_prefix.rstrip("/"), val_prefix.rstrip("/")
    ids = wnids(spec.num_classes)
    train = [
        SampleRef(f"{tp}/{w}/{w}_{i}.JPEG", label, "train", i)
        for label, w in enumerate(ids)
        for i in range(spec.train_per_class)
    ]
    numbers = _val_numbers(spec)
    val = []
    for label, w in enumerate(ids):
        for i in range(spec.val_per_class):
            base = f"ILSVRC2012_val_{int(numbers[label * spec.val_per_class + i]):08d}.JPEG"
            name = f"{vp}/{w}/{base}" if spec.val_layout == "folders" else f"{vp}/{base}"
            val.append(SampleRef(name, label, "val", i))
    return train, val


def val_labels_text(spec: SyntheticSpec, val_items: Iterable[SampleRef]) -> str:
    """Labels file for the flat val layout: ``<basename> <wnid>`` lines sorted by name."""
    ids = wnids(spec.num_classes)
    lines = sorted(f"{item.name.rsplit('/', 1)[-1]} {ids[item.label]}" for item in val_items)
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------------ rendering


def special_kind(label: int, index: int, spec: SyntheticSpec, split: str) -> str | None:
    """Which special encoding ("gray", "cmyk", "progressive") an image gets, or None for plain RGB."""
    f = spec.special_fraction
    if f <= 0.0:
        return None
    per_class = spec.train_per_class if split == "train" else spec.val_per_class
    g = label * per_class + index + (spec.seed * 7 + zlib.crc32(split.encode())) % 997
    lo, hi = math.floor(g * f), math.floor((g + 1) * f)  # evenly spaced: every ~1/f-th image
    return SPECIAL_KINDS[lo % len(SPECIAL_KINDS)] if hi > lo else None


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


@dataclass(frozen=True)
class _ClassStyle:
    light: np.ndarray  # RGB 0..255, the two texture colours and the shape colour
    dark: np.ndarray
    accent: np.ndarray
    pattern: int
    angle: float  # radians
    freq: float  # texture cycles per short side
    sharpness: float
    shape: int


@lru_cache(maxsize=1024)
def _class_style(label: int) -> _ClassStyle:
    rng = np.random.default_rng([0xC1A55, label])
    hue = (label * 0.6180339887) % 1.0  # golden-ratio spacing keeps the first classes' hues apart
    sat, val = rng.uniform(0.6, 0.95), rng.uniform(0.7, 1.0)
    return _ClassStyle(
        light=_hsv(hue, sat, val),
        dark=_hsv(hue + 0.05, sat, val * rng.uniform(0.25, 0.45)),
        accent=_hsv(hue - 0.05, sat * 0.5, 1.0) if label % 2 else _hsv(hue + 0.03, sat, 0.2),
        pattern=label % _NUM_PATTERNS,
        angle=(label * 0.381966 * math.pi) % math.pi,
        freq=float(rng.uniform(6.0, 12.0)),
        sharpness=float(rng.uniform(1.5, 4.0)),
        shape=(label + label // _NUM_PATTERNS) % _NUM_SHAPES,
    )


def _image_rng(spec: SyntheticSpec, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(split.encode()), label, index])


def _image_size(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[int, int]:
    short = int(rng.integers(spec.min_short_side, spec.max_short_side + 1))
    long = int(round(short * _ASPECTS[int(rng.integers(len(_ASPECTS)))]))
    return (long, short) if rng.random() < _PORTRAIT_PROB else (short, long)  # (height, width)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic upsampling of a small float32 (gh, gw) grid to (h, w)."""
    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random scene from two random hues: smooth colour field plus clutter, as planar float32 (3, h, w)."""
    gh, gw = (int(v) for v in rng.integers(2, 5, size=2))
    hues = rng.random(2)
    cols = [
        _hsv(hues[rng.integers(2)] + rng.normal(0, 0.03), rng.uniform(0.1, 0.7), rng.uniform(0.15, 0.95))
        for _ in range(gh * gw)
    ]
    grid = np.clip(np.array(cols).reshape(gh, gw, 3), 0, 255).astype(np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    # Unrelated clutter with hard edges (scene "objects"), partly hidden later by the class texture.
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, size=2) * w)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, size=2) * h)
        col = tuple(
            int(c) for c in _hsv(hues[rng.integers(2)] + rng.normal(0, 0.1), rng.random(), rng.random())
        )
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=col)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=col)
        else:
            draw.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(2, 12)))
    return np.asarray(img).transpose(2, 0, 1).astype(np.float32, order="C")  # planar (3, h, w)


def _texture(rng: np.random.Generator, st: _ClassStyle, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Class texture in [0, 1], float32 (h, w); xs, ys are float32 coordinates in short-side units."""
    a = st.angle + rng.normal(0, 0.08)
    k = np.float32(2 * math.pi * st.freq * rng.uniform(0.85, 1.15))
    ca, sa = np.float32(math.cos(a)), np.float32(math.sin(a))
    phase_u, phase_v = rng.uniform(0, 2 * math.pi, size=2).astype(np.float32)
    u = (k * ca * xs)[None, :] + (k * sa * ys + phase_u)[:, None]  # rotated plane-wave phases
    v = (k * ca * ys + phase_v)[:, None] - (k * sa * xs)[None, :]
    if st.pattern == 0:  # stripes
        t = np.sin(u)
    elif st.pattern == 1:  # checker
        t = np.sin(u)
        t *= np.sin(v)
        t *= 2.0
    elif st.pattern == 2:  # dots on a grid
        t = np.cos(u)
        t += np.cos(v)
        t -= 0.8
    elif st.pattern == 3:  # concentric rings around a random centre
        cx, cy = rng.uniform(-0.5, 0.5, size=2).astype(np.float32)
        t = np.hypot((xs - cx)[None, :], (ys - cy)[:, None])
        t *= k
        np.sin(t, out=t)
    elif st.pattern == 4:  # wavy stripes
        v *= np.float32(1 / 3)
        t = np.sin(v)
        t *= 2.0
        t += u
        np.sin(t, out=t)
    else:  # cross-hatch
        t = np.maximum(np.sin(u), np.sin(v))
    t *= np.float32(st.sharpness * 0.5)  # sharpen, then map [-1, 1] -> [0, 1]
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def _draw_shapes(rng: np.random.Generator, img: Image.Image, st: _ClassStyle, gain: float) -> None:
    w, h = img.size
    s = min(w, h)
    draw = ImageDraw.Draw(img)
    fill = tuple(int(c) for c in np.clip(st.accent * gain + rng.normal(0, 8, 3), 0, 255))
    outline = tuple(int(c) for c in np.clip(st.dark * gain, 0, 255))
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        r, rot = rng.uniform(0.07, 0.18) * s, rng.uniform(0, 2 * math.pi)
        width = max(1, int(r * 0.12))
        if st.shape == 0:  # disc
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
        elif st.shape == 4:  # ring
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r * 0.35)))
        else:  # square, triangle, star
            n = {1: 4, 2: 3, 3: 10}[st.shape]
            radii = np.where(np.arange(n) % 2 == 1, 0.45 * r, r) if st.shape == 3 else np.full(n, r)
            ang = rot + np.arange(n) * 2 * math.pi / n
            pts = list(
                zip((cx + radii * np.cos(ang)).tolist(), (cy + radii * np.sin(ang)).tolist(), strict=True)
            )
            draw.polygon(pts, fill=fill, outline=outline, width=width)


def render_image(label: int, index: int, spec: SyntheticSpec, split: str) -> Image.Image:
    """The RGB image for (spec.seed, split, label, index), before any special encoding."""
    rng = _image_rng(spec, split, label, index)
    st = _class_style(label)
    h, w = _image_size(rng, spec)
    s = min(h, w)
    xs = (np.arange(w, dtype=np.float32) - w / 2) / s
    ys = (np.arange(h, dtype=np.float32) - h / 2) / s

    img = _background(rng, h, w)
    # Class texture in the class colours over most of the image (smooth random mask).
    tex = _texture(rng, st, xs, ys)
    mask = _upsample(rng.normal(size=(3, 4)), h, w) + np.float32(rng.uniform(0.4, 1.2))
    mask *= 2.0
    np.clip(mask, 0.0, 1.0, out=mask)
    mask *= np.float32(rng.uniform(0.55, 0.95))
    light = st.light * rng.uniform(0.85, 1.1)
    dark = st.dark * rng.uniform(0.8, 1.2)
    # Global brightness jitter plus luminance detail: blotchy mid-frequency texture and fine noise.
    gain = np.float32(rng.uniform(0.75, 1.15))
    cell = int(rng.integers(2, 5))
    detail = _upsample(rng.normal(0, rng.uniform(10, 20), size=(h // cell + 2, w // cell + 2)), h, w)
    noise = rng.random((h, w), dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(rng.uniform(8, 17) * math.sqrt(12))  # uniform noise with that std
    detail = detail + noise
    tmp = np.empty_like(tex)
    planes = []
    for c in range(3):  # planar in-place arithmetic: img = lerp(img, lerp(dark, light, tex), mask)
        ch = img[c]
        np.multiply(tex, np.float32(light[c] - dark[c]), out=tmp)
        tmp += np.float32(dark[c])
        tmp -= ch
        tmp *= mask
        ch += tmp
        ch *= gain
        ch += detail
        planes.append(Image.fromarray(np.clip(ch, 0, 255, out=ch).astype(np.uint8)))
    out = Image.merge("RGB", planes)
    _draw_shapes(rng, out, st, float(gain))
    return out


def make_jpeg(label: int, index: int, spec: SyntheticSpec, split: str) -> bytes:
    """Deterministic JPEG bytes for (spec.seed, split, label, index)."""
    img = render_image(label, index, spec, split)
    kind = special_kind(label, index, spec, split)
    if kind == "gray":
        img = img.convert("L")
    elif kind == "cmyk":
        img = img.convert("CMYK")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=spec.quality, progressive=kind == "progressive")
    return buf.getvalue()
