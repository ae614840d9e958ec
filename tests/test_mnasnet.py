"""MnasNet-B1 (arXiv:1807.11626) as torchvision builds it: structure and BatchNorm momentum equal to torchvision's
at every width, the stem scaled with the width (torchvision's version 2). Logits parity is in test_parity.py."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.mnasnet import MNASNet as TorchvisionMNASNet

import archlab
from archlab.analysis import stage_trace
from helpers import count_params


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def norm_settings(model: nn.Module) -> list[tuple[float, float]]:
    return [(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name, width", [("mnasnet0_5", 0.5), ("mnasnet0_75", 0.75), ("mnasnet1_0", 1.0),
                                         ("mnasnet1_3", 1.3), (None, 0.35), (None, 2.0)])
def test_structure_equals_torchvision_at_any_width(name: str | None, width: float) -> None:
    with torch.device("meta"):
        if name:
            ref, ours = torchvision.models.get_model(name), archlab.create_model(name)
        else:  # a width torchvision registers no model for
            ref, ours = TorchvisionMNASNet(width), archlab.create_model("mnasnet1_0", width_mult=width)
    assert shapes(ours) == shapes(ref)
    if name:
        assert count_params(ours) == archlab.model_card(name).params
    # TF's decay 0.9997 as PyTorch momentum, on every norm: a wrong momentum only shows in training.
    assert norm_settings(ours) == norm_settings(ref)
    assert all(m == pytest.approx(0.0003) for _, m in norm_settings(ours))


@pytest.mark.parametrize("name, stem, separable", [("mnasnet0_5", 16, 8), ("mnasnet1_0", 32, 16),
                                                   ("mnasnet1_3", 40, 24)])
def test_stem_scales_with_the_width(name: str, stem: int, separable: int) -> None:
    # torchvision's version 2: 32 * alpha and 16 * alpha, to multiples of 8 (never more than 10% down). Its first
    # release kept 32 and 16 at every width (checkpoints of that version do not fit these models).
    with torch.device("meta"):
        model = archlab.create_model(name)
    assert (model.layers[0].out_channels, model.layers[6].out_channels) == (stem, separable)
    assert model.num_features == 1280  # the head is never scaled


def test_stages_and_features() -> None:
    # Six stages of inverted residuals (3, 3, 3, 2, 4, 1 blocks), merged by resolution in the trace.
    assert [s.blocks for s in stage_trace("mnasnet1_0").stages[2:-1]] == [3, 3, 3 + 2, 4 + 1]
    extractor = archlab.create_model("mnasnet1_0", features_only=True).eval()
    assert extractor.channels == [16, 24, 40, 96, 1280] and extractor.reductions == [2, 4, 8, 16, 32]


def test_bad_width_is_named() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="width_mult must be a number > 0"):
            archlab.create_model("mnasnet1_0", width_mult=bad)
    for bad in ("1.0", True, float("nan")):  # refused by the registry or the builder, naming width_mult either way
        with pytest.raises(ValueError, match="width_mult"):
            archlab.create_model("mnasnet1_0", width_mult=bad)
