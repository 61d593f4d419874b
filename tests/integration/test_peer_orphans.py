"""A train.py peer killed with SIGKILL leaves nothing behind: its hivemind processes (DHT, averagers, p2pd) end too.

Real parts: a real fake-gcs-server, a real train.py process with real hivemind children on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hivedata.tools.synthetic import SyntheticSpec
from tests.support.buckets import dataset_bucket
from tests.support.procs import descendants, describe, kill_all, read, wait_gone

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SPEC = SyntheticSpec(num_classes=4, train_per_class=16, val_per_class=4, seed=5, min_short_side=48,
                     max_short_side=64)


@pytest.fixture(scope="module")
def data_bucket(gcs_emulator) -> str:
    return dataset_bucket(gcs_emulator, "peer-orphans", SPEC)


def _wait_training(p: subprocess.Popen, metrics: Path, log: Path, timeout_s: float) -> None:
    """Until the peer's first metrics row (its DHT and optimizer, so all hivemind processes, are up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().strip():
            return
        if p.poll() is not None:
            raise AssertionError(f"the peer exited early ({p.returncode}): {log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"the peer did not start training in {timeout_s} s: {log.read_text()[-3000:]}")


def test_a_sigkilled_peer_leaves_no_process_behind(data_bucket, tmp_path):
    metrics, log = tmp_path / "peer.jsonl", tmp_path / "peer.log"
    cmd = [sys.executable, str(ROOT / "train.py"), "--bucket", data_bucket, "--embedded_peer", "--run_id", "orphans",
           "--arch", "resnet18", "--image_size", "32", "--batch_size", "8", "--target_batch_size", "64",
           "--epochs", "10000", "--warmup_epochs", "1", "--matchmaking_time", "1", "--averaging_timeout", "5",
           "--val_every", "1000", "--val_batches", "1", "--num_workers", "1", "--backend", "native",
           "--device", "cpu", "--no_progress", "--metrics", str(metrics)]
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the peer's logging
        peer = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ), stdout=f, stderr=subprocess.STDOUT)
    family = []
    try:
        _wait_training(peer, metrics, log, 180)
        family = descendants(peer.pid)
        pythons = [p for p in family if "train.py" in p.cmdline]
        assert len(pythons) >= 3, f"expected hivemind's DHT and two averagers:\n{describe(family)}"
        assert any("p2pd" in p.cmdline for p in family), f"expected hivemind's p2pd:\n{describe(family)}"
        peer.send_signal(signal.SIGKILL)
        assert peer.wait(timeout=30) == -signal.SIGKILL
        left = wait_gone([p.pid for p in family], 5.0)
        survivors = [q for q in (read(pid) for pid in left) if q is not None]
        assert not left, f"{len(left)} process(es) outlived the SIGKILLed peer:\n{describe(survivors)}"
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        kill_all(family)
