"""RegNet (arXiv:2003.13678): the quantized linear rule against torchvision's stage widths and depths, any point of
the design space building, every bad parameter refused by name, spec strings. Logits parity is in test_parity.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.regnet import BlockParams
from torchvision.models.regnet import RegNet as TorchvisionRegNet

import archlab
from archlab.layers import DropPath
from archlab.models.regnet import REGNET_ROWS, RegNet, RegNetStage, regnet_widths
from archlab.registry import create_from_spec
from helpers import count_params

ROWS = {row.name: row for row in REGNET_ROWS}


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def torchvision_stages(w0, wa, wm, depth, group_width, bottleneck_ratio=1.0) -> list[tuple[int, int, int]]:
    bp = BlockParams.from_init_params(depth=depth, w_0=w0, w_a=wa, w_m=wm, group_width=group_width,
                                      bottleneck_multiplier=bottleneck_ratio)
    return list(zip(bp.widths, bp.depths, bp.group_widths))


def torchvision_on_meta(w0, wa, wm, depth, group_width, bottleneck_ratio=1.0, se_ratio=None) -> nn.Module:
    # torchvision computes its stages with tensors, which cannot run on the meta device: stages first, then the net.
    bp = BlockParams.from_init_params(depth=depth, w_0=w0, w_a=wa, w_m=wm, group_width=group_width,
                                      bottleneck_multiplier=bottleneck_ratio, se_ratio=se_ratio)
    with torch.device("meta"):
        return TorchvisionRegNet(bp)


# (width, blocks, group width) per stage, as torchvision builds them. RegNetX-400MF's first stage is 24 wide by
# the linear rule and becomes 32 to hold whole groups of 16; RegNetX-8GF's groups shrink to the first stage's 80.
EXPECTED = {
    "regnet_x_400mf": [(32, 1, 16), (64, 2, 16), (160, 7, 16), (400, 12, 16)],
    "regnet_x_8gf": [(80, 2, 80), (240, 5, 120), (720, 15, 120), (1920, 1, 120)],
    "regnet_y_400mf": [(48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)],
    "regnet_y_32gf": [(232, 2, 232), (696, 5, 232), (1392, 12, 232), (3712, 1, 232)],
    "regnet_y_128gf": [(528, 2, 264), (1056, 7, 264), (2904, 17, 264), (7392, 1, 264)],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_quantized_linear_rule_gives_the_released_stages(name: str) -> None:
    row = ROWS[name]
    stages = regnet_widths(row.w0, row.wa, row.wm, row.depth, row.group_width)
    assert [tuple(s) for s in stages] == EXPECTED[name]
    assert sum(s.depth for s in stages) == row.depth  # every block of the ramp is in one stage
    assert all(isinstance(s, RegNetStage) for s in stages)


@pytest.mark.parametrize("name", list(ROWS))
def test_every_row_is_torchvisions_network(name: str) -> None:
    # On the meta device: key for key, shape for shape (so a torchvision checkpoint loads), same norm settings,
    # the parameter count torchvision's weights meta publishes. Cheap for RegNetY-128GF's 644M parameters too.
    row = ROWS[name]
    assert [tuple(s) for s in regnet_widths(row.w0, row.wa, row.wm, row.depth, row.group_width)] == \
        torchvision_stages(row.w0, row.wa, row.wm, row.depth, row.group_width)
    ref = torchvision_on_meta(row.w0, row.wa, row.wm, row.depth, row.group_width, se_ratio=row.se_ratio)
    with torch.device("meta"):
        ours = archlab.create_model(name)
    assert shapes(ours) == shapes(ref)
    assert count_params(ours) == row.params == archlab.model_card(name).params
    norms = [(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms == [(m.eps, m.momentum) for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]


def test_the_rule_keeps_torchvisions_float32_ties() -> None:
    # 200 * 2.3 / 8 = 57.5 exactly: float64 computes 459.99999999999994 and would round to 456; torchvision's float32
    # arithmetic gets 460 and rounds half to even, to 464. Ours follows torchvision.
    args = (200, 82.55, 2.3, 50, 4)
    assert regnet_widths(*args)[1].width == 464
    assert [tuple(s) for s in regnet_widths(*args)] == torchvision_stages(*args)


@settings(max_examples=150, deadline=None)
@given(
    w0=st.integers(1, 40).map(lambda k: 8 * k),
    wa=st.floats(0, 200).map(lambda v: round(v, 2)),
    wm=st.floats(1.05, 3.5).map(lambda v: round(v, 2)).filter(lambda v: v > 1),
    depth=st.integers(1, 40),
    group_width=st.sampled_from([1, 2, 4, 8, 16, 24, 32, 48, 64]),
    bottleneck_ratio=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
)
def test_any_point_has_torchvisions_stages(w0, wa, wm, depth, group_width, bottleneck_ratio) -> None:
    ours = [tuple(s) for s in regnet_widths(w0, wa, wm, depth, group_width, bottleneck_ratio)]
    assert ours == torchvision_stages(w0, wa, wm, depth, group_width, bottleneck_ratio)
    widths = [w for w, _, _ in ours]
    assert widths == sorted(widths) and sum(d for _, d, _ in ours) == depth
    assert all(round(w * bottleneck_ratio) % g == 0 for w, _, g in ours)


@pytest.mark.parametrize("point", [
    dict(w0=24, wa=36.44, wm=2.49, depth=13, group_width=8),  # the paper's RegNetX-200MF
    dict(w0=16, wa=0, wm=2.0, depth=3, group_width=8),  # wa = 0: one stage
    dict(w0=8, wa=40.0, wm=1.4, depth=10, group_width=4, se_ratio=0.25),  # many stages, RegNetY
    dict(w0=32, wa=20.0, wm=2.2, depth=8, group_width=16, bottleneck_ratio=0.5),
])
def test_any_point_builds_and_runs(point: dict) -> None:
    model = archlab.create_model("regnet", num_classes=5, **point).eval()
    stages = regnet_widths(point["w0"], point["wa"], point["wm"], point["depth"], point["group_width"],
                           point.get("bottleneck_ratio", 1.0))
    assert model.stages == stages
    assert [f["num_chs"] for f in model.feature_info[1:]] == [s.width for s in stages]
    assert [len(stage) for stage in model.trunk_output] == [s.depth for s in stages]
    ref = torchvision_on_meta(point["w0"], point["wa"], point["wm"], point["depth"], point["group_width"],
                              point.get("bottleneck_ratio", 1.0), point.get("se_ratio"))
    ours_at_1000 = archlab.create_model("regnet", **point)
    assert shapes(ours_at_1000) == shapes(ref)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 48)).shape == (1, 5)


BAD = [
    (dict(w0=0), "w0"),
    (dict(w0=-8), "w0"),
    (dict(w0=12), r"w0 \(initial width\) must be a positive multiple of 8"),
    (dict(wa=-1.0), r"wa \(width slope\) must be >= 0"),
    (dict(wa=float("nan")), "wa.*finite number"),
    (dict(wm=1.0), r"wm \(width multiplier\) must be > 1"),
    (dict(wm=0.5), "wm"),
    (dict(wm="2.5"), "wm.*finite number"),
    (dict(depth=0), r"depth \(number of blocks\) must be an integer >= 1"),
    (dict(depth=2.5), "depth.*integer"),
    (dict(group_width=0), r"group_width \(channels per group\) must be an integer >= 1"),
    (dict(bottleneck_ratio=0), "bottleneck_ratio must be > 0"),
    # A bottleneck of round(width * 2.5) channels that is no multiple of 16: torchvision would silently build
    # groups of another width.
    (dict(w0=8, wa=69.58, wm=1.9, depth=14, group_width=16, bottleneck_ratio=2.5), "group_width 16 does not divide"),
]


@pytest.mark.parametrize("bad, match", BAD)
def test_bad_design_space_parameters_are_named(bad: dict, match: str) -> None:
    point = dict(w0=24, wa=24.48, wm=2.54, depth=22, group_width=16, bottleneck_ratio=1.0)
    point.update(bad)
    with pytest.raises(ValueError, match=match):
        regnet_widths(**point)
    with pytest.raises(ValueError, match=match):
        archlab.create_model("regnet", **point)


def test_whole_floats_are_whole_numbers() -> None:
    # A sampler may hand out floats: depth 22.0 and group width 16.0 are RegNetX-400MF's 22 and 16.
    assert regnet_widths(24.0, 24.48, 2.54, 22.0, 16.0) == regnet_widths(24, 24.48, 2.54, 22, 16)


def test_bad_se_ratio_is_named() -> None:
    with pytest.raises(ValueError, match=r"se_ratio must be in \[0, 1\]"):
        archlab.create_model("regnet_y_400mf", se_ratio=1.5)
    with pytest.raises(ValueError, match="se_ratio.*finite number"):
        archlab.create_model("regnet_y_400mf", se_ratio="0.25")


def test_spec_strings_build_points_of_the_space() -> None:
    model = create_from_spec("regnet:w0=24,wa=36.44,wm=2.49,depth=13,group_width=8")
    assert model.stages == regnet_widths(24, 36.44, 2.49, 13, 8)
    assert [tuple(s) for s in model.stages] == [(24, 1, 8), (56, 1, 8), (152, 4, 8), (368, 7, 8)]
    # A released row with one parameter changed: RegNetY-400MF made deeper keeps its SE and other parameters.
    deeper = create_from_spec("regnet_y_400mf:depth=20")
    assert sum(s.depth for s in deeper.stages) == 20 and hasattr(deeper.trunk_output.block1[0].f, "se")
    with pytest.raises(ValueError, match="wm"):
        create_from_spec("regnet:wm=1")


def test_regnetx_has_no_se_and_regnety_squeezes_the_block_input() -> None:
    with torch.device("meta"):
        x, y = archlab.create_model("regnet_x_400mf"), archlab.create_model("regnet_y_400mf")
    assert not any("se" in name for name, _ in x.named_modules())
    first = y.trunk_output.block1[0]  # 32 channels in (the stem), 48 out: the SE squeezes to 0.25 * 32 = 8
    assert first.f.se.fc1.out_channels == 8 and first.f.se.fc1.in_channels == 48


def test_stochastic_depth_rises_linearly_over_the_blocks() -> None:
    model = archlab.create_model("regnet_x_400mf", drop_path_rate=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 22 and rates[0] == 0.0 and math.isclose(rates[-1], 0.2)
    assert rates == sorted(rates)
    assert isinstance(model, RegNet)


def test_cards_and_released_weights(capsys) -> None:
    from archlab.cli import main
    from archlab.pretrained import pretrained_weights

    generic = archlab.model_card("regnet")
    assert "design space" in generic.innovation.lower() and "design space" in generic.notes
    assert archlab.model_card("regnet_y_128gf").input_size == 384
    tags = [w.tag for w in pretrained_weights(archlab.model_card("regnet_y_400mf"))]
    assert tags == ["IMAGENET1K_V2", "IMAGENET1K_V1"]  # the card's (default) first
    assert main(["card", "regnet_y_400mf", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["reference"] == "torchvision:regnet_y_400mf" and card["top1"] == 75.804
    assert main(["card", "regnet_y_400mf"]) == 0
    out = capsys.readouterr().out
    assert "arXiv:2003.13678" in out and "IMAGENET1K_V2" in out and "IMAGENET1K_V1" in out

