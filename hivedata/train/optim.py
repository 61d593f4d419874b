"""Optimizers for hivemind.Optimizer's ``optimizer=`` factory: SGD, and LARS for very large batches.

LARS (You, Gitman and Ginsburg, 2017, "Large Batch Training of Convolutional Networks") scales each
parameter tensor's step by a trust ratio ``eta * ||w|| / (||g|| + weight_decay * ||w||)`` so that every
layer moves by a similar fraction of its norm. As usual, parameters without weight decay (BatchNorm
weights and biases, see ``models.param_groups``) are not adapted: they get plain momentum SGD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LARS", "OPTIMIZERS", "optimizer_factory"]

OPTIMIZERS = ("sgd", "lars")


class LARS(torch.optim.Optimizer):
    """Momentum SGD with layer-wise adaptive rate scaling for tensors whose weight_decay is non-zero."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, eps: float = 1e-9) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not eta > 0:
            raise ValueError(f"eta (trust coefficient) must be positive, got {eta}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov, eps=eps)
        super().__init__(params, defaults)

    @staticmethod
    def trust_ratio(param: torch.Tensor, grad: torch.Tensor, weight_decay: float, eta: float,
                    eps: float = 1e-9) -> torch.Tensor:
        """eta*||w||/(||g|| + wd*||w|| + eps) as a 0-d float32 tensor; 1 where ||w|| or ||g|| is 0."""
        w_norm = torch.linalg.vector_norm(param, dtype=torch.float32)
        g_norm = torch.linalg.vector_norm(grad, dtype=torch.float32)
        ratio = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if wd != 0:
                    ratio = self.trust_ratio(p, grad, wd, group["eta"], group["eps"])
                    d_p = grad.add(p, alpha=wd).mul_(ratio.to(grad.dtype))
                else:
                    d_p = grad
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(momentum).add_(d_p)
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-lr)
        return loss


def optimizer_factory(name: str, *, lr: float, momentum: float = 0.9, weight_decay: float = 5e-5,
                      nesterov: bool = False, eta: float = 0.001) -> Callable[[Iterable[Any]], torch.optim.Optimizer]:
    """A callable of params or param-group dicts building "sgd" or "lars" (eta is LARS's trust coefficient)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")
    kwargs: dict[str, Any] = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "lars":
        kwargs["eta"] = eta
    cls = LARS if name == "lars" else torch.optim.SGD
    cls([torch.zeros(1, requires_grad=True)], **kwargs)  # check the hyper-parameters now, not inside hivemind

    def factory(params: Iterable[Any]) -> torch.optim.Optimizer:
        return cls(params, **kwargs)

    return factory
