"""The per-call costs behind three choices of the oneDNN inference form (archlab.deploy.onednn), each an A/B of
alternated blocks in one process, medians; one thread unless --threads.

1. A 1x1 conv on a 1x1 map (squeeze-excitation): the fused oneDNN primitive, ``F.linear`` (what the form runs),
   and PyTorch's plain conv + activation, microseconds a call.
2. A classifier layer: ``F.linear`` (MKL) against oneDNN's ``mkldnn._linear_pointwise`` with a prepacked weight,
   caches flushed before each call (in a forward pass the weights are not in cache); not used by the form yet.
3. ShuffleNet V2 x1.0 in the fused form at batch 1 with its channel shuffle as archlab writes it (channels-last
   kept) against the NCHW reshape it replaced, after which the convs took the plain path: time ratio old / new.

    python benchmarks/per_call_costs.py --out benchmarks/results/per_call_costs.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import archlab
import archlab.models.shufflenet_v2 as shufflenet
from archlab.bench import write_report
from archlab.deploy import fuse
from archlab.deploy.onednn import FusedConv2d


def per_call_us(fns: dict[str, Callable[[], object]], blocks: int, calls: int,
                before: Callable[[], object] | None = None) -> dict[str, float]:
    """Median microseconds a call of each function, blocks alternated; ``before`` runs untimed before each call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()
        for _ in range(blocks):
            for k, f in fns.items():
                total = 0.0
                for _ in range(calls):
                    if before:
                        before()
                    t0 = time.perf_counter()
                    f()
                    total += time.perf_counter() - t0
                times[k].append(total / calls * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def se_conv_rows(blocks: int) -> list[str]:
    rows = []
    for cin, cout, act in ((480, 120, nn.ReLU()), (120, 480, nn.Hardsigmoid()), (960, 240, nn.SiLU())):
        conv = nn.Conv2d(cin, cout, 1).eval().requires_grad_(False)
        fused = FusedConv2d(conv, act)
        x = torch.randn(1, cin, 1, 1).contiguous(memory_format=torch.channels_last)
        b = conv.bias
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(conv.weight.to_mkldnn(), [0, 0], [1, 1], [1, 1], 1,
                                                           list(x.shape))
        post, scalars = fused.post_op, fused.post_op_scalars
        us = per_call_us({
            "fused primitive": lambda: torch.ops.mkldnn._convolution_pointwise(
                x, packed, b, [0, 0], [1, 1], [1, 1], 1, post, scalars, None),
            "F.linear + act (the form)": lambda: fused(x),
            "plain conv + act": lambda: act(conv(x)),
        }, blocks, 200)
        rows.append(f"| {cin} -> {cout}, {type(act).__name__} | " + " | ".join(f"{v:.1f}" for v in us.values()) + " |")
    return ["## 1. A 1x1 conv on a 1x1 map, batch 1 (us a call)", "",
            "| conv | fused primitive | F.linear + act (the form) | plain conv + act |", "|---|---:|---:|---:|",
            *rows, ""]


def classifier_rows(blocks: int) -> list[str]:
    flush = torch.empty(64 * 2**20 // 4)
    rows = []
    for cin, cout, batch in ((1280, 1000, 1), (1280, 1000, 8), (2048, 1000, 8), (960, 1280, 8)):
        w, b, x = torch.randn(cout, cin), torch.randn(cout), torch.randn(batch, cin)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, batch)
        us = per_call_us({"mkl": lambda: F.linear(x, w, b),
                          "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")},
                         blocks, 3, before=lambda: flush.fill_(1.0))
        rows.append(f"| {cin} -> {cout} | {batch} | {us['mkl']:.0f} | {us['onednn']:.0f} | "
                    f"{us['mkl'] / us['onednn']:.2f} |")
    return ["## 2. A classifier layer, caches flushed (us a call)", "",
            "| layer | batch | F.linear (MKL) | oneDNN prepacked | MKL / oneDNN |", "|---|---:|---:|---:|---:|",
            *rows, ""]


def nchw_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The channel shuffle before it kept the layout: the flatten copies into NCHW."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def shuffle_rows(blocks: int) -> list[str]:
    current = shufflenet.channel_shuffle
    form = fuse(archlab.create_model("shufflenet_v2_x1_0").eval(), onednn=True)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    ratios = []
    try:
        with torch.inference_mode():
            for variant in (nchw_shuffle, current):
                shufflenet.channel_shuffle = variant
                form(x)
            for _ in range(blocks):
                t = {}
                for name, variant in (("old", nchw_shuffle), ("new", current)):
                    shufflenet.channel_shuffle = variant  # ShuffleUnit.forward reads the module's global
                    t0 = time.perf_counter()
                    for _ in range(5):
                        form(x)
                    t[name] = time.perf_counter() - t0
                ratios.append(t["old"] / t["new"])
    finally:
        shufflenet.channel_shuffle = current
    q = statistics.quantiles(ratios, n=4)
    return ["## 3. ShuffleNet V2 x1.0, fused form, batch 1", "",
            f"Time with the NCHW shuffle over time with the layout-keeping one: median {q[1]:.2f}, quartiles "
            f"{q[0]:.2f}-{q[2]:.2f} ({blocks} paired blocks of 5 forwards).", ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/per_call_costs.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    lines = [f"# Per-call costs of the oneDNN form ({datetime.now():%Y-%m-%d %H:%M})", "",
             "    python benchmarks/per_call_costs.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
             "", f"{args.threads} thread(s); torch {torch.__version__}; load average (1 min) {load:.1f} at the "
             "start.", ""]
    lines += se_conv_rows(args.blocks) + classifier_rows(args.blocks) + shuffle_rows(2 * args.blocks)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
