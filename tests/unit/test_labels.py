"""Labels files of flat validation folders: formats, the search for a well-known one, and which flag an error blames."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from scipy.io import savemat

from hivedata.errors import FetchError, HivedataError, ObjectNotFoundError, ObjectPermissionError
from hivedata.sources.labels import (
    DataLocationError,
    LabelsError,
    NoImagesError,
    blame,
    find_labels,
    ground_truth_labels,
    load_labels,
    parse_ground_truth,
    parse_labels,
    parse_synsets_mat,
    search_dirs,
)
from hivedata.sources.prefix import parse_labels as parse_labels_from_prefix
from hivedata.train.cli import data_error

# meta.mat's ILSVRC2012_ID order is not sorted by WNID (ID 1 is the kit fox): the table must come from meta.mat
SYNSETS = [(1, "n02119789"), (2, "n02100735"), (3, "n01751748"), (1001, "n00001740")]


def meta_mat(synsets: list[tuple[int, str]] = SYNSETS) -> bytes:
    """A meta.mat shaped like the devkit's: a column of structs with ILSVRC2012_ID, WNID and more fields."""
    table = np.zeros((len(synsets), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                               ("num_children", "O")])
    for k, (i, wnid) in enumerate(synsets):
        table[k, 0] = (np.array([[i]], dtype=np.uint16), np.array([wnid]), np.array(["words"]), np.array([[0]]))
    buf = io.BytesIO()
    savemat(buf, {"synsets": table}, do_compression=True)
    return buf.getvalue()


class Bucket:
    """read(name) over a dict of objects, recording every name asked for."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.asked = objects, []

    def read(self, name: str) -> bytes | None:
        self.asked.append(name)
        return self.objects.get(name)


def test_error_types_are_hivedata_errors_and_the_builtins_callers_catch():
    assert issubclass(LabelsError, ValueError) and issubclass(LabelsError, HivedataError)
    assert issubclass(NoImagesError, FileNotFoundError) and issubclass(NoImagesError, DataLocationError)
    e = LabelsError("bad", url="gs://b/l.txt")
    assert (str(e), e.url, e.part) == ("bad", "gs://b/l.txt", "labels")


def test_parse_labels_moved_but_still_importable_from_prefix():
    assert parse_labels_from_prefix is parse_labels
    assert parse_labels("a/ILSVRC2012_val_00000001.JPEG n01751748\n\n") == {"ILSVRC2012_val_00000001": "n01751748"}
    with pytest.raises(LabelsError, match=r"line 2 is not 'ImageId,PredictionString'"):
        parse_labels("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")


def test_parse_ground_truth_one_id_per_line():
    assert parse_ground_truth("490\n361\n171\n\n") == [490, 361, 171]
    with pytest.raises(LabelsError, match=r"ground truth line 2 is not an ILSVRC2012_ID: 'n01751748'"):
        parse_ground_truth("490\nn01751748\n")


def test_meta_mat_table_in_ilsvrc2012_id_order():
    assert parse_synsets_mat(meta_mat()) == dict(SYNSETS)
    buf = io.BytesIO()
    savemat(buf, {"other": np.zeros(3)})
    for data in (buf.getvalue(), b"not a mat file" * 20, b""):
        with pytest.raises(LabelsError, match="meta.mat has no readable 'synsets' table"):
            parse_synsets_mat(data)


def test_ground_truth_line_k_labels_val_image_k():
    assert ground_truth_labels([3, 1, 3], dict(SYNSETS)) == {
        "ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n02119789",
        "ILSVRC2012_val_00000003": "n01751748"}
    with pytest.raises(LabelsError, match="line 2 names ILSVRC2012_ID 7, which meta.mat does not have"):
        ground_truth_labels([1, 7], dict(SYNSETS))


def test_search_dirs_nearest_first_up_to_the_bucket_root():
    assert search_dirs("ILSVRC/Data/CLS-LOC/val/") == ["ILSVRC/Data/CLS-LOC/val/", "ILSVRC/Data/CLS-LOC/",
                                                       "ILSVRC/Data/", "ILSVRC/", ""]
    assert search_dirs("val") == ["val/", ""]
    assert search_dirs("") == [""]


KAGGLE = b"ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\n"


def test_kaggle_solution_at_the_dataset_root_found_from_the_kaggle_val_folder():
    b = Bucket({"LOC_val_solution.csv": KAGGLE})
    found = find_labels("bkt", "ILSVRC/Data/CLS-LOC/val/", b.read)
    assert found.mapping == {"ILSVRC2012_val_00000001": "n01751748"}
    assert found.sources == ["LOC_val_solution.csv"] and "Kaggle" in found.kind
    # the exact order looked in: each level nearest first; at each, Kaggle's file, then the devkit's two places
    levels = ["ILSVRC/Data/CLS-LOC/val/", "ILSVRC/Data/CLS-LOC/", "ILSVRC/Data/", "ILSVRC/"]
    expected = [n for d in levels for n in (f"{d}LOC_val_solution.csv", f"{d}ILSVRC2012_validation_ground_truth.txt",
                                            f"{d}ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")]
    assert b.asked == expected + ["LOC_val_solution.csv"]


def test_nearest_file_wins_and_kaggle_before_devkit_at_one_level():
    other = b"ImageId,PredictionString\nILSVRC2012_val_00000001,n02119789 1 2 3 4\n"
    b = Bucket({"data/LOC_val_solution.csv": KAGGLE, "LOC_val_solution.csv": other,
                "data/ILSVRC2012_validation_ground_truth.txt": b"1\n", "data/meta.mat": meta_mat()})
    found = find_labels("bkt", "data/val/", b.read)
    assert found.sources == ["data/LOC_val_solution.csv"]
    assert found.mapping["ILSVRC2012_val_00000001"] == "n01751748"


def test_devkit_ground_truth_with_meta_mat_in_the_devkit_folder():
    b = Bucket({"ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": b"3\n1\n",
                "ILSVRC2012_devkit_t12/data/meta.mat": meta_mat()})
    found = find_labels("bkt", "ILSVRC2012_img_val/", b.read)
    assert found.mapping == {"ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n02119789"}
    assert found.sources == ["ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                             "ILSVRC2012_devkit_t12/data/meta.mat"]


def test_ground_truth_without_meta_mat_is_skipped_then_named_when_nothing_else_is_found():
    b = Bucket({"ILSVRC2012_validation_ground_truth.txt": b"1\n"})
    with pytest.raises(LabelsError) as info:
        find_labels("bkt", "val/", b.read)
    msg = str(info.value)
    assert "gs://bkt/val/ has no class folders: pass a labels file" in msg
    assert "LOC_val_solution.csv" in msg and "in gs://bkt/val/, gs://bkt/" in msg
    assert msg.endswith("gs://bkt/ILSVRC2012_validation_ground_truth.txt has no meta.mat beside it to map its "
                        "class numbers to WNIDs")
    assert info.value.url == "gs://bkt/val/"
    b.objects["LOC_val_solution.csv"] = KAGGLE  # a usable file further up is still found
    assert find_labels("bkt", "a/val/", b.read).sources == ["LOC_val_solution.csv"]


def test_a_broken_found_file_is_named():
    b = Bucket({"LOC_val_solution.csv": b"ImageId,PredictionString\nILSVRC2012_val_00000001\n"})
    with pytest.raises(LabelsError, match=r"^gs://bkt/LOC_val_solution.csv: labels file line 2") as info:
        find_labels("bkt", "val/", b.read)
    assert info.value.url == "gs://bkt/LOC_val_solution.csv"
    b = Bucket({"ILSVRC2012_validation_ground_truth.txt": b"1\n", "meta.mat": b"\x00\x01garbage"})
    with pytest.raises(LabelsError, match=r"^gs://bkt/meta.mat: meta.mat has no readable"):
        find_labels("bkt", "val/", b.read)


def test_load_labels_names_the_file_it_cannot_use(tmp_path):
    assert load_labels({"a": "n1"}, client=None) == {"a": "n1"}
    assert load_labels("a.JPEG n1\n", client=None) == {"a": "n1"}
    missing = tmp_path / "nope.txt"
    with pytest.raises(LabelsError, match=f"labels file {missing} cannot be read: No such file or directory"):
        load_labels(str(missing), client=None)
    with pytest.raises(LabelsError, match="cannot be read"):
        load_labels(str(tmp_path), client=None)  # a directory
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(LabelsError, match=f"labels file {binary} is not text"):
        load_labels(str(binary), client=None)
    broken = tmp_path / "labels.txt"
    broken.write_text("a.JPEG n1\nb.JPEG\n")
    with pytest.raises(LabelsError, match=f"^{broken}: labels file line 2 is not") as info:
        load_labels(str(broken), client=None)
    assert info.value.url == str(broken)


def test_no_images_says_why():
    assert str(NoImagesError.under("bkt", "trian/", [])) == \
        "no images under gs://bkt/trian/ (nothing is listed there: check the spelling)"
    assert "the bucket is empty" in str(NoImagesError.under("bkt", "", []))
    e = NoImagesError.under("bkt", "shards/", ["shards/train-000000.tar", "shards/train-000001.tar"])
    assert "2 objects, none a .jpeg/.jpg/.png" in str(e) and "pass gs://bkt/shards/*.tar" in str(e)
    assert e.url == "gs://bkt/shards/"


def _args(**kw) -> argparse.Namespace:
    base = dict(bucket="bkt", train_prefix="ILSVRC2012_img_train", val_prefix="ILSVRC2012_img_val", val_labels=None)
    return argparse.Namespace(**(base | kw))


def test_train_flags_blamed_for_each_kind_of_error():
    a = _args(val_labels="gs://other/labels.txt")
    listing_404 = ObjectNotFoundError("not found listing gs://bkt/ILSVRC2012_img_train/", bucket="bkt", status=404)
    assert data_error(listing_404, a) == ("train.py: error: --bucket_name: bucket gs://bkt does not exist (not found "
                                          "listing gs://bkt/ILSVRC2012_img_train/)")
    listing_403 = ObjectPermissionError("permission denied (HTTP 403) listing gs://bkt/x/", bucket="bkt", status=403)
    assert data_error(listing_403, a).startswith("train.py: error: --bucket_name: permission denied (HTTP 403)")
    shard_404 = ObjectNotFoundError("not found", bucket="bkt", object="ILSVRC2012_img_val/x.index.npz", status=404)
    assert data_error(shard_404, a).startswith("train.py: error: --val_prefix: ")
    labels_403 = ObjectPermissionError("denied", bucket="other", object="labels.txt", status=403)
    assert data_error(labels_403, a).startswith("train.py: error: --val_labels: ")
    no_images = NoImagesError.under("bkt", "ILSVRC2012_img_train/", [])
    assert data_error(no_images, a).startswith("train.py: error: --train_prefix: no images under")
    assert data_error(NoImagesError.under("bkt", "ILSVRC2012_img_val/", []), a).startswith("train.py: error: "
                                                                                           "--val_prefix: ")
    assert data_error(LabelsError("x has no entry"), a) == "train.py: error: --val_labels: x has no entry"
    # a flat folder given as the training set: the training prefix is what to fix
    assert data_error(LabelsError("gs://bkt/t/ has no class folders"), a, "train").startswith(
        "train.py: error: --train_prefix: training images go in class folders")


def test_anything_else_keeps_its_traceback():
    a = _args()
    assert data_error(ValueError("a bug somewhere"), a) is None  # not raised by build_index about a listing
    assert data_error(FileNotFoundError("/tmp/x"), a) is None
    assert data_error(RuntimeError("boom"), a) is None
    assert data_error(FetchError("network error listing gs://bkt/x/", bucket="bkt"), a) is None
    # a 404 on an object no flag names (not the bucket's listing either)
    assert data_error(ObjectNotFoundError("nf", bucket="elsewhere", object="ckpt/x.pt", status=404), a) is None
    assert blame(KeyError("k"), {}, bucket="bkt", bucket_flag="B", labels_flag="L") is None


def test_longest_location_wins():
    locs = {"gs://bkt/data/": "--train_prefix", "gs://bkt/data/val": "--val_prefix"}
    e = NoImagesError.under("bkt", "data/val/", [])
    assert blame(e, locs, bucket="bkt", bucket_flag="B", labels_flag="L").startswith("--val_prefix: ")
    e = NoImagesError.under("bkt", "data/valid/", [])  # not under gs://bkt/data/val/
    assert blame(e, locs, bucket="bkt", bucket_flag="B", labels_flag="L").startswith("--train_prefix: ")
