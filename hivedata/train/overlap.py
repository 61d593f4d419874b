"""Overlapping averaging with compute: which of hivemind's delayed updates a peer uses, from train.py's flags.

hivemind.Optimizer blocks the training thread in ``step()`` at the end of every global epoch: matchmaking, an
all-reduce of the gradients (~50 MB in fp16 for ResNet-50), then the optimizer step. Its delayed updates move
that work to the background:

- ``offload_optimizer``: the optimizer and its state live in host memory (a copy of the parameters there);
  needed by the two below. hivemind turns it on by default for a model's parameters.
- ``delay_optimizer_step``: the optimizer step runs in a background thread; its result is applied to the model
  at a later ``step()``.
- ``delay_grad_averaging``: the gradient all-reduce runs in the background too; the peer goes on computing the
  next epoch's gradients meanwhile.
- ``delay_state_averaging``: parameters and BatchNorm statistics are averaged in the background (hivemind's
  default).

The price is one step of staleness: the gradients of global epoch t+1 are computed on the parameters of epoch
t-1, because the update from epoch t lands while they are being computed. hivemind's collaborative-training
examples run ResNet and ALBERT this way; at large batches the effect on accuracy is small, and the accelerator
stops idling while peers average. Where compute and averaging share the same CPU cores (a CPU peer) there is
nothing to overlap with, so ``auto`` turns the delays on only on CUDA.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import torch

CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Overlap:
    """The hivemind.Optimizer keyword arguments that decide what runs in the background."""

    offload_optimizer: bool
    delay_optimizer_step: bool
    delay_grad_averaging: bool
    delay_state_averaging: bool

    def kwargs(self) -> dict[str, bool]:
        """As keyword arguments of hivemind.Optimizer."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the log: which parts run in the background."""
        parts = [name for name, on in (("gradient averaging", self.delay_grad_averaging),
                                       ("optimizer step", self.delay_optimizer_step),
                                       ("state averaging", self.delay_state_averaging)) if on]
        where = "host memory" if self.offload_optimizer else "the model's device"
        return (f"in the background: {', '.join(parts) if parts else 'nothing'}; optimizer state in {where}")


def resolve(delayed_updates: str, offload_optimizer: str, delay_state_averaging: str,
            device: torch.device) -> Overlap:
    """The settings for --delayed_updates, --offload_optimizer and --delay_state_averaging on this device.

    auto: delayed updates on CUDA only; the optimizer offloaded (hivemind's default) unless asked not to.
    Delayed updates need the offloaded optimizer, so asking for both on and off is an error.
    """
    for flag, value in (("--delayed_updates", delayed_updates), ("--offload_optimizer", offload_optimizer),
                        ("--delay_state_averaging", delay_state_averaging)):
        if value not in CHOICES:
            raise ValueError(f"{flag} must be one of {CHOICES}, got {value!r}")
    delayed = delayed_updates == "on" or (delayed_updates == "auto" and device.type == "cuda")
    if delayed and offload_optimizer == "off":
        if delayed_updates == "on":
            raise ValueError("--delayed_updates on needs the optimizer offloaded: drop --offload_optimizer off")
        delayed = False  # auto gives way to an explicit --offload_optimizer off
    return Overlap(offload_optimizer=offload_optimizer != "off", delay_optimizer_step=delayed,
                   delay_grad_averaging=delayed, delay_state_averaging=delay_state_averaging != "off")


def from_args(args: argparse.Namespace, device: torch.device) -> Overlap:
    """resolve() for train.py's parsed flags (older namespaces without the flags: auto)."""
    return resolve(getattr(args, "delayed_updates", "auto"), getattr(args, "offload_optimizer", "auto"),
                   getattr(args, "delay_state_averaging", "auto"), device)
