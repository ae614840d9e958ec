"""Where the time of the oneDNN inference form goes: share of CPU time per operator (torch.profiler).

In the module-by-module form (``fuse(model, onednn=True, graph=False)``) a forward pass should be almost all
convolution (the fused oneDNN op); what is left outside it (pooling, the squeeze-excitation multiply, the
classifier) is what eager fusion has not removed. ``--graph`` profiles the default form instead, the whole model
compiled by oneDNN Graph: its partitions (the profiler's ``LlgaPartition_N`` events) are summed into one row,
the ops it leaves to ATen and the TorchScript interpreter's own time each show by name.

    OMP_NUM_THREADS=1 python benchmarks/profile_inference_form.py resnet50 efficientnet_b0 --threads 1
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import profile

import archlab
from archlab.deploy import fuse


def op_shares(name: str, batch: int, size: int, steps: int, graph: bool = False) -> list[tuple[str, float, float]]:
    """(operator, ms per forward, share of the total) for the oneDNN form of ``name``, largest first."""
    model = fuse(archlab.create_model(name).eval(), onednn=True, graph=graph).to(memory_format=torch.channels_last)
    x = torch.randn(batch, model.in_chans, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile() as prof:
            for _ in range(steps):
                model(x)
    self_us: dict[str, float] = defaultdict(float)
    partitions = set()
    for event in prof.key_averages():
        key = event.key
        if key.startswith("LlgaPartition_"):  # the graph form: one event name per compiled partition
            partitions.add(key)
            key = "oneDNN Graph partitions"
        elif key == "forward" and graph:
            key = "forward (TorchScript interpreter, self time)"
        self_us[key] += event.self_cpu_time_total
    if partitions:
        self_us[f"oneDNN Graph partitions ({len(partitions)})"] = self_us.pop("oneDNN Graph partitions")
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
    p.add_argument("--graph", action="store_true", help="the oneDNN Graph form (fuse's default) instead")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    form = "oneDNN Graph form" if args.graph else "module-by-module form"
    print(f"{form}, batch {args.batch}, {args.input}x{args.input}, {torch.get_num_threads()} thread(s), "
          "channels-last\n")
    for name in args.models:
        print(f"| {name} | ms / forward | share |\n|---|---:|---:|")
        for op, ms, share in op_shares(name, args.batch, args.input, args.steps, args.graph)[:args.top]:
            print(f"| {op} | {ms:.1f} | {share:.1%} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
