"""A first `python train.py` (the embedded default) prints no warnings, tracebacks or per-epoch noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivedata.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_short_embedded_run_has_clean_output(tmp_path):
    env = dict(os.environ)
    env.pop("STORAGE_EMULATOR_HOST", None)  # train.py starts its own embedded emulator
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--max_minutes", "0.4", "--no_progress",
                        "--metrics", str(tmp_path / "m.jsonl"), "--checkpoint_dir", str(tmp_path / "ck")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    (summary,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    # the upload's 16 threads share a pool sized for them; the swarm is left without hivemind errors
    for noise in ("Connection pool is full", "Traceback", "[ERROR]", "Task was destroyed"):
        assert noise not in out, f"{noise!r} in:\n{out[-3000:]}"

    # a lone peer says it steps alone (not "averaged with 1 peers") once, then every 10 epochs, not every epoch ...
    epochs = summary["global_epoch"]
    logged = [line for line in out.splitlines() if "global epoch" in line and "lr" in line]
    assert epochs >= 3 and summary["averaged_with_max"] == 1
    assert 1 <= len(logged) < epochs, "\n".join(logged)
    assert all("stepped alone" in line for line in logged) and "averaged with 1 peers" not in out
    # ... while the metrics still record it at every epoch
    recorded = [row["averaged_with"] for row in read_metrics(tmp_path / "m.jsonl") if "averaged_with" in row]
    assert len(recorded) >= epochs - 1 and set(recorded) == {1}
