"""`python -m hivedata verify` against the real emulator and a local folder: it names exactly the broken
files (truncated below any crop, corrupt, warning-only, too large, missing bytes, not an image), one line
each, and exits non-zero; a clean dataset exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivedata.cli import main
from tests.support.broken_jpegs import (
    corrupt_scan_at,
    extraneous_before_eoi,
    good_jpeg,
    progressive_bomb,
    truncated_bottom,
)
from tests.support.images import natural_image, png

ROOT = Path(__file__).resolve().parents[2]


def dataset() -> tuple[dict[str, bytes], set[str]]:
    """name -> bytes under two class folders, and the names verify must report."""
    good = good_jpeg(400, 300, 1)
    files = {f"n00000001/good_{i}.JPEG": good_jpeg(300 + 10 * i, 200, i) for i in range(5)}
    files |= {f"n00000002/good_{i}.JPEG": good_jpeg(200, 260, 10 + i, progressive=True) for i in range(3)}
    files["n00000002/png_named.JPEG"] = png(natural_image(64, 48, 3))  # the loader's Pillow fallback decodes it
    broken = {
        "n00000001/truncated_bottom.JPEG": truncated_bottom(good, 0.85),
        "n00000001/no_eoi.JPEG": good[:-2],
        "n00000002/garbage_in_scan.JPEG": corrupt_scan_at(good, 0.9),
        "n00000002/extraneous.JPEG": extraneous_before_eoi(good),  # a warning: broken for verify (strict)
        "n00000002/bomb.JPEG": progressive_bomb(13000, 13000, 1),
        "n00000001/empty.JPEG": b"",
        "n00000001/random.JPEG": os.urandom(3000),
    }
    return files | broken, set(broken)


def _run(url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # -P as the parent ran (scripts/asan.sh): the sanitized build on PYTHONPATH, not the checkout's
    py = [sys.executable, *(["-P"] if sys.flags.safe_path else [])]
    return subprocess.run([*py, "-m", "hivedata", "verify", url, "--threads", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def _named(stdout: str) -> dict[str, str]:
    lines = [ln for ln in stdout.splitlines() if ln]
    return dict(ln.split("\t", 1) for ln in lines)


@pytest.fixture(scope="module")
def broken_bucket(gcs_emulator) -> tuple[str, set[str]]:
    bucket = "verify-data"
    gcs_emulator.create_bucket(bucket)
    files, broken = dataset()
    for name, data in files.items():
        gcs_emulator.upload(bucket, f"train/{name}", data)
    return bucket, {f"gs://{bucket}/train/{n}" for n in broken}


def test_verify_names_exactly_the_broken_objects(broken_bucket, gcs_emulator):
    bucket, broken = broken_bucket
    r = _run(f"gs://{bucket}/train", env=os.environ | {"STORAGE_EMULATOR_HOST": gcs_emulator.url})
    assert r.returncode == 1, r.stderr
    named = _named(r.stdout)
    assert set(named) == broken, r.stdout
    assert "checked 16 images: 7 broken, 1 decoded by the Pillow fallback" in r.stderr
    assert "Premature end of JPEG file" in named[f"gs://{bucket}/train/n00000001/truncated_bottom.JPEG"]
    assert "extraneous bytes" in named[f"gs://{bucket}/train/n00000002/extraneous.JPEG"]
    assert "ImageTooLargeError" in named[f"gs://{bucket}/train/n00000002/bomb.JPEG"]
    assert "NotJpegError" in named[f"gs://{bucket}/train/n00000001/empty.JPEG"]


def test_verify_a_clean_prefix_exits_zero(gcs_emulator, capsys):
    bucket = "verify-clean"
    gcs_emulator.create_bucket(bucket)
    for i in range(3):
        gcs_emulator.upload(bucket, f"val/n00000001/ok_{i}.JPEG", good_jpeg(120, 90, i))
    assert main(["verify", f"gs://{bucket}/val"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "checked 3 images: 0 broken" in out.err


def test_verify_a_local_folder(tmp_path, capsys):
    files, broken = dataset()
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert main(["verify", str(tmp_path), "--threads", "2"]) == 1
    named = _named(capsys.readouterr().out)
    assert set(named) == {f"file://{tmp_path / n}" for n in broken}
