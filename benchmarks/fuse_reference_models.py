"""What `archlab.deploy.fuse(model, onednn=True)` is worth on models archlab did not build: torchvision's and
timm's, timed eager channels-last against their fused form, interleaved (archlab.bench), on CPU.

fuse() works on any nn.Module: BatchNorms folded into the conv before them (timm's BatchNormAct2d included, its
activation kept), then each conv run with its activation / residual add as one oneDNN primitive. Outputs are
checked against the eager model before timing.

    python benchmarks/fuse_reference_models.py timm:efficientnet_b0 timm:mobilenetv3_large_100 torchvision:resnet50
"""

from __future__ import annotations

import argparse
import statistics

import torch

from archlab.bench import Contender, Settings, bench_row, build_reference, paired_ratio
from archlab.deploy import fuse

DEFAULT = ["timm:efficientnet_b0", "timm:mobilenetv3_large_100", "torchvision:resnet50"]


def check_outputs(reference: str, size: int) -> float:
    """Max |fused - eager| relative to the eager logits' scale, on one random batch."""
    model = build_reference(reference).eval()
    fused = fuse(model, onednn=True).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        expected = model(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    return ((got - expected).abs().max() / expected.abs().max()).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=DEFAULT, help="'timm:NAME' or 'torchvision:NAME'")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(device="cpu", mode="infer", input_size=args.input, repeats=args.repeats, warmup=args.warmup)
    print(f"CPU, {torch.get_num_threads()} thread(s), batch {args.batch}, {args.input}x{args.input}, float32, "
          f"channels-last; {args.warmup} warm-up + {args.repeats} interleaved steps each\n")
    print("| model | eager ms | fused ms | speed-up (paired median [quartiles]) | max rel. difference |")
    print("|---|---:|---:|---:|---:|")
    for ref in args.models:
        error = check_outputs(ref, args.input)
        eager = Contender("eager", lambda r=ref: build_reference(r), channels_last=True)
        fused = Contender("fused", lambda r=ref: build_reference(r), channels_last=True, fused=True)
        bench_row([eager, fused], args.batch, settings, args.input, measure_memory=False)
        mid, q1, q3 = paired_ratio(eager, fused)
        print(f"| {ref} | {statistics.median(eager.times_ms):.1f} | {statistics.median(fused.times_ms):.1f} "
              f"| {mid:.3f} [{q1:.2f}–{q3:.2f}] | {error:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
