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

``--profile`` instead prints where the time of one forward pass goes in ours (oneDNN's own timing of each
primitive it executes, verbose mode) and in ONNX Runtime (``SessionOptions.enable_profiling``, its per-node kernel
times), by kind of layer, and what each spends outside its kernels.

    python benchmarks/runtimes.py --threads 2 --out benchmarks/results/runtimes.md
    python benchmarks/runtimes.py --profile --models mobilenet_v2 --batches 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

import archlab
from archlab.analysis.profile import profile
from archlab.bench import geometric_mean, write_report
from archlab.deploy import fuse, keep_freed_memory
from archlab.deploy.export import export_onnx
from archlab.deploy.onednn_graph import graph_forward
from archlab.deploy.precision import native_bf16
from archlab.deploy.runtimes import check_runtimes
from archlab.deploy.timing import IDLE_BETWEEN_BLOCKS_S, bench_runtimes, trained_like_norms

MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]


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


# ------------------------------------------------------------------------------------------ profile


def _kind(cin_per_group: int, cout: int, k: int, cin: int) -> str:
    if cin_per_group == 1 and k > 1 and cin > 1:
        return "depthwise"
    return "1x1" if k == 1 else ("grouped kxk" if cin_per_group < cin else "dense kxk")


# A oneDNN verbose line of an executed primitive: "onednn_verbose,[timestamp,]v1,primitive,exec,cpu,KIND,IMPL,...,
# PROBLEM,MS". A convolution's problem reads "g32mb1_ic32oc32_ih112oh112kh3sh1dh0ph1_iw112ow112kw3sw1dw0pw1".
_CONV_PROBLEM = re.compile(r"(?:g(\d+))?mb\d+_ic(\d+)oc(\d+)_.*?kh(\d+).*?kw(\d+)")


def _primitive_kind(kind: str, impl: str, attrs: str, problem: str) -> str:
    if kind != "convolution":
        return f"other: {kind}"
    if "dw:" in attrs or impl.startswith("ref_fused_convolution"):
        return "1x1 + depthwise fused"  # oneDNN's depthwise post-op: an expansion conv and its depthwise conv
    match = _CONV_PROBLEM.search(problem)
    if match is None:
        return "other: convolution"
    groups, cin, cout, kh, kw = (int(v) if v else 1 for v in match.groups())
    return _kind(cin // groups, cout, kh * kw, cin)


def onednn_primitive_times(text: str) -> dict[str, float]:
    """ms per kind of primitive in oneDNN verbose output (``ONEDNN_VERBOSE=1`` lines of executed primitives)."""
    spent: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        parts = line.split(",")
        # v3.4 and later mark primitive lines ("onednn_verbose,<time>,primitive,exec,..."); v3.2, which primitive
        # plans run, does not ("onednn_verbose,exec,cpu,...").
        if parts[0] != "onednn_verbose" or "exec" not in parts or parts[1] not in ("exec", "primitive") \
                and "primitive" not in parts:
            continue
        at = parts.index("exec")
        try:
            ms = float(parts[-1])
        except ValueError:
            continue
        spent[_primitive_kind(parts[at + 2], parts[at + 3], ",".join(parts[at + 5:-2]), parts[-2])] += ms
    return dict(spent)


@contextlib.contextmanager
def captured_fd(path: str, fd: int = 1):
    """The process's file descriptor ``fd`` sent to ``path``: 1 is where oneDNN prints its verbose lines (through C
    stdio), 2 where the profiler's C++ side logs each session's start and stop."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = os.dup(fd)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, fd)
            os.close(saved)


class OursProfiled:
    """Our form as ``fuse(model, onednn=True)`` gives it (the oneDNN Graph form where it compiles): ``step()`` runs
    one forward with oneDNN's verbose mode on and returns (ms per kind of oneDNN primitive, as oneDNN timed its
    executions; that forward's wall ms), ``wall()`` one forward without it (its wall ms): verbose printing slows
    the forward around the primitives, not inside them."""

    def __init__(self, model: nn.Module, x: torch.Tensor, tmp: str) -> None:
        self.form = fuse(model, onednn=True)
        self.x = x.contiguous(memory_format=torch.channels_last)
        self.log = os.path.join(tmp, "onednn_verbose.txt")
        with torch.inference_mode():
            for _ in range(3):  # compiles the graph for this input and warms it up
                self.form(self.x)
        graph = graph_forward(self.form)
        self.how = ("the oneDNN Graph form" if graph is not None and graph.compiled else
                    f"the module form ({'; '.join((graph.fallbacks if graph else {}).values()) or 'no oneDNN Graph'})")

    def wall(self) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.form(self.x)
            return (time.perf_counter() - t0) * 1e3

    def aten_ops(self) -> dict[str, float]:
        """ms per ATen op run outside oneDNN's partitions (torch.profiler's self times) in one forward: what the
        graph leaves to PyTorch (squeeze-excitation's mean, the pool), or every op of the module form."""
        with captured_fd(self.log + ".profiler", 2), torch.inference_mode(), torch.profiler.profile() as prof:
            self.form(self.x)
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()
                if e.key.startswith("aten::") and e.self_cpu_time_total > 0}

    def step(self) -> tuple[dict[str, float], float]:
        """(ms per kind of primitive, wall ms of that forward with verbose on)."""
        with torch.inference_mode(), captured_fd(self.log):
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                t0 = time.perf_counter()
                self.form(self.x)
                wall = (time.perf_counter() - t0) * 1e3
        return onednn_primitive_times(Path(self.log).read_text(errors="replace")), wall


class OrtProfiled:
    """ONNX Runtime with its own profiler on (``SessionOptions.enable_profiling``, per-node kernel times): ``step()``
    runs once; ``per_step()`` reads the profile back: per run, (ms per node kind, wall ms of the run)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int, tmp: str) -> None:
        import onnxruntime as ort

        path = os.path.join(tmp, "m.onnx")
        export_onnx(fuse(model), path, x.shape[-1])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.enable_profiling = threads, True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        # Spinning on, as ONNX Runtime runs in a process of its own: off, its threads sleep between nodes and each
        # node waits for them to wake (the profile's caller leaves the cores idle before timing ours again).
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        opts.enable_profiling = False
        self.plain = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])  # for its wall time
        self.feed = {self.session.get_inputs()[0].name: x.numpy()}

    def step(self) -> None:
        self.session.run(None, self.feed)

    def wall(self) -> float:
        t0 = time.perf_counter()
        self.plain.run(None, self.feed)
        return (time.perf_counter() - t0) * 1e3

    def per_step(self) -> list[tuple[dict[str, float], float]]:
        events = json.loads(Path(self.session.end_profiling()).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        out = []
        for run in runs:
            spent: dict[str, float] = defaultdict(float)
            for e in nodes:
                if not run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
                    continue
                op, shapes = e["args"]["op_name"], e["args"].get("input_type_shape", [])
                if op in ("Conv", "FusedConv") and len(shapes) > 1:
                    x_shape, w = next(iter(shapes[0].values())), next(iter(shapes[1].values()))
                    kind = _kind(w[1], w[0], w[2] * w[3], x_shape[1])
                else:
                    kind = f"other: {op}"
                spent[kind] += e["dur"] / 1e3
            out.append((dict(spent), run["dur"] / 1e3))
        return out


def _median_times(steps: list[dict[str, float]]) -> dict[str, float]:
    kinds = {k for spent in steps for k in spent}
    return {k: statistics.median(spent.get(k, 0.0) for spent in steps) for k in kinds}


def _row(label: str, ours: float | None, theirs: float | None, bold: bool = False) -> str:
    o, r = ("" if v is None else f"{v:.2f}" for v in (ours, theirs))
    ratio = f"{ours / theirs:.2f}" if ours and theirs else ""
    if bold:
        label, o, r, ratio = (f"**{v}**" if v else v for v in (label, o, r, ratio))
    return f"| {label} | {o} | {r} | {ratio} |"


def run_profile(args: argparse.Namespace) -> int:
    # As ours is timed in the comparison (ONNX Runtime keeps its own arena); a setting of the whole process.
    kept = not args.no_kept_memory and keep_freed_memory()
    print(f"where the time goes: {args.input}x{args.input}, {torch.get_num_threads()} thread(s), freed memory kept "
          f"for reuse in this process: {'yes' if kept else 'no'}; ours (`fuse(model, onednn=True)`) and ONNX "
          f"Runtime (its spinning on, as in its own process) in one process, {args.repeats} forwards per block, "
          f"{args.rounds} rounds of five alternated blocks (ours with oneDNN's verbose mode, plain, under torch."
          "profiler; ORT profiled, plain), "
          f"the cores idle {IDLE_BETWEEN_BLOCKS_S * 1e3:.0f} ms between blocks; "
          "medians per forward. Kernel rows: ours as oneDNN times each primitive's execution (verbose mode on), "
          "ONNX Runtime as its profiler times each node; ours' ATen ops as torch.profiler times them (self time). "
          "Outside: ours, its wall time with verbose off minus its primitives and ATen ops; ONNX Runtime, its "
          "profiled run's wall minus its nodes. Time ratios: below 1, ours takes less\n")
    for name in args.models:
        model = archlab.create_model(name).eval()
        trained_like_norms(model)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.input, args.input)
            with tempfile.TemporaryDirectory() as tmp:
                ours, theirs = OursProfiled(model, x, tmp), OrtProfiled(model, x, torch.get_num_threads(), tmp)
                kernels, walls, aten, ort_walls = [], [], [], []
                # Five kinds of block: ours with verbose on, off, and under torch.profiler, ONNX Runtime's profiled
                # session and its plain one (two thread pools: each spins after its runs, so not interleaved call by
                # call).
                blocks = [lambda: kernels.append(ours.step()), lambda: walls.append(ours.wall()),
                          lambda: aten.append(ours.aten_ops()), theirs.step, lambda: ort_walls.append(theirs.wall())]
                for round_ in range(args.rounds):
                    for block in blocks if round_ % 2 == 0 else blocks[::-1]:
                        time.sleep(IDLE_BETWEEN_BLOCKS_S)  # the previous block's threads stop spinning
                        for _ in range(args.repeats):
                            block()
                profiled = theirs.per_step()[3:]  # after its warm-up runs
            mine = _median_times([spent for spent, _ in kernels])
            # oneDNN primitives run by an ATen op (the module form's convs) are in the kernel rows already.
            aten_ms = _median_times([{k: v for k, v in ops.items() if "mkldnn" not in k} for ops in aten])
            wall, ort_wall = statistics.median(walls), statistics.median(ort_walls)
            verbose_wall = statistics.median(w for _, w in kernels)
            ort_kernels = _median_times([spent for spent, _ in profiled])
            ort_profiled_wall = statistics.median(run_wall for _, run_wall in profiled)
            print(f"ours: {ours.how}\n")
            print(f"| {name} batch {batch} | ours ms | ONNX Runtime ms | ours / ORT (time) |\n|---|---:|---:|---:|")
            convs = sorted(k for k in set(mine) | set(ort_kernels) if not k.startswith("other"))
            for kind in convs:
                print(_row(f"{kind} convs", mine.get(kind), ort_kernels.get(kind)))
            conv_sums = [sum(d.get(k, 0.0) for k in convs) for d in (mine, ort_kernels)]
            print(_row("all convs (with what each runtime fuses into them)", *conv_sums))
            for label, spent in (("ours", mine), ("ONNX Runtime", ort_kernels)):
                others = {k[7:]: v for k, v in spent.items() if k.startswith("other")}
                if others:
                    listed = ", ".join(f"{k} {v:.2f}" for k, v in sorted(others.items()))
                    total = sum(others.values())
                    cells = (total, None) if label == "ours" else (None, total)
                    print(_row(f"other kernels, {label} ({listed})", *cells))
            mine_total, ort_total = sum(mine.values()), sum(ort_kernels.values())
            print(_row("all kernels", mine_total, ort_total))
            top = sorted(aten_ms.items(), key=lambda kv: -kv[1])
            listed = ", ".join(f"{k.removeprefix('aten::')} {v:.2f}" for k, v in top[:6] if v >= 0.005)
            aten_total = sum(aten_ms.values())
            print(_row(f"ours: ATen ops between the partitions ({listed or 'none'})", aten_total, None))
            print(_row("outside all of these (ours: TorchScript and PyTorch's oneDNN Graph bridge; ORT: its executor)",
                       wall - mine_total - aten_total, ort_profiled_wall - ort_total))
            print(_row("forward, wall with the profilers on (what they add is in the rows above)", verbose_wall,
                       ort_profiled_wall))
            print(_row("forward, wall (profilers off)", wall, ort_wall, bold=True) + "\n")
    return 0


# ------------------------------------------------------------------------------------------ the comparison


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 1])
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="alternated blocks per runtime")
    p.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    p.add_argument("--same-process", action="store_true", help="all runtimes in this process (tests)")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--profile", action="store_true", help="per-layer-kind profile of ours and ONNX Runtime instead")
    p.add_argument("--no-kept-memory", action="store_true",
                   help="--profile: leave this process's malloc as it is (tests; keep_freed_memory() otherwise)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return run_profile(args)
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
