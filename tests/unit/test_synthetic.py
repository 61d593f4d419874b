"""Unit tests for hivedata.tools.synthetic: determinism, ILSVRC layout, special JPEGs, sizes, learnability."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hivedata.tools import synthetic, synthetic_store
from hivedata.tools.synthetic import SyntheticSpec

SMALL = SyntheticSpec(num_classes=4, train_per_class=5, val_per_class=3, min_short_side=32, max_short_side=48)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ------------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"train_per_class": -1}, "train_per_class"),
        ({"seed": -3}, "seed"),
        ({"min_short_side": 8}, "min_short_side"),
        ({"min_short_side": 400, "max_short_side": 300}, "max_short_side"),
        ({"quality": 0}, "quality"),
        ({"special_fraction": 1.5}, "special_fraction"),
        ({"val_layout": "nested"}, "val_layout"),
    ],
)
def test_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticSpec(**kwargs)


def test_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SyntheticSpec().seed = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ names


def test_wnids_format_unique_sorted_prefix_stable() -> None:
    ids = synthetic.wnids(1000)
    assert ids[0] == "n01440764"
    assert all(re.fullmatch(r"n\d{8}", w) for w in ids)
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert synthetic.wnids(10) == ids[:10]
    assert synthetic.wnids(0) == []
    big = synthetic.wnids(synthetic.MAX_CLASSES)
    assert len(set(big)) == synthetic.MAX_CLASSES and all(len(w) == 9 for w in big)


def test_layout_folders() -> None:
    spec = SMALL
    train, val = synthetic.dataset_items(spec, "data/train/", "data/val")
    ids = synthetic.wnids(spec.num_classes)
    assert len(train) == spec.num_classes * spec.train_per_class
    assert len(val) == spec.num_classes * spec.val_per_class
    assert train[0] == synthetic.SampleRef(f"data/train/{ids[0]}/{ids[0]}_0.JPEG", 0, "train", 0)
    for item in train:
        assert item.name == f"data/train/{ids[item.label]}/{ids[item.label]}_{item.index}.JPEG"
        assert item.split == "train"
    numbers = []
    for item in val:
        m = re.fullmatch(r"data/val/(n\d{8})/ILSVRC2012_val_(\d{8})\.JPEG", item.name)
        assert m, item.name
        assert m.group(1) == ids[item.label] and item.split == "val"
        numbers.append(int(m.group(2)))
    assert sorted(numbers) == list(range(1, len(val) + 1))  # 1-based, unique, dense
    assert numbers != sorted(numbers)  # shuffled across classes like the real val set
    assert len({item.name for item in train + val}) == len(train) + len(val)


def test_layout_flat_and_labels_text() -> None:
    spec = SyntheticSpec(**{**SMALL.__dict__, "val_layout": "flat"})
    train, val = synthetic.dataset_items(spec, "train", "imagenet/val/")
    ids = synthetic.wnids(spec.num_classes)
    assert all(re.fullmatch(r"imagenet/val/ILSVRC2012_val_\d{8}\.JPEG", item.name) for item in val)
    # Same numbering as the folders layout: only the directory differs.
    _, val_folders = synthetic.dataset_items(SMALL, "train", "imagenet/val")
    assert [v.name.rsplit("/", 1)[1] for v in val] == [v.name.rsplit("/", 1)[1] for v in val_folders]

    text = synthetic.val_labels_text(spec, val)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(val)
    assert lines == sorted(lines)
    expected = {item.name.rsplit("/", 1)[1]: ids[item.label] for item in val}
    assert dict(line.split(" ") for line in lines) == expected
    assert synthetic.val_labels_object("imagenet/val/") == "imagenet/val_labels.txt"


# ---------------------------------------------------------------------------------------- content


def test_make_jpeg_deterministic() -> None:
    a = synthetic.make_jpeg(2, 7, SMALL, "train")
    assert a[:2] == b"\xff\xd8"
    assert synthetic.make_jpeg(2, 7, SMALL, "train") == a
    assert synthetic.make_jpeg(2, 7, SyntheticSpec(**{**SMALL.__dict__, "seed": 1}), "train") != a
    assert synthetic.make_jpeg(2, 8, SMALL, "train") != a
    assert synthetic.make_jpeg(2, 7, SMALL, "val") != a
    assert synthetic.make_jpeg(3, 7, SMALL, "train") != a


def test_make_jpeg_does_not_touch_global_random_state() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = synthetic.make_jpeg(1, 1, SMALL, "train")
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(999)  # a different global state must not change the output
    assert synthetic.make_jpeg(1, 1, SMALL, "train") == first


def test_specials_present_with_right_modes() -> None:
    spec = SyntheticSpec(
        num_classes=5, train_per_class=12, val_per_class=0, min_short_side=32, max_short_side=40,
        special_fraction=0.15,
    )  # fmt: skip
    seen: Counter[str] = Counter()
    for label in range(spec.num_classes):
        for index in range(spec.train_per_class):
            kind = synthetic.special_kind(label, index, spec, "train")
            img = _open(synthetic.make_jpeg(label, index, spec, "train"))
            assert img.format == "JPEG"
            progressive = bool(img.info.get("progressive") or img.info.get("progression"))
            expected_mode = {"gray": "L", "cmyk": "CMYK"}.get(kind or "", "RGB")
            assert img.mode == expected_mode, (label, index, kind)
            assert progressive == (kind == "progressive"), (label, index, kind)
            seen[kind or "plain"] += 1
    n = spec.num_classes * spec.train_per_class
    assert abs(sum(seen[k] for k in synthetic.SPECIAL_KINDS) - n * spec.special_fraction) <= 1
    assert all(seen[k] >= 2 for k in synthetic.SPECIAL_KINDS), seen
    # Default fraction: a few specials per 1000, none when disabled.
    default = SyntheticSpec(num_classes=10)
    kinds = Counter(synthetic.special_kind(lb, i, default, "train") for lb in range(10) for i in range(100))
    assert 28 <= 1000 - kinds[None] <= 32 and all(kinds[k] >= 9 for k in synthetic.SPECIAL_KINDS)
    none = SyntheticSpec(special_fraction=0.0)
    assert all(synthetic.special_kind(lb, i, none, "train") is None for lb in range(10) for i in range(50))


def test_sizes_within_short_side_range() -> None:
    spec = SyntheticSpec(num_classes=3, min_short_side=40, max_short_side=60, special_fraction=0.0)
    shapes = [_open(synthetic.make_jpeg(lb, i, spec, "train")).size for lb in range(3) for i in range(20)]
    assert all(40 <= min(wh) <= 60 for wh in shapes), shapes
    assert all(1.0 <= max(wh) / min(wh) <= 16 / 9 + 0.05 for wh in shapes), shapes
    assert any(w > h for w, h in shapes) and any(h > w for w, h in shapes)  # both orientations
    assert len({max(wh) * 100 // min(wh) for wh in shapes}) >= 4  # varied aspect ratios


def test_mean_file_size_imagenet_like() -> None:
    spec = SyntheticSpec(num_classes=10)
    sizes = [len(synthetic.make_jpeg(lb, i, spec, "train")) for lb in range(10) for i in range(4)]
    mean_kb = np.mean(sizes) / 1024
    assert 70 <= mean_kb <= 160, mean_kb
    img = _open(synthetic.make_jpeg(0, 0, spec, "train"))
    assert 300 <= min(img.size) <= 500


def _random_crop_feature(img: Image.Image, rng: np.random.Generator, train: bool) -> np.ndarray:
    """RandomResizedCrop(0.08-1)+flip (train) or a centre crop (eval) to 16x16 -> 4x4x4 colour histogram."""
    img = img.convert("RGB")
    w, h = img.size
    if train:
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round(np.sqrt(area * ratio)))), min(h, int(round(np.sqrt(area / ratio))))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    else:
        cw = ch = int(min(w, h) * 0.875)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = img.resize((16, 16), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if train and rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    q = np.asarray(crop).reshape(-1, 3) // 64
    hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float64)
    return np.sqrt(hist / hist.sum())


def test_classes_learnable_from_random_crops() -> None:
    spec = SyntheticSpec(
        num_classes=10, train_per_class=12, val_per_class=5, min_short_side=64, max_short_side=96, seed=3
    )
    rng = np.random.default_rng(0)
    feats, labels = [], []
    for lb in range(spec.num_classes):
        for i in range(spec.train_per_class):
            img = _open(synthetic.make_jpeg(lb, i, spec, "train"))
            for _ in range(3):
                feats.append(_random_crop_feature(img, rng, train=True))
                labels.append(lb)
    x, y = np.array(feats), np.array(labels)
    centroids = np.stack([x[y == lb].mean(axis=0) for lb in range(spec.num_classes)])
    correct = total = 0
    for lb in range(spec.num_classes):
        for i in range(spec.val_per_class):
            f = _random_crop_feature(_open(synthetic.make_jpeg(lb, i, spec, "val")), rng, train=False)
            correct += int(np.argmin(((centroids - f) ** 2).sum(axis=1)) == lb)
            total += 1
    assert correct / total >= 0.6, f"nearest-centroid accuracy {correct}/{total} (chance 10%)"


# ------------------------------------------------------------------------------------------ output


def test_write_dataset_flat(tmp_path) -> None:
    spec = SyntheticSpec(**{**SMALL.__dict__, "val_layout": "flat"})
    info = synthetic_store.write_dataset(tmp_path, spec, train_prefix="in/train", val_prefix="in/val/")
    train, val = synthetic.dataset_items(spec, "in/train", "in/val")
    assert info.num_train == len(train) == 20 and info.num_val == len(val) == 12
    assert info.wnids == tuple(synthetic.wnids(spec.num_classes))
    assert (info.train_prefix, info.val_prefix, info.val_labels_object) == (
        "in/train",
        "in/val",
        "in/val_labels.txt",
    )
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted([item.name for item in train + val] + ["in/val_labels.txt"])
    assert (tmp_path / "in/val_labels.txt").read_text() == synthetic.val_labels_text(spec, val)
    total = sum((tmp_path / item.name).stat().st_size for item in train + val)
    assert info.total_bytes == total
    item = val[5]
    assert (tmp_path / item.name).read_bytes() == synthetic.make_jpeg(item.label, item.index, spec, "val")


class _FakeBlob:
    def __init__(self, store: dict, name: str) -> None:
        self.store, self.name = store, name

    def upload_from_string(self, data: bytes, content_type: str | None = None, **kwargs: object) -> None:
        self.store[self.name] = (bytes(data), content_type)


class _FakeBucket:
    def __init__(self) -> None:
        self.store: dict[str, tuple[bytes, str | None]] = {}

    def blob(self, name: str) -> _FakeBlob:
        return _FakeBlob(self.store, name)


class _FakeClient:
    project = "fake-project"

    def __init__(self) -> None:
        self.buckets: dict[str, _FakeBucket] = {}

    def lookup_bucket(self, name: str) -> _FakeBucket | None:
        return self.buckets.get(name)

    def create_bucket(self, name: str, project: str | None = None) -> _FakeBucket:
        assert name not in self.buckets
        self.buckets[name] = _FakeBucket()
        return self.buckets[name]


@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_upload_dataset_with_fake_client(layout: str) -> None:
    spec = SyntheticSpec(**{**SMALL.__dict__, "val_layout": layout})
    client = _FakeClient()
    info = synthetic_store.upload_dataset("bkt", spec, client=client, workers=4, progress=False)
    train, val = synthetic.dataset_items(spec, "train", "val")
    store = client.buckets["bkt"].store
    expected = {item.name for item in train + val}
    if layout == "flat":
        assert info.val_labels_object == "val_labels.txt"
        data, ctype = store.pop("val_labels.txt")
        assert data.decode() == synthetic.val_labels_text(spec, val) and ctype == "text/plain"
    else:
        assert info.val_labels_object is None
    assert set(store) == expected
    assert all(ctype == "image/jpeg" for _, ctype in store.values())
    assert info.total_bytes == sum(len(d) for d, _ in store.values())
    assert (info.bucket, info.num_train, info.num_val) == ("bkt", len(train), len(val))
    item = train[-1]
    assert store[item.name][0] == synthetic.make_jpeg(item.label, item.index, spec, "train")
    # Re-uploading into the now existing bucket does not try to create it again.
    synthetic_store.upload_dataset("bkt", spec, client=client, workers=2, progress=False)
