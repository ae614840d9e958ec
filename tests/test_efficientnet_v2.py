"""EfficientNetV2 (arXiv:2104.00298): structure equal to torchvision's S/M/L, the Fused-MBConv block, EfficientNet's
MBConv reused, the cards' evaluation sizes and preprocessing. Logits parity is in test_parity.py."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import archlab
from archlab.analysis import stage_trace
from archlab.models import efficientnet
from archlab.models.efficientnet_v2 import TABLES, V2_S, FusedMBConv
from helpers import count_params

NAMES = ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_structure_equals_torchvision(name: str) -> None:
    with torch.device("meta"):
        ref = torchvision.models.get_model(name)
        ours = archlab.create_model(name)
    assert shapes(ours) == shapes(ref) and count_params(ours) == archlab.model_card(name).params
    # eps 1e-3 everywhere (a mismatch would only show on trained weights, not in a random-weight parity test).
    norms = {(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms == {(m.eps, m.momentum) for m in ref.modules() if isinstance(m, nn.BatchNorm2d)} == {(1e-3, 0.1)}
    assert ours.classifier[0].p == ref.classifier[0].p
    # Each stage is the block type its table row names, the MBConv being EfficientNet's own class.
    table = TABLES[name[-1]]
    for stage, row in zip(list(ours.features)[1:-1], table.stages):
        expected = FusedMBConv if row.block == "fused" else efficientnet.MBConv
        assert all(type(block) is expected for block in stage)
    for stage, ref_stage in zip(list(ours.features)[1:-1], list(ref.features)[1:-1]):
        assert [type(b).__name__ for b in stage] == [type(b).__name__ for b in ref_stage]


def test_table_4_of_the_paper() -> None:
    # EfficientNetV2-S, Table 4: (operator, stride, channels, layers) after a 24-channel stem, 1280 head.
    assert V2_S.stem == 24 and V2_S.head == 1280
    assert [(s.block, s.expand, s.stride, s.channels, s.layers) for s in V2_S.stages] == [
        ("fused", 1, 1, 24, 2), ("fused", 4, 2, 48, 4), ("fused", 4, 2, 64, 4),
        ("mbconv", 4, 2, 128, 6), ("mbconv", 6, 1, 160, 9), ("mbconv", 6, 2, 256, 15),
    ]
    assert {s.kernel for s in V2_S.stages} == {3}
    model = archlab.create_model("efficientnet_v2_s")
    assert [len(stage) for stage in list(model.features)[1:-1]] == [s.layers for s in V2_S.stages]
    trace = stage_trace("efficientnet_v2_s")  # at the evaluation size, 384
    assert trace.resolution_pattern == "384→192→96→48→24→12→1"
    assert trace.channel_pattern == "3→24→48→64→160→256→1280"


def test_fused_mbconv_block() -> None:
    # Expand 4: one 3x3 conv (the stride on it) to 4x the width, SiLU, linear 1x1 projection; no SE.
    block = FusedMBConv(24, 48, 4, 3, 2, 0.0, 1e-3, 0.1)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.groups) for c in convs] == [
        (24, 96, (3, 3), (2, 2), 1), (96, 48, (1, 1), (1, 1), 1)]
    assert [type(m) for m in block.modules() if isinstance(m, (nn.SiLU, nn.Sigmoid))] == [nn.SiLU]
    assert not block.use_residual
    # Expand 1: the 3x3 conv maps straight to the output and keeps its activation; a residual where shapes allow.
    one = FusedMBConv(24, 24, 1, 3, 1, 0.1, 1e-3, 0.1)
    assert len(one.block) == 1 and isinstance(one.block[0][-1], nn.SiLU) and one.use_residual
    x = torch.randn(2, 24, 9, 9)
    with torch.no_grad():
        assert torch.equal(one.eval()(x), one.block(x) + x)


@pytest.mark.parametrize("name, size, interpolation, mean", [
    ("efficientnet_v2_s", 384, "bilinear", (0.485, 0.456, 0.406)),
    ("efficientnet_v2_m", 480, "bilinear", (0.485, 0.456, 0.406)),
    ("efficientnet_v2_l", 480, "bicubic", (0.5, 0.5, 0.5)),
])
def test_cards_give_torchvisions_evaluation(name: str, size: int, interpolation: str, mean: tuple) -> None:
    card = archlab.model_card(name)
    assert (card.input_size, card.crop_pct, card.interpolation, card.mean) == (size, 1.0, interpolation, mean)
    assert "eps 1e-3" in card.notes and f"{size}x{size}" in card.notes
    assert card.year == 2021 and card.arxiv == "2104.00298"


def test_unknown_variant_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown EfficientNetV2 variant 'xl'"):
        archlab.create_model("efficientnet_v2_s", variant="xl")
