"""Native JPEG decode + augment (csrc/jpeg_decoder.cc, augment.cc, resample.cc): fidelity against Pillow,
crop geometry against torchvision's RandomResizedCrop, determinism, DCT scaling, odd sizes, upsampling."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from hivedata import _native

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# ------------------------------------------------------------------------------------------- helpers


def natural(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth gradients, soft blobs, a few hard edges and sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.03, 3)
        img[..., c] = 128 + 60 * np.sin(xx * fx + ph * 10) * np.cos(yy * fy) + 40 * (xx / w - yy / h)
    for _ in range(8):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 60)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] += rng.uniform(-80, 80, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


KINDS = {
    "baseline": ("RGB", {}),
    "progressive": ("RGB", {"progressive": True}),
    "grayscale": ("L", {}),
    "cmyk": ("CMYK", {}),
    "444": ("RGB", {"subsampling": 0}),
}


def pil_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def pil_eval(data: bytes, out: int = 224, crop_ratio: float = 0.875) -> np.ndarray:
    """torchvision Resize(round(out / crop_ratio)) + CenterCrop(out) on a full Pillow decode."""
    im = pil_rgb(data)
    w, h = im.size
    s = round(out / crop_ratio)
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - out) / 2.0)), int(round((nh - out) / 2.0))
    return np.asarray(im.crop((left, top, left + out, top + out)))


def pil_box(data: bytes, box, flip: bool, out_h: int = 224, out_w: int = 224) -> np.ndarray:
    x, y, w, h = box
    ref = np.asarray(pil_rgb(data).resize((out_w, out_h), Image.BILINEAR, box=(x, y, x + w, y + h)))
    return ref[:, ::-1] if flip else ref


def pil_box_two_pass(data: bytes, box, flip: bool, out_h: int = 224, out_w: int = 224) -> np.ndarray:
    """Image.resize(box=...) spelled out as Pillow's classic horizontal pass, then vertical pass (each
    call below needs only one pass). Pillow 13 may run the vertical pass first (a speed heuristic),
    which moves some pixels by 1; this order is the one hivedata and earlier Pillow versions use."""
    x, y, w, h = box
    im = pil_rgb(data)
    im = im.resize((out_w, im.size[1]), Image.BILINEAR, box=(x, 0, x + w, im.size[1]))
    ref = np.asarray(im.resize((out_w, out_h), Image.BILINEAR, box=(0, y, out_w, y + h)))
    return ref[:, ::-1] if flip else ref


def decode(data, *, out_h: int = 224, out_w: int = 224, **kw) -> tuple[np.ndarray, dict]:
    out = np.empty((out_h, out_w, 3), np.uint8)
    kw.setdefault("sample_seed", 0)
    info = _native.decode_image(data, out, out_h=out_h, out_w=out_w, **kw)
    return out, info


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def images() -> dict[tuple[str, str], bytes]:
    """(kind, orientation) -> JPEG bytes."""
    shapes = {"landscape": (500, 375), "portrait": (375, 500), "square": (333, 333)}
    out = {}
    for orient, (w, h) in shapes.items():
        arr = natural(w, h, seed=len(out))
        for kind, (mode, kw) in KINDS.items():
            out[kind, orient] = encode(arr, mode, **kw)
    return out


# ------------------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("orient", ["landscape", "portrait", "square"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_matches_pillow_resize_and_centre_crop(images, kind, orient):
    data = images[kind, orient]
    out, info = decode(data, train=False)
    assert info["flip"] is False
    assert mad(out, pil_eval(data)) < 3.0
    if kind == "grayscale":
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_crop_matches_pillow_box_resize(images, kind):
    data = images[kind, "landscape"]
    flips = set()
    for seed in range(12):
        out, info = decode(data, sample_seed=seed, train=True)
        box = _native.choose_crop(500, 375, seed)
        assert tuple(info["box"]) == box[:4] and info["flip"] == box[4]
        assert mad(out, pil_box(data, info["box"], info["flip"])) < 3.0
        flips.add(info["flip"])
    assert flips == {False, True}


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale", "cmyk", "444"])
def test_equals_pillow_when_no_dct_scaling(kind):
    """At scale 8/8 the pipeline is Pillow's arithmetic on the same libjpeg pixels: crop_scanline and
    skip_scanlines must not change a single pixel, down- or upsampling."""
    arr = natural(251, 243, seed=7)
    mode, kw = KINDS[kind]
    data = encode(arr, mode, **kw)
    for seed in range(20):
        out_h, out_w = ((224, 224), (97, 131), (300, 200))[seed % 3]
        out, info = decode(data, sample_seed=seed, train=True, out_h=out_h, out_w=out_w, ratio=(0.3, 3.0))
        assert info["scale_num"] == 8  # a 251x243 image holds no crop of twice these sizes
        ref = pil_box_two_pass(data, info["box"], info["flip"], out_h=out_h, out_w=out_w)
        assert np.array_equal(out, ref), (seed, info)
        assert mad(out, pil_box(data, info["box"], info["flip"], out_h=out_h, out_w=out_w)) < 0.5


def test_cmyk_without_adobe_marker_matches_pillow():
    """Pillow treats every CMYK JPEG as Adobe (inverted) CMYK; so do we, with or without APP14."""
    data = bytearray(encode(natural(320, 240, seed=3), "CMYK"))
    i = 2
    while data[i + 1] != 0xEE:  # find APP14 "Adobe"
        assert data[i] == 0xFF and data[i + 1] != 0xDA, "no Adobe marker"
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    stripped = bytes(data[:i] + data[i + 2 + int.from_bytes(data[i + 2:i + 4], "big"):])
    assert b"Adobe" not in stripped[:200]
    for d in (bytes(data), stripped):
        out, _ = decode(d, train=False)
        assert mad(out, pil_eval(d)) < 3.0


@pytest.fixture(scope="module")
def big_images() -> dict[tuple[str, str], bytes]:
    """(kind, orientation) -> 1000x750 / 750x1000 JPEG bytes: large enough for DCT scaling."""
    out = {}
    for orient, (w, h) in {"landscape": (1000, 750), "portrait": (750, 1000)}.items():
        arr = natural(w, h, seed=20 + len(out))
        for kind, (mode, kw) in KINDS.items():
            out[kind, orient] = encode(arr, mode, **kw)
    return out


@pytest.mark.parametrize("orient", ["landscape", "portrait"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_dct_scaled_decode_matches_pillow(big_images, kind, orient):
    data = big_images[kind, orient]
    out, info = decode(data, train=False)
    assert info["scale_num"] == 4  # the 656x656 centre crop at 1/2 is 328 >= 224
    assert mad(out, pil_eval(data)) < 3.0
    scales = set()
    for seed in range(6):
        out, info = decode(data, sample_seed=seed, train=True)
        scales.add(info["scale_num"])
        assert mad(out, pil_box(data, info["box"], info["flip"])) < 3.0
    assert 4 in scales


@pytest.mark.parametrize(("w", "h", "scale_num"), [(2000, 1500, 2), (2400, 2100, 1)])
def test_large_images_use_the_smallest_scale_that_covers_the_output(w, h, scale_num):
    # upscaled from a smaller picture: cheap to make, still photo-like at the decoded scale
    arr = np.asarray(Image.fromarray(natural(w // 4, h // 4, seed=11)).resize((w, h), Image.BILINEAR))
    data = encode(arr)
    out, info = decode(data, train=False)
    assert info["scale_num"] == scale_num
    assert (info["src_w"], info["src_h"]) == (w, h)
    assert mad(out, pil_eval(data)) < 3.0
    out, info = decode(data, sample_seed=5, train=True, scale=(0.5, 1.0))
    assert info["scale_num"] < 8
    assert mad(out, pil_box(data, info["box"], info["flip"])) < 3.0


def test_scale_is_a_power_of_two_eighth():
    data = encode(natural(900, 700, seed=4))
    for seed in range(30):
        _, info = decode(data, sample_seed=seed)
        x, y, w, h = info["box"]
        n = info["scale_num"]
        assert n in (1, 2, 4, 8)
        assert n == 8 or (w * n / 8 >= 224 and h * n / 8 >= 224)  # still covers the output
        assert n == 1 or not (w * n / 16 >= 224 and h * n / 16 >= 224)  # and no smaller one would


@pytest.mark.parametrize("train", [False, True])
def test_odd_output_size(images, train):
    data = images["baseline", "landscape"]
    for seed in range(4):
        out, info = decode(data, out_h=97, out_w=131, train=train, sample_seed=seed)
        assert out.shape == (97, 131, 3)
        box = _native.choose_crop(500, 375, seed, train=train, out_h=97, out_w=131)
        assert tuple(info["box"]) == box[:4]
        assert mad(out, pil_box(data, info["box"], info["flip"], out_h=97, out_w=131)) < 3.0


def test_eval_box_for_non_square_output_fits_inside_the_image():
    for w, h in [(500, 375), (375, 500), (1000, 100), (100, 1000)]:
        for oh, ow in [(97, 131), (131, 97), (224, 224)]:
            x, y, bw, bh, flip = _native.choose_crop(w, h, 0, train=False, out_h=oh, out_w=ow)
            assert not flip
            assert 0 <= x and 0 <= y and x + bw <= w + 1e-9 and y + bh <= h + 1e-9
            assert bw / ow == pytest.approx(bh / oh, rel=0.02)  # no distortion


def test_upsamples_tiny_images():
    arr = natural(16, 16, seed=1)
    for kind in ("baseline", "grayscale", "progressive"):
        mode, kw = KINDS[kind]
        data = encode(arr, mode, **kw)
        out, info = decode(data, train=False)
        assert info["scale_num"] == 8
        assert mad(out, pil_eval(data)) < 1.0
        out, info = decode(data, sample_seed=3, train=True)
        assert mad(out, pil_box(data, info["box"], info["flip"])) < 1.0


@pytest.mark.parametrize(("w", "h"), [(1, 1), (1, 7), (2, 2), (3, 200), (200, 3), (9, 1)])
@pytest.mark.parametrize("kind", ["baseline", "grayscale", "cmyk"])
def test_slivers_equal_pillow(w, h, kind):
    """Images narrower than the filter (the portable resampling path) and single-MCU images."""
    mode, kw = KINDS[kind]
    data = encode(natural(w, h, seed=1), mode, **kw)
    for train in (False, True):
        out, info = decode(data, train=train, sample_seed=3)
        assert np.array_equal(out, pil_box_two_pass(data, info["box"], info["flip"])), info


def test_extreme_aspect_image_decodes(images):
    data = encode(natural(2000, 20, seed=2))
    out, info = decode(data, sample_seed=1, train=True)
    assert mad(out, pil_box(data, info["box"], info["flip"])) < 3.0
    out, info = decode(data, train=False)
    assert mad(out, pil_box(data, info["box"], False)) < 3.0


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different_crop(images):
    data = images["baseline", "landscape"]
    a, ia = decode(data, sample_seed=123)
    b, ib = decode(data, sample_seed=123)
    assert ia == ib and a.tobytes() == b.tobytes()
    boxes = {tuple(decode(data, sample_seed=s)[1]["box"]) for s in range(20)}
    assert len(boxes) >= 18
    c, _ = decode(data, sample_seed=124)
    assert c.tobytes() != a.tobytes()


def test_flip_mirrors_the_same_crop(images):
    data = images["baseline", "landscape"]
    plain, i0 = decode(data, sample_seed=9, flip_p=0.0)
    mirrored, i1 = decode(data, sample_seed=9, flip_p=1.0)
    assert i0["box"] == i1["box"] and (i0["flip"], i1["flip"]) == (False, True)
    assert (mirrored == plain[:, ::-1]).all()


def test_eval_is_independent_of_seed(images):
    data = images["progressive", "portrait"]
    a, _ = decode(data, sample_seed=1, train=False)
    b, _ = decode(data, sample_seed=2, train=False)
    assert a.tobytes() == b.tobytes()


def _py_mix(z: int) -> int:
    z = (z + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class _PyRng:
    """csrc/sample_rng.h in Python."""

    def __init__(self, seed: int) -> None:
        self.state = seed

    def next(self) -> int:
        v = _py_mix(self.state)
        self.state = (self.state + GOLDEN) & M64
        return v

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * ((self.next() >> 11) * 2.0**-53)

    def below(self, n: int) -> int:
        threshold = (1 << 64) % n
        while True:
            r = self.next()
            if r >= threshold:
                return r % n


def _torchvision_get_params(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5):
    """torchvision.transforms.RandomResizedCrop.get_params, fed by _PyRng instead of torch."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.below(height - h + 1)
            j = rng.below(width - w + 1)
            break
    else:
        in_ratio = float(width) / float(height)
        if in_ratio < min(ratio):
            w = width
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = height
            w = int(round(h * max(ratio)))
        else:
            w, h = width, height
        i = (height - h) // 2
        j = (width - w) // 2
    return (float(j), float(i), float(w), float(h), rng.uniform() < flip_p)


def test_sample_seed_is_splitmix_of_seed_epoch_index():
    for seed, epoch, index in [(0, 0, 0), (1, 2, 3), (2**63, 7, 1_281_166), (M64, M64, M64)]:
        want = _py_mix((_py_mix((_py_mix(seed) + epoch) & M64) + index) & M64)
        assert _native.sample_seed(seed, epoch, index) == want
    seeds = {_native.sample_seed(42, e, i) for e in range(4) for i in range(500)}
    assert len(seeds) == 2000
    assert _native.sample_seed(-1, 0, 0) == _native.sample_seed(M64, 0, 0)


@pytest.mark.parametrize(("w", "h", "scale", "ratio"), [
    (500, 375, (0.08, 1.0), (3 / 4, 4 / 3)),
    (375, 500, (0.08, 1.0), (3 / 4, 4 / 3)),
    (64, 4000, (0.08, 1.0), (3 / 4, 4 / 3)),  # mostly the fallback
    (300, 300, (0.5, 0.9), (0.5, 2.0)),
])
def test_choose_crop_is_torchvision_get_params(w, h, scale, ratio):
    for s in range(300):
        seed = _native.sample_seed(0, 0, s)
        got = _native.choose_crop(w, h, seed, scale=scale, ratio=ratio)
        assert got == _torchvision_get_params(w, h, _PyRng(seed), scale, ratio)


def test_choose_crop_statistics():
    w, h = 500, 375
    flips, areas, ratios = 0, [], []
    for s in range(2000):
        x, y, bw, bh, flip = _native.choose_crop(w, h, _native.sample_seed(1, 0, s))
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw >= 1 and bh >= 1
        assert x == int(x) and y == int(y) and bw == int(bw) and bh == int(bh)
        flips += flip
        areas.append(bw * bh / (w * h))
        ratios.append(bw / bh)
    assert 0.45 < flips / 2000 < 0.55
    assert min(areas) > 0.07 and max(areas) <= 1.0
    assert 0.38 < np.mean(areas) < 0.50  # U(0.08, 1) less the large crops that do not fit (rejected)
    assert min(ratios) > 0.7 and max(ratios) < 1.4


def test_choose_crop_fallback_on_extreme_aspect():
    # 2000x20: no 10% .. 100% area crop with ratio in [3/4, 4/3] fits, so: centre crop clamped to 4/3
    for s in range(50):
        x, y, bw, bh, _ = _native.choose_crop(2000, 20, s)
        assert (x, y, bw, bh) == (986.0, 0.0, 27.0, 20.0)
    x, y, bw, bh, _ = _native.choose_crop(20, 2000, 0)
    assert (x, y, bw, bh) == (0.0, 986.0, 20.0, 27.0)


def test_choose_crop_flip_probability_extremes():
    assert not any(_native.choose_crop(500, 375, s, flip_p=0.0)[4] for s in range(200))
    assert all(_native.choose_crop(500, 375, s, flip_p=1.0)[4] for s in range(200))


def test_eval_crop_is_torchvision_resize_centre_crop():
    # 500x375 -> Resize(256) gives 341x256, CenterCrop(224) starts at round(58.5) = 58 (half to even), 16
    x, y, w, h, flip = _native.choose_crop(500, 375, 0, train=False)
    assert (x, y, w, h, flip) == pytest.approx((58 * 500 / 341, 16 * 375 / 256, 224 * 500 / 341, 224 * 375 / 256, 0))


# ------------------------------------------------------------------------------------------- API


def test_info_fields_and_header(images):
    data = images["progressive", "portrait"]
    assert _native.jpeg_header(data) == (375, 500, 3, True)
    assert _native.jpeg_header(images["grayscale", "square"]) == (333, 333, 1, False)
    assert _native.jpeg_header(images["cmyk", "landscape"]) == (500, 375, 4, False)
    _, info = decode(data, sample_seed=4)
    assert set(info) == {"src_w", "src_h", "scale_num", "box", "flip", "warnings", "warning"}
    assert (info["warnings"], info["warning"]) == (0, "")
    assert (info["src_w"], info["src_h"]) == (375, 500)
    assert 1 <= info["scale_num"] <= 8 and len(info["box"]) == 4


def test_accepts_any_contiguous_buffers(images):
    data = images["baseline", "square"]
    want, _ = decode(data, sample_seed=2)
    n = 224 * 224 * 3
    for src in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8),
                memoryview(b"xx" + data)[2:]):
        for out in (bytearray(n), np.zeros(n + 10, np.uint8), memoryview(bytearray(n))):
            _native.decode_image(src, out, sample_seed=2)
            assert bytes(memoryview(out)[:n]) == want.tobytes()


@pytest.mark.parametrize("kw", [dict(out_h=0), dict(out_w=-1), dict(scale=(0.5, 0.2)), dict(scale=(0.0, 1.0)),
                                dict(ratio=(2.0, 1.0)), dict(flip_p=1.5), dict(eval_crop_ratio=0.0),
                                dict(max_pixels=0)])
def test_rejects_bad_parameters(images, kw):
    out = np.empty((224, 224, 3), np.uint8)
    with pytest.raises(ValueError):
        _native.decode_image(images["baseline", "square"], out, sample_seed=0, **kw)
    if "max_pixels" not in kw:  # choose_crop has no max_pixels
        with pytest.raises(ValueError):
            _native.choose_crop(100, 100, 0, **kw)
