"""The dali backend in CPU-only mode: shapes, agreement with a Pillow reference, partial batches, hostile input."""

from __future__ import annotations

import gc
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from hivedata import errors
from hivedata.loader.decoders.base import Augment
from hivedata.loader.decoders.dali import INSTALL_HINT, DaliDecoder
from hivedata.loader.decoders.pillow import python_choose_crop
from tests.support.forking import in_forked_child
from tests.support.photos import encode, jpeg, mad, photo, reference_eval  # noqa: F401

dali = pytest.importorskip("nvidia.dali")

EVAL = Augment(train=False)
TRAIN = Augment(train=True)




def decode(dec, blobs, names=None):
    aug = dec.augment
    out = np.full((len(blobs), aug.out_h, aug.out_w, 3), 7, dtype=np.uint8)
    names = names or [f"img{i}.JPEG" for i in range(len(blobs))]
    errs = dec.decode([memoryview(b) for b in blobs], list(range(len(blobs))), out, names)
    return out, errs


def make(aug=EVAL, batch_size=8, **kw):
    return DaliDecoder(aug, batch_size=batch_size, threads=2, crop_fn=python_choose_crop, **kw)


@pytest.fixture(scope="module")
def eval_dec():
    with make(EVAL) as d:
        yield d


@pytest.fixture(scope="module")
def train_dec():
    with make(TRAIN) as d:
        yield d


# -- outputs ----------------------------------------------------------------------------------------
def test_train_shapes_and_dtype(train_dec):
    blobs = [jpeg(500, 375, 1), jpeg(375, 500, 2), jpeg(64, 48, 3), jpeg(1200, 900, 4)] * 2
    out, errs = decode(train_dec, blobs)
    assert errs == [None] * 8
    assert out.shape == (8, 224, 224, 3) and out.dtype == np.uint8
    assert all(out[i].std() > 1 for i in range(8))
    assert train_dec.dali_failures == 0


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (640, 480), (150, 100)])
def test_eval_close_to_pillow_reference(eval_dec, size):
    data = jpeg(*size, seed=sum(size))
    out, errs = decode(eval_dec, [data])
    assert errs == [None]
    assert mad(out[0], reference_eval(data)) < 6


@pytest.mark.parametrize("size", [(500, 375), (375, 500)])
def test_non_square_eval_matches_pillow_backend(size):
    from hivedata.loader.decoders.pillow import PillowDecoder

    aug = Augment(out_h=160, out_w=192, train=False)
    data = jpeg(*size, seed=3)
    with make(aug) as d, PillowDecoder(aug, threads=1, crop_fn=python_choose_crop) as p:
        a, errs_a = decode(d, [data])
        b, errs_b = decode(p, [data])
    assert errs_a == errs_b == [None]
    assert a.shape == (1, 160, 192, 3) and mad(a[0], b[0]) < 6


def test_train_full_image_crop_matches_plain_resize():
    # scale=(1,1) and the image's own aspect ratio leave a single possible crop: the whole image
    aug = Augment(out_h=160, out_w=192, train=True, scale=(1.0, 1.0), ratio=(500 / 375, 500 / 375), flip_p=0.0)
    data = jpeg(500, 375, seed=11)
    with make(aug) as d:
        out, errs = decode(d, [data, data])
    assert errs == [None, None]
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((192, 160), Image.BILINEAR))
    assert mad(out[0], ref) < 6 and mad(out[1], ref) < 6


def test_train_flip_with_probability_one():
    aug = Augment(train=True, scale=(1.0, 1.0), ratio=(500 / 375, 500 / 375), flip_p=1.0)
    data = jpeg(500, 375, seed=12)
    with make(aug) as d:
        out, _ = decode(d, [data])
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR))
    assert mad(out[0], ref[:, ::-1]) < 6


def test_train_reproducible_per_pipeline_seed():
    blobs = [jpeg(500, 375, s) for s in range(6)]
    with make(TRAIN, seed=3) as a, make(TRAIN, seed=3) as b, make(TRAIN, seed=4) as c:
        oa = [decode(a, blobs)[0] for _ in range(2)]
        ob = [decode(b, blobs)[0] for _ in range(2)]
        oc = decode(c, blobs)[0]
    assert np.array_equal(oa[0], ob[0]) and np.array_equal(oa[1], ob[1])
    assert not np.array_equal(oa[0], oa[1])  # the RNG moves on from batch to batch
    assert not np.array_equal(oa[0], oc)


def test_partial_and_oversized_batches():
    blobs = [jpeg(500, 375, s) for s in range(7)]
    refs = [reference_eval(b) for b in blobs]
    with make(EVAL, batch_size=4) as d:
        for k in (4, 7, 3, 1):  # a full batch, split 4 + 3, a partial one, a single sample
            out, errs = decode(d, blobs[:k])
            assert errs == [None] * k
            assert all(mad(out[i], refs[i]) < 6 for i in range(k)), k
        assert decode(d, [])[1] == []


# -- hostile input ----------------------------------------------------------------------------------
def hostile_batch():
    good = jpeg(500, 375, seed=1)
    return [
        ("good.JPEG", good, None),
        ("progressive.JPEG", jpeg(seed=2, progressive=True), None),
        ("gray.JPEG", jpeg(seed=3, mode="L"), None),
        ("cmyk.JPEG", jpeg(seed=4, mode="CMYK"), None),  # decoded by the Pillow fallback
        ("png_named.JPEG", encode(photo(seed=5), "PNG"), None),  # ditto
        ("trailing_junk.JPEG", jpeg(seed=6) + b"\0junk" * 8, None),  # ditto
        ("truncated.JPEG", good[: len(good) * 2 // 3], errors.CorruptImageError),
        ("no_eoi.JPEG", good[:-2], errors.CorruptImageError),
        ("random.JPEG", np.random.default_rng(0).bytes(5000), errors.NotJpegError),
        ("empty.JPEG", b"", errors.NotJpegError),
        ("good2.JPEG", jpeg(375, 500, seed=7), None),
        ("exif_rotated.JPEG", exif_rotated(), None),  # orientation tag ignored, as Pillow and torchvision do
    ]


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return encode(photo(500, 375, seed=8), exif=exif.tobytes())


def check_hostile(out, errs, batch):
    for i, (name, data, expected) in enumerate(batch):
        if expected is None:
            assert errs[i] is None, (name, errs[i])
            assert mad(out[i], reference_eval(data)) < 6, name
        else:
            assert isinstance(errs[i], expected), (name, errs[i])
            assert errs[i].object == name and name in str(errs[i])
            assert not out[i].any(), f"{name}: a failed sample's slot is zeroed"


def test_hostile_inputs_reported_without_killing_the_batch(eval_dec):
    batch = hostile_batch()
    out, errs = decode(eval_dec, [b for _, b, _ in batch], names=[n for n, _, _ in batch])
    check_hostile(out, errs, batch)
    assert eval_dec.dali_failures == 0  # triage kept every bad sample away from DALI


def test_dali_failure_falls_back_to_pillow(monkeypatch):
    # let everything through to DALI: it fails the whole batch, Pillow redoes it sample by sample
    batch = hostile_batch()
    with make(EVAL, batch_size=16) as d:
        real_triage = d._triage
        monkeypatch.setattr(d, "_triage", lambda data, name: r if isinstance(r := real_triage(data, name),
                                                                             BaseException) else "dali")
        out, errs = decode(d, [b for _, b, _ in batch], names=[n for n, _, _ in batch])
        check_hostile(out, errs, batch)
        assert d.dali_failures == 1
        # the pipeline was rebuilt: the next clean batch goes through DALI again
        good = [jpeg(seed=s) for s in range(3)]
        out, errs = decode(d, good)
        assert errs == [None] * 3 and d.dali_failures == 1
        assert all(mad(out[i], reference_eval(good[i])) < 6 for i in range(3))


def test_too_many_pixels_refused():
    aug = Augment(train=False, max_pixels=400 * 300)
    with make(aug) as d:
        out, errs = decode(d, [jpeg(400, 300), jpeg(401, 300)])
    assert errs[0] is None
    assert isinstance(errs[1], errors.ImageTooLargeError) and "img1.JPEG" in str(errs[1])


def _child_decodes(dec, q):
    try:
        out, errs = decode(dec, [jpeg(), jpeg(375, 500)])
        q.put((errs == [None, None] and out.std() > 1, repr(errs)))
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put((False, repr(e)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_decoder_works_in_forked_child():
    with make(EVAL) as d:
        assert decode(d, [jpeg()])[1] == [None]  # the parent's pipeline exists
        ok, info, exitcode = in_forked_child(_child_decodes, d)
        assert ok and exitcode == 0, info
        assert decode(d, [jpeg()])[1] == [None]  # and the parent's still works


def _child_collects_then_decodes(dec, q):
    try:
        gc.collect()  # an inherited, unreachable pipeline must not be destroyed here
        _child_decodes(dec, q)
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put((False, repr(e)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_garbage_pipeline_of_another_decoder_survives_fork():
    gc.collect()
    gc.disable()  # keep the abandoned decoder's cycle uncollected until the child runs
    try:
        abandoned = make(EVAL)
        assert decode(abandoned, [jpeg()])[1] == [None]
        abandoned.cycle = abandoned  # unreachable once deleted, destroyed only by the collector
        del abandoned
        with make(EVAL) as d:
            ok, info, exitcode = in_forked_child(_child_collects_then_decodes, d)
            assert ok and exitcode == 0, info
    finally:
        gc.enable()


# -- construction -----------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError):
        DaliDecoder(EVAL, batch_size=0)
    with pytest.raises(ValueError):
        DaliDecoder(EVAL, batch_size=4, device="tpu")
    with pytest.raises(ValueError):
        make(EVAL).decode([memoryview(jpeg())], [0], np.zeros((1, 100, 100, 3), np.uint8), ["a"])


def test_missing_dali_names_the_install_command(monkeypatch):
    d = make(EVAL)  # constructing never imports DALI
    for mod in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match="pip install nvidia-dali-cuda130"):
        decode(d, [jpeg()])
    assert INSTALL_HINT == "pip install nvidia-dali-cuda130"


def test_cuda_without_a_gpu_raises_instead_of_falling_back():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with DaliDecoder(EVAL, batch_size=4, device="cuda", threads=2) as d, pytest.raises(RuntimeError, match="CUDA"):
        decode(d, [jpeg()])


@pytest.mark.gpu
def test_cuda_mixed_decoding():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data = [jpeg(500, 375, s) for s in range(4)]
    with DaliDecoder(EVAL, batch_size=4, device="cuda", threads=2, crop_fn=python_choose_crop) as d:
        out, errs = decode(d, data)
    assert errs == [None] * 4
    assert all(mad(out[i], reference_eval(data[i])) < 6 for i in range(4))
