"""Index storage, labels parsing and path helpers (no network)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from hivedata.gcs.auth import TokenSource
from hivedata.gcs.json_client import ObjectMeta
from hivedata.gcs.paths import parse_gcs_url, storage_endpoint
from hivedata.sources.labels import parse_labels
from hivedata.sources.prefix import Index, cache_path


def test_parse_gcs_url():
    p = parse_gcs_url("gs://bkt/train/")
    assert (p.bucket, p.prefix) == ("bkt", "train/")
    assert parse_gcs_url("bkt").prefix == ""
    with pytest.raises(ValueError, match="not a GCS location"):
        parse_gcs_url("gs:///x")


def test_storage_endpoint_prefers_argument_then_emulator(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert storage_endpoint() == "https://storage.googleapis.com"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "localhost:4443")
    assert storage_endpoint() == "http://localhost:4443"
    assert storage_endpoint("http://127.0.0.1:9/") == "http://127.0.0.1:9"


def test_parse_labels_plain_and_kaggle():
    assert parse_labels("ILSVRC2012_val_00000001.JPEG n01751748\nILSVRC2012_val_00000002.JPEG n09193705\n") == {
        "ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n09193705"}
    kaggle = "ImageId,PredictionString\nILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295\n"
    assert parse_labels(kaggle) == {"ILSVRC2012_val_00008726": "n02119789"}
    with pytest.raises(ValueError, match="line 2"):
        parse_labels("a.JPEG n1\nbroken\n")


def _index(n: int) -> Index:
    entries = [ObjectMeta(f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", 1000 + i, 10**15 + i) for i in range(n)]
    classes = [f"n{i:08d}" for i in range(1000)]
    return Index.from_entries("bkt", "train/", classes, entries, [i % 1000 for i in range(n)],
                              endpoint="http://x", folders=[f"train/{c}/" for c in classes])


def test_index_round_trip(tmp_path):
    idx = _index(20_000)
    path = tmp_path / "i.npz"
    idx.save(path)
    back = Index.load(path)
    assert len(back) == 20_000 and back.classes == idx.classes and back.folders == idx.folders
    assert back.names() == idx.names()
    assert back.name(12345) == "train/n00000345/n00000345_12345.JPEG"
    np.testing.assert_array_equal(back.sizes, idx.sizes)
    np.testing.assert_array_equal(back.generations, idx.generations)
    np.testing.assert_array_equal(back.labels, idx.labels)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_non_ascii_names_round_trip(tmp_path):
    idx = Index.from_entries("bkt", "", ["a"], [ObjectMeta("é/ü.jpg", 1, 1), ObjectMeta("x.jpg", 2, 2)], [0, 0])
    idx.save(tmp_path / "i.npz")
    assert Index.load(tmp_path / "i.npz").names() == ["é/ü.jpg", "x.jpg"]


def test_cache_path_depends_on_location_and_class_map(tmp_path):
    a = cache_path("gs://b/train", cache_dir=tmp_path)
    assert a == cache_path("gs://b/train/", cache_dir=tmp_path)
    assert a != cache_path("gs://b/val", cache_dir=tmp_path)
    assert cache_path("gs://b/val", classes=["x"], cache_dir=tmp_path) != cache_path("gs://b/val", cache_dir=tmp_path)


class _Creds:
    def __init__(self, expires_in: dt.timedelta):
        self.token = "t0"
        self.expiry = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + expires_in
        self.refreshes = 0

    def refresh(self, request):
        self.refreshes += 1
        self.token = f"t{self.refreshes}"
        self.expiry = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(hours=1)


def test_token_refreshed_before_expiry():
    fresh = _Creds(dt.timedelta(hours=1))
    assert TokenSource(fresh).token() == "t0" and fresh.refreshes == 0
    expiring = _Creds(dt.timedelta(minutes=2))  # inside the refresh margin
    ts = TokenSource(expiring)
    assert ts.token() == "t1" and ts.token() == "t1" and expiring.refreshes == 1
    assert "t1" not in repr(ts)


def test_emulator_endpoint_is_anonymous():
    assert TokenSource("auto", endpoint="http://127.0.0.1:4443").anonymous
    assert TokenSource("anonymous").headers() == {}


def test_writers_in_threads_saving_the_same_index_at_once_do_not_collide(tmp_path):
    """Several loaders in one process may save the same prefix's index together: each writes its own temp file."""
    import threading

    idx = _index(50_000)
    path = tmp_path / "shared.npz"
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def save() -> None:
        barrier.wait()
        try:
            for _ in range(3):
                idx.save(path)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    back = Index.load(path)
    assert back.names() == idx.names() and back.folders == idx.folders
    np.testing.assert_array_equal(back.generations, idx.generations)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.npz"]  # no temp file left behind
