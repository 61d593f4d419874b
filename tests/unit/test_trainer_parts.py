"""The Trainer's factories on their own: checkpoints in a tmp dir, model + SwarmOptimizer on CPU with a real
hivemind DHT on loopback (no GCS), how a gradient round's group size is read, the extra local peers' command."""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path

import hivemind
import pytest
import torch
from hivemind.averaging.control import StepControl
from torch import nn

from hivedata.train.checkpoint import CheckpointStore
from hivedata.train.config import fill_defaults, parse_args
from hivedata.train.parts import bn_buffers, build_checkpoints, build_learner, data_seed, pick_device, schedule_length
from hivedata.train.schedule import lr_lambda
from hivedata.train.swarm import peer_seed
from hivedata.train.swarm_optimizer import SwarmOptimizer, leave_swarm, round_group_size

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def flags(*extra: str):
    """train.py's flags with the embedded defaults, a tiny schedule and CPU."""
    args = parse_args(["--bucket", "unused", "--run_id", "parts", "--device", "cpu", "--batch_size", "4",
                       "--target_batch_size", "8", "--epochs", "2", "--warmup_epochs", "0.5", "--lr", "0.2",
                       "--matchmaking_time", "1", "--averaging_timeout", "5", *extra])
    return fill_defaults(args, embedded=True)


class Tiny(nn.Module):
    """A conv + BatchNorm + fc model small enough for a unit test."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_no_checkpoint_dir_means_no_store_and_nothing_to_resume():
    parts = build_checkpoints(flags())
    assert parts.store is None and parts.resume_state is None


def test_resume_loads_the_latest_checkpoint_and_its_data_seed(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save({"loader": {"seed": 7, "position": 2}, "local_epoch": 1}, step=1)
    store.save({"loader": {"seed": 7, "position": 5}, "local_epoch": 3}, step=3)
    parts = build_checkpoints(flags("--checkpoint_dir", str(tmp_path), "--resume"))
    assert isinstance(parts.store, CheckpointStore)
    assert parts.resume_state["local_epoch"] == 3 and parts.resume_state["loader"]["position"] == 5
    assert data_seed(parts.resume_state, "any-peer", 0) == 7  # the resumed order, not this peer's own

    fresh = build_checkpoints(flags("--checkpoint_dir", str(tmp_path)))  # no --resume: the store only
    assert fresh.store is not None and fresh.resume_state is None


def test_resume_with_an_empty_dir_warns_and_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        parts = build_checkpoints(flags("--checkpoint_dir", str(tmp_path / "none"), "--resume"))
    assert parts.resume_state is None and "no loadable checkpoint" in caplog.text


def test_data_seed_without_a_resume_is_the_peers_own():
    assert data_seed(None, "peer-a", 3) == peer_seed("peer-a", 3) != data_seed(None, "peer-b", 3)


# -- model and optimizer -----------------------------------------------------------------------------------------
def test_schedule_length_counts_global_epochs_of_target_batch_size():
    assert schedule_length(flags(), train_samples=32) == (8, 2.0)  # 2 passes x 32 / 8; 0.5 x 32 / 8
    assert schedule_length(flags("--epochs", "0.01"), train_samples=32)[0] == 1  # at least one


def test_pick_device_honours_an_explicit_cpu():
    assert pick_device("cpu") == torch.device("cpu")


def test_learner_builds_a_swarm_optimizer_with_the_schedule_and_trains_a_lone_peer():
    args = flags()
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    learner = build_learner(args, dht=dht, device=torch.device("cpu"), num_classes=3, train_samples=32,
                            model=Tiny())
    try:
        opt = learner.opt
        assert isinstance(opt, SwarmOptimizer) and learner.forward is learner.model  # no --compile on CPU
        assert learner.total_global_epochs == 8 and opt.run_id == "parts"
        assert opt.opt.param_groups[0]["lr"] == pytest.approx(0.2 * lr_lambda(warmup_epochs=2, total_epochs=8)(0))
        assert len(bn_buffers(learner.model)) == 2  # running mean and var: averaged with the weights
        assert StepControl.cancel.__name__ == "_cancel_then_wake"  # the cancel-order fix is installed

        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        steps = 0
        while opt.local_epoch < 2 and steps < 100:
            x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
            nn.functional.cross_entropy(learner.forward(x), y).backward()
            opt.step()
            opt.zero_grad()
            steps += 1
        assert opt.local_epoch == 2, f"no second global epoch in {steps} steps"
        assert opt.group_sizes == [(0, 1), (1, 1)] and opt.last_group_size == 1  # alone: no round, itself only
        assert not torch.equal(before["fc.weight"], learner.model.fc.weight.detach())
        assert opt.opt.param_groups[0]["lr"] == pytest.approx(0.2 * lr_lambda(warmup_epochs=2, total_epochs=8)(2))
    finally:
        leave_swarm(learner.opt, dht)
    assert not dht.is_alive() and not learner.opt.grad_averager.is_alive()


def test_learner_builds_the_arch_for_the_dataset_classes():
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    learner = build_learner(flags("--arch", "resnet18"), dht=dht, device=torch.device("cpu"), num_classes=5,
                            train_samples=40)
    try:
        assert learner.model.fc.out_features == 5
        optimized = sum(p.numel() for g in learner.opt.opt.param_groups for p in g["params"])
        assert optimized == sum(p.numel() for p in learner.model.parameters())
    finally:
        leave_swarm(learner.opt, dht)


# -- group size of a round ---------------------------------------------------------------------------------------
def test_round_group_size_reads_the_gathered_peers():
    finished, failed, pending, cancelled = (concurrent.futures.Future() for _ in range(4))
    finished.set_result({"peer-a": b"", "peer-b": b"", "peer-c": b""})
    failed.set_exception(TimeoutError("no group"))
    cancelled.cancel()
    assert round_group_size(finished) == 3
    assert round_group_size(None) == round_group_size(failed) == round_group_size(pending) == 1
    assert round_group_size(cancelled) == 1


def test_extra_local_peers_run_the_repositorys_train_py():
    from hivedata.tools.embedded import peer_command

    cmd = peer_command(["--peers", "2", "--epochs", "2"], 1, "m.peer1.jsonl", "ck/peer1", 2)
    assert cmd[1].endswith("train.py") and Path(cmd[1]).is_file()
    assert cmd[2:4] == ["--epochs", "2"] and "--peers" not in cmd
    assert cmd[-4:] == ["--metrics", "m.peer1.jsonl", "--checkpoint_dir", "ck/peer1"]
