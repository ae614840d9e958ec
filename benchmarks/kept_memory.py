"""What keeping freed memory is worth (archlab.deploy.memory): ours with and without it against ONNX Runtime.

Each model (random weights, the same in every runtime) runs as ``fuse(model, onednn=True)`` twice, in processes of
their own, once with ``keep_freed_memory()`` (what ``archlab bench --runtime fused`` does) and once without, and
in ONNX Runtime; the three alternated block by block (:func:`archlab.deploy.timing.bench_runtimes`), medians. The
page faults per forward of ours with and without are counted in this process (a count does not depend on the
load). Ratios are images/s over images/s (> 1: faster).

    python benchmarks/kept_memory.py --threads 2 --out benchmarks/results/kept_memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

from archlab.bench import geometric_mean, write_report
from archlab.deploy.timing import KEEP_MEMORY_VAR, bench_runtimes

MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
WITHOUT = {KEEP_MEMORY_VAR: "0"}

FAULTS = """
import json, sys, torch, archlab
from archlab.deploy import fuse, keep_freed_memory
from archlab.deploy.memory import page_faults
torch.set_num_threads(1)
name, batch, size, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if keep:
    keep_freed_memory()
form = fuse(archlab.create_model(name).eval(), onednn=True)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    form(x); form(x)
    start = page_faults()
    for _ in range(3):
        form(x)
print(json.dumps((page_faults() - start) / 3))
"""


def faults_per_forward(name: str, batch: int, size: int, keep: bool) -> float:
    """Page faults per forward of the fused form, in a fresh process (the setting holds for a whole process)."""
    proc = subprocess.run([sys.executable, "-c", FAULTS, name, str(batch), str(size), "1" if keep else "0"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 1])
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/kept_memory.md"))
    args = p.parse_args(argv)
    pairs = [("fused", "fp32", WITHOUT), ("fused", "fp32"), ("onnxruntime", "fp32")]
    load_start = os.getloadavg()
    lines = [f"# Freed memory kept for reuse: ours with and without, against ONNX Runtime ({datetime.now():%Y-%m-%d %H:%M})",
             "", "    python benchmarks/kept_memory.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])), ""]
    timing = ""
    for batch in args.batches:
        rows, gains, ours_ort, before_ort = [], [], [], []
        for name in args.models:
            print(f"{name} batch {batch} ...", file=sys.stderr, flush=True)
            run = bench_runtimes(name, pairs, batch, args.input, repeats=args.repeats, warmup=args.warmup,
                                 threads=args.threads, rounds=args.rounds)
            timing = run.timing
            without, kept, ort = run.rows
            assert without["env"] and not kept["env"]
            assert "kept" in kept["detail"] and "kept" not in without["detail"]
            f_without = faults_per_forward(name, batch, args.input, keep=False)
            f_kept = faults_per_forward(name, batch, args.input, keep=True)
            gain = kept["images_per_s"] / without["images_per_s"]
            vs, vs_before = (kept["images_per_s"] / ort["images_per_s"],
                             without["images_per_s"] / ort["images_per_s"])
            gains.append(gain), ours_ort.append(vs), before_ort.append(vs_before)
            rows.append(f"| {name} | {f_without:,.0f} | {f_kept:,.0f} | {without['median_ms']:.1f} | "
                        f"{kept['median_ms']:.1f} | {ort['median_ms']:.1f} | {gain:.2f} | {vs_before:.2f} | "
                        f"**{vs:.2f}** |")
        lines += [f"## batch {batch}", "",
                  "| model | faults/forward without | kept | ours without ms | ours kept ms | ORT ms | kept / without "
                  "| ours without / ORT | **ours kept / ORT** |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows,
                  f"| **geometric mean** | | | | | | {geometric_mean(gains):.2f} | {geometric_mean(before_ort):.2f} "
                  f"| **{geometric_mean(ours_ort):.2f}** |", ""]
    load_end = os.getloadavg()
    lines += [f"Timed: {timing}. torch {torch.__version__}, {os.cpu_count()} CPUs; load average (1 min) "
              f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end.", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
