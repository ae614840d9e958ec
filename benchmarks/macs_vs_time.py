"""Multiply-adds are not time: each model's share of MACs and of measured CPU time spent in depthwise convolutions
and in all convolutions (archlab.analysis.summary with per-layer timing, one row per layer).

    OMP_NUM_THREADS=1 python benchmarks/macs_vs_time.py [MODEL ...]     # default: mobilenet_v2 efficientnet_b0 resnet50

Batch 1 at each card's resolution; the times come through per-layer hooks, which add a little. The table in
docs/design-patterns.md was made with this script.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import archlab
from archlab.analysis.latency import with_times
from archlab.analysis.summary import summarize

MODELS = ["mobilenet_v2", "efficientnet_b0", "resnet50"]


def main(names: list[str]) -> int:
    print(f"{torch.get_num_threads()} thread(s), batch 1")
    print(f"{'model':<20}{'ms':>8}{'depthwise MACs %':>18}{'depthwise time %':>18}{'conv MACs %':>13}{'conv time %':>13}")
    for name in names:
        s = with_times(summarize(name, depth=99))  # deep enough that every row is a single layer
        with torch.device("meta"):
            modules = dict(archlab.create_model(name).named_modules())
        convs = [r for r in s.rows if isinstance(modules.get(r.name), nn.Conv2d)]
        depthwise = [r for r in convs if 1 < modules[r.name].groups == modules[r.name].in_channels]
        print(f"{name:<20}{s.time_ms:>8.1f}{100 * sum(r.share for r in depthwise):>18.1f}"
              f"{100 * sum(r.time_share for r in depthwise):>18.1f}{100 * sum(r.share for r in convs):>13.1f}"
              f"{100 * sum(r.time_share for r in convs):>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or MODELS))
