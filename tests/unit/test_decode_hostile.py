"""Hostile input for the native decoder: truncated, random, misnamed, empty, oversized, damaged and
unsupported JPEGs, bad output buffers, and concurrent use. Nothing may crash the process; every bad
image raises a hivedata.errors.BadImageError subclass that names the object."""

from __future__ import annotations

import io
import os
import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from hivedata import _native, errors
from tests.support.threads import run_threads

OUT = 224 * 224 * 3


def natural(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, 128 + 100 * np.sin(xx / 17) * np.cos(yy / 23)], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, mode: str = "RGB", fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        kw.setdefault("quality", 90)
    Image.fromarray(arr).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def markers(data: bytes):
    """(offset, marker byte, segment length) for each marker segment up to and including SOS."""
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF
        m, n = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        yield i, m, n
        if m == 0xDA:
            return
        i += 2 + n


def patch_sof(data: bytes, w: int, h: int, progressive: bool = False) -> bytes:
    b = bytearray(data)
    for i, m, _ in markers(data):
        if m in (0xC0, 0xC1, 0xC2):
            b[i + 1] = 0xC2 if progressive else m
            b[i + 5:i + 7] = h.to_bytes(2, "big")
            b[i + 7:i + 9] = w.to_bytes(2, "big")
            return bytes(b)
    raise AssertionError("no SOF")


def drop_third_component(data: bytes) -> bytes:
    """A 2-component JPEG (libjpeg's JCS_UNKNOWN) made from a 3-component one."""
    b = bytearray(data)
    for i, m, n in reversed(list(markers(data))):
        if m == 0xDA:  # SOS: Ns, then 2 bytes per component
            assert b[i + 4] == 3
            b[i + 4] = 2
            del b[i + 5 + 4:i + 5 + 6]
            b[i + 2:i + 4] = (n - 2).to_bytes(2, "big")
        elif m == 0xC0:  # SOF0: P, Y, X, Nf, then 3 bytes per component
            assert b[i + 9] == 3
            b[i + 9] = 2
            del b[i + 10 + 6:i + 10 + 9]
            b[i + 2:i + 4] = (n - 3).to_bytes(2, "big")
    return bytes(b)


def decode(data, name: str = "obj.JPEG", **kw):
    out = np.empty((224, 224, 3), np.uint8)
    kw.setdefault("sample_seed", 0)
    info = _native.decode_image(data, out, name=name, **kw)
    return out, info


def expect(cls: type, data, name: str = "n01440764/bad.JPEG", **kw) -> errors.BadImageError:
    with pytest.raises(cls) as ei:
        decode(data, name=name, **kw)
    e = ei.value
    assert isinstance(e, errors.BadImageError)
    assert e.object == name and e.bucket == ""
    assert str(e).startswith(name + ": ")
    return e


@pytest.fixture(scope="module")
def good() -> bytes:
    return encode(natural(320, 320, 0))


@pytest.fixture(scope="module")
def good_progressive() -> bytes:
    return encode(natural(320, 320, 0), progressive=True)


# ------------------------------------------------------------------------------------------- not JPEG


def test_empty():
    e = expect(errors.NotJpegError, b"")
    assert "empty" in str(e)
    with pytest.raises(errors.NotJpegError):
        _native.jpeg_header(b"")


def test_png_named_jpeg():
    e = expect(errors.NotJpegError, encode(natural(64, 64, 1), fmt="PNG"), name="n01440764/x.JPEG")
    assert "PNG" in str(e)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_are_named(fmt):
    e = expect(errors.NotJpegError, encode(natural(32, 32, 1), fmt=fmt))
    assert fmt.replace("WEBP", "WebP") in str(e)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(seed):
    data = bytearray(random.Random(seed).randbytes(5000))
    data[0] = 0x00
    e = expect(errors.NotJpegError, bytes(data))
    assert "starts with 0x00" in str(e)
    assert len(str(e)) < 200  # a few hex digits, never the payload


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_after_soi(seed):
    data = b"\xff\xd8" + random.Random(seed).randbytes(5000)
    expect(errors.BadImageError, data)


def test_one_byte():
    expect(errors.NotJpegError, b"\xff")


# ------------------------------------------------------------------------------------------- truncated


@pytest.mark.parametrize("frac", [0.0, 0.02, 0.05, 0.25, 0.5, 0.75, 0.9, 0.98])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_is_corrupt_never_grey(good, good_progressive, frac, progressive):
    data = good_progressive if progressive else good
    cut = max(2, int(len(data) * frac))
    # eval_crop_ratio=1 on a square image: the crop is the whole image, so every row is needed
    e = expect(errors.CorruptImageError, data[:cut], train=False, eval_crop_ratio=1.0)
    assert "corrupt JPEG" in str(e)


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_anywhere_never_crashes(good, good_progressive, progressive):
    data = good_progressive if progressive else good
    for cut in range(2, len(data), max(1, len(data) // 97)):
        for seed in range(3):
            try:
                out, _ = decode(data[:cut], sample_seed=seed, train=seed > 0)
            except errors.CorruptImageError:
                continue
            # only a crop that lies wholly in the data that arrived may decode
            assert not progressive


def test_truncated_header_is_corrupt(good):
    with pytest.raises(errors.CorruptImageError):
        _native.jpeg_header(good[:100], name="x")


# ------------------------------------------------------------------------------------------- too large


@pytest.mark.parametrize("progressive", [False, True])
def test_bomb_header_is_rejected_before_allocating(good, progressive):
    bomb = patch_sof(good, 60000, 60000, progressive=progressive)
    assert _native.jpeg_header(bomb) == (60000, 60000, 3, progressive)
    t = time.perf_counter()
    # a progressive 60000x60000 decode would first allocate ~10 GB of coefficients
    e = expect(errors.ImageTooLargeError, bomb)
    assert time.perf_counter() - t < 0.5
    assert "60000x60000" in str(e) and str(1 << 26) in str(e)


def test_progressive_scan_bomb_is_cut_short():
    prog = encode(natural(64, 64, 0), progressive=True)
    sos = [i for i in range(len(prog) - 1) if prog[i] == 0xFF and prog[i + 1] == 0xDA]
    last_scan = prog[sos[-1]:-2]  # repeated refinement scans: legal enough for libjpeg, endless work
    decode(prog[:-2] + last_scan * 100 + b"\xff\xd9")  # a lot of scans, but under the limit
    e = expect(errors.CorruptImageError, prog[:-2] + last_scan * 600 + b"\xff\xd9")
    assert "progressive scans" in str(e)


def test_max_pixels_is_the_limit(good):
    decode(good, max_pixels=320 * 320)
    expect(errors.ImageTooLargeError, good, max_pixels=320 * 320 - 1)


# ------------------------------------------------------------------------------------------- colour


@pytest.mark.parametrize(("mode", "kw", "components"),
                         [("CMYK", {}, 4), ("L", {}, 1), ("RGB", {"progressive": True}, 3)])
def test_special_but_valid_jpegs_decode(mode, kw, components):
    data = encode(natural(300, 240, 3), mode, **kw)
    assert _native.jpeg_header(data)[2:] == (components, bool(kw))
    out, info = decode(data, train=False)
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR, box=_pil_box(info["box"]))
    assert np.abs(out.astype(int) - np.asarray(ref)).mean() < 3.0


def _pil_box(box):
    x, y, w, h = box
    return (x, y, x + w, y + h)


def test_two_component_jpeg_is_unsupported(good):
    data = drop_third_component(good)
    assert _native.jpeg_header(data)[2] == 2
    e = expect(errors.UnsupportedImageError, data)
    assert "colour space" in str(e)


@pytest.mark.parametrize(("patch", "words"), [
    (lambda b, i: b.__setitem__(i + 4, 12), "precision 12"),  # 12-bit samples
    (lambda b, i: b.__setitem__(i + 1, 0xC3), "SOF type 0xc3"),  # lossless
])
def test_other_jpeg_processes_are_unsupported(good, patch, words):
    b = bytearray(good)
    sof = [i for i, m, _ in markers(good) if m == 0xC0][0]
    patch(b, sof)
    e = expect(errors.UnsupportedImageError, bytes(b))
    assert words in str(e)


def test_rgb_colour_space_jpeg():
    """Three components stored as RGB (Adobe transform 0), not YCbCr."""
    buf = io.BytesIO()
    Image.fromarray(natural(300, 240, 5)).save(buf, "JPEG", quality=90, keep_rgb=True)
    data = buf.getvalue()
    out, info = decode(data, train=False)
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR, box=_pil_box(info["box"]))
    assert np.abs(out.astype(int) - np.asarray(ref)).mean() < 1.0


# ------------------------------------------------------------------------------------------- damaged


@pytest.mark.parametrize("progressive", [False, True])
def test_damaged_bytes_error_or_image_never_crash(good, good_progressive, progressive):
    data = good_progressive if progressive else good
    sos = [i for i, m, _ in markers(data) if m == 0xDA][0]
    rng = random.Random(1)
    outcomes = set()
    for trial in range(300):
        b = bytearray(data)
        lo = 2 if trial % 3 == 0 else sos  # a third of the trials damage the headers
        for _ in range(rng.choice([1, 2, 8])):
            b[rng.randrange(lo, len(b))] = rng.randrange(256)
        try:
            # max_pixels keeps a damaged SOF from asking for a huge (but legal) buffer
            decode(bytes(b), sample_seed=trial, train=trial % 2 == 0, max_pixels=4_000_000)
            outcomes.add("ok")
        except errors.BadImageError as e:
            assert e.object == "obj.JPEG"
            outcomes.add(type(e).__name__)
    assert "CorruptImageError" in outcomes


# ------------------------------------------------------------------------------------------- buffers


def test_out_too_small(good):
    with pytest.raises(ValueError, match=str(OUT)):
        _native.decode_image(good, bytearray(OUT - 1), sample_seed=0)
    with pytest.raises(ValueError, match="97"):
        _native.decode_image(good, np.empty((96, 131, 3), np.uint8), sample_seed=0, out_h=97, out_w=131)


def test_out_read_only_or_wrong_type(good):
    with pytest.raises(ValueError, match="writable"):
        _native.decode_image(good, bytes(OUT), sample_seed=0)
    ro = np.zeros((224, 224, 3), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        _native.decode_image(good, ro, sample_seed=0)
    with pytest.raises(ValueError, match="uint8"):
        _native.decode_image(good, np.zeros(OUT, np.float32), sample_seed=0)
    with pytest.raises(ValueError):
        _native.decode_image(good, np.zeros((224, 448, 3), np.uint8)[:, ::2], sample_seed=0)
    with pytest.raises(TypeError):
        _native.decode_image("not bytes", bytearray(OUT), sample_seed=0)


# ------------------------------------------------------------------------------------------- threads


def test_many_threads_give_the_sequential_bytes():
    imgs = [encode(natural(400 + 16 * i, 300 - 8 * i, i), **({"progressive": True} if i % 3 == 0 else {}))
            for i in range(8)]
    imgs.append(encode(natural(300, 300, 9), "L"))
    imgs.append(encode(natural(300, 300, 10), "CMYK"))
    jobs = [(k % len(imgs), k, k % 4 != 0) for k in range(120)]

    def run(job):
        i, seed, train = job
        out = np.empty((224, 224, 3), np.uint8)
        _native.decode_image(imgs[i], out, sample_seed=seed, train=train)
        return out.tobytes()

    want = [run(j) for j in jobs]
    got: list[bytes | None] = [None] * len(jobs)
    failures = []

    def worker(t: int):
        try:
            for k in range(t, len(jobs), 8):
                got[k] = run(jobs[k])
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    run_threads(worker, 8)
    assert not failures
    assert got == want


def test_errors_from_threads_name_their_objects(good):
    bad = {f"bad{i}.JPEG": good[: 500 + 300 * i] for i in range(16)}
    seen = {}

    def worker(name):
        try:
            decode(bad[name], name=name, train=False, eval_crop_ratio=1.0)
        except errors.CorruptImageError as e:
            seen[name] = e.object

    threads = [threading.Thread(target=worker, args=(n,)) for n in bad]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {n: n for n in bad}


def test_random_junk_never_crashes():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randrange(0, 2000)
        data = (b"\xff\xd8" if rng.random() < 0.7 else b"") + os.urandom(n)
        try:
            decode(data, max_pixels=4_000_000)
        except errors.BadImageError:
            pass
