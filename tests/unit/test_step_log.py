"""The training loop's running loss: summed on the device, read back only when a row is written."""

from __future__ import annotations

import math

import torch

from hivedata.train.step_log import RunningLoss, default_log_every


def test_the_mean_covers_the_steps_since_the_last_take_and_stays_a_tensor_until_then():
    r = RunningLoss()
    for v in (1.0, 2.0, 6.0):
        r.add(torch.tensor(v, requires_grad=True) * 1, samples=8)
        assert isinstance(r.total, torch.Tensor) and not r.total.requires_grad  # no .item(), no graph kept
    mean, rate = r.take()
    assert mean == 3.0 and rate > 0
    r.add(torch.tensor(5.0), samples=8)
    assert r.take()[0] == 5.0  # a new window
    assert math.isnan(r.take()[0])  # nothing added since


def test_log_every_defaults_to_every_step_off_cuda_and_sparser_on_cuda():
    assert default_log_every(torch.device("cpu"), None) == 1
    assert default_log_every(torch.device("cuda"), None) == 20
    assert default_log_every(torch.device("cuda"), 5) == 5
