"""Where the time of the oneDNN inference form goes: share of CPU time per operator (torch.profiler).

After ``fuse(model, onednn=True)`` a forward pass should be almost all convolution (the fused oneDNN op); what is
left outside it (pooling, the squeeze-excitation multiply, the classifier) is what eager fusion has not removed.

    OMP_NUM_THREADS=1 python benchmarks/profile_inference_form.py resnet50 efficientnet_b0 --threads 1
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import profile

import archlab
from archlab.deploy import fuse


def op_shares(name: str, batch: int, size: int, steps: int) -> list[tuple[str, float, float]]:
    """(operator, ms per forward, share of the total) for the oneDNN form of ``name``, largest first."""
    model = fuse(archlab.create_model(name).eval(), onednn=True).to(memory_format=torch.channels_last)
    x = torch.randn(batch, model.in_chans, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile() as prof:
            for _ in range(steps):
                model(x)
    self_us: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        self_us[event.key] += event.self_cpu_time_total
    total = sum(self_us.values())
    rows = sorted(self_us.items(), key=lambda kv: -kv[1])
    return [(op, us / 1e3 / steps, us / total) for op, us in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.input}x{args.input}, {torch.get_num_threads()} thread(s), channels-last\n")
    for name in args.models:
        print(f"| {name} | ms / forward | share |\n|---|---:|---:|")
        for op, ms, share in op_shares(name, args.batch, args.input, args.steps)[:args.top]:
            print(f"| {op} | {ms:.1f} | {share:.1%} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
