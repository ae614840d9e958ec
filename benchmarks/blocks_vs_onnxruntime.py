"""Where ours loses to ONNX Runtime, block by block: each block of a model's ``features``, alone, in both runtimes.

The whole-model comparison (``benchmarks/runtimes.py``) says by how much; this says where. Every block of the
model's ``features`` (a stem conv, each inverted-residual or MBConv block, the last 1x1 conv) is cut out with the
input it sees inside the model, and timed in ours (``fuse(block, onednn=True)``: the oneDNN Graph form, fed
channels-last) and in ONNX Runtime (the block's BatchNorm-folded ONNX export, fed NCHW, spinning on as in
``runtimes.py``), and so is the whole model. Each runtime holds every block compiled in its own process (ONNX
Runtime's spinning threads would steal the cores from ours in a shared one); the parent asks the two processes in
turn for a few timed steps of one block, the cores idle between turns, block after block, for ``--rounds`` rounds
(order reversed every round), so both runtimes meet the same phases of a shared machine; medians over all steps.
Ours' process keeps freed memory for reuse (``archlab.deploy.keep_freed_memory``), as ``archlab bench --runtime``'s.

Read the block rows as attribution, not as the whole model's speed: cut out, a block pays in ONNX Runtime a layout
conversion at its input and output (its NCHWc reorders) that inside the whole model it pays once, so block ratios
lean towards ours; ours pays its per-call costs (the Python call, the TorchScript interpreter) once per block
instead of once per model. The ``sum of blocks`` row against the ``whole model`` row shows how far that goes.

    python benchmarks/blocks_vs_onnxruntime.py efficientnet_b0 mobilenet_v3_large mobilenet_v2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import archlab
from archlab.deploy import fuse, keep_freed_memory
from archlab.deploy.runtimes import ort_session


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's ``features`` cut into blocks: a plain ``nn.Sequential`` (a stage) is opened, anything else (a
    block, a conv-norm-act) is one block."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no `features` Sequential to cut into blocks")
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if type(child) is nn.Sequential:
                walk(f"{prefix}{name}.", child)
            else:
                out.append((f"{prefix}{name}", child))
    walk("features.", features)
    return out


def block_inputs(model: nn.Module, parts: list[tuple[str, nn.Module]], x: torch.Tensor) -> list[torch.Tensor]:
    """The input each block sees inside the model on ``x``."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) for _, m in parts]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def macs(module: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward on ``x`` (PyTorch's FLOP counter, which counts 2 per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2


def _prepared(runtime: str, module: nn.Module, x: torch.Tensor, threads: int, tmp: str):
    """(call, input) for ``module`` on ``x`` in ``runtime``, each fed its own layout."""
    if runtime == "ours":
        fast = fuse(module, onednn=True)

        def call(t):
            with torch.inference_mode():
                return fast(t)
        return call, x.contiguous(memory_format=torch.channels_last)
    path = os.path.join(tmp, f"block{len(os.listdir(tmp))}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fuse(module), (x,), path, dynamo=False, opset_version=17)
    session = ort_session(path, threads, spinning=True)
    feed = session.get_inputs()[0].name
    return (lambda t: session.run(None, {feed: t})), x.contiguous().numpy()


def worker(args: argparse.Namespace) -> None:
    """One runtime holding every block of one model and the model itself, compiled; answers ``time I N`` on stdin
    (one untimed step, then N timed: their seconds as a JSON line) until ``quit``."""
    torch.set_num_threads(args.threads)
    if args.runtime == "ours":
        # As `archlab bench --runtime fused` times ours (ONNX Runtime keeps its own arena). Without it a block could
        # meet fresh pages on every call in one process and not in another: MobileNetV2's features.2 (its fused
        # expansion and stride-2 depthwise conv) made 479-1,140 page faults per call, and ran 1.7-3.4x slower, in two of
        # five processes (glibc's mmap threshold moves with the process's allocation history).
        keep_freed_memory()
    torch.manual_seed(0)
    model = archlab.create_model(args.worker_model).eval()
    x = torch.randn(args.batch, model.in_chans, args.input, args.input, generator=torch.Generator().manual_seed(0))
    parts = blocks(model)
    with tempfile.TemporaryDirectory(prefix="archlab-blocks-") as tmp:
        runs = [_prepared(args.runtime, module, xin, args.threads, tmp)
                for module, xin in zip([*(m for _, m in parts), model], [*block_inputs(model, parts, x), x])]
        for call, xin in runs:
            for _ in range(args.warmup):
                call(xin)
        # --flush-mib: a buffer larger than the caches, rewritten before each timed step (untimed), so that a block
        # meets its weights, its input and each runtime's own code and bookkeeping as a whole forward pass does.
        # numpy, one thread: a PyTorch op would leave its OpenMP threads spinning into ONNX Runtime's timed step.
        scratch = np.zeros(args.flush_mib * 2**18, dtype=np.float32) if args.flush_mib else None
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            _, index, steps = line.split()
            call, xin = runs[int(index)]
            call(xin)
            times = []
            for _ in range(int(steps)):
                if scratch is not None:
                    scratch += 1.0
                start = time.perf_counter()
                call(xin)
                times.append(time.perf_counter() - start)
            print(json.dumps(times), flush=True)


def compare(name: str, args: argparse.Namespace) -> list[str]:
    model = archlab.create_model(name).eval()
    x = torch.randn(args.batch, model.in_chans, args.input, args.input)
    parts = blocks(model)
    inputs = block_inputs(model, parts, x)
    labels = [*(block for block, _ in parts), "whole model"]
    workers = {}
    for runtime in ("ours", "onnxruntime"):  # one after the other: compiling both at once would share the cores
        command = [sys.executable, __file__, "--worker-model", name, "--runtime", runtime, "--threads",
                   str(args.threads), "--batch", str(args.batch), "--input", str(args.input),
                   "--warmup", str(args.warmup), "--flush-mib", str(args.flush_mib)]
        workers[runtime] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if workers[runtime].stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {runtime} worker for {name} failed")
    steps: dict[str, list[list[float]]] = {runtime: [[] for _ in labels] for runtime in workers}
    try:
        for round_ in range(args.rounds):
            order = ["ours", "onnxruntime"] if round_ % 2 == 0 else ["onnxruntime", "ours"]
            for index in range(len(labels)):
                for runtime in order:
                    time.sleep(args.idle)  # the other runtime's threads stop spinning
                    workers[runtime].stdin.write(f"time {index} {args.steps}\n")
                    workers[runtime].stdin.flush()
                    steps[runtime][index] += json.loads(workers[runtime].stdout.readline())
    finally:
        for proc in workers.values():
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait()
    caches = f", caches flushed ({args.flush_mib} MiB rewritten) before each step" if args.flush_mib else ""
    lines = [f"### {name}, batch {args.batch}, {args.input}x{args.input}, {args.threads} thread(s){caches}", "",
             "| block | input | MMACs | ours us | ONNX Runtime us | ours / ORT (speed) |",
             "|---|---|---:|---:|---:|---:|"]
    total = {"ours": 0.0, "onnxruntime": 0.0}
    ratios = []
    for index, (label, module, xin) in enumerate(zip(labels, [*(m for _, m in parts), model], [*inputs, x])):
        ours = statistics.median(steps["ours"][index]) * 1e6
        theirs = statistics.median(steps["onnxruntime"][index]) * 1e6
        if label != "whole model":
            total["ours"] += ours
            total["onnxruntime"] += theirs
            ratios.append(theirs / ours)
        else:
            lines.append(f"| **sum of blocks** | | | {total['ours']:.0f} | {total['onnxruntime']:.0f} | "
                         f"**{total['onnxruntime'] / total['ours']:.2f}** |")
            label = f"**{label}**"
        shape = "x".join(str(d) for d in xin.shape[1:])
        lines.append(f"| {label} | {shape} | {macs(module, xin) / 1e6:.1f} | {ours:.0f} | {theirs:.0f} | "
                     f"{theirs / ours:.2f} |")
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    lines += ["", f"Geometric mean of the block ratios: {geo:.2f}. Medians of {args.rounds} alternated rounds x "
              f"{args.steps} steps per runtime and block, the cores idle {args.idle * 1000:.0f} ms before each; "
              "ours' process keeps freed memory for reuse.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["efficientnet_b0", "mobilenet_v3_large", "mobilenet_v2"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="timed steps per block, runtime and round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per block after compiling")
    p.add_argument("--rounds", type=int, default=10, help="alternated rounds over the blocks")
    p.add_argument("--idle", type=float, default=0.1, help="seconds the cores idle before each timed block")
    p.add_argument("--flush-mib", type=int, default=0,
                   help="rewrite a buffer of this many MiB before each timed step (caches cold, as in a whole model)")
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--runtime", choices=["ours", "onnxruntime"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_model:
        worker(args)
        return 0
    print(f"    python benchmarks/blocks_vs_onnxruntime.py {' '.join(sys.argv[1:])}\n")
    for name in args.models:
        print("\n".join(compare(name, args)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
