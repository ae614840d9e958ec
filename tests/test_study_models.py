"""The builders' switches the design studies need, as model specs: each does what its paper's ablation says, and
the default stays the published model (the parity tests check that against torchvision/timm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
from archlab.analysis import profile
from archlab.layers import SqueezeExcite
from archlab.registry import create_from_spec
from helpers import count_params

# ResNeXt's Table 3 templates (ResNeXt-50: groups x width of a group at the first stage), equal complexity.
TEMPLATES = [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)]


def test_full_conv_mobilenet_matches_table4() -> None:
    """MobileNet Table 4: "Conv MobileNet" 29.3M parameters, 4866M mult-adds against 4.2M and 569M."""
    full, separable = profile("mobilenet_v1:separable=False"), profile("mobilenet_v1")
    assert abs(full.params - 29.3e6) <= 0.005 * 29.3e6, full.params
    assert abs(full.macs - 4866e6) <= 0.001 * 4866e6, full.macs
    assert 8 < full.macs / separable.macs < 9  # the paper's "8 to 9 times less computation"
    model = create_from_spec("mobilenet_v1:separable=False,width_mult=0.5", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.groups == 1 and c.kernel_size == (3, 3) for c in convs) and len(convs) == 14
    with pytest.raises(ValueError, match="separable must be True or False"):
        archlab.create_model("mobilenet_v1", separable="no")


def test_mobilenet_v2_projection_activation() -> None:
    """project_act puts an activation after every block's projection; same parameters and multiply-adds."""
    linear = archlab.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
    relu = create_from_spec("mobilenet_v2:width_mult=0.5,project_act=relu6", num_classes=10)
    assert count_params(linear) == count_params(relu)
    blocks = [m for m in relu.features if hasattr(m, "use_residual")]
    assert blocks and all(isinstance(b.conv[-1], nn.ReLU6) for b in blocks)
    assert not any(isinstance(b.conv[-1], nn.ReLU6) for b in linear.features if hasattr(b, "use_residual"))
    relu.eval()
    first_thin = blocks[1]  # stride 2: no residual, so its output is the activation's
    assert not first_thin.use_residual
    assert first_thin(torch.randn(2, first_thin.conv[0][0].in_channels, 8, 8)).min() >= 0
    with pytest.raises(ValueError, match="unknown activation"):
        archlab.create_model("mobilenet_v2", project_act="relu7")


def test_se_on_a_cifar_resnet_costs_well_under_one_percent() -> None:
    plain, se = profile("cifar_resnet20"), profile("cifar_resnet20:se=True")
    model = create_from_spec("cifar_resnet20:se=True", num_classes=10)
    gates = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(gates) == 9  # one per residual branch
    assert sorted({g.fc1.out_channels for g in gates}) == [1, 2, 4]  # C / 16 for 16, 32, 64 channels
    assert 0 < se.macs / plain.macs - 1 < 0.01 and 0 < se.params / plain.params - 1 < 0.01
    with pytest.raises(ValueError, match="se must be True or False"):
        archlab.create_model("cifar_resnet20", se="yes")


def test_width_mult_scales_every_width() -> None:
    model = create_from_spec("cifar_resnet20:width_mult=2", num_classes=10)
    assert [info["num_chs"] for info in model.feature_info] == [32, 64, 128]
    assert model.stem[0].out_channels == 32
    assert 3.9 < count_params(model) / count_params(archlab.create_model("cifar_resnet20", num_classes=10)) < 4.1
    with pytest.raises(ValueError, match="width_mult must be a number > 0"):
        archlab.create_model("cifar_resnet20", width_mult=0)


def test_resnext29_matches_table7_and_its_templates_match_in_cost() -> None:
    """ResNeXt Table 7: ResNeXt-29 8x64d has 34.4M parameters. At half width its five Table 3 templates have
    multiply-adds within 5% of each other (the cardinality study's arms)."""
    card = archlab.model_card("cifar_resnext29_8x64d")
    with torch.device("meta"):
        model = archlab.create_model("cifar_resnext29_8x64d", num_classes=10)
    assert abs(count_params(model) - 34.4e6) <= 0.005 * 34.4e6 and card.num_classes == 10
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 9 and all(m.groups == 8 for m in grouped)
    assert grouped[0].in_channels == 512  # 8 groups x 64 channels in the first stage
    macs = [profile(f"cifar_resnext29_8x64d:width_mult=0.5,groups={g},base_width={d}", input_size=8).macs
            for g, d in TEMPLATES]
    assert max(macs) / min(macs) < 1.05, macs
    with pytest.raises(ValueError, match="has no grouped conv"):
        archlab.create_model("cifar_resnet20", groups=4)


def test_study_switches_through_the_command_line(capsys) -> None:
    from archlab.cli.main import main

    capsys.readouterr()
    assert main(["summary", "cifar_resnet20:se=True,width_mult=0.5", "--depth", "1", "--json"]) == 0
    assert main(["summary", "cifar_resnet20:se=maybe", "--depth", "1"]) == 2
    assert "se must be True or False" in capsys.readouterr().err
