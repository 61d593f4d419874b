"""Learning-rate schedule over hivemind's global epoch: linear warmup, then cosine or polynomial decay.

hivemind.Optimizer steps its scheduler once per global epoch (one swarm-wide optimizer step of
``target_batch_size`` samples) until ``scheduler.last_epoch == optimizer.local_epoch``, so the multiplier
below is a function of the global epoch, not of this peer's local step count. A peer that joins late
catches up by stepping the scheduler to the swarm's epoch. ``decay="constant"`` keeps 1.0 after warmup
(final_lr_fraction and power are then unused).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["DECAYS", "lr_lambda", "make_scheduler", "scheduler_factory"]

DECAYS = ("cosine", "poly", "constant")


def _check(warmup_epochs: float, total_epochs: float, decay: str, power: float, final_lr_fraction: float) -> None:
    for name, value in (("warmup_epochs", warmup_epochs), ("total_epochs", total_epochs), ("power", power),
                        ("final_lr_fraction", final_lr_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; expected one of {list(DECAYS)}")
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if warmup_epochs >= total_epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must be smaller than total_epochs ({total_epochs})")
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    if not 0 <= final_lr_fraction <= 1:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction}")


def lr_lambda(*, warmup_epochs: float, total_epochs: float, decay: str = "cosine", power: float = 2.0,
              final_lr_fraction: float = 0.0) -> Callable[[int], float]:
    """Base-LR multiplier as a function of the global epoch: warmup to 1, decay to final_lr_fraction, then flat."""
    _check(warmup_epochs, total_epochs, decay, power, final_lr_fraction)
    warmup, total, final = float(warmup_epochs), float(total_epochs), float(final_lr_fraction)

    def multiplier(epoch: int) -> float:
        e = max(float(epoch), 0.0)
        if e < warmup:
            # linear from 0 (at epoch -1) to 1 (at epoch == warmup): the first global step already moves the weights
            return (e + 1.0) / (warmup + 1.0)
        if decay == "constant":
            return 1.0
        if e >= total:
            return final
        progress = (e - warmup) / (total - warmup)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else (1.0 - progress) ** power
        return final + (1.0 - final) * shape

    return multiplier


def make_scheduler(optimizer: torch.optim.Optimizer, *, warmup_epochs: float, total_epochs: float,
                   decay: str = "cosine", power: float = 2.0, final_lr_fraction: float = 0.0) -> LambdaLR:
    """A LambdaLR applying lr_lambda(...) to every param group of optimizer."""
    return LambdaLR(optimizer, lr_lambda(warmup_epochs=warmup_epochs, total_epochs=total_epochs, decay=decay,
                                         power=power, final_lr_fraction=final_lr_fraction))


def scheduler_factory(*, warmup_epochs: float, total_epochs: float, decay: str = "cosine", power: float = 2.0,
                      final_lr_fraction: float = 0.0) -> Callable[[torch.optim.Optimizer], LambdaLR]:
    """make_scheduler as a callable of the optimizer (hivemind.Optimizer's scheduler=); arguments checked now."""
    kwargs = dict(warmup_epochs=warmup_epochs, total_epochs=total_epochs, decay=decay, power=power,
                  final_lr_fraction=final_lr_fraction)
    _check(warmup_epochs, total_epochs, decay, power, final_lr_fraction)

    def factory(optimizer: torch.optim.Optimizer) -> LambdaLR:
        return make_scheduler(optimizer, **kwargs)

    return factory
