"""archlab.analysis: counts checked against fvcore, FlopCounterMode and published figures; receptive fields checked
against the input-gradient footprint of one output unit; the summary and trace commands."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import archlab
from archlab.analysis import (
    conv_cost,
    profile,
    receptive_fields,
    separable_reduction,
    stage_trace,
    summarize,
)
from archlab.analysis.receptive_field import ReceptiveFieldTracker
from archlab.cli import main
from archlab.layers import SqueezeExcite
from archlab.models.vgg import VGG
from helpers import positive

REGISTERED = set(archlab.list_models())


def needs(*names: str):
    return pytest.mark.skipif(not set(names) <= REGISTERED, reason=f"{names} not registered yet")


# ---------------------------------------------------------------------------------------------- counting MACs


def fvcore_macs(model: nn.Module, size: int) -> int:
    """fvcore's count (jit trace of a real forward) of convolutions and linear layers; fvcore 'flops' are MACs."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    return sum(by_op.get(k, 0) for k in ("conv", "linear", "addmm", "matmul"))


def grouped_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, groups=4),  # grouped
        nn.Conv2d(64, 64, 5, padding=2, groups=64),  # depthwise
        nn.Conv2d(64, 48, 1),  # pointwise
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    )


@pytest.mark.parametrize("build", [
    pytest.param(lambda: __import__("torchvision").models.resnet18(), id="resnet18"),
    pytest.param(lambda: __import__("torchvision").models.mobilenet_v2(), id="mobilenet_v2-depthwise"),
    pytest.param(grouped_net, id="grouped-and-depthwise"),
    pytest.param(lambda: archlab.create_model("cifar_resnet20"), id="archlab-cifar_resnet20",
                 marks=needs("cifar_resnet20")),
])
def test_macs_match_fvcore(build) -> None:
    model = build()
    assert profile(model, 64).macs == fvcore_macs(model, 64)


def test_macs_match_flop_counter_mode_on_real_tensors() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = grouped_net().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(2, 3, 40, 40))
    p = profile(model, 40, batch_size=2)
    assert p.macs == counter.get_total_flops() // 2
    assert p.flops == 2 * p.macs


def test_published_macs_and_params() -> None:
    import torchvision

    p = profile("vgg16")
    card = archlab.model_card("vgg16")
    assert p.params == p.trainable_params == card.params
    assert abs(p.macs - card.macs) <= 0.001 * card.macs
    # torchvision's "GFLOPS" metadata is multiply-adds at 224.
    with torch.device("meta"):
        resnet50 = torchvision.models.resnet50()
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9
    assert abs(profile(resnet50, 224).macs - published) <= 0.001 * published


def test_all_ops_follow_the_documented_rules() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.pool = nn.AvgPool2d(2)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x))) + x  # residual add
            y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))  # SE-style scaling
            return self.pool(nn.functional.silu(y))

    n = 4 * 8 * 8  # elements of every full-resolution map
    macs = n * 4 * 9
    expected = macs + 2 * n + n + n + n + 4 + n + 2 * n + 4 * (n // 4)  # conv bn relu add mean sigmoid mul silu pool
    p = profile(Net(), 8)
    assert p.macs == macs
    assert p.all_ops == expected
    assert not p.uncounted_ops


def test_activation_and_training_memory() -> None:
    batch, size, f32 = 2, 16, 4
    out = batch * 8 * size * size * f32  # bytes of one 8-channel map
    image = batch * 3 * size * size * f32
    inplace = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1))
    p = profile(inplace, size, batch_size=batch)
    assert p.activation_bytes == 2 * out  # the in-place ReLU allocates nothing
    # Backward keeps the image (for conv1's weight gradient) and the ReLU output (for its own backward and
    # conv2's weight gradient: the same storage, counted once); never the weights.
    assert p.training_bytes == image + out
    copying = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    assert profile(copying, size, batch_size=batch).activation_bytes == 3 * out


def test_profile_leaves_the_model_alone() -> None:
    model = grouped_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, 32)
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@needs("efficientnet_b7")
def test_efficientnet_b7_at_600_is_profiled_in_seconds() -> None:
    profile("vgg11")  # first meta ops import PyTorch's meta kernels; not part of the measurement
    start = time.perf_counter()
    p = profile("efficientnet_b7")
    # ~1 s on one core; a real forward at 600x600 would need ~40 GMACs and gigabytes of memory.
    assert time.perf_counter() - start < 10
    assert p.input_size == (600, 600) and p.macs > 30e9


def test_bad_inputs() -> None:
    with pytest.raises(archlab.UnknownModelError, match="vgg16"):
        profile("vgg61")
    with pytest.raises(ValueError, match="minimum 32x32"):
        profile("vgg11", 31)
    with pytest.raises(ValueError, match="larger than 4096"):
        profile("vgg11", 5000)
    with pytest.raises(ValueError, match="batch_size"):
        profile("vgg11", 64, batch_size=0)
    with pytest.raises(ValueError, match="input_size"):
        profile("vgg11", (64, 64, 3))
    with pytest.raises(ValueError, match="no model card"):
        profile(grouped_net())
    with pytest.raises(ValueError, match="cannot run"):  # no minimum declared: the shape error is named
        profile(nn.Sequential(nn.Conv2d(3, 4, 7)), 5)


# ---------------------------------------------------------------------------------------------- analytic cost


@settings(max_examples=25, deadline=None)
@given(size=st.integers(3, 20), c_in_per_group=st.integers(1, 6), c_out_per_group=st.integers(1, 6),
       groups=st.sampled_from([1, 2, 4]), k=st.sampled_from([1, 3, 5]))
def test_conv_cost_equals_counted_macs(size, c_in_per_group, c_out_per_group, groups, k) -> None:
    c_in, c_out = c_in_per_group * groups, c_out_per_group * groups
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups)
    assert profile(conv, size).macs == conv_cost(size, size, c_in, c_out, k, groups=groups)


def test_depthwise_separable_cost_and_reduction() -> None:
    h, c_in, c_out, k = 14, 32, 64, 3
    pair = nn.Sequential(nn.Conv2d(c_in, c_in, k, padding=1, groups=c_in), nn.Conv2d(c_in, c_out, 1))
    separable = conv_cost(h, h, c_in, c_out, k, depthwise_separable=True)
    assert profile(pair, h).macs == separable
    standard = conv_cost(h, h, c_in, c_out, k)
    assert profile(nn.Conv2d(c_in, c_out, k, padding=1), h).macs == standard
    assert separable / standard == pytest.approx(separable_reduction(c_out, k))
    assert 1 / separable_reduction(c_out, k) == pytest.approx(7.89, abs=0.01)  # MobileNet: "8 to 9 times" less
    with pytest.raises(ValueError):
        conv_cost(h, h, 30, 64, 3, groups=4)
    with pytest.raises(ValueError):
        conv_cost(0, h, 3, 64, 3)


# ----------------------------------------------------------------------------------------- receptive fields


def footprint(model: nn.Module, size: int, unit: int) -> tuple[tuple[int, float], tuple[int, float]]:
    """(extent, centre) per axis of the input pixels that reach output unit (unit, unit) of a 4-D output."""
    x = torch.ones(1, 3, size, size, requires_grad=True)
    model(x)[0, :, unit, unit].sum().backward()
    reached = x.grad[0].abs().sum(0) > 0
    result = []
    for axis in (1, 0):
        idx = reached.any(axis).nonzero().flatten()
        result.append((int(idx.max() - idx.min() + 1), (idx.max() + idx.min()).item() / 2))
    return tuple(result)


def traced(model: nn.Module, size: int):
    """The geometry of the model's output, from the dispatch-mode tracker on meta tensors."""
    return receptive_fields(model, size)[""]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.down = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(x)))
        out += self.down(x)  # in place, as torchvision does: the tracker must follow the mutated tensor
        return self.relu(out)


class Concat(nn.Module):
    """Inception/DenseNet-style: a 3x3 branch and a 3x3-then-dilated-3x3 branch concatenated, mixed by a 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=2, dilation=2))
        self.mix = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.mix(torch.cat([self.a(x), self.b(x)], 1))


CASES = {
    # VGG-11's geometry with 4 channels per conv: a chain of 3x3 convs and 2x2 pools.
    "vgg-chain": (lambda: VGG([[4], [4], [4, 4], [4, 4], [4, 4]]).features, 192, 2, 150, 32),
    "residual-stride2": (lambda: nn.Sequential(
        nn.Conv2d(3, 4, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), BasicBlock(4, 4, 1), BasicBlock(4, 8, 2)),
        96, 5, 51, 8),
    "dilated": (lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=2, dilation=2),
                                      nn.Conv2d(3, 3, 3, stride=2, padding=4, dilation=4)), 40, 9, 15, 2),
    "concatenation": (Concat, 20, 9, 7, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_receptive_field_equals_gradient_footprint(case: str) -> None:
    build, size, unit, expected_rf, expected_stride = CASES[case]
    model = positive(build())
    geometry = traced(model, size)
    (rf_h, centre_h), (rf_w, centre_w) = footprint(model, size, unit)
    assert geometry.size == (rf_h, rf_w) == (expected_rf, expected_rf)
    assert geometry.stride == (expected_stride, expected_stride)
    # The centre of unit i's field is start + i * stride: checks the offset (padding) arithmetic.
    assert (geometry.h.start + unit * geometry.h.jump, geometry.w.start + unit * geometry.w.jump) == (
        centre_h, centre_w)
    # The neighbour's field is one effective stride further.
    (_, next_centre), _ = footprint(model, size, unit + 1)
    assert next_centre - centre_h == expected_stride


def test_squeeze_excitation_is_flagged_as_global_context() -> None:
    model = positive(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), SqueezeExcite(4, 2), nn.Conv2d(4, 4, 3, padding=1)))
    geometry = traced(model, 24)
    assert geometry.size == (5, 5) and geometry.global_context
    # The real dependence: through the SE gate's global mean, one unit sees the whole image.
    (rf_h, _), (rf_w, _) = footprint(model, 24, 12)
    assert (rf_h, rf_w) == (24, 24)
    plain = traced(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), 24)
    assert not plain.global_context and plain.size == (5, 5)


def test_tracker_follows_views_pads_and_global_pools() -> None:
    x = torch.empty(1, 3, 32, 32, device="meta")
    with ReceptiveFieldTracker(x) as tracker:
        padded = nn.functional.pad(x, (1, 2, 3, 4))
        pooled = padded.mean((2, 3))
        flat = x.flatten(1)
    assert tracker.geometry_of(padded).start == (-3, -1)
    assert tracker.geometry_of(pooled).size == (39, 35)  # the whole padded map
    assert tracker.geometry_of(flat).size == (32, 32)


@needs("resnet50")
def test_resnet50_receptive_fields_match_the_literature() -> None:
    # Araujo et al., "Computing Receptive Fields of CNNs" (Distill 2019), torchvision-style ResNet-50 padding.
    fields = receptive_fields("resnet50")
    assert [fields[s].size[0] for s in ("layer1", "layer2", "layer3", "layer4")] == [35, 91, 267, 427]


# ---------------------------------------------------------------------------------------- summary and trace


def test_summary_rows_add_up() -> None:
    s = summarize("vgg16", 64, depth=2)
    p = profile("vgg16", 64)
    assert s.macs == p.macs == sum(r.macs for r in s.rows)
    assert sum(r.share for r in s.rows) == pytest.approx(1.0)
    convs = [r for r in s.rows if r.type == "Conv2d"]
    assert len(convs) == 13 and sum(r.params for r in s.rows) == p.params
    assert convs[0].output_shape == (1, 64, 64, 64) and convs[0].receptive_field == (3, 3)
    assert convs[-1].receptive_field == (196, 196) and convs[-1].stride == (16, 16)
    top = summarize("vgg16", 64, depth=1)
    assert [r.name for r in top.rows] == ["features", "avgpool", "classifier"]
    assert top.rows[-1].output_shape == (1, 1000)  # run through a slice, classifier[:-1], then classifier[-1]
    with pytest.raises(ValueError, match="depth"):
        summarize("vgg16", 64, depth=0)


def test_vgg16_stage_trace() -> None:
    t = stage_trace("vgg16")
    assert t.resolution_pattern == "224→112→56→28→14→7→1"
    assert t.channel_pattern == "3→64→128→256→512→4096"
    stages = t.stages[1:-1]
    # conv layers per stage, the paper's Table 1 column D; then the last max-pool's 7x7 map (no conv)
    assert [s.blocks for s in stages] == [2, 2, 3, 3, 3, 0]
    with torch.device("meta"):
        model = archlab.create_model("vgg16")
    assert [s.stride for s in stages] == [f["reduction"] for f in model.feature_info]
    assert [s.receptive_field for s in stages] == [5, 14, 40, 92, 196, 212]  # pool5: the textbook 212
    # The last row is the 4096-wide output of fc7, not a pooled 512-channel map: named for what it is.
    assert t.stages[-1].name == "pre-logits" and t.stages[-1].channels == 4096


@needs("resnet50")
def test_resnet50_stage_trace() -> None:
    t = stage_trace("resnet50")
    assert t.resolution_pattern == "224→112→56→28→14→7→1"
    assert t.channel_pattern == "3→64→256→512→1024→2048"
    assert [s.blocks for s in t.stages[2:-1]] == [3, 4, 6, 3]
    assert t.stages[-1].name == "pool"  # the head only pools: 2048 channels in, 2048 out


@pytest.mark.parametrize("name, blocks", [
    ("cifar_resnet20", [3, 3, 3]),  # the stem conv is not a block
    ("densenet121", [6, 12, 24, 16]),  # the paper's Table 1; transitions are not blocks
    ("mobilenet_v2", [1, 2, 3, 7, 4]),  # Table 2's n, stages merged by resolution; the head 1x1 conv is not a block
    ("efficientnet_b0", [1, 2, 2, 6, 5]),
    ("mobilenet_v3_large", [1, 2, 3, 6, 3]),  # the 15 bnecks of Table 1
])
def test_stage_trace_counts_blocks_as_the_papers_do(name: str, blocks: list[int]) -> None:
    assert [s.blocks for s in stage_trace(name).stages[1:-1]] == blocks


def test_stage_trace_needs_feature_info() -> None:
    with pytest.raises(ValueError, match="feature_info"):
        stage_trace(grouped_net(), 32)


# ---------------------------------------------------------------------------------------------- the commands


def test_summary_command(capsys) -> None:
    assert main(["summary", "vgg11", "--input", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [64, 64] and data["macs"] == profile("vgg11", 64).macs
    assert main(["summary", "vgg11", "--input", "64", "--csv", "--depth", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,type,output_shape") and lines[1].startswith("features,Sequential,1x512x2x2")
    assert main(["summary", "vgg11", "--input", "64"]) == 0
    assert "features.0" in capsys.readouterr().out


def test_summary_plot_of_params_macs_and_time_shares(capsys, tmp_path) -> None:
    png = tmp_path / "shares.png"
    assert main(["summary", "mobilenet_v3_small", "--input", "64", "--time", "--plot", str(png), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # the JSON on stdout is unchanged by the plot
    # Rows timed one by one add up to about the whole pass (the rest is an "(other)" row).
    assert all(0 <= r["time_share"] <= 1 for r in data["rows"])
    assert sum(r["time_share"] for r in data["rows"]) == pytest.approx(1.0, abs=0.2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_trace_command(capsys) -> None:
    assert main(["trace", "vgg11"]) == 0
    assert "224→112→56→28→14→7→1 and 3→64→128→256→512→4096" in capsys.readouterr().out
    assert main(["trace", "vgg11", "--input", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resolution_pattern"] == "64→32→16→8→4→2→1"


def test_trace_several_models_with_a_plot(capsys, tmp_path) -> None:
    png = tmp_path / "patterns.png"
    assert main(["trace", "vgg11", "mobilenet_v2", "--input", "64", "--plot", str(png), "--json"]) == 0
    traces = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in traces] == ["vgg11", "mobilenet_v2"]
    assert traces[1]["resolution_pattern"] == "64→32→16→8→4→2→1"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["trace", "vgg11", "resnet18", "vgg11"]) == 0
    out = capsys.readouterr().out
    assert "vgg11 at 224x224" in out and "resnet18 at 224x224" in out
    assert out.count("vgg11 at 224x224") == 1  # a model named twice is traced once


@pytest.mark.parametrize("argv, message", [
    (["trace", "vgg11", "--plot", "out.txt"], ".png, .svg or .pdf"),
    (["trace", "vgg11", "--plot", "/no/such/folder/p.png"], "does not exist"),
    (["summary", "vgg61"], "did you mean"),
    (["trace", "vgg11", "--input", "16"], "minimum"),
    (["summary", "vgg11", "--input", "9999"], "larger than"),
    (["summary", "vgg11", "--depth", "0"], "depth"),
    (["summary", "vgg11", "--plot", "shares.jpg"], ".png, .svg or .pdf"),
    (["trace", "vgg11", "--input", "abc"], "integer"),
])
def test_commands_reject_bad_input_in_one_line(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_every_registered_model_is_counted_whole() -> None:
    # all_ops is only a total if every op of every model follows a rule (ConvNeXt's layer norm once left rsqrt out).
    left_out = {name: profile(name, training_memory=False).uncounted_ops for name in sorted(REGISTERED)}
    assert not {name: ops for name, ops in left_out.items() if ops}


def test_profile_all_benchmark(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_all.py"
    spec = importlib.util.spec_from_file_location("profile_all", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main("vgg1[16]") == 0
    out = capsys.readouterr().out
    assert "vgg11" in out and "vgg16" in out and "2 models in" in out


@needs("resnet18")
def test_summary_effective_padding_of_the_resnet_stem() -> None:
    # conv 7x7/2 pad 3: the first unit's field starts 3 pixels before the image; the 3x3/2 pad-1 max-pool on a
    # jump-2 map adds 1 * 2 more: 5. (The offsets themselves are checked against gradient footprints above.)
    rows = {r.name: r for r in summarize("resnet18", 224, depth=1).rows}
    assert (rows["conv1"].receptive_field, rows["conv1"].stride, rows["conv1"].padding) == ((7, 7), (2, 2), (3, 3))
    assert (rows["maxpool"].receptive_field, rows["maxpool"].stride, rows["maxpool"].padding) == (
        (11, 11), (4, 4), (5, 5))


def test_macs_vs_time_benchmark(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "macs_vs_time.py"
    spec = importlib.util.spec_from_file_location("macs_vs_time", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["mobilenet_v3_small"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "mobilenet_v3_small" and 0 < float(row[2]) < float(row[4]) <= 100  # depthwise MACs within convs


def test_cost_command_formula_equals_counted_for_every_variant(capsys) -> None:
    # ResNeXt's 3x3 at stage 2 (256 -> 256 at 56x56, 32 groups) and a strided MobileNet-style layer.
    for argv in (["--cin", "256", "--cout", "256", "--size", "56", "--groups", "32"],
                 ["--cin", "32", "--cout", "64", "--size", "112", "--stride", "2", "-k", "5"]):
        assert main(["cost", *argv, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert all(r["macs"] == r["counted"] for r in out["rows"])
        separable = out["rows"][-1]
        assert separable["relative"] == pytest.approx(out["separable_reduction_formula"])
    assert out["output"] == 56 and [r["layer"].split()[0] for r in out["rows"]] == ["standard", "depthwise"]
    assert main(["cost", "--cin", "256", "--cout", "256", "--size", "56", "--groups", "32"]) == 0
    assert "32.0x fewer" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--cin", "256", "--cout", "256", "--size", "56", "--groups", "3"], "groups=3 must divide"),
    (["--cin", "8", "--cout", "8", "--size", "9", "-k", "4"], "--kernel must be odd"),
    (["--cin", "0", "--cout", "8", "--size", "9"], "--cin"),
    (["--cout", "8", "--size", "9"], "--cin"),
])
def test_cost_command_bad_input_is_one_line_exit_2(capsys, argv, message) -> None:
    assert main(["cost", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_summary_time_rows_add_up_to_the_forward_pass(capsys) -> None:
    from archlab.analysis.latency import with_times

    s = with_times(summarize("mobilenet_v2", 64, depth=1))
    assert [r.name for r in s.rows] == ["features", "avgpool", "classifier", "(other)"]
    assert all(r.time_ms is not None and r.time_ms >= 0 for r in s.rows)
    # Rows do not nest and (other) is the rest, so the row times make up the whole pass.
    assert sum(r.time_ms for r in s.rows) == pytest.approx(s.time_ms, rel=0.05)
    assert sum(r.time_share for r in s.rows) == pytest.approx(1.0, rel=0.05)
    assert s.rows[0].time_share > 0.5  # the convolutions, not the head, take the time
    assert s.macs == summarize("mobilenet_v2", 64, depth=1).macs  # timing leaves the counts alone
    assert main(["summary", "vgg11", "--input", "32", "--depth", "1", "--time", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("time_ms,time_share") and len(lines) == 5
    assert main(["summary", "vgg11", "--input", "32", "--time"]) == 0
    assert "% time" in capsys.readouterr().out
    assert main(["summary", "vgg11", "--input", "2048", "--time"]) == 2
    assert "1024 or less" in capsys.readouterr().err
