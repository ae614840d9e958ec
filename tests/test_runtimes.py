"""Deployment runtimes side by side (`archlab bench --runtime`, archlab.deploy.runtimes / timing), the bf16 inference
form (fuse(precision="bf16")), and every bad input of those flags. Nothing here asserts a speed: only what is
timed, how, and that outputs are compared and a disagreeing runtime is marked."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

import archlab
from archlab.cli import main
from archlab.deploy import dnnl_capi, fuse, precision, runtimes
from archlab.deploy.onednn import FusedConv2d
from archlab.deploy.timing import bench_runtimes

FAST = ["--repeats", "2", "--warmup", "1"]
TINY = ["cifar_resnet20", "--input", "32", "--batch", "2"]
# oneDNN runs bf16 here at all (natively or emulated): the bf16 numerics are tested wherever it does.
bf16_kernels = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                                  reason="this PyTorch/CPU has no oneDNN bf16 kernels")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend the CPU computes bf16 natively (tests check numerics and plumbing, not speed)."""
    monkeypatch.setattr(precision, "native_bf16", lambda: True)


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error: ") and message in err and len(err.strip().splitlines()) == 1, err


def table_rows(out: str) -> list[str]:
    """The body rows of a rich table, cells joined by single spaces."""
    return [" ".join(c.strip() for c in line.strip("│ ").split("│")) for line in out.splitlines()
            if line.startswith("│")]


@bf16_kernels
def test_bf16_form_casts_weights_once_keeps_fusions_and_stays_close_to_fp32(bf16_cpu):
    model = archlab.create_model("cifar_resnet20").eval()
    fp32 = fuse(model, onednn=True)
    bf16 = fuse(model, onednn=True, precision="bf16").to(memory_format=torch.channels_last)
    assert bf16.fuse_summary.precision == "bf16" and bf16.fuse_summary.post_ops == fp32.fuse_summary.post_ops
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model it came from is untouched
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    convs = [m for m in bf16.modules() if isinstance(m, FusedConv2d)]
    assert convs and convs[0]._use_onednn(x.to(torch.bfloat16), None)  # the oneDNN path takes bf16 too
    with torch.inference_mode():
        ref, out = model(x), bf16(x)
    assert out.dtype == torch.float32  # fp32 in, fp32 out: the hooks cast
    assert (out - ref).abs().max() <= runtimes.agreement_tolerance("bf16", ref.abs().max().item())
    assert (out - ref).abs().max() > 0  # it really computed in bf16


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch, capsys):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    with pytest.raises(precision.PrecisionUnsupported, match="no native bf16"):
        fuse(archlab.create_model("cifar_resnet20"), onednn=True, precision="bf16")
    one_line_error(capsys, ["bench", *TINY, "--precision", "bf16", "--fused", "--channels-last"], "no native bf16")
    one_line_error(capsys, ["bench", *TINY, "--runtime", "fused", "--precision", "fp32,bf16"], "no native bf16")


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512bw"}))
    assert not precision.native_bf16()  # AVX-512 without its BF16 extension: emulated, refused
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.native_bf16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*TINY, "--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
        ([*TINY, "--runtime", "fused", "--precision", "fp8"], "unknown precision 'fp8'"),
        ([*TINY, "--precision", "bf16", "--mode", "train"], "--precision is for --mode infer"),
        ([*TINY, "--precision", "bf16", "--amp", "bf16"], "give one"),
        ([*TINY, "--runtime", "openvino", "--device", "cuda"], "CPU only"),
        ([*TINY, "--runtime", "onnxruntime", "--precision", "bf16"], "fp32 only"),
        ([*TINY, "--runtime", "fused", "--vs", "torchvision"], "--vs does not apply"),
        ([*TINY, "--runtime", "fused", "--fused"], "--fused does not apply"),
        ([*TINY, "--runtime", "eager", "--mode", "train"], "--mode train does not apply"),
        ([*TINY, "--same-process"], "--same-process applies to --runtime"),
        ([*TINY, "--precision", "fp32,bf16"], "several precisions"),
    ],
)
def test_bad_runtime_input_is_one_line_exit_2(capsys, argv, message):
    one_line_error(capsys, ["bench", *argv], message)


@pytest.mark.parametrize("runtime, package", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_package_names_the_extra(monkeypatch, capsys, runtime, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(runtimes.RuntimeUnavailable, match=r'pip install -e "\.\[deploy\]"'):
        runtimes.check_runtimes([runtime], ["fp32"])
    one_line_error(capsys, ["bench", *TINY, "--runtime", f"fused,{runtime}"], '.[deploy]')
    if runtime == "openvino":
        one_line_error(capsys, ["export", "cifar_resnet20", "--openvino", "ir"], '.[deploy]')


def test_a_runtime_that_runs_some_precisions_is_timed_at_those():
    pairs = runtimes.check_runtimes(["eager", "onnxruntime"], ["fp32"])
    assert pairs == [("eager", "fp32"), ("onnxruntime", "fp32")]
    if precision.native_bf16():
        pairs = runtimes.check_runtimes(["onnxruntime", "openvino"], ["fp32", "bf16"])
        assert pairs == [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def test_every_runtime_row_has_speed_and_agreement_with_eager(capsys, tmp_path):
    png = tmp_path / "runtimes.png"
    out = main(["bench", *TINY, "--runtime", "eager,fused,onnxruntime,openvino", "--same-process", *FAST, "--json",
                "--plot", str(png)])
    assert out == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("eager", "fp32"), ("fused", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    for r in rows:
        assert r["repeats"] == 2 and r["batch"] == 2 and r["input"] == 32 and r["median_ms"] > 0
        assert r["images_per_s"] == pytest.approx(2e3 / r["median_ms"])
        assert r["agrees"] and r["max_abs_diff"] <= r["tolerance"] and r["top1_agree"] == 1.0
    assert rows[0]["max_abs_diff"] == 0 and rows[0]["speed_vs_eager"] == 1.0
    assert "this process" in result["settings"]["timing"] and "spinning off" in result["settings"]["timing"]
    assert "f32" in rows[3]["detail"]  # OpenVINO asked for fp32 (its default here may be bf16)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_runtime_in_its_own_process_by_default(capsys):
    assert main(["bench", *TINY, "--runtime", "fused,onnxruntime", *FAST]) == 0
    out = capsys.readouterr().out
    assert "each runtime in its own process" in out and "alternated" in out
    rows = table_rows(out)
    assert len(rows) == 2 and all(row.endswith("agree") for row in rows)
    # The row names the form that ran: a primitive plan where oneDNN's library is installed, else the graph.
    form = r"a plan of \d+ oneDNN v3\.2 primitives" if dnnl_capi.available() else "oneDNN Graph"
    assert re.search(rf"fused: fuse\(onednn=True\), channels-last, compiled as {form} \([0-9.]+ s\)"
                     r", freed memory kept for reuse", " ".join(out.split()))


def test_a_runtime_whose_outputs_disagree_is_marked_not_hidden(monkeypatch, capsys):
    real = runtimes.prepare

    def wrong_onnxruntime(runtime, *args, **kwargs):
        prepared = real(runtime, *args, **kwargs)
        if runtime == "onnxruntime":
            run = prepared.run
            prepared.run = lambda x: run(x) + 1.0  # off by one everywhere
        return prepared

    monkeypatch.setattr(runtimes, "prepare", wrong_onnxruntime)
    assert main(["bench", *TINY, "--runtime", "fused,onnxruntime", "--same-process", *FAST]) == 0
    fused, onnx = table_rows(capsys.readouterr().out)
    assert "fused" in fused and fused.endswith("agree")
    assert "onnxruntime" in onnx and onnx.endswith("DIFFER")


@bf16_kernels
def test_bf16_rows_beside_fp32_in_one_run(bf16_cpu):
    pairs = runtimes.check_runtimes(["fused", "openvino"], ["fp32", "bf16"])
    run = bench_runtimes("cifar_resnet20", pairs, 2, 32, repeats=2, warmup=0, isolate=False)
    rows = {(r["runtime"], r["precision"]): r for r in run.rows}
    assert set(rows) == {("fused", "fp32"), ("fused", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")}
    assert all(r["agrees"] for r in rows.values())
    for runtime in ("fused", "openvino"):  # bf16 costs precision, and the row says how much
        assert rows[(runtime, "bf16")]["max_abs_diff"] > 10 * rows[(runtime, "fp32")]["max_abs_diff"]


def test_a_librarys_own_model_in_the_runtimes():
    pairs = runtimes.check_runtimes(["fused", "onnxruntime"], ["fp32"])
    run = bench_runtimes("timm:mobilenetv3_small_100", pairs, 1, 64, repeats=1, warmup=0, isolate=False)
    assert [r["model"] for r in run.rows] == ["timm:mobilenetv3_small_100"] * 2 and all(r["agrees"] for r in run.rows)


def test_export_writes_openvino_ir_checked_by_running_it(tmp_path, capsys):
    folder = tmp_path / "ir"
    assert main(["export", "cifar_resnet20", "--openvino", str(folder), "--input", "32", "--fused", "--repeats", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "openvino" and result["matches"] and result["openvino_latency_ms"] > 0
    assert (folder / "cifar_resnet20.xml").is_file() and (folder / "cifar_resnet20.bin").stat().st_size > 1e6
    # fp32 weights as they are (save_model's default would halve them to fp16): 0.27M params x 4 bytes.
    assert (folder / "cifar_resnet20.bin").stat().st_size > 0.9 * 4 * sum(
        p.numel() for p in archlab.create_model("cifar_resnet20").parameters())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--openvino", "FILE"], "is a file"),
        (["--onnx", "m.onnx", "--precision", "bf16"], "--pt2 only"),
        (["--openvino", "ir", "--precision", "bf16"], "keeps fp32 weights"),
        (["--openvino", "/no/such/folder/ir"], "does not exist"),
    ],
)
def test_export_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    one_line_error(capsys, ["export", "cifar_resnet20", *argv], message)


@bf16_kernels
def test_export_bf16_torch_export_program(tmp_path, capsys, bf16_cpu):
    path = tmp_path / "m.pt2"
    assert main(["export", "cifar_resnet20", "--pt2", str(path), "--input", "32", "--fused", "--precision", "bf16",
                 "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "bf16" and result["matches"] and result["max_abs_diff"] > 0
    program = torch.export.load(str(path))
    assert {t.dtype for t in program.state_dict.values()} == {torch.bfloat16}  # the file holds bf16 weights


def load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtimes_benchmark_script_reports_ratios_rates_and_roofline(tmp_path):
    out = tmp_path / "runtimes.md"
    threads = torch.get_num_threads()
    try:
        assert load_script("runtimes").main(
            ["--models", "cifar_resnet20", "--batches", "1", "--input", "32", "--repeats", "1", "--warmup", "0",
             "--rounds", "1", "--same-process", "--no-bf16", "--gemm-size", "128", "--threads", str(threads),
             "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "--models cifar_resnet20" in text and "Load average" in text and "GFLOP/s" in text
    assert "| cifar_resnet20 |" in text and "**geometric mean**" in text and "roofline bound" in text


def test_runtimes_profile_splits_the_forward_by_layer_kind(capsys):
    threads = torch.get_num_threads()
    try:
        assert load_script("runtimes").main(["--profile", "--models", "mobilenet_v2", "--batches", "1", "--input",
                                             "32", "--repeats", "2", "--rounds", "2", "--no-kept-memory",
                                             "--threads", str(threads)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| depthwise convs |" in out and "| 1x1 convs |" in out and "**forward, wall (profilers off)**" in out
    assert "| all kernels |" in out and "| ours: ATen ops between the partitions (" in out and "| outside all" in out


def test_onednn_verbose_lines_are_summed_by_kind_of_primitive():
    # The --profile parser on oneDNN's verbose format (v1: optional timestamp, problem and ms as the last fields).
    parse = load_script("runtime_profile").onednn_primitive_times
    text = "\n".join([
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brdgmm_dw:avx512_core,forward_inference,src:f32::blocked:"
        "acdb::f0 dst:f32::blocked:acdb::f0,attr-post-ops:eltwise_swish:1,alg:convolution_direct,"
        "g32mb1_ic32oc32_ih112oh112kh3sh1dh0ph1_iw112ow112kw3sw1dw0pw1,0.5",
        "onednn_verbose,1764600000.1,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,forward_inference,"
        "src:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,"
        "mb1_ic32oc16_ih112oh112kh1sh1dh0ph0_iw112ow112kw1sw1dw0pw0,0.25",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,ref_fused_convolution:any,forward_inference,src:f32,"
        "attr-post-ops:eltwise_clip_v2:0:6+dw:k3s2p1+eltwise_clip_v2:0:6,alg:convolution_direct,"
        "mb1_ic16oc96_ih112oh112kh1sh1dh0ph0_iw112ow112kw1sw1dw0pw0,0.125",
        "onednn_verbose,v1,primitive,exec,cpu,binary,jit:uni,undef,src:f32,attr-scratchpad:user,alg:binary_mul,"
        "1x32x112x112:1x32x1x1,0.0625",
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,brgconv_1x1:avx512_core,x,y,z,mb1_ic1oc1,9.0",
        "some other line",
    ])
    assert parse(text) == {"depthwise": 0.5, "1x1": 0.25, "1x1 + depthwise fused": 0.125, "other: binary": 0.0625}


@bf16_kernels
def test_bf16_digits_script_compares_every_form_with_fp32(tmp_path, bf16_cpu):
    # The comparison of benchmarks/bf16_digits.py on an untrained model and random images (the script itself trains
    # one on digits: minutes, not a test).
    module = load_script("bf16_digits")
    model = archlab.create_model("cifar_resnet20", num_classes=10).eval()
    loader = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    rows = module.compare(module.forms(model, 32, str(tmp_path), bf16=True), loader)
    by = {r["form"]: r for r in rows}
    assert list(by) == ["fp32 eager", "fp32 fused (ours)", "fp32 OpenVINO", "bf16 fused (ours)", "bf16 OpenVINO"]
    assert by["fp32 eager"]["max_abs_diff"] == 0 and all(r["images"] == 16 for r in rows)
    assert by["fp32 fused (ours)"]["agreement"] == 1.0 and by["fp32 fused (ours)"]["max_abs_diff"] < 1e-4
    assert 0 < by["bf16 fused (ours)"]["max_abs_diff"] < 0.05 * by["fp32 eager"]["logit_scale"]


def test_kept_memory_benchmark_script_reports_both_forms_and_faults(tmp_path):
    out = tmp_path / "kept.md"
    threads = torch.get_num_threads()
    try:
        assert load_script("kept_memory").main(
            ["--models", "cifar_resnet20", "--batches", "2", "--input", "32", "--repeats", "2", "--warmup", "0",
             "--rounds", "1", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "| cifar_resnet20 |" in text and "**ours kept / ORT**" in text and "geometric mean" in text


def test_per_call_costs_script_reports_its_three_tables(tmp_path):
    out = tmp_path / "calls.md"
    threads = torch.get_num_threads()
    try:
        assert load_script("per_call_costs").main(["--blocks", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "| 480 -> 120, ReLU |" in text and "| 1280 -> 1000 | 8 |" in text and "paired blocks" in text


def test_runtimes_are_timed_on_weights_whose_activations_keep_their_scale(capsys):
    # With BatchNorm's initial statistics a MobileNet's logits are ~1e-10: diffs and top-1 agreement would be
    # computed on numbers no deployed network produces. `bench --runtime` draws the statistics as a trained net's.
    from archlab.deploy.timing import trained_like_norms

    model = archlab.create_model("mobilenet_v3_small").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x).abs().max().item()
        trained_like_norms(model)
        after = model(x).abs().max().item()
    assert before < 1e-6 < 1e-3 < after
    assert main(["bench", "mobilenet_v3_small", "--input", "64", "--batch", "1", "--runtime", "eager",
                 "--same-process", *FAST, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["output_scale"] > 1e-3
