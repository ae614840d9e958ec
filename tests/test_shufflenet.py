"""ShuffleNet V2 (arXiv:1807.11164) and SqueezeNet (arXiv:1602.07360), the two compact families: the channel shuffle
and split, Table 5, the Fire module, and receptive fields through split / shuffle / concatenation checked against
the input-gradient footprint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
from archlab.analysis import profile, receptive_fields, stage_trace
from archlab.models.shufflenet_v2 import SHUFFLENET_V2_WIDTHS, ShuffleUnit, channel_shuffle
from archlab.models.squeezenet import Fire, FireModule
from helpers import count_params, positive, randomize_norms

# ------------------------------------------------------------------------------------------- channel shuffle


def test_channel_shuffle_interleaves_the_two_halves() -> None:
    c = 10
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(2, c, 3, 4).contiguous()
    out = channel_shuffle(x, 2)
    # Output channel 2i is channel i of the first half, 2i + 1 channel i of the second half.
    assert out[0, :, 0, 0].tolist() == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    assert torch.equal(out[:, 0::2], x[:, : c // 2]) and torch.equal(out[:, 1::2], x[:, c // 2:])
    # A permutation: nothing lost or repeated; shuffling with C/2 groups undoes it (the transpose of the transpose).
    assert sorted(out[0, :, 0, 0].tolist()) == list(range(c))
    assert torch.equal(channel_shuffle(out, c // 2), x)


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_channel_shuffle_with_g_groups(groups: int) -> None:
    c = 12
    x = torch.randn(1, c, 2, 2)
    out = channel_shuffle(x, groups)
    # Output channel k comes from group k % g, position k // g within it.
    expected = [(k % groups) * (c // groups) + k // groups for k in range(c)]
    assert torch.equal(out, x[:, expected])
    with pytest.raises(RuntimeError):
        channel_shuffle(torch.randn(1, 10, 2, 2), 3)


def test_stride_1_unit_passes_one_half_through_untouched() -> None:
    unit = ShuffleUnit(16, 16, 1).eval()
    randomize_norms(unit)
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        out = unit(x)
        branch = unit.branch2(x[:, 8:])
    # Channel split: the first half reaches the even output channels unchanged (feature reuse, no add); the second
    # half, transformed at constant width (G1), the odd ones.
    assert torch.equal(out[:, 0::2], x[:, :8]) and torch.equal(out[:, 1::2], branch)
    assert not hasattr(unit, "branch1")
    assert [m.groups for m in unit.branch2 if isinstance(m, nn.Conv2d)] == [1, 8, 1]  # 1x1, 3x3 depthwise, 1x1


def test_stride_2_unit_doubles_the_width_and_halves_the_map() -> None:
    unit = ShuffleUnit(24, 116, 2).eval()
    with torch.no_grad():
        out = unit(torch.randn(1, 24, 56, 56))
    assert out.shape == (1, 116, 28, 28)  # both branches see the whole input (no split): 58 + 58 channels
    with pytest.raises(ValueError, match="keeps its width"):
        ShuffleUnit(24, 48, 1)


# ------------------------------------------------------------------------------------------------- Table 5


@pytest.mark.parametrize("name, width, weights_m", [
    ("shufflenet_v2_x0_5", "0.5x", 1.4), ("shufflenet_v2_x1_0", "1.0x", 2.3),
    ("shufflenet_v2_x1_5", "1.5x", 3.5), ("shufflenet_v2_x2_0", "2.0x", 7.4),
])
def test_table_5(name: str, width: str, weights_m: float) -> None:
    t = stage_trace(name)
    assert t.resolution_pattern == "224→112→56→28→14→7→1"
    stage_widths = [s.channels for s in t.stages[1:-1]]
    conv1, s2, s3, s4, conv5 = SHUFFLENET_V2_WIDTHS[width]
    assert stage_widths == [conv1, conv1, s2, s3, conv5]  # conv1, max-pool, stage2, stage3, conv5 (after stage4)
    # Units between stage outputs: Table 5's repeats, 1 + 3, 1 + 7, 1 + 3.
    assert [s.blocks for s in t.stages[1:-1]] == [0, 0, 4, 8, 4]
    with torch.device("meta"):
        model = archlab.create_model(name)
    assert model.stage4[0].branch2[-3].out_channels == s4 // 2
    assert round(count_params(model) / 1e6, 1) == weights_m  # Table 5's "# of Weights"


def test_shufflenet_has_no_residual_additions() -> None:
    with pytest.raises(ValueError, match="no residual additions"):
        archlab.create_model("shufflenet_v2_x1_0", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="unknown ShuffleNet V2 width"):
        archlab.create_model("shufflenet_v2_x1_0", width="3.0x")


# ----------------------------------------------------------------------------------------------- SqueezeNet


def test_fire_module_concatenates_its_two_expand_filters() -> None:
    fire = FireModule(96, Fire(16, 64, 64)).eval()
    x = torch.randn(1, 96, 13, 13)
    with torch.no_grad():
        out = fire(x)
        squeezed = torch.relu(fire.squeeze(x))
    assert out.shape == (1, 128, 13, 13)
    assert torch.equal(out[:, :64], torch.relu(fire.expand1x1(squeezed)))
    assert torch.equal(out[:, 64:], torch.relu(fire.expand3x3(squeezed)))
    # The squeeze cuts the 3x3 filters' input channels from 96 to 16 (strategy 2).
    assert fire.expand3x3.weight.shape == (64, 16, 3, 3)


def test_squeezenet_1_1_costs_2_4x_fewer_macs_than_1_0() -> None:
    a, b = profile("squeezenet1_0"), profile("squeezenet1_1")
    assert round(a.macs / b.macs, 1) == 2.3  # the repository's "2.4x less computation" (819 M / 349 M)
    assert b.params < a.params < 1.25e6  # "50x fewer parameters" than AlexNet's 61 M
    # No fully connected layer: the classifier is a 1x1 conv to the classes on the 13x13 map, then a pool.
    model = archlab.create_model("squeezenet1_1", num_classes=10)
    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].out_channels == 10
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_squeezenet_stage_trace() -> None:
    t = stage_trace("squeezenet1_0")
    assert t.resolution_pattern == "224→109→54→27→13→1"  # unpadded 7x7/2 conv, ceil_mode pools
    assert [s.blocks for s in t.stages[1:-1]] == [0, 3, 4, 1]  # fire2-4, fire5-8, fire9 (Table 1)


# ----------------------------------------------------------------------------------------- receptive fields


def footprint(run, size: int, unit: int) -> tuple[tuple[int, float], tuple[int, float]]:
    x = torch.ones(1, 3, size, size, requires_grad=True)
    run(x)[0, :, unit, unit].sum().backward()
    reached = x.grad[0].abs().sum(0) > 0
    out = []
    for axis in (1, 0):
        idx = reached.any(axis).nonzero().flatten()
        out.append((int(idx.max() - idx.min() + 1), (idx.max() + idx.min()).item() / 2))
    return tuple(out)


@pytest.mark.parametrize("name, size, stages, rf, stride", [
    # Through split (chunk), the identity half, concatenation and the shuffle's view / transpose / flatten.
    ("shufflenet_v2_x0_5", 96, 3, 63, 8),
    # Through Fire modules' concatenations and ceil_mode max-pools (helpers.positive makes them average pools).
    ("squeezenet1_1", 128, 8, 63, 8),
])
def test_receptive_field_equals_gradient_footprint(name, size, stages, rf, stride) -> None:
    model = positive(archlab.create_model(name))
    body = model.features[:stages] if name.startswith("squeeze") else nn.Sequential(
        model.conv1, model.maxpool, model.stage2)
    geometry = receptive_fields(body, size)[""]
    unit = body(torch.ones(1, 3, size, size)).shape[-1] // 2
    (rf_h, centre_h), (rf_w, _) = footprint(body, size, unit)
    assert geometry.size == (rf_h, rf_w) == (rf, rf) and geometry.stride == (stride, stride)
    assert geometry.h.start + unit * geometry.h.jump == centre_h


# ------------------------------------------------------------------------------------------------- deploy


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "squeezenet1_1"])
def test_fuse_gives_the_same_outputs(name: str) -> None:
    from archlab.deploy import fuse

    model = archlab.create_model(name).eval()
    randomize_norms(model)
    fused = fuse(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    summary = fused.fuse_summary
    assert not summary.kept_norms and not summary.untraced  # the shuffle and split trace: every BN is folded
    assert len(summary.folded) == (0 if name.startswith("squeeze") else 56)


def test_channel_shuffle_keeps_the_memory_layout() -> None:
    x = torch.randn(2, 12, 5, 5)
    nhwc = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 3)
    assert torch.equal(nhwc, channel_shuffle(x, 3))
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and channel_shuffle(x, 3).is_contiguous()
