"""A wrong flag ends train.py / `python -m hivedata` in one line naming it (exit 2, no traceback); well-known
labels files beside a flat validation folder are found. All against the real emulator."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from hivedata.sources.prefix import build_index, cache_path, load_index
from hivedata.train.cli import check_data, data_error
from hivedata.train.config import parse_args
from tests.support.fault_proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
WNIDS = ["n01440764", "n01443537", "n01484850"]
VAL = {k: WNIDS[(k * 2) % 3] for k in range(1, 7)}  # ILSVRC2012_val_{k:08d} -> class


def _val_name(k: int) -> str:
    return f"ILSVRC2012_val_{k:08d}.JPEG"


def _kaggle_csv(labels: dict[int, str]) -> bytes:
    rows = "".join(f"ILSVRC2012_val_{k:08d},{w} 10 20 30 40 {w} 1 2 3 4\n" for k, w in labels.items())
    return ("ImageId,PredictionString\n" + rows).encode()


def _upload_ilsvrc(emulator, bucket: str, train: str, val: str) -> None:
    """Training in class folders, validation one flat folder, as the ILSVRC tars unpack (bytes: listing only)."""
    for w in WNIDS:
        for i in range(2):
            emulator.upload(bucket, f"{train}/{w}/{w}_{i}.JPEG", b"jpeg")
    for k in VAL:
        emulator.upload(bucket, f"{val}/{_val_name(k)}", b"jpeg")


@pytest.fixture
def ilsvrc(emulator, bucket) -> str:
    """The layout of the issue: ILSVRC2012_img_train/<wnid>/ and a flat ILSVRC2012_img_val/."""
    _upload_ilsvrc(emulator, bucket, "ILSVRC2012_img_train", "ILSVRC2012_img_val")
    return bucket


def _run(tmp_path: Path, argv: list[str], *, emulator_url: str | None = None, module: bool = False):
    env = dict(os.environ)
    if emulator_url:
        env["STORAGE_EMULATOR_HOST"] = emulator_url
    cmd = [sys.executable, "-m", "hivedata", *argv] if module else [sys.executable, str(ROOT / "train.py"), *argv]
    return subprocess.run(cmd, cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)


def _the_line(r: subprocess.CompletedProcess, prefix: str) -> str:
    """The run ended with status 2 and exactly one error line, its last, starting with `prefix`."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr[-3000:]
    assert errors[0].startswith(prefix), errors[0]
    return errors[0]


def _train(tmp_path: Path, bucket: str, *flags: str, emulator_url: str | None = None) -> subprocess.CompletedProcess:
    """The original script's exact command, as a new user types it, plus `flags`."""
    return _run(tmp_path, ["--bucket_name", bucket, "--train_prefix", "ILSVRC2012_img_train", "--val_prefix",
                           "ILSVRC2012_img_val", "--device", "cpu", "--max_minutes", "0.1", *flags],
                emulator_url=emulator_url)


def test_the_issue_command_on_a_flat_val_folder_names_val_labels(tmp_path, ilsvrc):
    line = _the_line(_train(tmp_path, ilsvrc), "train.py: error: --val_labels: ")
    assert f"gs://{ilsvrc}/ILSVRC2012_img_val/ has no class folders: pass a labels file" in line
    assert "LOC_val_solution.csv" in line and "ILSVRC2012_validation_ground_truth.txt" in line


def test_unknown_bucket_names_bucket_name(tmp_path, emulator):
    line = _the_line(_train(tmp_path, "no-such-bucket-hivedata"), "train.py: error: --bucket_name: ")
    assert "gs://no-such-bucket-hivedata does not exist" in line


@pytest.mark.parametrize("flag, value", [("--train_prefix", "ILSVRC2012_img_trian"),
                                         ("--val_prefix", "ILSVRC2012_img_vla")])
def test_misspelt_prefix_names_its_flag(tmp_path, ilsvrc, flag, value):
    line = _the_line(_train(tmp_path, ilsvrc, flag, value), f"train.py: error: {flag}: ")
    assert f"no images under gs://{ilsvrc}/{value}/" in line


def test_labels_missing_an_entry_or_naming_an_unknown_class(tmp_path, emulator, ilsvrc):
    labels = "".join(f"{_val_name(k)} {w}\n" for k, w in VAL.items() if k != 4)
    emulator.upload(ilsvrc, "short.txt", labels.encode())
    line = _the_line(_train(tmp_path, ilsvrc, "--val_labels", f"gs://{ilsvrc}/short.txt"),
                     "train.py: error: --val_labels: ")
    assert f"gs://{ilsvrc}/ILSVRC2012_img_val/{_val_name(4)} has no entry in the labels file" in line
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(labels + f"{_val_name(4)} n09999999\n")
    line = _the_line(_train(tmp_path, ilsvrc, "--val_labels", str(wrong)), "train.py: error: --val_labels: ")
    assert "is labelled 'n09999999'" in line and "not one of the 3 training classes" in line


def test_unreadable_labels_file(tmp_path, ilsvrc):
    line = _the_line(_train(tmp_path, ilsvrc, "--val_labels", f"gs://{ilsvrc}/nope.txt"),
                     "train.py: error: --val_labels: ")
    assert f"gs://{ilsvrc}/nope.txt does not exist" in line
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    line = _the_line(_train(tmp_path, ilsvrc, "--val_labels", str(binary)), "train.py: error: --val_labels: ")
    assert "is not text" in line


def test_permission_denied_names_bucket_name(tmp_path, emulator, ilsvrc):
    with FaultProxy(emulator.url) as proxy:
        proxy.add_fault("status", status=403, count=100, match="/o?")  # every listing
        line = _the_line(_train(tmp_path, ilsvrc, emulator_url=proxy.url), "train.py: error: --bucket_name: ")
        assert proxy.stats["status_403"] >= 1
    assert "permission denied (HTTP 403)" in line and "credentials" in line


def test_validation_class_folder_unknown_to_training(tmp_path, emulator, ilsvrc):
    emulator.upload(ilsvrc, "val_folders/n09999999/ILSVRC2012_val_00000001.JPEG", b"jpeg")
    line = _the_line(_train(tmp_path, ilsvrc, "--val_prefix", "val_folders"), "train.py: error: --val_prefix: ")
    assert f"gs://{ilsvrc}/val_folders/n09999999/ is not one of the 3 training classes" in line


def test_error_while_the_trainer_builds_its_loaders(tmp_path, ilsvrc):
    """Packed shards are read by the loader itself (inside Trainer): the catch around it answers too."""
    line = _the_line(_train(tmp_path, ilsvrc, "--train_prefix", "missing.index.npz"),
                     "train.py: error: --train_prefix: ")
    assert "missing.index.npz" in line


def test_empty_webdataset_folder_blames_train_prefix(ilsvrc):
    from hivedata.sources.webdataset import load_existing_shards

    with pytest.raises(FileNotFoundError) as info:  # what the loader meets inside Trainer for --train_prefix x/*.tar
        load_existing_shards(f"gs://{ilsvrc}/shards/")
    args = parse_args(["--bucket_name", ilsvrc, "--train_prefix", "shards/*.tar"])
    assert data_error(info.value, args) == f"train.py: error: --train_prefix: {info.value}"
    assert data_error(FileNotFoundError(str(info.value)), args) is None  # the same text raised elsewhere: a bug


def test_hivedata_index_names_its_arguments(tmp_path, emulator, ilsvrc):
    r = _run(tmp_path, ["index", "gs://no-such-bucket-hivedata/val"], module=True)
    assert "does not exist" in _the_line(r, "hivedata index: error: URL: bucket gs://no-such-bucket-hivedata")
    r = _run(tmp_path, ["index", f"gs://{ilsvrc}/ILSVRC2012_img_val", "--labels", str(tmp_path / "nope.txt")],
             module=True)
    assert "cannot be read" in _the_line(r, "hivedata index: error: --labels: labels file")


# ------------------------------------------------------------------------------------- labels found


KAGGLE_TRAIN, KAGGLE_VAL = "ILSVRC/Data/CLS-LOC/train", "ILSVRC/Data/CLS-LOC/val"


@pytest.fixture
def kaggle(emulator, bucket) -> str:
    """Kaggle's layout: ILSVRC/Data/CLS-LOC/{train,val}/ with LOC_val_solution.csv at the dataset root."""
    _upload_ilsvrc(emulator, bucket, KAGGLE_TRAIN, KAGGLE_VAL)
    emulator.upload(bucket, "LOC_val_solution.csv", _kaggle_csv(VAL))
    return bucket


def _labels_of(index) -> dict[str, str]:
    return {n.rsplit("/", 1)[1]: index.classes[label] for n, label in zip(index.names(), index.labels, strict=True)}


def test_kaggle_solution_found_from_the_val_folder_and_logged(kaggle, caplog):
    train = build_index(f"gs://{kaggle}/{KAGGLE_TRAIN}", progress=False)
    with caplog.at_level(logging.INFO, logger="hivedata.sources.labels"):
        val = build_index(f"gs://{kaggle}/{KAGGLE_VAL}", classes=train.classes, progress=False)
    assert _labels_of(val) == {_val_name(k): w for k, w in VAL.items()}
    assert f"using the labels in gs://{kaggle}/LOC_val_solution.csv (Kaggle's" in caplog.text


def test_the_file_beside_the_folder_wins_over_the_root_and_an_explicit_file_over_both(emulator, kaggle, caplog):
    beside = {k: WNIDS[0] for k in VAL}
    emulator.upload(kaggle, "ILSVRC/Data/CLS-LOC/LOC_val_solution.csv", _kaggle_csv(beside))
    with caplog.at_level(logging.INFO, logger="hivedata.sources.labels"):
        val = build_index(f"gs://{kaggle}/{KAGGLE_VAL}", classes=WNIDS, progress=False)
    assert set(_labels_of(val).values()) == {WNIDS[0]}
    assert f"gs://{kaggle}/ILSVRC/Data/CLS-LOC/LOC_val_solution.csv" in caplog.text
    caplog.clear()
    explicit = "".join(f"{_val_name(k)} {WNIDS[2]}\n" for k in VAL)
    with caplog.at_level(logging.INFO, logger="hivedata.sources.labels"):
        val = build_index(f"gs://{kaggle}/{KAGGLE_VAL}", classes=WNIDS, labels=explicit, progress=False)
    assert set(_labels_of(val).values()) == {WNIDS[2]}
    assert "using the labels" not in caplog.text


def test_devkit_ground_truth_and_meta_mat_found(emulator, ilsvrc):
    ids = {w: i for i, w in [(1, WNIDS[2]), (2, WNIDS[0]), (3, WNIDS[1])]}  # meta.mat's order is not sorted
    table = np.zeros((3, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for k, (w, i) in enumerate(ids.items()):
        table[k, 0] = (np.array([[i]], dtype=np.uint16), np.array([w]))
    buf = io.BytesIO()
    savemat(buf, {"synsets": table})
    emulator.upload(ilsvrc, "ILSVRC2012_devkit_t12/data/meta.mat", buf.getvalue())
    truth = "".join(f"{ids[VAL[k]]}\n" for k in sorted(VAL))
    emulator.upload(ilsvrc, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
    val = build_index(f"gs://{ilsvrc}/ILSVRC2012_img_val", classes=WNIDS, progress=False)
    assert _labels_of(val) == {_val_name(k): w for k, w in VAL.items()}


def test_train_py_check_passes_with_a_found_file_and_leaves_the_indexes_cached(kaggle, caplog):
    args = parse_args(["--bucket_name", kaggle, "--train_prefix", KAGGLE_TRAIN, "--val_prefix", KAGGLE_VAL,
                       "--device", "cpu", "--no_progress"])
    with caplog.at_level(logging.INFO, logger="hivedata.sources.labels"):
        assert check_data(args) is None
    assert "LOC_val_solution.csv" in caplog.text
    train_url, val_url = f"gs://{kaggle}/{KAGGLE_TRAIN}", f"gs://{kaggle}/{KAGGLE_VAL}"
    assert cache_path(train_url).exists()
    train = load_index(train_url, progress=False)  # what the loaders ask for next: the same cache entries
    assert cache_path(val_url, classes=train.classes).exists()
    assert _labels_of(load_index(val_url, classes=train.classes, progress=False)) == {
        _val_name(k): w for k, w in VAL.items()}


def test_an_outage_mid_run_ends_train_py_in_one_line_with_a_checkpoint(tmp_path, gcs_emulator):
    """Every image download refused (HTTP 403) once training runs: one error line naming the object, exit 1, no
    traceback, and the state trained so far checkpointed."""
    from hivedata.tools.synthetic import SyntheticSpec
    from tests.support.buckets import dataset_bucket

    bucket = dataset_bucket(gcs_emulator, "outage-mid-run",
                            SyntheticSpec(num_classes=2, train_per_class=8, val_per_class=2, seed=3,
                                          min_short_side=40, max_short_side=48))
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("status", status=403, count=100_000, match="alt=media")  # downloads only: listing works
        r = _run(tmp_path, ["--bucket", bucket, "--arch", "resnet18", "--image_size", "32", "--batch_size", "4",
                            "--target_batch_size", "8", "--epochs", "1", "--warmup_epochs", "0.1", "--device", "cpu",
                            "--backend", "native",
                            "--num_workers", "1", "--no_progress", "--run_id", "outage",
                            "--checkpoint_dir", str(tmp_path / "ck")], emulator_url=proxy.url)
        refused = proxy.stats.get("status_403", 0)
    assert r.returncode == 1, r.stderr[-2000:]
    assert refused >= 1
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("train.py: error: ")]
    assert f"gs://{bucket}/train/" in line and ("403" in line or "permission" in line.lower()), line
    assert "--max_missing" in r.stderr and any((tmp_path / "ck").glob("ckpt-*.pt"))
