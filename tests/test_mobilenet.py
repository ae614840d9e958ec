"""MobileNet V1/V2/V3: width multipliers against the references and the papers, h-swish, block structure, options."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import archlab
from archlab.layers import DropPath, SqueezeExcite, hard_sigmoid, hard_swish, make_divisible
from helpers import count_params, randomize_norms

ALL = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def assert_same_outputs(ours: nn.Module, ref: nn.Module, source: str, size: tuple[int, int] = (67, 50)) -> None:
    ours.eval(), ref.eval()
    randomize_norms(ref)
    archlab.load_reference_weights(ours, ref.state_dict(), source=source)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


def conv_linear_macs(model: nn.Module, size: int) -> int:
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return sum(v for op, v in flops.by_operator().items() if op in ("conv", "linear", "addmm"))


# --- MobileNet V1: width (alpha) and resolution (rho) multipliers -------------------------------------------------

# The paper's Table 6 (alpha at 224): parameters (M) and multiply-adds (M).
V1_TABLE6 = [(1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149), (0.25, 0.5, 41)]
# The paper's Table 7 (rho, alpha = 1.0): multiply-adds (M) at 192, 160, 128; parameters stay 4.2M.
V1_TABLE7 = [(192, 418), (160, 290), (128, 186)]


@pytest.mark.parametrize("alpha, params_m, macs_m", V1_TABLE6)
def test_v1_width_multiplier_matches_paper_table6(alpha: float, params_m: float, macs_m: int) -> None:
    model = archlab.create_model("mobilenet_v1", width_mult=alpha)
    assert round(count_params(model) / 1e6, 1) == params_m
    assert abs(conv_linear_macs(model, 224) / 1e6 - macs_m) < 1  # the paper rounds or truncates to 1M


@pytest.mark.parametrize("size, macs_m", V1_TABLE7)
def test_v1_resolution_multiplier_matches_paper_table7(size: int, macs_m: int) -> None:
    model = archlab.create_model("mobilenet_v1")
    assert round(count_params(model) / 1e6, 1) == 4.2
    assert abs(conv_linear_macs(model, size) / 1e6 - macs_m) < 1


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_v1_width_sweep_matches_timm(alpha: float) -> None:
    # timm registers only mobilenetv1_100/125, so other widths come from its (private) generator.
    efficientnet = pytest.importorskip("timm.models.efficientnet")
    generate = getattr(efficientnet, "_gen_mobilenet_v1", None)
    if generate is None:
        pytest.skip("this timm has no _gen_mobilenet_v1")
    ref = generate("mobilenetv1_100", alpha)
    ours = archlab.create_model("mobilenet_v1", width_mult=alpha)
    assert count_params(ours) == count_params(ref)
    assert_same_outputs(ours, ref, "timm")


def test_v1_is_a_plain_stack_without_residuals() -> None:
    with pytest.raises(ValueError, match="no residual"):
        archlab.create_model("mobilenet_v1", drop_path_rate=0.1)
    model = archlab.create_model("mobilenet_v1")
    # 13 depthwise-separable layers (Table 1): 27 conv layers with the stem and the pointwise convs, plus the FC.
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == 28


# --- MobileNet V2 / V3: width sweeps against torchvision ---------------------------------------------------------


@pytest.mark.parametrize("width", [0.5, 0.75, 1.0, 1.4])
def test_v2_width_sweep_matches_torchvision(width: float) -> None:
    ours = archlab.create_model("mobilenet_v2", width_mult=width)
    ref = torchvision.models.mobilenet_v2(width_mult=width)
    assert count_params(ours) == count_params(ref)
    assert_same_outputs(ours, ref, "torchvision")


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize("width", [0.5, 0.75, 1.25])
def test_v3_width_sweep_matches_torchvision(name: str, width: float) -> None:
    ours = archlab.create_model(name, width_mult=width)
    ref = torchvision.models.get_model(name, width_mult=width)
    assert count_params(ours) == count_params(ref)
    assert_same_outputs(ours, ref, "torchvision")


@pytest.mark.parametrize("name, timm_name, macs_m", [("mobilenet_v3_large_075", "mobilenetv3_large_075", 155),
                                                     ("mobilenet_v3_small_075", "mobilenetv3_small_075", 44)])
def test_v3_paper_width_rule_gives_the_papers_075_models(name: str, timm_name: str, macs_m: int) -> None:
    """The paper's Table 3 models (and timm's): expansion ratio x rounded input width, the pooled layer unscaled;
    their multiply-adds within 2% of the paper's; torchvision's rule at 0.75 is a different, smaller network."""
    import timm

    from archlab.analysis.profile import profile

    ours = archlab.create_model(name)
    assert count_params(ours) == count_params(timm.create_model(timm_name))
    assert ours.num_features == (1280 if "large" in name else 1024)
    assert profile(ours, input_size=224).macs == pytest.approx(macs_m * 1e6, rel=0.02)
    variant = name.removesuffix("_075")
    shrunk = archlab.create_model(variant, width_mult=0.75, width_rule="torchvision")
    assert shrunk.num_features == (960 if "large" in name else 768) and count_params(shrunk) < count_params(ours)
    # At 1.0 the two rules are the same network.
    same = [archlab.create_model(variant, width_rule=rule).state_dict() for rule in ("torchvision", "paper")]
    assert {k: v.shape for k, v in same[0].items()} == {k: v.shape for k, v in same[1].items()}
    with pytest.raises(ValueError, match="width_rule"):
        archlab.create_model(variant, width_rule="keras")


# --- h-swish / h-sigmoid ------------------------------------------------------------------------------------------

finite_floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite_floats, min_size=1, max_size=64))
def test_hard_swish_and_hard_sigmoid_follow_their_formulas(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    relu6 = torch.nn.functional.relu6
    expected_sigmoid = relu6(x + 3) / 6
    expected_swish = x * relu6(x + 3) / 6
    torch.testing.assert_close(hard_sigmoid(x), expected_sigmoid)
    torch.testing.assert_close(hard_swish(x), expected_swish)
    torch.testing.assert_close(nn.Hardsigmoid()(x), expected_sigmoid)
    torch.testing.assert_close(nn.Hardswish()(x), expected_swish)


def test_hard_swish_limits() -> None:
    x = torch.tensor([-10.0, -3.0, 0.0, 3.0, 10.0])
    assert hard_swish(x).tolist() == [0.0, 0.0, 0.0, 3.0, 10.0]
    assert hard_sigmoid(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


# --- Block structure ----------------------------------------------------------------------------------------------


def test_v2_bottlenecks_are_linear_and_activations_relu6() -> None:
    model = archlab.create_model("mobilenet_v2")
    blocks = list(model.features)[1:-1]
    assert len(blocks) == 17  # Table 2: 1 + 2 + 3 + 4 + 3 + 3 + 1
    for block in blocks:
        # The projection ends the block: 1x1 conv then BN, and no activation after it.
        assert isinstance(block.conv[-1], nn.BatchNorm2d) and isinstance(block.conv[-2], nn.Conv2d)
        assert block.conv[-2].kernel_size == (1, 1)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU))}
    assert acts == {nn.ReLU6}


@pytest.mark.parametrize("name, num_se", [("mobilenet_v3_large", 8), ("mobilenet_v3_small", 9)])
def test_v3_se_is_sized_from_expanded_width_and_gated_by_hard_sigmoid(name: str, num_se: int) -> None:
    model = archlab.create_model(name, width_mult=0.75)
    se_layers = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se_layers) == num_se
    for se in se_layers:
        expanded = se.fc1.in_channels
        assert se.fc1.out_channels == make_divisible(expanded // 4, 8)
        assert isinstance(se.gate, nn.Hardsigmoid)


def test_v3_batch_norm_and_last_stage() -> None:
    model = archlab.create_model("mobilenet_v3_large")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 0.001 and m.momentum == 0.01 for m in norms)
    assert model.features[0][0].out_channels == 16 and isinstance(model.features[0][2], nn.Hardswish)
    # Redesigned last stage: 1x1 conv to 960 at 7x7, then 1280 on the pooled vector, without BN.
    assert model.features[-1][0].out_channels == 960
    assert model.classifier[0].out_features == 1280 == model.num_features
    small = archlab.create_model("mobilenet_v3_small")
    assert small.features[-1][0].out_channels == 576 and small.num_features == 1024


# --- Options and bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("width", [0, -0.5])
def test_non_positive_width_is_refused(name: str, width: float) -> None:
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        archlab.create_model(name, width_mult=width)


@pytest.mark.parametrize(
    "name, dropout",
    [("mobilenet_v1", 0.0), ("mobilenet_v2", 0.2), ("mobilenet_v3_large", 0.2), ("mobilenet_v3_small", 0.2)],
)
def test_classifier_dropout_defaults_to_reference_and_can_be_overridden(name: str, dropout: float) -> None:
    def rates(model: nn.Module) -> list[float]:
        return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]

    assert rates(archlab.create_model(name)) == [dropout]
    assert rates(archlab.create_model(name, drop_rate=0.4)) == [0.4]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_drop_path_only_on_residual_branches_rising_with_depth(name: str) -> None:
    model = archlab.create_model(name, drop_path_rate=0.3, num_classes=5)
    blocks = [m for m in model.features if hasattr(m, "use_residual")]
    rates = [b.drop_path.p for b in blocks]
    residual = [b.use_residual for b in blocks]
    assert all(p == 0 for p, r in zip(rates, residual) if not r)
    active = [p for p, r in zip(rates, residual) if r]
    assert active and all(0 < p < 0.3 for p in active) and active == sorted(active)

    plain = archlab.create_model(name, num_classes=5)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # DropPath is an identity at eval time
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        # Branches are dropped at random per sample, so training outputs differ from run to run.
        outs = [model(x) for _ in range(3)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    assert sum(isinstance(m, DropPath) and m.p > 0 for m in model.modules()) == len(active)


@pytest.mark.parametrize("name", ALL)
def test_feature_info_reductions(name: str) -> None:
    model = archlab.create_model(name)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    # The last entry is the output of forward_features, the map the classifier pools.
    with torch.no_grad():
        feats = model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape[1] == model.feature_info[-1]["num_chs"]


@pytest.mark.parametrize("name", ALL)
def test_any_input_size_down_to_one_pixel(name: str) -> None:
    assert archlab.model_card(name).min_input_size == 1
    model = archlab.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        for h, w in ((1, 1), (1, 7), (13, 2)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 3)
