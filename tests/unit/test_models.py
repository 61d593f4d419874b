"""hivedata.train.models: torchvision-compatible ResNet-18/50 layout, init, forward, param groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hivedata.train.models import BasicBlock, Bottleneck, build_model, param_groups, resnet18, resnet50

GOLDEN = Path(__file__).parent / "golden"
# torchvision's published numbers: (state_dict entries, parameter tensors, total parameter count)
EXPECTED = {"resnet50": (320, 161, 25_557_032), "resnet18": (122, 62, 11_689_512)}
ARCHS = sorted(EXPECTED)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {arch: build_model(arch, 1000) for arch in ARCHS}


def _layout(model: nn.Module) -> list[str]:
    """One 'name shape' line per state_dict entry; a 0-d tensor's shape is written '()'."""
    return [f"{k} {','.join(map(str, v.shape)) or '()'}" for k, v in model.state_dict().items()]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_torchvision_golden(models: dict[str, nn.Module], arch: str) -> None:
    golden = (GOLDEN / f"{arch}_state_dict.txt").read_text().splitlines()
    assert _layout(models[arch]) == golden


@pytest.mark.parametrize("arch", ARCHS)
def test_counts_match_torchvision(models: dict[str, nn.Module], arch: str) -> None:
    entries, tensors, total = EXPECTED[arch]
    model = models[arch]
    assert len(model.state_dict()) == entries
    assert len(list(model.parameters())) == tensors
    assert sum(p.numel() for p in model.parameters()) == total
    golden = (GOLDEN / f"{arch}_state_dict.txt").read_text().splitlines()
    assert len(golden) == entries
    shapes = [line.split()[1] for line in golden if not line.split()[0].endswith(BUFFERS)]
    assert sum(math.prod(int(d) for d in s.split(",")) for s in shapes) == total


def test_bottleneck_strides_on_the_3x3_conv(models: dict[str, nn.Module]) -> None:
    block = models["resnet50"].layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.downsample[0].stride == (2, 2)
    assert models["resnet50"].layer1[0].downsample is not None  # 64 -> 256 projection, stride 1
    assert models["resnet18"].layer1[0].downsample is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_shape(arch: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_train_step_runs_backward() -> None:
    model = resnet18(num_classes=5)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert model.conv1.weight.grad is not None and model.layer4[1].bn2.weight.grad is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_init_and_zero_init_residual(models: dict[str, nn.Module], arch: str) -> None:
    model = models[arch]
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == (16 if arch == "resnet50" else 8)
    last = {id(b.last_bn) for b in blocks}
    for b in blocks:
        assert torch.count_nonzero(b.last_bn.weight) == 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.count_nonzero(m.bias) == 0
            if id(m) not in last:
                assert torch.all(m.weight == 1)
    conv = model.layer3[0].conv2  # kaiming_normal_ fan_out relu: std = sqrt(2 / (out_channels * k * k))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)


def test_zero_init_residual_can_be_disabled() -> None:
    model = build_model("resnet18", 10, zero_init_residual=False)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_param_groups(models: dict[str, nn.Module]) -> None:
    model = models["resnet50"]
    decay, no_decay = param_groups(model, 5e-5)
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert "fc.bias" in {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) == 54 and len(no_decay["params"]) == 107  # 53 convs + fc.weight; 53 BNs x2 + fc.bias
    torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)  # accepted by an optimizer


def test_load_state_dict_round_trip_strict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = resnet50(num_classes=7)
    src.train()(torch.randn(2, 3, 32, 32))  # move BN running stats and num_batches_tracked off their defaults
    path = tmp_path / "ckpt.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    dst = build_model("resnet50", 7)
    result = dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


def test_build_model_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="resnet34"):
        build_model("resnet34", 10)
