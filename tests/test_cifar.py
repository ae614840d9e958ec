"""CIFAR ResNets, their plain twins and the pre-activation ResNets against what the papers state."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlab
from archlab.models.cifar_resnet import PreActBottleneck
from helpers import count_params

# Published parameter counts for CIFAR-10 (10 classes): He et al. 2015 (arXiv:1512.03385) Table 6 gives
# 0.27M, 0.46M, 0.66M, 0.85M, 1.7M and 19.4M for ResNet-20/32/44/56/110/1202; He et al. 2016 (arXiv:1603.05027)
# Table 3 gives 1.7M and 10.2M for the pre-activation ResNet-164 and ResNet-1001.
PUBLISHED_PARAMS = {
    "cifar_resnet20": 0.27e6,
    "cifar_resnet32": 0.46e6,
    "cifar_resnet44": 0.66e6,
    "cifar_resnet56": 0.85e6,
    "cifar_resnet110": 1.7e6,
    "preact_resnet164": 1.7e6,
    "preact_resnet1001": 10.2e6,
}
RESNETS = [f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)]
PLAINS = [f"cifar_plain{d}" for d in (20, 32, 44, 56, 110)]
PREACTS = ["preact_resnet164", "preact_resnet1001"]


def depth_of(name: str) -> int:
    return int(re.search(r"(\d+)$", name).group(1))


def weighted_layers(model: nn.Module) -> int:
    """Convs and FC layers on the main path; shortcut projections are not counted in the papers' depths."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in name for name, m in model.named_modules()
    )


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_param_count_matches_paper(name: str) -> None:
    params = count_params(archlab.create_model(name, num_classes=10))
    # The papers round to two significant figures; rounding alone puts 1.728M ("1.7M") 1.6% off.
    assert abs(params - PUBLISHED_PARAMS[name]) <= 0.02 * PUBLISHED_PARAMS[name], params
    card = archlab.model_card(name)
    assert card.params == PUBLISHED_PARAMS[name] and card.num_classes == 10


def test_resnet1202_by_depth_override() -> None:
    # Table 6's 1202-layer net (n = 200) is the same row with another depth: 19.4M parameters.
    model = archlab.create_model("cifar_resnet110", num_classes=10, depth=1202)
    assert abs(count_params(model) - 19.4e6) <= 0.02 * 19.4e6
    assert weighted_layers(model) == 1202


@pytest.mark.parametrize("name", RESNETS + PLAINS + PREACTS)
def test_depth_formula(name: str) -> None:
    model = archlab.create_model(name, num_classes=10)
    depth = depth_of(name)
    assert weighted_layers(model) == depth == model.depth
    layers_per_block = 3 if name.startswith("preact") else 2
    n = (depth - 2) // (3 * layers_per_block)
    assert [len(stage) for stage in model.stages] == [n, n, n]


@pytest.mark.parametrize("depth", [0, 2, 21, 165])
def test_depth_not_of_the_form_is_refused(depth: int) -> None:
    name = "preact_resnet164" if depth == 165 else "cifar_resnet20"
    with pytest.raises(ValueError, match="n \\+ 2"):
        archlab.create_model(name, depth=depth)


@pytest.mark.parametrize("resnet, plain", list(zip(RESNETS, PLAINS)))
def test_plain_twin_has_the_same_parameters(resnet: str, plain: str) -> None:
    # Option A shortcuts (subsample + zero channels) are parameter-free: the twins differ only in the wiring.
    a, b = archlab.create_model(resnet), archlab.create_model(plain)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert count_params(a) == count_params(b)


def _silence_residual_branches(model: nn.Module) -> None:
    """Zero the last BN of every block, so each residual branch outputs exactly 0."""
    with torch.no_grad():
        for stage in model.stages:
            for block in stage:
                block.conv2[1].weight.zero_()
                block.conv2[1].bias.zero_()


def test_shortcuts_are_real_in_resnet_and_absent_in_plain() -> None:
    x = torch.randn(2, 3, 32, 32)
    resnet, plain = archlab.create_model("cifar_resnet20").eval(), archlab.create_model("cifar_plain20").eval()
    plain.load_state_dict(resnet.state_dict())
    for model in (resnet, plain):
        _silence_residual_branches(model)
    with torch.no_grad():
        stem = resnet.stem(x)
        got_res, got_plain = resnet.forward_features(x), plain.forward_features(x)
    # Silent branches: a plain net outputs nothing, a ResNet passes its stem output along the option A
    # shortcuts — subsampled by 4 (two stride-2 stages) and zero-padded from 16 to 64 channels.
    assert torch.count_nonzero(got_plain) == 0
    expected = F.pad(stem[:, :, ::4, ::4], (0, 0, 0, 0, 0, 48))
    assert got_res.shape == (2, 64, 8, 8)
    assert torch.equal(got_res, expected) and torch.count_nonzero(expected) > 0


def test_preact_identity_path_is_untouched() -> None:
    # He 2016: with pre-activation, a block whose branch outputs 0 is exactly the identity (no ReLU after the add).
    model = archlab.create_model("preact_resnet164", num_classes=10).eval()
    block = model.stages[1][1]
    assert isinstance(block, PreActBottleneck) and block.shortcut is None
    with torch.no_grad():
        block.conv3.weight.zero_()
        x = torch.randn(2, 128, 16, 16)
        assert torch.equal(block(x), x)
    # Where the shape changes, the shortcut is a 1x1 projection (the only extra parameters).
    assert [type(stage[0].shortcut) for stage in model.stages] == [nn.Conv2d] * 3
    assert [stage[0].shortcut.out_channels for stage in model.stages] == [64, 128, 256]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20", "preact_resnet164"])
def test_cifar_input_gives_cifar10_logits(name: str) -> None:
    model = archlab.create_model(name, num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)
        feats = archlab.create_model(name, features_only=True).eval()(x)
    assert [f.shape[-1] for f in feats] == [32, 16, 8]


def test_default_num_classes_follows_create_model() -> None:
    assert archlab.create_model("cifar_resnet20").fc.out_features == 1000


@pytest.mark.parametrize("name", RESNETS + PLAINS + PREACTS)
def test_card_reports_cifar_results(name: str) -> None:
    card = archlab.model_card(name)
    assert card.input_size == 32 and card.reference is None
    assert card.top1 is None  # no ImageNet result; the CIFAR-10 figure is in the innovation text
    assert card.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-3)
    if name in RESNETS or name in PREACTS:
        assert re.search(r"CIFAR-10 error \d+\.\d+%", card.innovation)


def test_drop_path_only_where_there_is_a_residual_branch() -> None:
    with pytest.raises(ValueError, match="drop_path_rate"):
        archlab.create_model("cifar_plain20", drop_path_rate=0.1)
    model = archlab.create_model("cifar_resnet20", drop_path_rate=0.2)
    rates = [block.drop_path.p for stage in model.stages for block in stage]
    # Stochastic depth (Huang et al. 2016): linear in depth, the full rate at the last block.
    assert rates == pytest.approx([0.2 * (i + 1) / 9 for i in range(9)])
