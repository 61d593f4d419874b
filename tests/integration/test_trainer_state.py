"""Training state across peers and restarts: a late joiner's download, --resume, a peer killed mid-run.

Real parts only: a real fake-gcs-server, real hivemind DHTs and optimizers on loopback, real train.py processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hivedata.tools.synthetic import SyntheticSpec
from hivedata.train.config import fill_defaults, parse_args
from hivedata.train.schedule import lr_lambda
from tests.support.buckets import dataset_bucket

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SPEC = SyntheticSpec(num_classes=4, train_per_class=24, val_per_class=4, seed=3, min_short_side=48,
                     max_short_side=80)
TRAIN_SAMPLES = SPEC.num_classes * SPEC.train_per_class  # 96: 12 batches of 8, 6 global epochs of 16


@pytest.fixture(scope="module")
def data_bucket(gcs_emulator) -> str:
    return dataset_bucket(gcs_emulator, "trainer-state", SPEC)


def small_args(bucket: str, run_id: str, *flags: str):
    """train.py's flags for a tiny, fast configuration on the test bucket (each peer on loopback)."""
    args = parse_args(["--bucket", bucket, "--run_id", run_id, "--arch", "resnet18", "--image_size", "32",
                       "--batch_size", "8", "--target_batch_size", "16", "--warmup_epochs", "0.25",
                       "--matchmaking_time", "1", "--averaging_timeout", "10", "--val_batches", "1",
                       "--val_every", "1000", "--num_workers", "1", "--backend", "native", "--device", "cpu",
                       "--no_progress", *flags])
    return fill_defaults(args, embedded=True)


def trainer(bucket: str, run_id: str, *flags: str):
    from hivedata.train.trainer import Trainer

    return Trainer(small_args(bucket, run_id, *flags), loopback=True)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and BN running statistics (what training and averaging change), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def momentum(t) -> list[torch.Tensor]:
    return [t.opt.opt.state[p]["momentum_buffer"].clone() for g in t.opt.opt.param_groups for p in g["params"]
            if "momentum_buffer" in t.opt.opt.state[p]]


def train_until_next_global_epoch(t, max_steps: int = 200) -> int:
    """Steps a Trainer's optimizer until its global epoch advances; returns the local steps it took."""
    start = t.opt.local_epoch
    t.model.train()
    steps = 0
    while steps < max_steps:
        for images, labels in t.train_loader:
            torch.nn.functional.cross_entropy(t.model(images), labels).backward()
            t.opt.step()
            t.opt.zero_grad()
            steps += 1
            if t.opt.local_epoch > start:
                return steps
    raise AssertionError(f"the global epoch did not advance in {max_steps} steps")


def test_late_joiner_downloads_the_swarms_exact_state(data_bucket):
    a = trainer(data_bucket, "late-join", "--epochs", "0.5")
    try:
        a.run()  # alone: 3 global epochs
        assert a.opt.local_epoch == 3
        b = trainer(data_bucket, "late-join", "--epochs", "0.5", "--seed", "5")  # found through the registry
        try:
            assert any(not torch.equal(v, weights(a.model)[k]) for k, v in weights(b.model).items())
            assert b.opt.local_epoch == 0
            b.restore()  # what run() does before the first step: load_state_from_peers
            assert b.opt.local_epoch == a.opt.local_epoch == 3
            assert_same_weights(weights(b.model), weights(a.model))  # parameters and BN statistics
            mine, theirs = momentum(b), momentum(a)
            assert len(mine) == len(theirs) > 0 and all(torch.equal(x, y) for x, y in zip(mine, theirs, strict=True))
            assert b.opt.opt.param_groups[0]["lr"] == pytest.approx(a.opt.opt.param_groups[0]["lr"])
        finally:
            b.close()
    finally:
        a.close()


def test_resume_restores_epoch_lr_loader_position_and_weights(data_bucket, tmp_path):
    ck = str(tmp_path / "ck")
    a = trainer(data_bucket, "resume-a", "--epochs", "0.5", "--checkpoint_dir", ck)
    try:
        a.run()  # 3 global epochs = 6 of the epoch's 12 batches, then a checkpoint
        saved_epoch, saved_lr = a.opt.local_epoch, a.opt.opt.param_groups[0]["lr"]
        saved_loader, saved_weights, saved_momentum = a.train_loader.state_dict(), weights(a.model), momentum(a)
    finally:
        a.close()
    assert saved_epoch == 3 and saved_loader["position"] == 6 and saved_loader["epoch"] == 0

    # a new process would get a new peer id (no --identity_path) and, here, another init seed: all comes from disk
    b = trainer(data_bucket, "resume-b", "--epochs", "0.5", "--checkpoint_dir", ck, "--resume", "--seed", "9")
    try:
        assert any(not torch.equal(v, saved_weights[k]) for k, v in weights(b.model).items())
        b.restore()
        assert b.opt.local_epoch == saved_epoch
        assert b.opt.opt.param_groups[0]["lr"] == pytest.approx(saved_lr)
        assert b.train_loader.state_dict() == saved_loader  # same data order (seed) and position
        assert_same_weights(weights(b.model), saved_weights)
        assert all(torch.equal(x, y) for x, y in zip(momentum(b), saved_momentum, strict=True))

        # the next batch is the one the first run would have read next
        from hivedata.loader.loader import Loader

        with Loader(f"gs://{data_bucket}/train", batch_size=8, train=True, image_size=32, backend="native",
                    seed=saved_loader["seed"], workers=1) as reference:
            reference.load_state_dict(saved_loader)
            want_images, want_labels = next(iter(reference))
        got_images, got_labels = next(iter(b.train_loader))
        assert torch.equal(got_labels, want_labels) and torch.equal(got_images, want_images)

        # and it carries on where the first run stopped: the schedule continues from the restored epoch
        train_until_next_global_epoch(b)
        assert b.opt.local_epoch == saved_epoch + 1
        warmup = 0.25 * TRAIN_SAMPLES / 16
        expected = b.args.lr * lr_lambda(warmup_epochs=warmup, total_epochs=b.total_global_epochs)(saved_epoch + 1)
        assert b.opt.opt.param_groups[0]["lr"] == pytest.approx(expected)
    finally:
        b.close()


def test_resume_without_a_checkpoint_starts_fresh(data_bucket, tmp_path, caplog):
    t = trainer(data_bucket, "resume-none", "--checkpoint_dir", str(tmp_path / "empty"), "--resume")
    try:
        t.restore()
        assert t.opt.local_epoch == 0 and t.train_loader.state_dict()["position"] == 0
    finally:
        t.close()
    assert "no loadable checkpoint" in caplog.text


def test_training_over_packed_shards_with_block_shuffle_and_a_disk_cache(data_bucket, tmp_path):
    from hivedata.sources.shards import ShardIndex
    from hivedata.tools.pack import pack

    pack(f"gs://{data_bucket}/train", f"gs://{data_bucket}/packed", shard_size=256 * 1024, progress=False,
         log=lambda s: None)
    t = trainer(data_bucket, "shards", "--train_prefix", "packed/train.index.npz", "--shuffle", "block",
                "--block_size", "8", "--cache_dir", str(tmp_path / "cache"), "--checkpoint_dir", str(tmp_path / "ck"))
    try:
        assert isinstance(t.train_loader.index, ShardIndex) and len(t.train_loader.index) == TRAIN_SAMPLES
        assert t.train_loader.index.classes == t.val_loader.index.classes
        train_until_next_global_epoch(t)
        t.train_loader.cache.flush()  # the cache writes runs of many samples: up to 5 s after they were fetched
        st = t.train_loader.stats()
        assert st["skipped"] == 0 and st["gets"] * 3 <= st["batches_submitted"] * 8  # a batch = one or two runs
        assert st["cache"]["puts"] > 0
        assert t.train_loader.state_dict()["order"].startswith("block:8:")
        assert 0 <= t.validate()["val_top1"] <= 1
    finally:
        t.close()


# -- a peer killed mid-run -----------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line still being written
            pass
    return out


def _tail(p: subprocess.Popen, n: int = 3000) -> str:
    return Path(p.log).read_text()[-n:]


def _wait(cond, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a peer exited early ({p.returncode}): {_tail(p)}\n"
                                     + "\n".join(_tail(q, 1500) for q in procs if q is not p))
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: " + "\n".join(_tail(q, 1500) for q in procs))


def _peer(bucket: str, tmp_path: Path, name: str, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "--bucket", bucket, "--embedded_peer", "--run_id", "kill",
           "--arch", "resnet18", "--image_size", "32", "--batch_size", "16", "--target_batch_size", "256",
           "--epochs", "10000", "--warmup_epochs", "1", "--matchmaking_time", "1.5", "--averaging_timeout", "8",
           "--val_every", "1000", "--val_batches", "1", "--num_workers", "1", "--backend", "native",
           "--metrics", str(tmp_path / f"{name}.jsonl"), *flags]
    log = tmp_path / f"{name}.log"  # a file, not a pipe: a full pipe would block the peer's logging
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ), stdout=f, stderr=subprocess.STDOUT, text=True)
    p.log = log
    return p


def test_killing_a_peer_mid_run_leaves_the_other_training(data_bucket, tmp_path):
    from google.cloud import storage

    from hivedata.train.checkpoint import CheckpointStore

    a = _peer(data_bucket, tmp_path, "a", "--max_minutes", "4", "--wait_peers", "2", "--checkpoint_dir",
              str(tmp_path / "ck"))
    b = None
    try:
        registry = storage.Client().bucket(data_bucket)
        _wait(lambda: list(registry.list_blobs(prefix="kill/peers/")), 90, "peer a's registry entry", [a])
        b = _peer(data_bucket, tmp_path, "b")
        # both train together: a's optimizer reports a round averaged with 2 peers
        _wait(lambda: any(r.get("averaged_with") == 2 for r in _rows(tmp_path / "a.jsonl")), 120,
              "a round averaged by both peers", [a, b])
        killed_at = max(r["global_epoch"] for r in _rows(tmp_path / "a.jsonl"))
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=30)
        # a keeps making global epochs on its own, its rounds now averaged by itself alone
        _wait(lambda: max(r["global_epoch"] for r in _rows(tmp_path / "a.jsonl")) >= killed_at + 3, 120,
              "a's progress after b died", [a])
        alone = [r["averaged_with"] for r in _rows(tmp_path / "a.jsonl")
                 if r["global_epoch"] > killed_at + 1 and "averaged_with" in r]
        reached = max(r["global_epoch"] for r in _rows(tmp_path / "a.jsonl"))
        a.send_signal(signal.SIGTERM)  # as on a preempted VM: a checkpoints, then leaves
        a.wait(timeout=120)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert alone and alone[-1] == 1
    assert a.returncode == 128 + signal.SIGTERM, _tail(a)
    state = CheckpointStore(str(tmp_path / "ck")).load("latest")
    assert state is not None and state["local_epoch"] >= reached
