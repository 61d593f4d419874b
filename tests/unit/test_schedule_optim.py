"""LR schedule over global epochs, LARS, and the optimizer/scheduler factories handed to hivemind.Optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hivedata.train.models import param_groups
from hivedata.train.optim import LARS, optimizer_factory
from hivedata.train.schedule import lr_lambda, make_scheduler, scheduler_factory

# -- schedule -------------------------------------------------------------------------------------------------


def test_cosine_key_points():
    f = lr_lambda(warmup_epochs=10, total_epochs=110, final_lr_fraction=0.1)
    assert 0 < f(0) <= 0.1  # ~0, but the first global step already moves the weights
    assert f(5) == pytest.approx(6 / 11)  # mid-warmup: about half
    assert [f(e) < f(e + 1) for e in range(10)] == [True] * 10
    assert f(10) == 1.0
    assert f(60) == pytest.approx((1 + 0.1) / 2)  # halfway through the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(111) == f(500) == pytest.approx(0.1)  # constant after the end


def test_decay_is_monotonic_and_continuous():
    for decay in ("cosine", "poly"):
        f = lr_lambda(warmup_epochs=3, total_epochs=50, decay=decay, final_lr_fraction=0.05)
        values = [f(e) for e in range(3, 60)]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), decay
        assert values[0] == 1.0 and values[-1] == pytest.approx(0.05)
        assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) < 0.1  # no jumps


def test_poly_variant():
    f = lr_lambda(warmup_epochs=0, total_epochs=100, decay="poly", power=2.0)
    assert f(0) == 1.0  # no warmup
    assert f(50) == pytest.approx(0.25)
    assert f(75) == pytest.approx(0.0625)
    assert f(100) == 0.0
    lin = lr_lambda(warmup_epochs=0, total_epochs=100, decay="poly", power=1.0, final_lr_fraction=0.2)
    assert lin(50) == pytest.approx(0.6)
    const = lr_lambda(warmup_epochs=4, total_epochs=10, decay="constant")
    assert const(4) == const(10) == const(1000) == 1.0


def test_fractional_warmup():
    f = lr_lambda(warmup_epochs=2.5, total_epochs=20)
    assert f(0) == pytest.approx(1 / 3.5) and f(2) == pytest.approx(3 / 3.5)
    assert f(3) < 1.0  # already decaying
    assert f(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5 / 17.5)))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(warmup_epochs=-1, total_epochs=10), "warmup_epochs must be >= 0"),
    (dict(warmup_epochs=0, total_epochs=0), "total_epochs must be positive"),
    (dict(warmup_epochs=10, total_epochs=10), "smaller than total_epochs"),
    (dict(warmup_epochs=1, total_epochs=10, decay="step"), "unknown decay 'step'"),
    (dict(warmup_epochs=1, total_epochs=10, decay="poly", power=0), "power must be positive"),
    (dict(warmup_epochs=1, total_epochs=10, final_lr_fraction=1.5), r"final_lr_fraction must be in \[0, 1\]"),
    (dict(warmup_epochs=float("nan"), total_epochs=10), "warmup_epochs must be a finite number"),
    (dict(warmup_epochs=1, total_epochs="10"), "total_epochs must be a finite number"),
])
def test_schedule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_lambda(**kwargs)
    with pytest.raises(ValueError, match=match):
        scheduler_factory(**kwargs)  # eagerly, before hivemind calls it


def test_lambdalr_integration_over_global_epochs():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.8, momentum=0.9)
    kw = dict(warmup_epochs=4, total_epochs=20, final_lr_fraction=0.0)
    sched = scheduler_factory(**kw)(opt)
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    f = lr_lambda(**kw)
    seen = []
    for epoch in range(25):
        seen.append(opt.param_groups[0]["lr"])
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.8 * f(epoch)] * 2)
        opt.step()
        sched.step()
    assert seen[4] == pytest.approx(0.8) and seen[20:] == [0.0] * 5
    # hivemind catches a late joiner up by stepping until _step_count > local_epoch: the lr lands on f(epoch)
    late = make_scheduler(torch.optim.SGD(model.parameters(), lr=0.8), **kw)
    while late._step_count <= 12:
        late.optimizer.step()
        late.step()
    assert late.last_epoch == 12 and late.get_last_lr() == pytest.approx([0.8 * f(12)])


# -- LARS -----------------------------------------------------------------------------------------------------


def _pair(seed: int = 0) -> tuple[nn.Parameter, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(8, 5, generator=g)), nn.Parameter(torch.randn(5, generator=g))


def test_lars_reduces_a_quadratic_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(64, 6)
    y = x @ torch.randn(6, 1)
    # eta*lr bounds each decayed tensor's relative step (1% here); BN and biases take plain SGD steps of lr
    opt = optimizer_factory("lars", lr=0.1, weight_decay=1e-4, eta=0.1)(param_groups(model, 1e-4))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
    assert losses[-1] < 0.1 * losses[0]


def test_trust_ratio_only_on_decayed_params():
    w, b = _pair()
    gw, gb = torch.randn_like(w) * 3, torch.randn_like(b) * 3
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, wd, eta = 0.5, 1e-2, 1e-3
    opt = LARS([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr, momentum=0.0,
               eta=eta)
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    ratio = eta * w0.norm() / (gw.norm() + wd * w0.norm())
    assert 0 < ratio < 0.01  # a real rescaling, far from 1
    torch.testing.assert_close(w.detach() - w0, -lr * ratio * (gw + wd * w0))
    torch.testing.assert_close(b.detach() - b0, -lr * gb)  # BN/bias: plain SGD step
    # with momentum the second step adds the scaled first step times momentum
    opt2 = LARS([{"params": [w], "weight_decay": wd}], lr=lr, momentum=0.9, eta=eta)
    w1 = w.detach().clone()
    w.grad = gw.clone()
    opt2.step()
    d1 = LARS.trust_ratio(w1, gw, wd, eta) * (gw + wd * w1)
    w2 = w.detach().clone()
    opt2.step()
    d2 = LARS.trust_ratio(w2, gw, wd, eta) * (gw + wd * w2)
    torch.testing.assert_close(w.detach() - w2, -lr * (0.9 * d1 + d2))


def test_trust_ratio_is_one_for_zero_gradient_or_weight():
    # hivemind initializes optimizer state with one zero-gradient step: LARS then does what SGD does
    assert float(LARS.trust_ratio(torch.ones(3), torch.zeros(3), 1e-4, 1e-3)) == 1.0
    assert float(LARS.trust_ratio(torch.zeros(3), torch.ones(3), 1e-4, 1e-3)) == 1.0


def test_lars_without_weight_decay_is_sgd():
    w1, b1 = _pair(1)
    w2, b2 = (nn.Parameter(t.detach().clone()) for t in (w1, b1))
    lars = LARS([w1, b1], lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True)
    sgd = torch.optim.SGD([w2, b2], lr=0.1, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        grads = (torch.randn(w1.shape, generator=g), torch.randn(b1.shape, generator=g))
        for p, q, gr in zip((w1, b1), (w2, b2), grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(b1, b2)


def test_lars_validation_and_closure():
    w, _ = _pair()
    for kwargs, match in ((dict(lr=-1), "lr"), (dict(lr=1, eta=0), "eta"), (dict(lr=1, momentum=0, nesterov=True),
                                                                             "nesterov")):
        with pytest.raises(ValueError, match=match):
            LARS([w], **kwargs)
    opt = LARS([w], lr=0.1, weight_decay=1e-4)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() > 0


# -- factories ------------------------------------------------------------------------------------------------


def test_sgd_factory_matches_torch_sgd_exactly():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    mine = optimizer_factory("sgd", lr=0.3, momentum=0.9, weight_decay=1e-3, nesterov=True)(param_groups(a, 1e-3))
    ref = torch.optim.SGD(param_groups(b, 1e-3), lr=0.3, momentum=0.9, weight_decay=1e-3, nesterov=True)
    assert type(mine) is torch.optim.SGD
    x = torch.randn(16, 5)
    for _ in range(3):
        for model, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_factories_are_callables_of_params_or_groups(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    factory = optimizer_factory(name, lr=0.1, weight_decay=5e-5)
    assert callable(factory)
    opt = factory(param_groups(model, 5e-5))  # what hivemind.Optimizer(params=..., optimizer=factory) does
    assert isinstance(opt, LARS if name == "lars" else torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-5, 0.0]
    assert len(factory(list(model.parameters())).param_groups) == 1  # a plain parameter list works too
    sched = scheduler_factory(warmup_epochs=2, total_epochs=10)(opt)
    assert sched.optimizer is opt and opt.param_groups[0]["lr"] == pytest.approx(0.1 / 3)


def test_optimizer_factory_errors():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'; expected one of \['sgd', 'lars'\]"):
        optimizer_factory("adam", lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        optimizer_factory("lars", lr=-0.1)
    with pytest.raises(ValueError):
        optimizer_factory("sgd", lr=0.1, momentum=0.0, nesterov=True)
