"""archlab's PyTorch inference form against ONNX Runtime and OpenVINO, fp32 and bf16, with the machine's GEMM rates.

Each model (random weights, the same in every runtime) runs in ``fuse(model, onednn=True)`` (ours, channels-last:
a primitive plan, :mod:`archlab.deploy.primitive_plan`), in ``fuse(model, onednn=True, plan=False)`` (ours as the
oneDNN Graph form: what the plan is worth), ONNX Runtime and OpenVINO (both from the BatchNorm-folded ONNX file), and in bf16 ours and OpenVINO's, each
runtime in its own process, the runtimes' blocks of timed steps alternated (:func:`archlab.deploy.timing.
bench_runtimes`); medians. Ratios are ours over theirs in images/s (> 1: ours faster), geometric means over the
models. The same run measures this machine's fp32 and bf16 ``torch.mm`` rates and its copy bandwidth, and prints
each row's achieved FLOP/s (2 x counted MACs x images/s) as a share of the GEMM rate of its precision, and a
roofline bound per model: the sum over its convolutions of max(FLOPs / GEMM rate, bytes moved / bandwidth), with the
share of that bound spent in layers bound by memory (Williams, Waterman, Patterson 2009, "Roofline: an insightful
visual performance model", CACM 52(4)).

``--profile`` instead runs ``benchmarks/runtime_profile.py``: where the time of one forward pass goes in ours and in
ONNX Runtime, by kind of layer.

    python benchmarks/runtimes.py --threads 2 --out benchmarks/results/runtimes.md
    python benchmarks/runtimes.py --profile --models mobilenet_v2 --batches 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

import archlab
from archlab.analysis.profile import profile
from archlab.bench import geometric_mean, write_report
from archlab.deploy.precision import native_bf16
from archlab.deploy.runtimes import check_runtimes
from archlab.deploy.timing import bench_runtimes, trained_like_norms

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the script beside this one, however this one is run
import runtime_profile  # noqa: E402

MODELS = runtime_profile.MODELS


# ------------------------------------------------------------------------------------------ machine rates


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n ``torch.mm`` (2 n^3 FLOPs; best of ``repeats``: the rate this machine can reach)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def onednn_gemm_rate(dtype: torch.dtype, channels: int = 1024, side: int = 64, repeats: int = 5) -> float:
    """FLOP/s of the same kind of GEMM run by oneDNN: a 1x1 convolution, ``channels`` in and out, over
    ``side`` x ``side`` pixels, channels-last, prepacked weight (the kernel our convolutions run; on this machine
    ``torch.mm`` in fp32 goes to MKL, which reaches well under it)."""
    x = torch.randn(1, channels, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch._C._nn.mkldnn_reorder_conv2d_weight(torch.randn(channels, channels, 1, 1).to(dtype).to_mkldnn(),
                                                  [0, 0], [1, 1], [1, 1], 1, list(x.shape))

    def conv() -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "none", [], None)
    conv()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        conv()
        best = min(best, time.perf_counter() - t0)
    return 2 * channels**2 * side**2 / best


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write counted), best of ``repeats``: the memory roof."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def conv_layers(model: nn.Module, batch: int, size: int) -> list[dict]:
    """Each conv of ``model`` as run at ``batch`` x ``size``: kind, MACs and the bytes it moves at fp32 (input read,
    output written, weights read: a bound that assumes nothing stays in cache between layers)."""
    layers = []

    def hook(m: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        x = args[0]
        k = m.kernel_size[0] * m.kernel_size[1]
        macs = out.numel() * (m.in_channels // m.groups) * k
        kind = ("depthwise" if m.groups == m.in_channels and m.groups > 1 else
                "1x1" if k == 1 else "grouped kxk" if m.groups > 1 else "dense kxk")
        layers.append(dict(kind=kind, macs=macs, elements=x.numel() + out.numel() + m.weight.numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    for h in handles:
        h.remove()
    return layers


def roofline(layers: list[dict], flops_per_s: float, bytes_per_s: float, element_bytes: int) -> tuple[float, float]:
    """(bound in seconds for the layers, share of that bound in memory-bound layers)."""
    total = memory = 0.0
    for layer in layers:
        compute, traffic = 2 * layer["macs"] / flops_per_s, layer["elements"] * element_bytes / bytes_per_s
        total += max(compute, traffic)
        memory += traffic if traffic > compute else 0.0
    return total, memory / total if total else 0.0


# ------------------------------------------------------------------------------------------ the comparison


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runtime_profile.add_arguments(p)  # models, batches, input, threads, repeats, rounds
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    p.add_argument("--same-process", action="store_true", help="all runtimes in this process (tests)")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--profile", action="store_true", help="per-layer-kind profile of ours and ONNX Runtime instead")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return runtime_profile.run_profile(args)
    bf16 = not args.no_bf16 and native_bf16()
    # Ours (fuse(onednn=True): a primitive plan), ours as the oneDNN Graph form (plan=False: what the plan is
    # worth), ONNX Runtime, OpenVINO.
    pairs: list[tuple] = check_runtimes(["fused", "fused-graph", "onnxruntime", "openvino"],
                                        ["fp32", "bf16"] if bf16 else ["fp32"])
    load_start = os.getloadavg()
    gemm = {"fp32": [], "bf16": []}
    onednn = {"fp32": [], "bf16": []}
    bandwidth: list[float] = []
    results: dict[tuple[str, int], dict[tuple[str, str], dict]] = {}
    macs: dict[str, int] = {}
    layers: dict[tuple[str, int], list[dict]] = {}
    timing = ""
    for name in args.models:
        macs[name] = profile(name, args.input, batch_size=1, training_memory=False).macs
        model = archlab.create_model(name).eval()
        for batch in args.batches:
            layers[(name, batch)] = conv_layers(model, batch, args.input)
            # The machine's rates, measured again before each row: the load on a shared machine drifts.
            for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[:2 if bf16 else 1]:
                gemm[p].append(gemm_rate(dtype, args.gemm_size))
                onednn[p].append(onednn_gemm_rate(dtype, side=max(8, args.gemm_size // 32)))
            bandwidth.append(copy_bandwidth())
            print(f"{name} batch {batch} ...", file=sys.stderr, flush=True)
            run = bench_runtimes(name, pairs, batch, args.input, repeats=args.repeats, warmup=args.warmup,
                                 threads=args.threads, isolate=not args.same_process, rounds=args.rounds,
                                 weights=trained_like_norms)
            results[(name, batch)] = {(r["runtime"], r["precision"]): r for r in run.rows}
            timing = run.timing
    # The roof: the best GEMM rate seen, torch.mm's or oneDNN's (what the cores can do when not shared).
    rate = {k: max(v + onednn[k]) for k, v in gemm.items() if v}
    bw = max(bandwidth)
    lines = report_header(args, argv, timing, gemm, onednn, bandwidth, load_start, bf16)
    for batch in args.batches:
        lines += speed_table(args.models, batch, results, bf16)
        lines += flops_table(args.models, batch, results, macs, layers, rate, bw, bf16)
    write_report(lines, args.out)
    return 0


def report_header(args, argv, timing, gemm, onednn, bandwidth, load_start, bf16) -> list[str]:
    given = argv if argv is not None else sys.argv[1:]
    cmd = "python benchmarks/runtimes.py " + " ".join(shlex.quote(a) for a in given)
    import onnxruntime
    import openvino

    def span(values: list[float], scale: float) -> str:
        return f"{max(values) / scale:.0f} (range {min(values) / scale:.0f}-{max(values) / scale:.0f})"
    lines = [f"## run: runtimes ({datetime.now():%Y-%m-%d %H:%M})", "", f"    {cmd}", "",
             f"CPU `{cpu_name()}`, {args.threads} thread(s), native bf16: "
             f"{native_bf16()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino "
             f"{openvino.get_version().split('-')[0]}; {args.input}x{args.input}, random weights (the same in every "
             f"runtime; BatchNorm statistics drawn at random so activations keep their scale). Timed: {timing}. "
             f"Load average (1 min) at the start {load_start[0]:.1f}, at the end "
             f"{os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores: the machine was shared; ratios come from one "
             "run, runtimes alternated block by block.", "",
             f"Machine rates measured in this run, best (range) over {len(gemm['fp32'])} measurements: fp32 "
             f"`torch.mm` {args.gemm_size}^3 {span(gemm['fp32'], 1e9)} GFLOP/s"
             + (f", bf16 {span(gemm['bf16'], 1e9)} GFLOP/s" if gemm["bf16"] else "")
             + f"; the same GEMM in oneDNN (a 1x1 conv, 1024 channels, prepacked): fp32 {span(onednn['fp32'], 1e9)}"
             + (f", bf16 {span(onednn['bf16'], 1e9)}" if onednn["bf16"] else "")
             + f" GFLOP/s; copy bandwidth {span(bandwidth, 1e9)} GB/s. Shares below are of the best GEMM rate of "
             "each precision, whichever library reached it.", ""]
    return lines


def speed_table(models, batch, results, bf16) -> list[str]:
    head = ["model", "ours fp32 ms", "ORT ms", "OpenVINO ms", "**ours / ORT**", "ours / OpenVINO",
            "ours as oneDNN Graph ms", "plan step (graph / ours)"]
    if bf16:
        head += ["ours bf16 ms", "OpenVINO bf16 ms", "ours bf16 / fp32", "ours bf16 / OpenVINO bf16",
                 "plan step, bf16"]
    head += ["max abs diff from fp32 eager: ours, ORT, OV, ours bf16, OV bf16 (logits up to)"]
    lines = [f"### batch {batch}: median ms per batch, speed ratios", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 2) + "---|"]
    ratios = defaultdict(list)
    for name in models:
        r = results[(name, batch)]
        ours, ort_, ov = r[("fused", "fp32")], r[("onnxruntime", "fp32")], r[("openvino", "fp32")]
        graph_form = r[("fused-graph", "fp32")]
        pairs = [("vs ORT", ort_["median_ms"] / ours["median_ms"]), ("vs OV", ov["median_ms"] / ours["median_ms"]),
                 ("plan step", graph_form["median_ms"] / ours["median_ms"])]
        cells = [name, f"{ours['median_ms']:.1f}", f"{ort_['median_ms']:.1f}", f"{ov['median_ms']:.1f}",
                 f"{pairs[0][1]:.2f}", f"{pairs[1][1]:.2f}", f"{graph_form['median_ms']:.1f}", f"{pairs[2][1]:.2f}"]
        if bf16:
            ob, vb, gb = r[("fused", "bf16")], r[("openvino", "bf16")], r[("fused-graph", "bf16")]
            pairs += [("bf16 gain", ours["median_ms"] / ob["median_ms"]),
                      ("bf16 vs OV", vb["median_ms"] / ob["median_ms"]),
                      ("plan step bf16", gb["median_ms"] / ob["median_ms"])]
            cells += [f"{ob['median_ms']:.1f}", f"{vb['median_ms']:.1f}"] + [f"{v:.2f}" for _, v in pairs[3:]]
        for key, v in pairs:
            ratios[key].append(v)
        diffs = [ours, ort_, ov] + ([ob, vb] if bf16 else [])
        cells.append(", ".join(f"{d['max_abs_diff']:.1e}{'' if d['agrees'] else ' DIFFER'}" for d in diffs)
                     + f" ({ours['output_scale']:.1e})")
        lines.append("| " + " | ".join(cells) + " |")
    geo = ["**geometric mean**", "", "", "", f"**{geometric_mean(ratios['vs ORT']):.2f}**",
           f"{geometric_mean(ratios['vs OV']):.2f}", "", f"{geometric_mean(ratios['plan step']):.2f}"]
    if bf16:
        geo += ["", ""] + [f"{geometric_mean(ratios[k]):.2f}" for k in ("bf16 gain", "bf16 vs OV", "plan step bf16")]
    lines += ["| " + " | ".join(geo + [""]) + " |", ""]
    return lines


def flops_table(models, batch, results, macs, layers, rate, bw, bf16) -> list[str]:
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    lines = [f"### batch {batch}: achieved GFLOP/s (2 x MACs x images/s) and share of the best GEMM rate; "
             "roofline bound", "",
             "| model | GMACs/image | " + " | ".join(f"{rt} {p}" for p in precisions
                                                   for rt in ("ours", "ours as graph", "ORT", "OV")
                                                   if not (rt == "ORT" and p == "bf16"))
             + " | roofline bound fp32 ms (memory-bound share) | ours fp32 / bound |",
             "|---|---:|" + "---:|" * (4 * len(precisions) - (1 if bf16 else 0)) + "---:|---:|"]
    for name in models:
        r = results[(name, batch)]
        cells = [name, f"{macs[name] / 1e9:.2f}"]
        for p in precisions:
            for key in (("fused", p), ("fused-graph", p), ("onnxruntime", p), ("openvino", p)):
                if key not in r:
                    continue
                achieved = 2 * macs[name] * r[key]["images_per_s"]
                cells.append(f"{achieved / 1e9:.0f} ({achieved / rate[p]:.0%})")
        bound, memory_share = roofline(layers[(name, batch)], rate["fp32"], bw, 4)
        over = r[("fused", "fp32")]["median_ms"] / (bound * 1e3)
        cells += [f"{bound * 1e3:.1f} ({memory_share:.0%})", f"{over:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
