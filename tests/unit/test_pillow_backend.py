"""The pillow backend: shapes, agreement with plain Pillow, seeded crops, hostile input, Pillow-SIMD detection."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from hivedata import errors
from hivedata.loader.decoders import simd
from hivedata.loader.decoders.base import Augment
from hivedata.loader.decoders.pillow import PillowDecoder, _draft_factor, python_choose_crop
from tests.support.forking import in_forked_child
from tests.support.photos import encode, jpeg, mad, photo, reference_eval  # noqa: F401

EVAL = Augment(train=False)
TRAIN = Augment(train=True)




def decode(dec, blobs, seeds=None, aug=None):
    aug = aug or dec.augment
    out = np.full((len(blobs), aug.out_h, aug.out_w, 3), 7, dtype=np.uint8)
    names = [f"img{i}.JPEG" for i in range(len(blobs))]
    errs = dec.decode([memoryview(b) for b in blobs], seeds if seeds is not None else list(range(len(blobs))),
                      out, names)
    return out, errs


@pytest.fixture
def eval_dec():
    with PillowDecoder(EVAL, threads=2, crop_fn=python_choose_crop) as d:
        yield d


@pytest.fixture
def train_dec():
    with PillowDecoder(TRAIN, threads=2, crop_fn=python_choose_crop) as d:
        yield d


# -- shapes and agreement ---------------------------------------------------------------------------
def test_shapes_and_dtype(train_dec):
    blobs = [jpeg(500, 375, 1), jpeg(375, 500, 2), jpeg(64, 48, 3), jpeg(1200, 900, 4)]
    out, errs = decode(train_dec, blobs)
    assert errs == [None] * 4
    assert out.shape == (4, 224, 224, 3) and out.dtype == np.uint8
    assert all(out[i].std() > 1 for i in range(4))


def test_non_square_output():
    aug = Augment(out_h=96, out_w=160, train=True)
    with PillowDecoder(aug, threads=2, crop_fn=python_choose_crop) as d:
        out, errs = decode(d, [jpeg(), jpeg(375, 500)])
    assert errs == [None, None] and out.shape == (2, 96, 160, 3)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (640, 480), (300, 300), (150, 100)])
def test_eval_matches_plain_pillow(eval_dec, size):
    data = jpeg(*size, seed=sum(size))
    out, errs = decode(eval_dec, [data])
    assert errs == [None]
    assert mad(out[0], reference_eval(data)) < 3
    assert mad(out[0], reference_eval(data)) < 0.5  # same box as torchvision: only rounding differs


def test_dct_scaling_keeps_the_crop_box(monkeypatch):
    # 2000x1500 into 64x64: the crop is ~20x the output, so libjpeg decodes at 1/8 scale (draft); the
    # result must match a full-resolution decode of the same box
    from PIL import JpegImagePlugin

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    aug = Augment(out_h=64, out_w=64, train=False)
    data = jpeg(2000, 1500, seed=5)
    with PillowDecoder(aug, threads=1, crop_fn=python_choose_crop) as d:
        out, errs = decode(d, [data])
    assert errs == [None] and drafts == [(250, 187)]
    x, y, w, h, _ = python_choose_crop(2000, 1500, 0, train=False, out_h=64, out_w=64, scale=(0.08, 1.0),
                                       ratio=(0.75, 4 / 3), flip_p=0.5, eval_crop_ratio=0.875)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BILINEAR, box=(x, y, x + w, y + h))
    assert mad(out[0], np.asarray(full)) < 1.5


def test_draft_factor():
    assert _draft_factor(224, 224, 224, 224) == 1
    assert _draft_factor(447, 500, 224, 224) == 1
    assert _draft_factor(448, 500, 224, 224) == 2
    assert _draft_factor(1000, 3000, 224, 224) == 4
    assert _draft_factor(4000, 3000, 224, 224) == 8


def test_crop_box_and_flip_are_honoured():
    data = jpeg(500, 375, seed=9)
    box = (100.0, 50.0, 300.0, 200.0)

    def fixed(width, height, seed, **kw):
        return (*box, seed == 1)

    with PillowDecoder(TRAIN, threads=2, crop_fn=fixed) as d:
        out, errs = decode(d, [data, data], seeds=[0, 1])
    assert errs == [None, None]
    x, y, w, h = box
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR,
                                                                         box=(x, y, x + w, y + h)))
    assert mad(out[0], ref) < 1
    assert np.array_equal(out[1], out[0][:, ::-1])


def test_train_crops_are_deterministic_per_seed(train_dec):
    blobs = [jpeg(500, 375, seed=s) for s in range(4)]
    a, _ = decode(train_dec, blobs, seeds=[10, 11, 12, 13])
    b, _ = decode(train_dec, blobs, seeds=[10, 11, 12, 13])
    c, _ = decode(train_dec, blobs, seeds=[20, 21, 22, 23])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_python_choose_crop_geometry():
    kw = dict(train=True, out_h=224, out_w=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
              eval_crop_ratio=0.875)
    flips = 0
    for seed in range(300):
        x, y, w, h, flip = python_choose_crop(500, 375, seed, **kw)
        assert 0 <= x and 0 <= y and x + w <= 500 and y + h <= 375
        assert 0.08 * 0.95 <= w * h / (500 * 375) <= 1.0
        flips += flip
    assert 100 < flips < 200
    assert python_choose_crop(500, 375, 7, **kw) == python_choose_crop(500, 375, 7, **kw)
    # eval: torchvision Resize(256) -> 341x256, CenterCrop(224) at (58, 16), in source pixels
    x, y, w, h, flip = python_choose_crop(500, 375, 0, **{**kw, "train": False})
    assert not flip
    assert (x, y, w, h) == pytest.approx((58 * 500 / 341, 16 * 375 / 256, 224 * 500 / 341, 224 * 375 / 256))


def test_python_eval_crop_is_the_native_one():
    from hivedata import _native

    if not hasattr(_native, "choose_crop"):
        pytest.skip("hivedata._native.choose_crop not built")
    rng = np.random.default_rng(0)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(1, 3000, 2))
        kw = dict(train=False, out_h=int(rng.choice([224, 160, 7])), out_w=int(rng.choice([224, 192, 3])),
                  scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                  eval_crop_ratio=float(rng.choice([0.875, 1.0, 0.5])))
        assert python_choose_crop(width, height, 1, **kw) == pytest.approx(_native.choose_crop(width, height, 1, **kw))


# -- hostile input ----------------------------------------------------------------------------------
def hostile_batch():
    good = jpeg(500, 375, seed=1)
    return [
        ("good.JPEG", good, None),
        ("progressive.JPEG", jpeg(seed=2, progressive=True), None),
        ("gray.JPEG", jpeg(seed=3, mode="L"), None),
        ("cmyk.JPEG", jpeg(seed=4, mode="CMYK"), None),
        ("png_named.JPEG", encode(photo(seed=5), "PNG"), None),
        ("truncated.JPEG", good[: len(good) * 2 // 3], errors.CorruptImageError),
        ("random.JPEG", np.random.default_rng(0).bytes(5000), errors.NotJpegError),
        ("empty.JPEG", b"", errors.NotJpegError),
        ("header_only.JPEG", good[:400], errors.CorruptImageError),
        ("good2.JPEG", jpeg(375, 500, seed=6), None),
    ]


def test_hostile_inputs_reported_per_sample(eval_dec):
    batch = hostile_batch()
    names = [n for n, _, _ in batch]
    out = np.full((len(batch), 224, 224, 3), 7, dtype=np.uint8)
    errs = eval_dec.decode([memoryview(b) for _, b, _ in batch], list(range(len(batch))), out, names)
    for i, (name, data, expected) in enumerate(batch):
        if expected is None:
            assert errs[i] is None, (name, errs[i])
            assert mad(out[i], reference_eval(data)) < 3, name
        else:
            assert isinstance(errs[i], expected), (name, errs[i])
            assert isinstance(errs[i], errors.BadImageError)
            assert errs[i].object == name and name in str(errs[i])
            assert not out[i].any(), f"{name}: a failed sample's slot is zeroed"


def test_too_many_pixels_refused_before_decoding():
    aug = Augment(train=False, max_pixels=400 * 300)
    with PillowDecoder(aug, threads=1, crop_fn=python_choose_crop) as d:
        out, errs = decode(d, [jpeg(400, 300), jpeg(401, 300)])
    assert errs[0] is None
    assert isinstance(errs[1], errors.ImageTooLargeError) and "img1.JPEG" in str(errs[1])


def test_crop_fn_exception_is_reported_not_raised():
    def broken(*a, **kw):
        raise ZeroDivisionError("boom")

    with PillowDecoder(TRAIN, threads=1, crop_fn=broken) as d:
        out, errs = decode(d, [jpeg()])
    assert isinstance(errs[0], errors.BadImageError) and "boom" in str(errs[0])


def test_caller_mistakes_raise(train_dec):
    data = [memoryview(jpeg())]
    with pytest.raises(ValueError):
        train_dec.decode(data, [0], np.zeros((1, 224, 224, 3), np.float32), ["a"])
    with pytest.raises(ValueError):
        train_dec.decode(data, [0], np.zeros((1, 100, 224, 3), np.uint8), ["a"])
    with pytest.raises(ValueError):
        train_dec.decode(data, [0, 1], np.zeros((2, 224, 224, 3), np.uint8), ["a"])
    with pytest.raises(ValueError):
        train_dec.decode(data * 2, [0, 1], np.zeros((1, 224, 224, 3), np.uint8), ["a", "b"])
    assert train_dec.decode([], [], np.zeros((0, 224, 224, 3), np.uint8), []) == []


# -- crop_fn lookup, threads, fork --------------------------------------------------------------------
def test_native_crop_fn_is_looked_up_lazily(monkeypatch):
    from hivedata import _native

    monkeypatch.delattr(_native, "choose_crop", raising=False)
    d = PillowDecoder(EVAL, threads=1)  # constructing never needs the extension function
    with pytest.raises(RuntimeError, match="choose_crop"):
        decode(d, [jpeg()])
    calls = []

    def fake(*a, **kw):
        calls.append((a, kw))
        return python_choose_crop(*a, **kw)

    monkeypatch.setattr(_native, "choose_crop", fake, raising=False)
    out, errs = decode(d, [jpeg()], seeds=[42])
    assert errs == [None]
    (args, kw), = calls
    assert args == (500, 375, 42)
    assert kw == dict(train=False, out_h=224, out_w=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                      eval_crop_ratio=0.875)
    d.close()


def test_pool_is_lazy_and_restartable(train_dec):
    assert train_dec._pool is None
    decode(train_dec, [jpeg(), jpeg()])
    assert train_dec._pool is not None
    train_dec.close()
    assert train_dec._pool is None
    out, errs = decode(train_dec, [jpeg(), jpeg()])
    assert errs == [None, None]


def _child_decodes(dec, q):
    try:
        out, errs = decode(dec, [jpeg(), jpeg(375, 500)])
        q.put((errs == [None, None], float(out.std())))
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put((False, repr(e)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_decoder_works_in_forked_child(train_dec):
    decode(train_dec, [jpeg(), jpeg()])  # the parent's pool is running
    ok, info, exitcode = in_forked_child(_child_decodes, train_dec)
    assert ok and exitcode == 0, info


# -- Pillow-SIMD detection -------------------------------------------------------------------------
def test_simd_properties(train_dec):
    import PIL

    assert train_dec.pil_version == PIL.__version__
    assert isinstance(train_dec.simd, bool)
    assert train_dec.simd == simd.pillow_is_simd()


def test_simd_heuristics(monkeypatch):
    simd.pillow_is_simd.cache_clear()
    try:
        monkeypatch.setattr(simd, "_owner_of_loaded_pil", lambda: "pillow-simd")
        assert simd.pillow_is_simd()
        simd.pillow_is_simd.cache_clear()
        monkeypatch.setattr(simd, "_owner_of_loaded_pil", lambda: "pillow")
        monkeypatch.setattr(simd, "pil_version", lambda: "9.5.0.post2")
        assert not simd.pillow_is_simd()  # metadata wins over the version string
        simd.pillow_is_simd.cache_clear()
        monkeypatch.setattr(simd, "_owner_of_loaded_pil", lambda: None)
        assert simd.pillow_is_simd()
        simd.pillow_is_simd.cache_clear()
        monkeypatch.setattr(simd, "pil_version", lambda: "11.0.0")
        assert not simd.pillow_is_simd()
    finally:
        simd.pillow_is_simd.cache_clear()


def test_this_environment_runs_plain_pillow():
    # the project pins Pillow; Pillow-SIMD is opt-in only (scripts/install_pillow_simd.sh)
    assert simd._owner_of_loaded_pil() in ("pillow", "pillow-simd", None)
    assert "Pillow" in simd.describe()
    assert simd.install_script().name == "install_pillow_simd.sh"
