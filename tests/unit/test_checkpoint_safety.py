"""CheckpointStore never runs code from a checkpoint: a crafted pickle is refused by name, old files still load."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from hivedata.errors import HivedataError
from hivedata.train.checkpoint import CheckpointRefusedError, CheckpointStore, plain_state


class RunsCode:
    """Unpickling this calls os.system, which writes `marker` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WritesFile:
    """Unpickling this calls a builtin that creates `marker` (no os.system needed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def old_style_state(seed: int = 0) -> dict:
    """The dict Trainer.checkpoint() wrote before this change: model/optimizer state_dicts, vars(args), loader."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    opt_state = opt.state_dict()
    opt_state["state"]["local_epoch"] = 7  # what hivemind.Optimizer.state_dict() adds
    args = argparse.Namespace(bucket="b", lr=0.1, epochs=90, max_missing=0.01, initial_peer=["/ip4/1.2.3.4"],
                              cache_dir=None, compile=False)
    return {"model": model.state_dict(), "optimizer": opt_state, "local_epoch": 7,
            "loader": {"epoch": 1, "position": 3, "seed": 1 << 62, "num_samples": 96, "batch_size": 8, "shard": 0,
                       "num_shards": 1, "order": "block:64:8:0123456789ab"},
            "args": vars(args), "peer_id": "12D3KooWabc", "best_top1": 0.25, "val_top1": None}


def write_raw(root: Path, step: int, data: bytes, *, pointer: bool = True) -> None:
    """Writes a checkpoint file (and latest.json naming it, with its true sha256) as any writer of the bucket can."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:09d}.pt"
    (root / name).write_bytes(data)
    if pointer:
        (root / "latest.json").write_text(json.dumps({"file": name, "step": step, "metric": None, "time": 0.0,
                                                      "sha256": hashlib.sha256(data).hexdigest()}))


def torch_bytes(obj: object, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("payload", [RunsCode, WritesFile])
def test_a_checkpoint_that_would_run_code_is_refused_by_name_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    root = tmp_path / "ckpts"
    store = CheckpointStore(str(root))
    store.save(old_style_state(), step=1)  # an honest, older checkpoint is there too
    evil = old_style_state(1)
    evil["args"]["lr"] = payload(marker)
    write_raw(root, 2, torch_bytes(evil))  # the pointer's sha256 matches: the store was written, not damaged
    with pytest.raises(CheckpointRefusedError) as info:
        store.load()
    message = str(info.value)
    assert str(root / "ckpt-000000002.pt") in message
    assert ("posix.system" in message or "os.system" in message) if payload is RunsCode else "open" in message
    assert "could run code" in message
    assert isinstance(info.value, HivedataError)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_legacy_and_raw_pickles_with_code_never_run(tmp_path, caplog):
    """Files that are not torch.save zips (the old format, a bare pickle): weights_only refuses them too."""
    marker = tmp_path / "pwned"
    root = tmp_path / "ckpts"
    store = CheckpointStore(str(root), keep=5)
    good = old_style_state()
    store.save(good, step=1)
    write_raw(root, 2, torch_bytes({"x": RunsCode(marker)}, _use_new_zipfile_serialization=False), pointer=False)
    write_raw(root, 3, pickle.dumps({"x": RunsCode(marker)}), pointer=False)
    (root / "latest.json").unlink()  # newest files first: 3, 2, then the good 1
    assert_same(plain_state(good), store.load())
    assert not marker.exists()
    assert "ckpt-000000003.pt" in caplog.text and "ckpt-000000002.pt" in caplog.text


def test_checkpoints_written_by_the_previous_code_still_load(tmp_path):
    """The old save path: torch.save of the state dict as it was (no conversion), pointer with its sha256."""
    root = tmp_path / "ckpts"
    state = old_style_state()
    write_raw(root, 7, torch_bytes(state))
    loaded = CheckpointStore(str(root)).load()
    assert_same(state, loaded)
    assert isinstance(loaded["model"], OrderedDict) and hasattr(loaded["model"], "_metadata")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    model.load_state_dict(loaded["model"])


def test_the_sha256_check_still_comes_first(tmp_path, caplog):
    root = tmp_path / "ckpts"
    store = CheckpointStore(str(root), keep=3)
    store.save({"step": 1}, step=1)
    store.save({"step": 2}, step=2)
    path = root / "ckpt-000000002.pt"
    data = path.read_bytes()
    path.write_bytes(data[:-30] + bytes([data[-30] ^ 1]) + data[-29:])
    assert store.load() == {"step": 1}
    assert "sha256 mismatch" in caplog.text


def test_save_makes_namespace_paths_and_numpy_plain(tmp_path):
    state = {"args": argparse.Namespace(cache=Path("/tmp/c"), lr=np.float32(0.5), n=np.int64(3)),
             "arr": np.arange(4, dtype=np.int32), "nested": [(Path("a"), np.bool_(True))],
             "model": torch.nn.Linear(2, 2).state_dict()}
    store = CheckpointStore(str(tmp_path / "ckpts"))
    store.save(state, step=0)
    loaded = store.load()
    assert loaded["args"] == {"cache": "/tmp/c", "lr": 0.5, "n": 3}
    assert type(loaded["args"]["n"]) is int
    assert torch.equal(loaded["arr"], torch.arange(4, dtype=torch.int32))
    assert loaded["nested"] == [("a", True)]
    assert hasattr(loaded["model"], "_metadata")


def test_plain_state_copies_only_what_changes():
    model = torch.nn.Linear(2, 2).state_dict()
    state = {"model": model, "x": [1, "a", (2.0, None)]}
    assert plain_state(state) is state
    arr = np.zeros(2)
    out = plain_state({"model": model, "a": arr})
    assert out["model"] is model and isinstance(out["a"], torch.Tensor)
    out["a"][0] = 1
    assert arr[0] == 0  # the caller's array is not shared


class Custom:
    """A class of the caller's: pickled by reference, so a weights-only load would refuse it."""


def test_save_refuses_a_state_that_would_not_load(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpts"))
    with pytest.raises(TypeError, match="Custom"):
        store.save({"x": Custom()}, step=1)
    assert not (tmp_path / "ckpts" / "ckpt-000000001.pt").exists()
    assert store.load() is None
