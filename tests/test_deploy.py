"""archlab.deploy: BatchNorm folding (exact on every registered model) and the `archlab export` ONNX command."""

from __future__ import annotations

import json
import subprocess
import sys
import re

import pytest
import torch
import torchvision
from torch import nn

import archlab
from archlab.cli import main
from archlab.deploy import fuse
from archlab.models.base import ArchNet
from helpers import HEAVIEST


def randomize_norms_moderately(model: nn.Module, seed: int = 0) -> None:
    """Per-channel BN statistics and affine terms far from the identity, so that a wrong fold shows; the
    scales stay below 1 so that 1000-layer residual nets do not overflow float32 (which would hide any error)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.3)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def assert_close_to(fused_out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within 1e-4 on the scale of the logits (random-init logits range from 1e-3 to 1e2 across families)."""
    scale = ref.abs().max().item()
    assert torch.isfinite(ref).all() and scale > 0
    err = (fused_out - ref).abs().max().item()
    assert err <= 1e-4 * scale, f"fused differs by {err:.3g} on logits of magnitude {scale:.3g}"


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", [n for n in archlab.list_models() if n not in HEAVIEST])
def test_fused_model_matches_eval_model(name):
    card = archlab.model_card(name)
    model = archlab.create_model(name, drop_path_rate=0.1 if "resnet" in name else 0.0)
    randomize_norms_moderately(model)
    model.eval()
    size = max(card.min_input_size, 32)
    x = torch.randn(2, model.in_chans, size, size)
    fused = fuse(model)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert_close_to(out, ref)
    s = fused.fuse_summary
    # Every norm is either folded or deliberately kept, and the fold really happened where there are norms.
    assert len(s.folded) + len(s.kept_norms) == count_norms(model)
    assert count_norms(fused) == len(s.kept_norms)
    if count_norms(model):
        assert s.folded
    assert not any(isinstance(m, nn.Dropout) for m in fused.modules())


def test_fuse_keeps_class_api_and_leaves_original_untouched():
    model = archlab.create_model("resnet18").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert isinstance(fused, type(model)) and isinstance(fused, ArchNet) and not fused.training
    assert fused.card == model.card and fused.feature_info == model.feature_info
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_norms(model) == 20 and count_norms(fused) == 0  # every ResNet norm follows a conv
    with pytest.raises(ValueError, match="input channels"):  # the input checks survive fusion
        fused(torch.randn(1, 1, 64, 64))


def test_downsample_and_attribute_pairs_are_folded():
    fused = fuse(archlab.create_model("resnet50").eval())
    folded = dict(fused.fuse_summary.folded)
    assert folded["layer1.0.conv1"] == "layer1.0.bn1"
    assert folded["layer1.0.downsample.0"] == "layer1.0.downsample.1"


def test_densenet_keeps_pre_activation_norms():
    model = archlab.create_model("densenet121").eval()
    s = fuse(model).fuse_summary
    # BN before a (zero-padded) conv cannot be folded exactly: norm1 of each layer, the transitions, norm5.
    assert s.kept_norms and all(re.search(r"(denselayer\d+\.norm1|transition\d\.norm|norm5)$", n) for n in s.kept_norms)
    assert any(b.endswith("norm2") for _, b in s.folded)  # conv1 -> norm2 inside a dense layer does fold


class _ConvOutputReadTwice(nn.Module):
    """y = bn(conv(x)) + conv(x): folding the norm into the conv would change the second reader."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _UntraceableRoot(nn.Module):
    """Control flow on a tensor value in the root: fx cannot trace it, its children can be."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.sum() > -1e9 else x


@pytest.mark.parametrize(
    "module, folded",
    [
        (_ConvOutputReadTwice(), []),
        (_UntraceableRoot(), [("body.0", "body.1")]),
        (torchvision.models.resnet18(), None),  # a torchvision model: conv1/bn1 pairs, downsample Sequentials
    ],
)
def test_fold_follows_the_dataflow(module, folded):
    randomize_norms_moderately(module)
    module.eval()
    x = torch.randn(2, 3, 32, 32)
    fused = fuse(module)
    with torch.no_grad():
        assert_close_to(fused(x), module(x))
    if folded is not None:
        assert fused.fuse_summary.folded == folded
    else:
        assert count_norms(fused) == 0


# ---------------------------------------------------------------------------------------------- archlab export


@pytest.mark.parametrize("name, fused", [("cifar_resnet20", True), ("mobilenet_v3_small", False)])
def test_export_runs_in_onnxruntime(tmp_path, capsys, name, fused):
    path = tmp_path / f"{name}.onnx"
    argv = ["export", name, "--onnx", str(path), "--input", "32", "--repeats", "1", "--json"]
    assert main(argv + (["--fused"] if fused else [])) == 0
    out = json.loads(capsys.readouterr().out)
    assert path.stat().st_size > 0
    assert out["matches"] and out["max_abs_diff"] <= 1e-4 and out["ort_latency_ms"] > 0
    import onnx

    graph_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("BatchNormalization" not in graph_ops) if fused else True


def test_export_prints_check_and_latency(tmp_path, capsys):
    assert main(["export", "cifar_resnet20", "--onnx", str(tmp_path / "m.onnx"), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "max |diff|" in out and "onnxruntime" in out and "ms" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "no_such_net", "--onnx", "x.onnx"], "unknown model"),
        (["export", "densenet121", "--onnx", "x.onnx", "--input", "16"], "--input >= 29"),
        (["export", "resnet18", "--onnx", "/no/such/dir/x.onnx"], "does not exist"),
        (["export", "resnet18"], "--onnx"),
        (["export", "resnet18", "--onnx", "x.onnx", "--opset", "6"], "opset 7 and above"),
        (["export", "resnet18", "--pt2", "x.pt2", "--opset", "13"], "--opset applies to --onnx only"),
        (["export", "resnet18", "--onnx", "x.onnx", "--pt2", "x.pt2"], "not allowed with"),
        (["export", "resnet18", "--pt2", "/no/such/dir/x.pt2"], "does not exist"),
        (["export", "resnet18", "--pt2", "x.pt2", "--weights", "no_such.pt"], "no checkpoint file"),
        (["export", "resnet18", "--pt2", "x.pt2", "--pretrained", "--num-classes", "10"], "--num-classes applies"),
        (["export", "resnet18", "--pt2", "x.pt2", "--source", "timm"], "--source applies to --weights"),
        (["export", "resnet18", "--pt2", "x.pt2", "--pretrained", "NO_SUCH_TAG"], "unknown pretrained weights"),
        (["export", "resnet18", "--pt2", "x.pt2", "--weights", "a.pt", "--pretrained"], "not allowed with"),
    ],
)
def test_export_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_unexportable_model_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert main(["export", "cifar_resnet20", "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot export cifar_resnet20" in err and "aten::fancy" in err and len(err.strip().splitlines()) == 1


def test_export_writes_a_torch_export_program(tmp_path, capsys):
    path = tmp_path / "m.pt2"
    argv = ["export", "cifar_resnet20", "--pt2", str(path), "--fused", "--repeats", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "pt2" and out["pt2"] == str(path) and out["matches"] and out["max_abs_diff"] <= 1e-4
    assert out["program_latency_ms"] > 0 and path.stat().st_size > 0
    assert main(["export", "cifar_resnet20", "--pt2", str(path), "--repeats", "1"]) == 0
    assert "exported program vs PyTorch" in capsys.readouterr().out


# One model per family: torch.export traces the whole forward, input checks included, with the batch axis dynamic.
EXPORT_FAMILIES = ["alexnet", "vgg11_bn", "resnet18", "seresnet50", "densenet121", "mobilenet_v1", "mobilenet_v2",
                   "mobilenet_v3_small", "efficientnet_b0", "cifar_resnet20", "preact_resnet164"]


@pytest.mark.parametrize("name", EXPORT_FAMILIES)
def test_torch_export_with_dynamic_batch_on_every_family(name):
    from archlab.deploy.export import export_program

    card = archlab.model_card(name)
    size = max(card.min_input_size, 32)
    model = archlab.create_model(name)
    randomize_norms_moderately(model)
    model.eval()
    program = export_program(model, size).module()
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        assert_close_to(program(x[:1]), ref[:1])
        assert_close_to(program(x), ref)


def test_saved_torch_export_program_runs_without_archlab(tmp_path):
    """The .pt2 file is self-contained: a Python that never imports archlab loads it and gives the model's
    outputs, at batch sizes other than the one the export saw."""
    from archlab.deploy.export import export_program

    model = archlab.create_model("mobilenet_v3_small")
    randomize_norms_moderately(model)
    model.eval()
    path, x_path, y_path = tmp_path / "m.pt2", tmp_path / "x.pt", tmp_path / "y.pt"
    export_program(model, 32, str(path))
    x = torch.randn(5, 3, 32, 32)
    torch.save(x, x_path)
    script = (
        "import sys, torch\n"
        f"m = torch.export.load({str(path)!r}).module()\n"
        f"x = torch.load({str(x_path)!r})\n"
        f"torch.save([m(x[:1]), m(x)], {str(y_path)!r})\n"
        "assert not any(k.startswith('archlab') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    one, five = torch.load(y_path)
    with torch.no_grad():
        ref = model(x)
    assert_close_to(one, ref[:1])
    assert_close_to(five, ref)


def _run_program(path, x):
    with torch.no_grad():
        return torch.export.load(str(path)).module()(x)


def test_export_takes_a_train_checkpoint_and_its_class_count(tmp_path, capsys):
    """The file holds the given weights, not a fresh initialisation; the class count comes from the run."""
    from archlab.train.checkpoint import save_checkpoint

    trained = archlab.create_model("cifar_resnet20", num_classes=7)
    randomize_norms_moderately(trained)
    trained.eval()
    config = {"model": "cifar_resnet20", "num_classes": 7, "preprocessing": {"input_size": 24}}
    ckpt = save_checkpoint(tmp_path, {"config": config, "model": trained.state_dict()})
    out_file = tmp_path / "m.pt2"
    argv = ["export", "cifar_resnet20", "--weights", str(ckpt), "--pt2", str(out_file), "--repeats", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == str(ckpt) and result["input"] == 24  # the size the run trained at
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        assert_close_to(_run_program(out_file, x), trained(x))


def test_export_takes_a_reference_state_dict(tmp_path, capsys):
    ref = torchvision.models.mobilenet_v3_small()
    randomize_norms_moderately(ref)
    ref.eval()
    weights, onnx_file = tmp_path / "tv.pth", tmp_path / "m.onnx"
    torch.save(ref.state_dict(), weights)
    argv = ["export", "mobilenet_v3_small", "--weights", str(weights), "--source", "torchvision", "--fused",
            "--onnx", str(onnx_file), "--input", "64", "--repeats", "1"]
    assert main(argv) == 0
    assert f"weights: {weights}" in capsys.readouterr().out.replace("\n", "")
    import onnxruntime as ort

    x = torch.randn(2, 3, 64, 64)
    got = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert_close_to(torch.from_numpy(got), ref(x))


def test_export_without_weights_says_they_are_random(tmp_path, capsys):
    assert main(["export", "cifar_resnet20", "--onnx", str(tmp_path / "m.onnx"), "--repeats", "1"]) == 0
    assert "random initialisation" in capsys.readouterr().out
