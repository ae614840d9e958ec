"""EfficientNet (arXiv:1905.11946) and compound scaling: structure equal to torchvision's B0-B7, the scale() rule,
the compound() numbers, the phi-scaled family and its input checks. Logits parity is in test_parity.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import archlab
from archlab.layers import DropPath, make_divisible
from archlab.models.efficientnet import B0, EfficientNet, MBConv, scale
from archlab.scaling import RELEASED, comparison_markdown, compound, formula_vs_released
from helpers import count_params

NAMES = [f"efficientnet_b{i}" for i in range(8)]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def norm_settings(model: nn.Module) -> list[tuple[float, float]]:
    return [(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", NAMES)
def test_structure_equals_torchvision(name: str) -> None:
    ref = torchvision.models.get_model(name, weights=None)
    ours = archlab.create_model(name)
    assert count_params(ours) == count_params(ref)
    # Key for key, shape for shape: a torchvision checkpoint loads unchanged.
    assert shapes(ours) == shapes(ref)
    # B5-B7 keep TF's eps/momentum in torchvision; a mismatch would only show on trained weights.
    assert norm_settings(ours) == norm_settings(ref)
    assert ours.classifier[0].p == ref.classifier[0].p == RELEASED[name].dropout

    # scale() alone (no model) gives torchvision's stem, per-stage widths and depths, and head.
    row = RELEASED[name]
    table = scale(B0, row.width_mult, row.depth_mult)
    ref_stages = list(ref.features)[1:-1]
    assert [len(stage) for stage in ref_stages] == [s.layers for s in table.stages]
    assert [stage[-1].out_channels for stage in ref_stages] == [s.channels for s in table.stages]
    assert ref.features[0].out_channels == table.stem
    assert ref.features[-1].out_channels == table.head == ours.num_features


@pytest.mark.parametrize("name", NAMES)
def test_card_matches_torchvision_weights_meta(name: str) -> None:
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    card, meta, tf = archlab.model_card(name), weights.meta, weights.transforms()
    assert card.params == meta["num_params"]
    if name == "efficientnet_b2":
        # The card keeps the paper's 260x260 and its figures; torchvision evaluates its weights at 288.
        assert (card.input_size, card.macs, card.top1, tf.crop_size[0]) == (260, 1_000_000_000, 80.1, 288)
        assert "288" in card.notes
    else:
        assert card.macs == round(meta["_ops"] * 1e9)
        assert card.top1 == meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert card.input_size == tf.crop_size[0]
    assert card.crop_pct == pytest.approx(tf.crop_size[0] / tf.resize_size[0])
    assert card.interpolation == tf.interpolation.value == "bicubic"
    assert (list(card.mean), list(card.std)) == (tf.mean, tf.std)


def test_compound_numbers() -> None:
    base = compound(0)
    assert (base.depth_mult, base.width_mult, base.resolution, base.flops_ratio) == (1.0, 1.0, 224, 1.0)
    assert base.constraint == pytest.approx(1.2 * 1.1**2 * 1.15**2) == pytest.approx(1.92027)

    one = compound(1)
    assert one.depth_mult == pytest.approx(1.2) and one.width_mult == pytest.approx(1.1)
    assert one.resolution_exact == pytest.approx(257.6) and one.resolution == 256  # nearest multiple of 8
    assert one.flops_ratio == pytest.approx(one.constraint)

    two = compound(2)
    assert two.depth_mult == pytest.approx(1.44) and two.width_mult == pytest.approx(1.21)
    assert two.resolution == 296 and two.flops_ratio == pytest.approx(1.92027**2, rel=1e-5)

    half = compound(0.5)  # fractional phi: 224 * 1.15 ** 0.5 = 240.2 -> 240
    assert half.resolution == 240 and half.depth_mult == pytest.approx(1.2**0.5)

    for phi in range(8):
        s = compound(phi)
        assert s.resolution % 8 == 0 and abs(s.resolution - s.resolution_exact) <= 4
        # The constraint 1.92 < 2: FLOPs grow a little slower than 2**phi, by a factor 0.96 per step.
        assert s.flops_ratio == pytest.approx(2**phi * (s.constraint / 2) ** phi)

    custom = compound(2, alpha=2.0, beta=1.0, gamma=1.0, base_resolution=160)
    assert (custom.depth_mult, custom.width_mult, custom.resolution, custom.constraint) == (4.0, 1.0, 160, 2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(phi=-1), "phi"),
        (dict(phi=float("nan")), "phi"),
        (dict(phi=1, alpha=0), "alpha"),
        (dict(phi=1, beta=-1.1), "beta"),
        (dict(phi=1, gamma=0.0), "gamma"),
        (dict(phi=1, base_resolution=0), "base_resolution"),
    ],
)
def test_compound_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compound(**kwargs)


def test_formula_vs_released_and_docs() -> None:
    rows = formula_vs_released()
    assert [r.phi for r in rows] == list(range(1, 8))
    assert [r.name for r in rows] == NAMES[1:]
    for r in rows:
        assert r.formula == compound(r.phi) and r.released == RELEASED[r.name]
        # The released depth is below the formula's at every phi: the released models are not the formula's.
        assert r.released.depth_mult < r.formula.depth_mult
    # docs/scaling.md shows the generated table, not a hand-typed one that could drift.
    assert comparison_markdown() in DOCS.read_text(encoding="utf-8")


def test_phi_zero_is_b0() -> None:
    phi0, b0 = archlab.create_model("efficientnet").eval(), archlab.create_model("efficientnet_b0").eval()
    assert shapes(phi0) == shapes(b0)
    assert norm_settings(phi0) == norm_settings(b0)
    assert phi0.classifier[0].p == b0.classifier[0].p == 0.2
    assert phi0.scaling == compound(0)
    phi0.load_state_dict(b0.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(phi0(x), b0(x))


def test_fractional_phi_builds_and_runs() -> None:
    phi = 1.5
    model = archlab.create_model("efficientnet", phi=phi, num_classes=10).eval()
    s = compound(phi)
    assert model.scaling == s
    stages = list(model.features)[1:-1]
    assert [len(st) for st in stages] == [math.ceil(row.layers * 1.2**phi) for row in B0.stages]
    assert [st[-1].out_channels for st in stages] == [make_divisible(row.channels * 1.1**phi) for row in B0.stages]
    assert model.num_features == make_divisible(1280 * 1.1**phi)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 72))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    # The formula at phi=1 is bigger than the released B1 (depth 1.2 vs 1.1, width 1.1 vs 1.0).
    assert count_params(archlab.create_model("efficientnet", phi=1)) > archlab.model_card("efficientnet_b1").params


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("efficientnet_b0", dict(width_mult=0), "width_mult must be a finite number > 0, got 0"),
        ("efficientnet_b3", dict(width_mult=-1.2), "width_mult must be a finite number > 0"),
        ("efficientnet_b0", dict(depth_mult=0.0), "depth_mult must be a finite number > 0"),
        ("efficientnet", dict(phi=-0.5), r"phi \(the compound coefficient\) must be a finite number >= 0"),
        ("efficientnet", dict(phi=1, alpha=-1.2), "alpha must be a finite number >= 1"),
        ("efficientnet_b0", dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
        ("efficientnet", dict(drop_path_rate=-0.1), r"drop_path_rate must be in \[0, 1\)"),
    ],
)
def test_bad_arguments_are_named(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        archlab.create_model(name, **kwargs)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_builder_checks_drop_path_rate_itself(rate: float) -> None:
    # Building the class directly (not through create_model) still gets a clear message.
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        EfficientNet(B0, drop_path_rate=rate)


def test_stochastic_depth_rises_linearly_like_torchvision() -> None:
    ours = archlab.create_model("efficientnet_b0", drop_path_rate=0.2)
    ref = torchvision.models.efficientnet_b0(weights=None, stochastic_depth_prob=0.2)
    our_blocks = [m for m in ours.modules() if isinstance(m, MBConv)]
    ref_blocks = [b for stage in list(ref.features)[1:-1] for b in stage]
    assert len(our_blocks) == len(ref_blocks) == 16
    for i, (mine, theirs) in enumerate(zip(our_blocks, ref_blocks)):
        assert mine.use_residual == theirs.use_res_connect
        if mine.use_residual:
            assert isinstance(mine.drop_path, DropPath)
            assert mine.drop_path.p == pytest.approx(0.2 * i / 16) == pytest.approx(theirs.stochastic_depth.p)
    # Only training is affected: in eval mode the rate changes nothing.
    plain = archlab.create_model("efficientnet_b0")
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), plain.eval()(x))


@pytest.mark.parametrize(
    "name, channels",
    [("efficientnet_b0", [16, 24, 40, 112, 320]), ("efficientnet_b3", [24, 32, 48, 136, 384])],
)
def test_feature_info(name: str, channels: list[int]) -> None:
    model = archlab.create_model(name)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f["module"] for f in model.feature_info] == [f"features.{i}" for i in (1, 2, 3, 5, 7)]
    assert [f["num_chs"] for f in model.feature_info] == channels
    extractor = archlab.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = extractor(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // r, 64 // r) for c, r in zip(channels, [2, 4, 8, 16, 32])]

