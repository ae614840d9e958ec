"""archlab.bench and `archlab bench`: what gets timed, in which order, what is reported. Nothing here asserts a
speed: timings on a shared machine are noise, only their bookkeeping is checked."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import archlab
from archlab.bench import (
    Contender,
    Settings,
    _Runner,
    bench_row,
    build_ours,
    build_reference,
    geometric_mean,
    paired_ratio,
    reference_for,
    summarize,
)
from archlab.cli import main

FAST = ["--repeats", "2", "--warmup", "1"]


def run_json(capsys, argv):
    assert main(["bench", *argv, *FAST, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rows_per_model_and_batch_with_consistent_figures(capsys):
    out = run_json(capsys, ["cifar_resnet20", "--input", "16", "--batch", "1,3"])
    rows = out["rows"]
    assert [(r["model"], r["impl"], r["batch"]) for r in rows] == [
        ("cifar_resnet20", "ours", 1), ("cifar_resnet20", "ours", 3)]
    for r in rows:
        assert r["repeats"] == 2 and r["input"] == 16
        assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
    assert out["settings"]["device"] == "cpu" and out["settings"]["mode"] == "infer"


def test_vs_times_both_references_in_the_same_run(capsys):
    rows = run_json(capsys, ["resnet18", "--input", "32", "--batch", "1", "--vs", "torchvision,timm"])["rows"]
    assert [r["impl"] for r in rows] == ["ours", "torchvision:resnet18", "timm:resnet18"]
    ours = rows[0]
    for r in rows[1:]:
        assert r["ours_over_theirs"] == pytest.approx(r["median_ms"] / ours["median_ms"])


@pytest.mark.parametrize(
    "name, source, expected",
    [
        ("resnet50", "torchvision", "torchvision:resnet50"),
        ("resnet50", "timm", "timm:resnet50"),
        ("mobilenet_v2", "timm", "timm:mobilenetv2_100"),
        ("mobilenet_v3_large", "timm", "timm:mobilenetv3_large_100"),
        ("efficientnet_b0", "timm", "timm:efficientnet_b0"),
        ("seresnet50", "timm", "timm:seresnet50"),
        ("seresnet50", "torchvision", None),
        ("cifar_resnet20", "torchvision", None),
    ],
)
def test_reference_of_the_same_architecture(name, source, expected):
    assert reference_for(name, source) == expected


def test_missing_reference_is_noted_not_fatal(capsys):
    out = run_json(capsys, ["cifar_resnet20", "--input", "16", "--batch", "1", "--vs", "torchvision"])
    assert [r["impl"] for r in out["rows"]] == ["ours"]
    assert any("cifar_resnet20" in n and "torchvision" in n for n in out["notes"])


class _Recorder(nn.Module):
    def __init__(self, tag: str, calls: list[str]) -> None:
        super().__init__()
        self.tag, self.calls, self.lin = tag, calls, nn.Linear(3, 2)

    def forward(self, x):
        self.calls.append(self.tag)
        return self.lin(x.mean((2, 3)))


def test_contenders_are_interleaved_and_alternate_who_goes_first():
    calls: list[str] = []
    contenders = [Contender("ours", lambda: _Recorder("A", calls), is_ours=True),
                  Contender("theirs", lambda: _Recorder("B", calls))]
    bench_row(contenders, 1, Settings(repeats=3, warmup=1), input_size=4)
    timed_and_warmup = calls[:8]  # then one extra step each for the memory figure
    assert timed_and_warmup == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert [len(c.times_ms) for c in contenders] == [3, 3]


def test_train_mode_takes_an_optimizer_step():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    model(torch.randn(2, 3, 6, 6))
    before = [p.detach().clone() for p in model.parameters()]
    runner = _Runner(Contender("m", lambda: model), Settings(mode="train"), batch=2, size=6)
    runner.step()
    assert runner.model.training
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "extra",
    [["--mode", "train"], ["--channels-last", "--fused"], ["--amp", "bf16"]],
)
def test_modes_and_formats_run(capsys, extra):
    result = run_json(capsys, ["mobilenet_v3_small", "--input", "32", "--batch", "2", *extra])
    rows = result["rows"]
    assert len(rows) == 1 and rows[0]["median_ms"] > 0
    assert result["settings"]["onednn"] == ("--fused" in extra)  # the fused form on CPU is the oneDNN one


def test_table_output(capsys):
    assert main(["bench", "cifar_resnet20", "--input", "16", "--batch", "2", *FAST]) == 0
    out = capsys.readouterr().out
    assert "cifar_resnet20" in out and "img/s" in out and "ours/theirs" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_net"], "unknown model"),
        (["resnet18", "--batch", "0"], ">= 1"),
        (["resnet18", "--batch", "2,x"], "integers"),
        (["resnet18", "--vs", "keras"], "--vs"),
        (["resnet18", "--fused", "--mode", "train"], "--fused"),
        (["densenet121", "--input", "16"], "--input >= 29"),
        (["resnet18", "--repeats", "0"], "--repeats"),
        (["timm:no_such_net"], "unknown timm model"),
        (["torchvision:no_such_net"], "unknown torchvision model"),
        (["resnet18", "--plot", "speed.txt"], ".png, .svg or .pdf"),
        (["resnet18", "--plot", "/no/such/folder/speed.png"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("batches", ["1,2", "2"])  # a line per implementation against batch; bars for one batch
def test_plot_of_images_per_second(capsys, tmp_path, batches):
    png = tmp_path / "speed.png"
    argv = ["cifar_resnet20", "mobilenet_v3_small", "--input", "32", "--batch", batches, "--vs", "torchvision"]
    rows = run_json(capsys, [*argv, "--plot", str(png)])["rows"]
    assert len(rows) == 3 * len(batches.split(","))  # the JSON on stdout is unchanged by the plot
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without a GPU")
def test_cuda_without_gpu_is_one_line_exit_2(capsys):
    assert main(["bench", "resnet18", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_summary_statistics():
    c = Contender("x", lambda: nn.Identity(), times_ms=[4.0, 1.0, 3.0, 2.0, 100.0])
    s = summarize(c, batch=10)
    assert (s["median_ms"], s["min_ms"], s["max_ms"]) == (3.0, 1.0, 100.0)
    assert (s["q1_ms"], s["q3_ms"]) == (2.0, 4.0)  # the outlier moves max, not the IQR
    assert s["images_per_s"] == pytest.approx(10 * 1e3 / 3.0)
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)


def test_ours_holds_the_references_weights_so_both_compute_the_same_function():
    # --vs compares implementations, not random draws: the reference is built from a fixed seed, and ours is
    # loaded with that build's weights, so the two give the same logits.
    ref = build_reference("torchvision:resnet18").eval()
    again = build_reference("torchvision:resnet18")
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), again.state_dict().values()))
    ours = build_ours("resnet18", "torchvision:resnet18").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    state = torch.random.get_rng_state()
    build_reference("torchvision:resnet18", seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is left alone


def load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_figures_script_runs_and_records_its_command(tmp_path):
    # The script a GPU session runs (benchmarks/gpu_figures.py), checked on CPU with tiny settings.
    module = load_script("gpu_figures")
    out = tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--models", "mobilenet_v2", "--input", "32", "--train-batch", "2",
            "--infer-batch", "2", "--repeats", "1", "--warmup", "0", "--amp", "none", "--out", str(out)]
    assert module.main(argv) == 0
    text = out.read_text()
    assert "--models mobilenet_v2" in text and "### Training" in text and "### Inference, batch 2" in text
    assert text.count("| mobilenet_v2 |") == 2


def test_inference_form_profile_script_runs(capsys):
    threads = torch.get_num_threads()
    try:
        assert load_script("profile_inference_form").main(
            ["resnet18", "--batch", "1", "--input", "32", "--steps", "1", "--threads", str(threads)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| resnet18 | ms / forward | share |" in out and "mkldnn::_convolution_pointwise" in out


def test_goal_script_times_the_deployment_form_against_its_parts(tmp_path):
    # benchmarks/bench_vs_reference.py part (b), tiny: every deployment model gets the fused+CL form, torchvision
    # eager and CL, and the BN-fold-only form (the oneDNN step's own gain), with geometric means and verdicts.
    out = tmp_path / "b.md"
    threads = torch.get_num_threads()
    try:
        assert load_script("bench_vs_reference").main(
            ["--skip-a", "--input", "32", "--repeats", "1", "--warmup", "0", "--threads", str(threads),
             "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "oneDNN step's gain" in text and "**geometric mean**" in text
    assert all(f"| {m} |" in text for m in ("resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large",
                                            "efficientnet_b0"))
    assert "goal >= 1.5 vs eager:" in text


def test_paired_ratio_pairs_the_steps_of_each_repeat():
    # A slow patch hitting both sides of repeats 3 and 4 alike leaves every paired ratio at 2.
    ours = Contender("ours", lambda: None, times_ms=[10, 10, 50, 50, 10])
    theirs = Contender("theirs", lambda: None, times_ms=[20, 20, 100, 100, 20])
    assert paired_ratio(theirs, ours) == (2.0, 2.0, 2.0)
    ours.times_ms, theirs.times_ms = [10, 10, 10, 10, 10], [9, 10, 11, 12, 13]
    assert paired_ratio(theirs, ours) == pytest.approx((1.1, 1.0, 1.2))
    assert paired_ratio(Contender("t", lambda: None, times_ms=[3]), Contender("o", lambda: None, times_ms=[2])) \
        == (1.5, 1.5, 1.5)


def test_fuse_reference_models_script_runs(capsys):
    # benchmarks/fuse_reference_models.py with tiny settings: it checks outputs, times and prints one row per model.
    module = load_script("fuse_reference_models")
    assert module.main(["timm:mobilenetv3_small_100", "--input", "32", "--batch", "1", "--repeats", "1",
                        "--warmup", "0"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| timm:mobilenetv3_small_100")]
    assert len(row) == 1 and float(row[0].split("|")[-2]) < 1e-4


def test_a_librarys_own_model_is_timed_as_it_is_and_fused_on_request(capsys):
    out = run_json(capsys, ["timm:mobilenetv3_small_100", "torchvision:resnet18", "--input", "32", "--batch", "1",
                            "--fused", "--channels-last", "--vs", "timm"])
    assert [(r["model"], r["impl"], r["fused"]) for r in out["rows"]] == [
        ("timm:mobilenetv3_small_100", "timm:mobilenetv3_small_100", True),
        ("torchvision:resnet18", "torchvision:resnet18", True)]
    assert all(r["input"] == 32 and r["ours_over_theirs"] is None for r in out["rows"])
    assert any("timed alone" in note for note in out["notes"])


def test_blocks_are_cut_with_the_input_each_sees_in_the_model():
    # benchmarks/blocks_vs_onnxruntime.py times each block alone: chained, the cut blocks must be the features.
    module = load_script("blocks_vs_onnxruntime")
    model = archlab.create_model("efficientnet_b0").eval()
    parts = module.blocks(model)
    assert [name for name, _ in parts][:3] == ["features.0", "features.1.0", "features.2.0"]  # stages opened
    x = torch.randn(1, 3, 64, 64)
    inputs = module.block_inputs(model, parts, x)
    with torch.no_grad():
        for (name, block), xin, following in zip(parts, inputs, [*inputs[1:], None]):
            out = block(xin)
            if following is not None:
                assert torch.equal(out, following), name
        assert torch.equal(out, model.features(x))
    with pytest.raises(ValueError, match="no `features`"):
        module.blocks(archlab.create_model("resnet18"))


def test_blocks_vs_onnxruntime_script_runs(capsys):
    module = load_script("blocks_vs_onnxruntime")
    assert module.main(["mobilenet_v3_small", "--input", "32", "--steps", "2", "--warmup", "0", "--rounds", "1",
                        "--threads", "1", "--flush-mib", "1"]) == 0
    out = capsys.readouterr().out
    assert "caches flushed (1 MiB rewritten) before each step" in out
    rows = [line for line in out.splitlines() if line.startswith("| features.")]
    assert len(rows) == len(module.blocks(archlab.create_model("mobilenet_v3_small")))
    assert "| **whole model** |" in out and "| **sum of blocks** |" in out
    assert all(float(row.split("|")[-2]) > 0 for row in rows)
