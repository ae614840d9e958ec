"""Where the time of one forward pass goes, in archlab's inference form and in ONNX Runtime, by kind of layer.

Ours (``fuse(model, onednn=True)``: a primitive plan where one applies, else the oneDNN Graph form) as oneDNN times
each primitive it executes (verbose mode), with torch.profiler's self times for any ATen ops run between them;
ONNX Runtime as its own profiler times each node (``SessionOptions.enable_profiling``); and what each spends outside
its kernels: ours, its wall time with verbose off minus its primitives and ATen ops; ONNX Runtime, its profiled
run's wall minus its nodes. Both in one process, blocks alternated, the cores idle between blocks. The per-node
times of a profiled ONNX Runtime include its profiler's own cost (about 15 us a node at batch 1 on the Xeon), so
the kernel rows are upper bounds for it. ``benchmarks/runtimes.py --profile`` runs this too.

    python benchmarks/runtime_profile.py --models mobilenet_v2 --batches 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

import archlab
import archlab.deploy.dnnl_capi as capi
from archlab.deploy import fuse, keep_freed_memory
from archlab.deploy.export import export_onnx
from archlab.deploy.onednn_graph import graph_forward
from archlab.deploy.timing import IDLE_BETWEEN_BLOCKS_S, trained_like_norms

MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]


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
    """Our form as ``fuse(model, onednn=True)`` gives it (a primitive plan, else the graph form): ``step()`` runs
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
        kinds = [c.kind for c in graph._cache.values()] if graph is not None else []
        self.how = (kinds[0] if kinds else
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
        # Both oneDNNs verbose: PyTorch's (the graph and module forms) and the plan's own v3.2 library.
        plan_lib = capi.library() if capi.available() else None
        with torch.inference_mode(), captured_fd(self.log):
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                if plan_lib is not None:
                    plan_lib.dnnl_set_verbose(2)
                t0 = time.perf_counter()
                self.form(self.x)
                wall = (time.perf_counter() - t0) * 1e3
                if plan_lib is not None:
                    plan_lib.dnnl_set_verbose(0)
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
            outside = ("outside all of these (ours: the plan's calls, or TorchScript and the graph bridge; ORT: its "
                       "executor)")
            print(_row(outside, wall - mine_total - aten_total, ort_profiled_wall - ort_total))
            print(_row("forward, wall with the profilers on (what they add is in the rows above)", verbose_wall,
                       ort_profiled_wall))
            print(_row("forward, wall (profilers off)", wall, ort_wall, bold=True) + "\n")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options this script and ``benchmarks/runtimes.py`` share."""
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 1])
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="alternated rounds of blocks")
    p.add_argument("--no-kept-memory", action="store_true",
                   help="profile: leave this process's malloc as it is (keep_freed_memory() otherwise)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return run_profile(args)


if __name__ == "__main__":
    raise SystemExit(main())
