"""What the training loop reports, without a host sync per step: losses summed on their device, read every N steps."""

from __future__ import annotations

import time

import torch


class RunningLoss:
    """Sums detached losses where they live (the GPU on CUDA); reading the mean is the only host sync."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        self.samples = 0
        self._since = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        """Adds one step's loss (no .item(): nothing waits for the device) and its batch size."""
        value = loss.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1
        self.samples += samples

    def take(self) -> tuple[float, float]:
        """(mean loss, samples/s) since the last take, then starts a new window (reads the device once)."""
        now = time.perf_counter()
        mean = float(self.total) / self.count if self.total is not None and self.count else float("nan")
        rate = self.samples / max(now - self._since, 1e-9)
        self.total, self.count, self.samples, self._since = None, 0, 0, now
        return mean, rate


def default_log_every(device: torch.device, flag: int | None) -> int:
    """--log_every, else every step on cpu/mps (a sync there costs nothing) and every 20 steps on CUDA."""
    if flag is not None:
        return flag
    return 20 if device.type == "cuda" else 1
