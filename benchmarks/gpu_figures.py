"""The GPU figures of the "Benchmarks and deployment" issue, for a session that has a GPU machine.

(1) Training images/s, bf16 autocast, channels-last, a full forward + backward + SGD step, for resnet50,
    efficientnet_b0 and mobilenet_v2: ours and timm's implementation of the same architecture in the same run,
    interleaved (archlab.bench), ours holding timm's weights.
(2) Inference images/s at batch 256 (bf16, channels-last): ours eager, ours fused (BatchNorm folded), torchvision and
    timm, interleaved.

Writes Markdown with the device name, the software versions and the exact command to --out
(default benchmarks/results/gpu_figures.md) and prints it. On the GPU machine:

    python benchmarks/gpu_figures.py                                  # H100/H200: a few minutes

Runs on CPU too, with small settings, to check the script itself (tests/test_bench.py does):

    python benchmarks/gpu_figures.py --device cpu --input 32 --train-batch 2 --infer-batch 2 --repeats 1 --out x.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

from archlab.bench import (
    Contender,
    Settings,
    bench_row,
    build_ours,
    build_reference,
    paired_ratio,
    reference_for,
    write_report,
)

MODELS = ["resnet50", "efficientnet_b0", "mobilenet_v2"]
RESULTS = Path(__file__).parent / "results" / "gpu_figures.md"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def images_per_s(c: Contender, batch: int) -> float:
    return batch * 1e3 / statistics.median(c.times_ms)


def training(models: list[str], settings: Settings, batch: int, size: int) -> list[str]:
    lines = [f"### Training: forward + backward + SGD step, batch {batch}, {size}x{size}, {settings.amp or 'fp32'}, "
             "channels-last", "",
             "| model | ours img/s | timm img/s | ours/timm | ours peak mem | timm peak mem |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in models:
        ref = reference_for(name, "timm")
        log(f"train {name} vs {ref}")
        cs = [Contender("ours", lambda n=name, r=ref: build_ours(n, r), channels_last=True, is_ours=True),
              Contender(ref, lambda r=ref: build_reference(r), channels_last=True)]
        bench_row(cs, batch, settings, size)
        ours, theirs = cs
        lines.append(f"| {name} | {images_per_s(ours, batch):,.0f} | {images_per_s(theirs, batch):,.0f} "
                     f"| {paired_ratio(theirs, ours)[0]:.3f} | {_mib(ours.peak_bytes)} | {_mib(theirs.peak_bytes)} |")
    return lines


def inference(models: list[str], settings: Settings, batch: int, size: int) -> list[str]:
    lines = [f"### Inference, batch {batch}, {size}x{size}, {settings.amp or 'fp32'}, channels-last", "",
             "| model | ours img/s | ours fused img/s | torchvision img/s | timm img/s | ours/torchvision "
             "| fused/torchvision |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in models:
        tv, timm = reference_for(name, "torchvision"), reference_for(name, "timm")
        log(f"infer {name} vs {tv}, {timm}")
        cs = [Contender("ours", lambda n=name, r=tv: build_ours(n, r), channels_last=True, is_ours=True),
              Contender("ours fused", lambda n=name, r=tv: build_ours(n, r), channels_last=True, fused=True,
                        is_ours=True),
              Contender(tv, lambda r=tv: build_reference(r), channels_last=True),
              Contender(timm, lambda r=timm: build_reference(r), channels_last=True)]
        bench_row(cs, batch, settings, size, measure_memory=False)
        ours, fused, tv_c, timm_c = cs
        lines.append(f"| {name} | {images_per_s(ours, batch):,.0f} | {images_per_s(fused, batch):,.0f} "
                     f"| {images_per_s(tv_c, batch):,.0f} | {images_per_s(timm_c, batch):,.0f} "
                     f"| {paired_ratio(tv_c, ours)[0]:.3f} | {paired_ratio(tv_c, fused)[0]:.3f} |")
    return lines


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        log("no CUDA GPU is available to PyTorch here; run this on the GPU machine (or --device cpu to check it)")
        return 2
    torch.backends.cudnn.benchmark = True
    amp = None if args.amp == "none" else args.amp
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU {platform.machine()}"
    command = "python benchmarks/gpu_figures.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = [f"# GPU figures ({now})", "", f"Device: {device_name}; torch {torch.__version__}"
           + (f", CUDA {torch.version.cuda}" if args.device == "cuda" else "") + ".", "",
           f"Command: `{command}`", "",
           f"{args.warmup} warm-up + {args.repeats} timed steps per implementation, interleaved; CUDA steps timed "
           "with events after a synchronize. Ratios are speed ratios (> 1: ours faster), the median over repeats "
           "of the two implementations' steps in the same repeat. Ours holds the reference's weights.", ""]
    train = Settings(device=args.device, mode="train", amp=amp, repeats=args.repeats, warmup=args.warmup)
    doc += training(args.models, train, args.train_batch, args.input) + [""]
    infer = Settings(device=args.device, mode="infer", amp=amp, repeats=args.repeats, warmup=args.warmup)
    doc += inference(args.models, infer, args.infer_batch, args.input) + [""]
    write_report(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
