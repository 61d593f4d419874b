"""CheckpointStore: round trips, best/latest, pruning, damaged files, and SIGKILL in the middle of a save."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from hashlib import sha256
from pathlib import Path

import pytest
import torch

from hivedata.train.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[2]


# -- raw access to the store's files, independent of the code under test ------------------------------
class Raw:
    """Reads, writes, lists and deletes the files under a local directory or gs://bucket/prefix."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.gcs = location.startswith("gs://")
        if self.gcs:
            from google.cloud import storage

            bucket, _, self.prefix = location[len("gs://"):].partition("/")
            self.bucket = storage.Client(project="hivedata").bucket(bucket)

    def read(self, name: str) -> bytes:
        if self.gcs:
            return self.bucket.blob(f"{self.prefix}/{name}").download_as_bytes()
        return Path(self.location, name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        if self.gcs:
            self.bucket.blob(f"{self.prefix}/{name}").upload_from_string(data)
        else:
            Path(self.location, name).write_bytes(data)

    def delete(self, name: str) -> None:
        if self.gcs:
            self.bucket.blob(f"{self.prefix}/{name}").delete()
        else:
            Path(self.location, name).unlink()

    def names(self) -> set[str]:
        if self.gcs:
            return {b.name[len(self.prefix) + 1:] for b in self.bucket.list_blobs(prefix=self.prefix + "/")}
        return set(os.listdir(self.location)) if os.path.isdir(self.location) else set()


@pytest.fixture(params=["local", "gcs"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ckpts")
    return f"gs://{request.getfixturevalue('bucket')}/runs/a"


def training_state(seed: int) -> dict:
    """A small but realistic state: model, optimizer with moments, nested dicts, lists and ints."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "local_epoch": seed,
            "loader": {"epoch": 3, "position": 1234, "seed": seed, "order": [1, 2, {"x": torch.arange(4)}]},
            "args": {"lr": 0.1, "name": "resnet50"}, "best_top1": 0.25}


def assert_same(a, b, where: str = "state") -> None:
    """Deep equality, tensors compared exactly (dtype, shape and values)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
        assert b.device.type == "cpu", where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# -- behaviour -----------------------------------------------------------------------------------------
def test_round_trip(location):
    store = CheckpointStore(location)
    assert store.load() is None and store.load("best") is None and store.latest_step() is None
    state = training_state(7)
    written = store.save(state, step=7, metric=0.5)
    assert written.endswith("ckpt-000000007.pt") and written.startswith("gs://" if "gs://" in location else "/")
    fresh = CheckpointStore(location)
    assert fresh.latest_step() == 7
    assert_same(state, fresh.load())
    assert_same(state, fresh.load("best", map_location=torch.device("cpu")))

    raw = Raw(location)
    pointer = json.loads(raw.read("latest.json"))
    assert pointer["file"] == "ckpt-000000007.pt" and pointer["step"] == 7 and pointer["metric"] == 0.5
    assert pointer["sha256"] == sha256(raw.read("ckpt-000000007.pt")).hexdigest()
    assert abs(pointer["time"] - time.time()) < 60
    assert not [n for n in raw.names() if ".tmp-" in n]


def test_best_and_latest(location):
    store = CheckpointStore(location, keep=5)
    for step, acc in enumerate([0.5, 0.9, 0.7]):
        store.save({"step": step}, step=step, metric=acc)
    store.save({"step": 3}, step=3)  # no metric: best unchanged
    assert store.load()["step"] == 3 and store.latest_step() == 3
    assert store.load("best")["step"] == 1

    losses = CheckpointStore(location.rstrip("/") + "-loss", keep=5)
    for step, loss in enumerate([2.0, 1.0, 1.5, float("nan")]):
        losses.save({"step": step}, step=step, metric=loss, higher_is_better=False)
    assert losses.load("best")["step"] == 1 and losses.load()["step"] == 3
    with pytest.raises(ValueError):
        losses.load("oldest")


def test_prune_keeps_pointed_to_files(location):
    store = CheckpointStore(location, keep=2)
    for step, acc in enumerate([0.1, 0.9, 0.2, 0.3, 0.4, 0.5]):
        store.save({"step": step}, step=step, metric=acc)
    ckpts = {n for n in Raw(location).names() if n.startswith("ckpt-")}
    assert ckpts == {"ckpt-000000001.pt", "ckpt-000000004.pt", "ckpt-000000005.pt"}
    assert store.load("best")["step"] == 1 and store.load()["step"] == 5

    store = CheckpointStore(location, keep=1)
    store.save({"step": 6}, step=6, metric=0.95)  # the new best: the old best may go now
    assert {n for n in Raw(location).names() if n.startswith("ckpt-")} == {"ckpt-000000006.pt"}


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_latest_falls_back_to_previous(location, damage, caplog):
    store = CheckpointStore(location, keep=3)
    first, second = training_state(1), training_state(2)
    store.save(first, step=1, metric=0.9)
    store.save(second, step=2, metric=0.1)
    raw = Raw(location)
    data = raw.read("ckpt-000000002.pt")
    if damage == "truncate":
        raw.write("ckpt-000000002.pt", data[: len(data) // 2])
    elif damage == "delete":
        raw.delete("ckpt-000000002.pt")
    else:  # same length, one byte changed: only the sha256 can tell
        raw.write("ckpt-000000002.pt", data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with caplog.at_level(logging.WARNING, logger="hivedata.train.checkpoint"):
        assert_same(first, CheckpointStore(location).load())
    assert "ckpt-000000002.pt" in caplog.text
    assert_same(first, CheckpointStore(location).load("best"))


def test_everything_damaged_or_missing_gives_none(location, caplog):
    store = CheckpointStore(location)
    assert store.load() is None
    store.save({"x": torch.ones(3)}, step=1)
    raw = Raw(location)
    raw.write("ckpt-000000001.pt", b"not a checkpoint")
    raw.write("latest.json", b"{half a poin")
    with caplog.at_level(logging.WARNING, logger="hivedata.train.checkpoint"):
        assert store.load() is None
    assert "latest.json" in caplog.text and "ckpt-000000001.pt" in caplog.text


def test_no_pointer_uses_newest_intact_file(location):
    store = CheckpointStore(location, keep=5)
    store.save({"step": 1}, step=1)
    store.save({"step": 2}, step=2)
    Raw(location).delete("latest.json")  # as if a writer died between the file and its pointer
    assert store.load()["step"] == 2 and store.latest_step() == 2


# -- SIGKILL in the middle of a save ----------------------------------------------------------------------
CHILD = """
    import os, sys, time
    import torch
    from hivedata.train.checkpoint import CheckpointStore

    if sys.argv[2] == "gcs":  # stop inside the resumable upload: the first 100 MiB chunk is in, the rest is not
        import requests.adapters
        send = requests.adapters.HTTPAdapter.send
        def paused_send(self, request, **kw):
            response = send(self, request, **kw)
            if request.method == "PUT" and "upload_id=" in request.url and response.status_code == 308:
                print("MID-UPLOAD", flush=True)
                time.sleep(600)
            return response
        requests.adapters.HTTPAdapter.send = paused_send

    store = CheckpointStore(sys.argv[1])
    torch.manual_seed(0)
    store.save({"w": torch.randn(1000, 10), "step": 1, "nested": {"n": 1}}, step=1)
    big = {f"t{i}": torch.randn(5_000_000) for i in range(10)}  # 200 MB
    print("SAVING", flush=True)
    store.save(big, step=2)
    print("DONE", flush=True)
"""


def first_child_state() -> dict:
    torch.manual_seed(0)
    return {"w": torch.randn(1000, 10), "step": 1, "nested": {"n": 1}}


def start_child(location: str, kind: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if kind == "gcs":
        assert env.get("STORAGE_EMULATOR_HOST")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), location, kind], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, marker: str) -> None:
    for line in proc.stdout:
        if line.strip() == marker:
            return
    proc.wait()
    pytest.fail(f"child exited ({proc.returncode}) before {marker!r}: {proc.stderr.read()[-3000:]}")


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.slow
def test_sigkill_during_local_write_keeps_previous(tmp_path):
    location = str(tmp_path / "ckpts")
    proc = start_child(location, "local")
    try:
        wait_for_line(proc, "SAVING")
        tmp = Path(location, f"ckpt-000000002.pt.tmp-{proc.pid}")
        deadline = time.monotonic() + 30
        while size(tmp) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert size(tmp) > 0, "the child never started writing the second checkpoint"
    finally:
        kill(proc)
    assert not Path(location, "ckpt-000000002.pt").exists()  # the kill landed mid-write, before the rename
    assert 0 < size(tmp) < 200_000_000  # a partial temp file is left behind
    store = CheckpointStore(location)
    assert store.latest_step() == 1
    assert_same(first_child_state(), store.load())

    store.save({"step": 3}, step=3)  # the next save works and sweeps the dead writer's temp file
    assert not tmp.exists()
    assert store.load() == {"step": 3}


@pytest.mark.slow
def test_sigkill_during_gcs_upload_keeps_previous(bucket):
    location = f"gs://{bucket}/runs/killed"
    proc = start_child(location, "gcs")
    try:
        wait_for_line(proc, "SAVING")
        wait_for_line(proc, "MID-UPLOAD")
    finally:
        kill(proc)
    assert "ckpt-000000002.pt" not in Raw(location).names()  # a partial upload never becomes an object
    store = CheckpointStore(location)
    assert store.latest_step() == 1
    assert_same(first_child_state(), store.load())
