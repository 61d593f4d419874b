"""One verdict per file, every epoch: a JPEG damaged below its crop is judged the same whatever the crop,
libjpeg's warnings are counted and named, and `strict` turns them into errors (native and Pillow)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hivedata import _native, errors
from hivedata.loader.decoders.base import Augment
from hivedata.loader.decoders.pillow import PillowDecoder
from tests.support.broken_jpegs import corrupt_scan_at, extraneous_before_eoi, good_jpeg, truncated_bottom

EPOCHS = 6
SAMPLES = 4  # index of the damaged file in each epoch's seeds


def verdicts(data: bytes, *, train: bool = True, **kw) -> list[str]:
    """'ok' or the error class, per epoch, with the crop the loader would draw in that epoch."""
    out = np.empty((224, 224, 3), np.uint8)
    got = []
    for epoch in range(EPOCHS):
        for index in range(SAMPLES):
            seed = _native.sample_seed(0, epoch, index)
            try:
                _native.decode_image(data, out, sample_seed=seed, train=train, **kw)
                got.append("ok")
            except errors.BadImageError as e:
                got.append(type(e).__name__)
    return got


@pytest.fixture(scope="module")
def good() -> bytes:
    return good_jpeg(500, 400)


def test_the_crops_differ_and_some_end_above_the_damage(good):
    """The premise: random crops that stop above the bottom fifth exist among these seeds."""
    tops = []
    for epoch in range(EPOCHS):
        for index in range(SAMPLES):
            x, y, w, h, _ = _native.choose_crop(500, 400, _native.sample_seed(0, epoch, index))
            tops.append(y + h)
    assert min(tops) < 0.75 * 400 and max(tops) > 0.9 * 400


@pytest.mark.parametrize("damage", ["truncated", "no_eoi"])
def test_damage_below_the_crop_gives_the_same_verdict_every_epoch(good, damage):
    data = {"truncated": truncated_bottom(good, 0.8), "no_eoi": good[:-2]}[damage]
    got = verdicts(data)
    assert got == ["CorruptImageError"] * len(got), got


def test_corrupt_data_below_the_crop_warns_in_every_epoch(good):
    """Garbage in the scan (not a cut): libjpeg only warns at EOI; every crop sees that warning."""
    data = corrupt_scan_at(good, 0.9)
    out = np.empty((224, 224, 3), np.uint8)
    infos = [_native.decode_image(data, out, sample_seed=_native.sample_seed(0, e, 0)) for e in range(EPOCHS)]
    assert {(i["warnings"], i["warning"]) for i in infos} == {(1, infos[0]["warning"])}
    assert "extraneous bytes before marker 0xd9" in infos[0]["warning"]
    assert set(verdicts(data, strict=True)) == {"CorruptImageError"}


def test_damage_below_the_eval_crop_is_caught(good):
    # the centre crop ends at 94% of the rows: a file cut at 97% of its bytes was accepted before
    assert set(verdicts(truncated_bottom(good, 0.97), train=False)) == {"CorruptImageError"}


def test_progressive_damage_is_caught_every_epoch(good):
    prog = good_jpeg(500, 400, progressive=True)
    assert set(verdicts(truncated_bottom(prog, 0.8))) == {"CorruptImageError"}
    assert set(verdicts(prog)) == {"ok"}


def test_good_file_is_accepted_every_epoch(good):
    assert set(verdicts(good)) == {"ok"}


def test_truncation_message_names_the_cause(good):
    out = np.empty((224, 224, 3), np.uint8)
    with pytest.raises(errors.CorruptImageError, match="Premature end of JPEG file") as ei:
        _native.decode_image(truncated_bottom(good), out, sample_seed=1, name="n0/x.JPEG")
    assert ei.value.object == "n0/x.JPEG"


# ------------------------------------------------------------------------------------------- warnings


def test_warnings_are_counted_and_worded(good):
    out = np.empty((224, 224, 3), np.uint8)
    info = _native.decode_image(good, out, sample_seed=0)
    assert info["warnings"] == 0 and info["warning"] == ""
    info = _native.decode_image(extraneous_before_eoi(good), out, sample_seed=0)
    assert info["warnings"] == 1
    # (libjpeg counts the junk its bit reader had not already taken in)
    assert re.fullmatch(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9", info["warning"])


def test_warning_verdict_is_the_same_every_epoch(good):
    data = extraneous_before_eoi(good)
    assert set(verdicts(data)) == {"ok"}
    assert set(verdicts(data, strict=True)) == {"CorruptImageError"}


def test_strict_refuses_a_warning_and_says_so(good):
    out = np.empty((224, 224, 3), np.uint8)
    with pytest.raises(errors.CorruptImageError, match=r"strict.*extraneous bytes before marker 0xd9"):
        _native.decode_image(extraneous_before_eoi(good), out, sample_seed=0, strict=True)
    _native.decode_image(good, out, sample_seed=0, strict=True)  # a clean file passes strict


def test_not_sequential_warning(good):
    """A baseline scan with Se != 63: libjpeg warns (JWRN_NOT_SEQUENTIAL) and decodes as if it were 63."""
    b = bytearray(good)
    sos = bytes(b).index(b"\xff\xda")
    ns = b[sos + 4]
    se = sos + 5 + 2 * ns + 1
    assert b[se] == 63
    b[se] = 62
    out = np.empty((224, 224, 3), np.uint8)
    info = _native.decode_image(bytes(b), out, sample_seed=0)
    assert info["warnings"] >= 1 and "Invalid SOS parameters for sequential JPEG" in info["warning"]
    with pytest.raises(errors.CorruptImageError, match="Invalid SOS parameters"):
        _native.decode_image(bytes(b), out, sample_seed=0, strict=True)


def test_strict_crosses_the_typed_boundary():
    aug = Augment(strict=True)
    assert aug.native().strict is True
    assert Augment().native().strict is False


# ------------------------------------------------------------------------------------------- Pillow


def _pillow_verdicts(data: bytes, aug: Augment) -> set[str]:
    dec = PillowDecoder(aug, threads=1)
    out = np.empty((1, aug.out_h, aug.out_w, 3), np.uint8)
    got = set()
    for epoch in range(EPOCHS):
        err = dec.decode([memoryview(data)], [_native.sample_seed(0, epoch, 0)], out, ["x.JPEG"])[0]
        got.add("ok" if err is None else type(err).__name__)
    return got


@pytest.mark.parametrize(("damage", "verdict"), [
    ("truncated", "CorruptImageError"),
    ("no_eoi", "CorruptImageError"),
    ("extraneous", "ok"),
    ("good", "ok"),
])
def test_pillow_gives_the_native_verdict(good, damage, verdict):
    data = {"truncated": truncated_bottom(good), "no_eoi": good[:-2], "extraneous": extraneous_before_eoi(good),
            "good": good}[damage]
    aug = Augment(out_h=64, out_w=64)
    assert _pillow_verdicts(data, aug) == {verdict}
    assert set(verdicts(data, out_h=224, out_w=224)) == {verdict}


# ------------------------------------------------------------------------------------------- the loader


def test_loader_skips_a_file_cut_below_its_crop_in_every_epoch_and_names_warnings(tmp_path, good):
    """The issue's reproduction: a JPEG truncated in its bottom fifth, 6 epochs of random crops (it used to
    be skipped in some epochs only); beside it a file with a warning, used in every epoch and named."""
    from hivedata import Loader

    folder = tmp_path / "n00000001"
    folder.mkdir()
    (folder / "cut.JPEG").write_bytes(truncated_bottom(good, 0.8))
    (folder / "warns.JPEG").write_bytes(extraneous_before_eoi(good))
    for i in range(6):
        (folder / f"good_{i}.JPEG").write_bytes(good_jpeg(200 + 20 * i, 150, i))
    loader = Loader(str(tmp_path), batch_size=4, train=True, image_size=64, workers=1, backend="native")
    skipped = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        before = loader.stats()["skipped"]
        for _ in loader:
            pass
        skipped.append(loader.stats()["skipped"] - before)
    st = loader.stats()
    loader.close()
    assert skipped == [1] * EPOCHS, skipped
    assert {n.split(": ")[0] for n in st["skipped_names"]} == {f"file://{folder / 'cut.JPEG'}"}
    assert st["decode_warnings"] == EPOCHS
    assert len(st["warned"]) == EPOCHS
    # named as the pipeline names its objects (a local file: its path; an object: gs://bucket/name)
    assert all(w.startswith(f"{folder / 'warns.JPEG'}: Corrupt JPEG data: ") for w in st["warned"]), st["warned"]


def test_pillow_hides_a_bad_huffman_code_that_the_native_decoder_refuses(good):
    """The documented difference: Pillow silences libjpeg's corrupt-data warnings and decodes garbage."""
    import io
    import random

    from PIL import Image

    from tests.support.broken_jpegs import scan_start

    out = np.empty((224, 224, 3), np.uint8)
    rng = random.Random(0)
    for _ in range(200):
        b = bytearray(good)
        k = rng.randrange(scan_start(good), len(good) - 200)
        b[k:k + 40] = bytes(rng.randrange(255) for _ in range(40))
        try:
            _native.decode_image(bytes(b), out, sample_seed=0)
        except errors.CorruptImageError as e:
            if "bad Huffman code" in str(e):
                Image.open(io.BytesIO(bytes(b))).load()  # no error
                return
    pytest.fail("no damage gave a bad Huffman code")
