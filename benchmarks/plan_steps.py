"""Inside a primitive plan (archlab.deploy.primitive_plan): what its calls cost beyond its primitives, what the
in-place residual sum is worth, and oneDNN v3.2's kernels against PyTorch's bundled oneDNN on the same model.

For each model (random weights, BatchNorm statistics drawn as a trained network's), at one batch size:

- **whole vs steps**: the plan called as a user calls it, against the sum of its primitives each executed and timed
  on its own, alternated round by round in this process; the difference is what the plan adds per forward.
- **in-place sum**: the plan built with residual adds as in-place ``sum`` post-ops (the default) and without
  (``primitive_plan.SUM_IN_PLACE = False``: binary-add post-ops reading the shortcut), alternated; the ratio is
  speed with over speed without.
- **huge pages**: the plan with its weights and activations in buffers advised ``MADV_HUGEPAGE``
  (:func:`archlab.deploy.arena.buffer`, the default) and without (``arena.HUGE_PAGES = False``: the same single
  buffers on 4 KiB pages), alternated; the ratio is speed with over speed without. ``AnonHugePages`` of this
  process (``/proc/self/smaps_rollup``) is printed, to show the kernel gave huge pages at all.
- **kernels** (``--kernels``): oneDNN's own time per kind of primitive (``ONEDNN_VERBOSE=1``, averaged over 10
  forwards), once for the plan (oneDNN v3.2) and once for the oneDNN Graph form (``plan=False``: PyTorch's bundled
  oneDNN), each in a process of its own on the same seeded weights; verbose timing adds its own overhead to both.

    python benchmarks/plan_steps.py --threads 2 --kernels --out benchmarks/results/plan-steps-xeon.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import archlab
import archlab.deploy.arena as arena
import archlab.deploy.dnnl_capi as capi
import archlab.deploy.primitive_plan as primitive_plan
from archlab.bench import write_report
from archlab.deploy import fuse
from archlab.deploy.timing import trained_like_norms

MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]

KERNELS = """
import json, os, sys
os.environ["ONEDNN_VERBOSE"] = "1"  # read when each oneDNN first initialises: before either is used
sys.path.insert(0, {here!r})
import torch, archlab
from archlab.deploy import fuse
from archlab.deploy.timing import trained_like_norms
from runtime_profile import captured_fd, onednn_primitive_times
name, form, batch, threads, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
torch.manual_seed(0)
model = archlab.create_model(name).eval()
trained_like_norms(model)
fast = fuse(model, onednn=True, plan=form == "plan")
x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    for _ in range(10):
        fast(x)
    with captured_fd(path):
        for _ in range(10):
            fast(x)
print(json.dumps({{k: v / 10 for k, v in onednn_primitive_times(open(path).read()).items()}}))
"""


def model_and_input(name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = archlab.create_model(name).eval()
    trained_like_norms(model)
    return fuse(model), torch.randn(batch, 3, 224, 224)


def calls_per_round(plan: primitive_plan.PrimitivePlan, x: torch.Tensor) -> int:
    """Enough calls for a round of about 0.2 s."""
    start = time.perf_counter()
    plan(x)
    return max(3, int(0.2 / max(time.perf_counter() - start, 1e-4)))


def whole_vs_steps(plan: primitive_plan.PrimitivePlan, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median ms per forward: the plan called whole, and the sum of its primitives each executed alone."""
    lib = capi.library()
    n = calls_per_round(plan, x)
    whole, steps = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            plan(x)
        whole.append((time.perf_counter() - start) / n * 1e3)
        kept = plan(x)  # the last primitive writes into this tensor: alive while the steps run again
        spent = 0
        for _ in range(n):
            for primitive, count, args in plan._calls:
                start_ns = time.perf_counter_ns()
                lib.execute(primitive, lib.stream, count, args)
                spent += time.perf_counter_ns() - start_ns
        del kept
        steps.append(spent / n / 1e6)
    return statistics.median(whole), statistics.median(steps)


def alternated(with_: primitive_plan.PrimitivePlan, without: primitive_plan.PrimitivePlan, x: torch.Tensor,
               rounds: int) -> tuple[float, float]:
    """Median ms per forward of two plans of one model, called in alternation (order reversed every round)."""
    n = calls_per_round(with_, x)
    times: dict[str, list[float]] = {"with": [], "without": []}
    for r in range(rounds):
        pair = [("with", with_), ("without", without)]
        for label, plan in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            for _ in range(n):
                plan(x)
            times[label].append((time.perf_counter() - start) / n * 1e3)
    return statistics.median(times["with"]), statistics.median(times["without"])


def switch_gain(switch: object, flag: str, model: torch.nn.Module, x: torch.Tensor,
                rounds: int) -> tuple[float, float]:
    """Median ms per forward of the plan built as by default and built with the module switch ``switch.flag``
    (on by default) turned off: ``primitive_plan.SUM_IN_PLACE`` (residual adds as in-place sums, else binary-add
    post-ops), ``arena.HUGE_PAGES`` (weights and activations on huge pages, else 4 KiB pages)."""
    with_ = primitive_plan.build_plan(model, x)
    setattr(switch, flag, False)
    try:
        without = primitive_plan.build_plan(model, x)
    finally:
        setattr(switch, flag, True)
    return alternated(with_, without, x, rounds)


def kernel_times(name: str, form: str, batch: int, threads: int) -> dict[str, float]:
    here = str(Path(__file__).resolve().parent)
    path = f"/tmp/plan_steps_{os.getpid()}_{form}.txt"
    proc = subprocess.run([sys.executable, "-c", KERNELS.format(here=here), name, form, str(batch), str(threads),
                           path], capture_output=True, text=True, check=True)
    os.remove(path)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def anon_huge_pages() -> str:
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return "not readable here"
    return next((line.split(":", 1)[1].strip() for line in rollup.splitlines() if line.startswith("AnonHugePages")),
                "not reported")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="alternated rounds per measurement")
    p.add_argument("--kernels", action="store_true", help="also oneDNN's verbose kernel times, plan against graph")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/plan-steps.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lib = capi.library()
    lines = [f"## run: plan steps ({datetime.now():%Y-%m-%d %H:%M})", "",
             "    python benchmarks/plan_steps.py " + shlex.join(argv if argv is not None else sys.argv[1:]), "",
             f"oneDNN v{'.'.join(map(str, lib.version))} ({lib.path}); torch {torch.__version__}; batch "
             f"{args.batch}, 224x224, {args.threads} thread(s); medians of {args.rounds} alternated rounds.", "",
             "| model | steps | whole ms | sum of steps ms | whole / steps | in-place sum ms | binary add ms | "
             "in-place sum gain | huge pages ms | 4 KiB pages ms | huge-page gain | weights MB | activations MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    kernels = []
    for name in args.models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        model, x = model_and_input(name, args.batch)
        plan = primitive_plan.build_plan(model, x)
        whole, steps = whole_vs_steps(plan, x, args.rounds)
        with_sum, without = switch_gain(primitive_plan, "SUM_IN_PLACE", model, x, args.rounds)
        huge, small = switch_gain(arena, "HUGE_PAGES", model, x, args.rounds)
        lines.append(f"| {name} | {len(plan.steps)} | {whole:.3f} | {steps:.3f} | {whole / steps:.3f} | "
                     f"{with_sum:.3f} | {without:.3f} | {without / with_sum:.3f} | {huge:.3f} | {small:.3f} | "
                     f"{small / huge:.3f} | {plan.weight_bytes / 1e6:.1f} | {plan.arena_bytes / 1e6:.1f} |")
        if args.kernels:
            kernels.append((name, kernel_times(name, "plan", args.batch, args.threads),
                            kernel_times(name, "graph", args.batch, args.threads)))
    if kernels:
        lines += ["", "oneDNN's own ms per forward by kind of primitive (verbose mode): plan (v3.2) / graph form "
                  "(PyTorch's bundled oneDNN)", "", "| model | kind | plan ms | graph ms |", "|---|---|---:|---:|"]
        for name, plan_k, graph_k in kernels:
            for kind in sorted(set(plan_k) | set(graph_k), key=lambda k: -max(plan_k.get(k, 0), graph_k.get(k, 0))):
                lines.append(f"| {name} | {kind} | {plan_k.get(kind, 0):.3f} | {graph_k.get(kind, 0):.3f} |")
            lines.append(f"| {name} | **all** | **{sum(plan_k.values()):.3f}** | **{sum(graph_k.values()):.3f}** |")
    lines += ["", f"AnonHugePages of this process at the end: {anon_huge_pages()}."]
    write_report(lines + [""], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
