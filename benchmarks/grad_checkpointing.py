"""What gradient checkpointing (archlab.checkpointing) saves: one training step (forward, backward) with and
without it, peak rise of the process RSS during the step and its time. CPU, Linux.

    python benchmarks/grad_checkpointing.py [MODEL ...] [--batch 8]   # default: resnet50 efficientnet_b0
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

import archlab
from archlab.bench import _cpu_peak_rss_delta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["resnet50", "efficientnet_b0"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", type=int, default=224)
    args = p.parse_args()
    print(f"{torch.get_num_threads()} thread(s), batch {args.batch}, {args.input}x{args.input}")
    print(f"{'model':<20}{'checkpointing':>15}{'peak RSS rise MiB':>20}{'step s':>9}")
    for name in args.models:
        for enabled in (False, True):
            model = archlab.create_model(name).train()
            model.set_grad_checkpointing(enabled)
            x = torch.randn(args.batch, 3, args.input, args.input)
            y = torch.randint(0, 1000, (args.batch,))

            def step() -> None:
                F.cross_entropy(model(x), y).backward()

            step()  # warm-up; gradients stay allocated, so later steps measure activations and workspace
            peaks, times = [], []
            for _ in range(2):
                t0 = time.perf_counter()
                peaks.append(_cpu_peak_rss_delta(step))
                times.append(time.perf_counter() - t0)
            peak = min(p for p in peaks if p is not None) / 2**20 if any(peaks) else float("nan")
            print(f"{name:<20}{'on' if enabled else 'off':>15}{peak:>20.0f}{min(times):>9.2f}")
            del model
            gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
