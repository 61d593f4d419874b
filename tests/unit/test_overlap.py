"""train.py's overlap flags resolve to hivemind's delayed-update settings, per device; SwarmOptimizer reads a
delayed round's group size once the round has finished."""

from __future__ import annotations

import pytest
import torch

from hivedata.train.config import parse_args
from hivedata.train.overlap import resolve
from hivedata.train.swarm_optimizer import SwarmOptimizer

CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


def test_auto_delays_updates_on_cuda_only():
    on_gpu = resolve("auto", "auto", "auto", CUDA)
    assert on_gpu.delay_grad_averaging and on_gpu.delay_optimizer_step and on_gpu.offload_optimizer
    for device in (CPU, MPS):
        off = resolve("auto", "auto", "auto", device)
        assert not off.delay_grad_averaging and not off.delay_optimizer_step
        assert off.offload_optimizer and off.delay_state_averaging  # hivemind's own defaults stay


def test_explicit_settings_win_over_the_device():
    assert resolve("on", "auto", "auto", CPU).delay_grad_averaging
    assert not resolve("off", "auto", "auto", CUDA).delay_grad_averaging
    assert not resolve("auto", "auto", "off", CUDA).delay_state_averaging
    no_offload = resolve("auto", "off", "auto", CUDA)  # auto gives way to an explicit offload off
    assert not no_offload.offload_optimizer and not no_offload.delay_grad_averaging


def test_delayed_updates_without_offload_is_refused():
    with pytest.raises(ValueError, match="offloaded"):
        resolve("on", "off", "auto", CUDA)
    with pytest.raises(SystemExit):
        parse_args(["--delayed_updates", "on", "--offload_optimizer", "off"])


def test_kwargs_are_hivemind_optimizer_arguments():
    kwargs = resolve("on", "auto", "auto", CPU).kwargs()
    assert kwargs == {"offload_optimizer": True, "delay_optimizer_step": True, "delay_grad_averaging": True,
                      "delay_state_averaging": True}
    assert "gradient averaging" not in resolve("off", "auto", "auto", CPU).describe()
    assert "gradient averaging" in resolve("on", "auto", "auto", CPU).describe()


class _Round:
    """A gradient round's StepControl as SwarmOptimizer sees it: done() and the gathered peers."""

    def __init__(self, peers: int) -> None:
        self.peers, self.finished = peers, False

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> dict:
        return {i: None for i in range(self.peers)}


def test_delayed_rounds_are_recorded_when_they_finish_oldest_first():
    opt = SwarmOptimizer.__new__(SwarmOptimizer)  # only the bookkeeping; no DHT needed
    opt._parent_pid = None  # hivemind's __del__ checks it: this object never started anything to shut down
    opt.last_group_size, opt.group_sizes, opt._running = 1, [], []
    first, second = _Round(3), _Round(2)
    opt._running += [(4, first), (5, second)]
    second.finished = True
    opt._collect_finished_rounds()
    assert opt.group_sizes == []  # the older round still runs: nothing out of order
    first.finished = True
    opt._collect_finished_rounds()
    assert opt.group_sizes == [(4, 3), (5, 2)] and opt.last_group_size == 2 and opt._running == []
