"""ResNet family specifics: dilated output strides, cardinality overrides, stochastic depth, init, SE layout."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

import archlab
from archlab.models.resnet import Bottleneck
from helpers import count_params, randomize_norms

DILATIONS = {16: [False, False, True], 8: [False, True, True]}


def _assert_same_logits(ours: torch.nn.Module, ref: torch.nn.Module, size: tuple[int, int]) -> None:
    randomize_norms(ref)
    archlab.load_reference_weights(ours, ref.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = (ours.eval()(x) - ref.eval()(x)).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_matches_torchvision_dilation(name: str, output_stride: int) -> None:
    ours = archlab.create_model(name, output_stride=output_stride)
    ref = torchvision.models.get_model(name, weights=None, replace_stride_with_dilation=DILATIONS[output_stride])
    assert count_params(ours) == count_params(ref)
    _assert_same_logits(ours, ref, (67, 90))


def test_basic_block_dilation_matches_timm() -> None:
    # torchvision refuses dilation in BasicBlock; timm dilates conv1 with the previous rate, conv2 with the new one.
    import timm

    ours = archlab.create_model("resnet18", output_stride=8)
    ref = timm.create_model("resnet18", pretrained=False, output_stride=8)
    _assert_same_logits(ours, ref, (64, 72))


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_feature_map_is_input_over_output_stride(output_stride: int) -> None:
    model = archlab.create_model("resnet18", output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 128, 96))
    assert feats.shape[-2:] == (128 // output_stride, 96 // output_stride)
    extractor = archlab.create_model("resnet18", output_stride=output_stride, features_only=True).eval()
    assert extractor.reductions == [2, 4, 8, min(16, output_stride), output_stride]
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 128, 128))
    assert [f.shape[-1] for f in maps] == [128 // r for r in extractor.reductions]


@pytest.mark.parametrize("output_stride", [4, 12, 64, "16"])
def test_bad_output_stride_is_named(output_stride) -> None:
    with pytest.raises(ValueError, match="output_stride"):
        archlab.create_model("resnet50", output_stride=output_stride)


def test_groups_and_base_width_overrides_build_resnext() -> None:
    # torchvision's rule: 3x3 width = int(width * base_width / 64) * groups, so resnet50 with 32 groups of 4 is
    # exactly ResNeXt-50 32x4d, and base_width 128 is Wide ResNet-50-2.
    custom = archlab.create_model("resnet50", groups=32, base_width=4)
    assert count_params(custom) == count_params(archlab.create_model("resnext50_32x4d"))
    assert custom.layer1[0].conv2.groups == 32 and custom.layer1[0].conv2.out_channels == 128
    wide = archlab.create_model("resnet50", base_width=128)
    assert count_params(wide) == archlab.model_card("wide_resnet50_2").params


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("resnext50_32x4d", dict(groups=0), "groups"),
        ("resnext50_32x4d", dict(groups=2.5), "groups"),
        ("resnext50_32x4d", dict(base_width=0), "base_width"),
        ("resnet18", dict(groups=32), "BasicBlock"),
        ("resnet34", dict(base_width=128), "BasicBlock"),
    ],
)
def test_bad_cardinality_is_named(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        archlab.create_model(name, **kwargs)


def test_drop_path_rises_linearly_over_blocks() -> None:
    model = archlab.create_model("resnet50", drop_path_rate=0.2)
    rates = [m.drop_path.p for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(rates) == 16
    assert rates == pytest.approx([0.2 * i / 15 for i in range(16)])
    # Active in training (the branch of some samples is dropped), an identity in eval.
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_classifier_dropout_defaults_to_zero() -> None:
    assert archlab.create_model("resnet18").drop_rate == 0.0
    model = archlab.create_model("resnet18", drop_rate=0.5, num_classes=5).train()
    feats = torch.randn(8, model.num_features, 2, 2)
    assert not torch.equal(model.forward_head(feats), model.forward_head(feats))
    model.eval()
    assert torch.equal(model.forward_head(feats), model.forward_head(feats))


def test_init_is_kaiming_fan_out_and_zero_init_last_bn() -> None:
    model = archlab.create_model("resnet50")
    w = model.layer4[1].conv2.weight  # 512 x 512 x 3 x 3: fan_out = 512 * 9
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.05)
    assert all(b.bn3.weight.eq(1).all() for b in model.modules() if isinstance(b, Bottleneck))
    zeroed = archlab.create_model("resnet50", zero_init_last_bn=True)
    blocks = [b for b in zeroed.modules() if isinstance(b, Bottleneck)]
    assert all(b.bn3.weight.eq(0).all() and b.bn2.weight.eq(1).all() for b in blocks)
    # With the last BN zeroed a block without projection passes its input through: relu(0 + x) = x for x >= 0.
    block = zeroed.layer1[1].eval()
    x = torch.rand(1, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_se_sits_on_the_branch_with_timm_widths() -> None:
    model = archlab.create_model("seresnet50")
    # r = 16 on the block output: 256 -> 16, 512 -> 32, 1024 -> 64, 2048 -> 128 (timm's seresnet50).
    widths = [getattr(model, f"layer{i}")[0].se.fc1.out_channels for i in range(1, 5)]
    assert widths == [16, 32, 64, 128]
    assert "layer1.0.se.fc2.bias" in model.state_dict()
    assert all(b.se is None for b in archlab.create_model("resnet50").modules() if isinstance(b, Bottleneck))


def test_one_pixel_input_is_accepted() -> None:
    # The card's min_input_size of 1 is real: the stem and every stride map 1 pixel to 1 pixel.
    for name, os_ in (("resnet18", 32), ("resnext50_32x4d", 8)):
        model = archlab.create_model(name, output_stride=os_).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 1, 1)).shape == (1, 1000)
