"""Listing a real (emulated) bucket into an index; class maps, labels files, cache and staleness."""

from __future__ import annotations

import pytest

from hivedata.sources.prefix import build_index, cache_path, check_fresh, load_index

CLASSES = ["n02000002", "n01000001", "n03000003"]


@pytest.fixture
def layout(emulator, bucket):
    """Train in class folders, val in folders and flat, plus a non-image object."""
    names = {}
    for c in CLASSES:
        for i in range(4 + len(c) % 3):
            names[f"train/{c}/{c}_{i}.JPEG"] = c
        names[f"val/{c}/ILSVRC2012_val_{c[-1]}.JPEG"] = c
        names[f"flatval/ILSVRC2012_val_0000000{c[-1]}.JPEG"] = c
    for n in names:
        emulator.upload(bucket, n, n.encode() * 3)
    emulator.upload(bucket, "train/n01000001/notes.txt", b"not an image")
    labels = "".join(f"{n.rsplit('/', 1)[1]} {c}\n" for n, c in names.items() if n.startswith("flatval/"))
    emulator.upload(bucket, "flatval_labels.txt", labels.encode())
    return names, labels


def test_folder_layout_sorted_like_image_folder(bucket, layout):
    names, _ = layout
    idx = build_index(f"gs://{bucket}/train", progress=False)
    assert idx.classes == sorted(CLASSES)
    train = sorted(n for n in names if n.startswith("train/"))
    assert idx.names() == train  # notes.txt skipped
    for i, n in enumerate(idx.names()):
        assert idx.classes[idx.labels[i]] == names[n]
        assert idx.sizes[i] == len(n.encode() * 3)
        assert idx.generations[i] > 0


def test_validation_reuses_training_class_map(bucket, layout):
    names, labels = layout
    train = build_index(f"gs://{bucket}/train/", progress=False)
    val = build_index(f"gs://{bucket}/val", classes=train.classes, progress=False)
    assert val.classes == train.classes
    assert [val.classes[label] for label in val.labels] == [names[n] for n in val.names()]
    flat = build_index(f"gs://{bucket}/flatval", classes=train.classes, labels=f"gs://{bucket}/flatval_labels.txt",
                       progress=False)
    assert [flat.classes[label] for label in flat.labels] == [names[n] for n in flat.names()]
    kaggle = "ImageId,PredictionString\n" + "".join(
        f"{n.rsplit('/', 1)[1][:-5]},{c} 1 2 3 4\n" for n, c in names.items() if n.startswith("flatval/"))
    flat2 = build_index(f"gs://{bucket}/flatval", classes=train.classes, labels=kaggle, progress=False)
    assert flat2.labels.tolist() == flat.labels.tolist()


def test_validation_errors_name_the_object(bucket, layout, emulator):
    with pytest.raises(ValueError, match=r"val/n03000003/ is not one of the 2 training classes"):
        build_index(f"gs://{bucket}/val", classes=CLASSES[:2], progress=False)
    with pytest.raises(ValueError, match="pass a labels file"):
        build_index(f"gs://{bucket}/flatval", progress=False)
    emulator.upload(bucket, "flatval/ILSVRC2012_val_00000009.JPEG", b"x")
    with pytest.raises(ValueError, match="ILSVRC2012_val_00000009.JPEG has no entry in the labels file"):
        build_index(f"gs://{bucket}/flatval", labels=f"gs://{bucket}/flatval_labels.txt", progress=False)
    with pytest.raises(FileNotFoundError, match="no images"):
        build_index(f"gs://{bucket}/nothing-here", progress=False)


def test_cache_is_used_then_refreshed_when_stale(bucket, layout, emulator, tmp_path):
    url = f"gs://{bucket}/train"
    first = load_index(url, cache_dir=tmp_path, progress=False)
    path = cache_path(url, cache_dir=tmp_path)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    again = load_index(url, cache_dir=tmp_path, progress=False)
    assert again.names() == first.names() and path.stat().st_mtime_ns == stamp  # served from cache
    assert check_fresh(again) is None

    emulator.upload(bucket, "train/n09000009/n09000009_0.JPEG", b"new class")
    assert "class folders" in check_fresh(again)
    fresh = load_index(url, cache_dir=tmp_path, progress=False)
    assert "n09000009" in fresh.classes and len(fresh) == len(first) + 1

    replaced = fresh.name(0)
    emulator.upload(bucket, replaced, b"replaced bytes")
    assert "changed" in check_fresh(fresh, samples=len(fresh))
    forced = load_index(url, cache_dir=tmp_path, refresh=True, progress=False)
    assert forced.sizes[0] == len(b"replaced bytes")


def test_missing_bucket_is_reported(emulator):
    with pytest.raises(FileNotFoundError, match="no-such-bucket-abc"):
        build_index("gs://no-such-bucket-abc/train", progress=False)
