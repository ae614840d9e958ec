"""The performance goals of the "Benchmarks and deployment" issue, measured on CPU, written as Markdown.

(a) Our eager models against torchvision's and timm's implementation of the same architecture, timed in the
    same run, interleaved (see archlab.bench): ours/theirs speed per model, geometric mean per family.
    Goal (the issue's): every family at least as fast as the reference (geometric mean >= 1.00; --goal-a).
(b) Our deployment form (``--fused --channels-last``: BatchNorm folded, and on CPU each conv run with its
    activation / residual add as one oneDNN primitive, archlab.deploy.onednn) against torchvision eager in its default
    format and in channels-last, and against ours with BatchNorm folded only (the oneDNN step's own gain);
    geometric means over resnet50, resnext50_32x4d, mobilenet_v2, mobilenet_v3_large and efficientnet_b0.
    Goal (the issue's): >= 1.5x torchvision eager (--goal-b) and >= 1.1x torchvision channels-last
    (--goal-b-cl), geometric means. With --compile, ours fused+CL is also timed under
    torch.compile (inductor with freezing), for information: the goal is for the eager inference form.

Ours is always given the reference's weights (seeded builds, archlab.load_reference_weights), so both sides
compute the same function on the same numbers and only the implementations differ.

Batch 8, 224x224, one thread by default. Timings from a shared machine are noisy: read the ratios, which come
from interleaved runs, not the absolute milliseconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vs_reference.py            # short default run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vs_reference.py --all --repeats 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vs_reference.py --repeats 20 --compile   # the recorded table
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

import archlab
from archlab.bench import (
    Contender,
    Settings,
    bench_row,
    build_ours,
    build_reference,
    geometric_mean,
    paired_ratio,
    reference_for,
    write_report,
)

# One or two models per family keep the default run to a few minutes on one core.
DEFAULT_MODELS = ["alexnet", "vgg11_bn", "resnet50", "resnext50_32x4d", "densenet121", "mobilenet_v1",
                  "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
DEPLOY_MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
RESULTS = Path(__file__).parent / "results" / "bench_vs_reference.md"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(c: Contender) -> float:
    return statistics.median(c.times_ms)


def cell(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.3f} [{r[1]:.2f}–{r[2]:.2f}]"


def part_a(models: list[str], settings: Settings, batch: int, size: int) -> tuple[list[str], dict[str, float]]:
    lines = ["| model | family | ours ms | torchvision ms | timm ms | ours/torchvision | ours/timm |",
             "|---|---|---:|---:|---:|---:|---:|"]
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name in models:
        refs = {s: reference_for(name, s) for s in ("torchvision", "timm")}
        refs = {s: r for s, r in refs.items() if r}
        if not refs:
            log(f"(a) {name}: no reference implementation, skipped")
            continue
        log(f"(a) {name} vs {', '.join(refs.values())}")
        # Ours holds the first reference's weights (seeded builds): the same numbers through both implementations.
        first = next(iter(refs.values()))
        cs = [Contender("ours", lambda n=name, r=first: build_ours(n, r), is_ours=True)]
        cs += [Contender(r, lambda r=r: build_reference(r)) for r in refs.values()]
        bench_row(cs, batch, settings, size, measure_memory=False)
        ours_ms, by_label = median(cs[0]), {c.label: c for c in cs}
        family = archlab.model_card(name).family
        cells = []
        for source in ("torchvision", "timm"):
            if source in refs:
                theirs = by_label[refs[source]]
                ratio = paired_ratio(theirs, cs[0])  # ours/theirs speed, median [quartiles] over paired steps
                ratios[(family, source)].append(ratio[0])
                cells.append((f"{median(theirs):.1f} ({refs[source].split(':')[1]})", cell(ratio)))
            else:
                cells.append(("-", "-"))
        lines.append(f"| {name} | {family} | {ours_ms:.1f} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} "
                     f"| {cells[1][1]} |")
    lines += ["", "Geometric mean of ours/theirs speed per family (> 1: ours faster):", "",
              "| family | vs torchvision | vs timm |", "|---|---:|---:|"]
    families = sorted({f for f, _ in ratios})
    per_family = {}
    for f in families:
        cells = []
        for source in ("torchvision", "timm"):
            values = ratios.get((f, source))
            if values:
                per_family[f"{f}/{source}"] = geometric_mean(values)
                cells.append(f"{per_family[f'{f}/{source}']:.3f} (n={len(values)})")
            else:
                cells.append("-")
        lines.append(f"| {f} | {cells[0]} | {cells[1]} |")
    return lines, per_family


def part_b(models: list[str], settings: Settings, batch: int, size: int,
           with_compile: bool) -> tuple[list[str], dict[str, float]]:
    head = ("| model | ours fused+CL ms | torchvision eager ms | torchvision CL ms | vs eager | vs CL "
            "| ours BN-fold-only+CL ms | oneDNN step's gain |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if with_compile:
        head += " ours fused+CL+compile ms | compiled vs eager | compiled vs CL |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    ratios: dict[str, list[float]] = defaultdict(list)
    for name in models:
        ref = reference_for(name, "torchvision")
        log(f"(b) {name}: fused channels-last vs {ref} (default format and channels-last)")
        cs = [Contender("ours", lambda n=name, r=ref: build_ours(n, r), channels_last=True, fused=True, is_ours=True),
              Contender(ref, lambda r=ref: build_reference(r)),
              Contender(f"{ref} CL", lambda r=ref: build_reference(r), channels_last=True),
              # BatchNorm folded but convs, activations and adds run separately: what the oneDNN step adds.
              Contender("ours fold-only", lambda n=name, r=ref: build_ours(n, r), channels_last=True, fused=True,
                        onednn=False, is_ours=True)]
        if with_compile:
            cs.append(Contender("ours compiled", lambda n=name, r=ref: build_ours(n, r), channels_last=True,
                                fused=True, is_ours=True, compiled=True))
        bench_row(cs, batch, settings, size, measure_memory=False)
        ours, eager, cl = (median(c) for c in cs[:3])
        vs_eager, vs_cl = paired_ratio(cs[1], cs[0]), paired_ratio(cs[2], cs[0])
        ratios["vs_eager"].append(vs_eager[0])
        ratios["vs_channels_last"].append(vs_cl[0])
        gain = paired_ratio(cs[3], cs[0])
        ratios["onednn_gain"].append(gain[0])
        line = (f"| {name} | {ours:.1f} | {eager:.1f} | {cl:.1f} | {cell(vs_eager)} | {cell(vs_cl)} "
                f"| {median(cs[3]):.1f} | {cell(gain)} |")
        if with_compile:
            comp_eager, comp_cl = paired_ratio(cs[1], cs[4]), paired_ratio(cs[2], cs[4])
            ratios["compiled_vs_eager"].append(comp_eager[0])
            ratios["compiled_vs_channels_last"].append(comp_cl[0])
            line += f" {median(cs[4]):.1f} | {cell(comp_eager)} | {cell(comp_cl)} |"
        lines.append(line)
    summary = {k: geometric_mean(v) for k, v in ratios.items()}
    last = (f"| **geometric mean** | | | | **{summary['vs_eager']:.3f}** | **{summary['vs_channels_last']:.3f}** "
            f"| | **{summary['onednn_gain']:.3f}** |")
    if with_compile:
        last += f" | **{summary['compiled_vs_eager']:.3f}** | **{summary['compiled_vs_channels_last']:.3f}** |"
    lines.append(last)
    return lines, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="models for (a) (default: one or two per family)")
    p.add_argument("--all", action="store_true", help="(a) over every registered model with a reference")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared: 1)")
    p.add_argument("--compile", action="store_true",
                   help="(b) also times ours fused+CL under torch.compile (inductor, freezing); not part of the goal")
    p.add_argument("--goal-a", type=float, default=1.0)
    p.add_argument("--goal-b", type=float, default=1.5)
    p.add_argument("--goal-b-cl", type=float, default=1.1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(repeats=args.repeats, warmup=args.warmup)
    registered = set(archlab.list_models())
    models = archlab.list_models() if args.all else (args.models or DEFAULT_MODELS)
    missing = [m for m in models + DEPLOY_MODELS if m not in registered]
    if missing:
        log(f"not registered (yet), skipped: {', '.join(sorted(set(missing)))}")
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = [f"# archlab vs reference implementations ({now})", "",
           f"CPU `{platform.processor() or platform.machine()}`, {args.threads} thread(s), torch {torch.__version__}, "
           f"batch {args.batch}, {args.input}x{args.input}, inference, {args.warmup} warm-up + {args.repeats} timed "
           "steps per implementation, interleaved (ours/theirs alternate every step). Ratios are speed ratios "
           "(> 1: ours faster): the median over the repeats of theirs_ms / ours_ms for the two steps of the same "
           "repeat, with the quartiles in brackets; pairing cancels load that drifts during the run. Ours holds the "
           "reference's weights. The machine is shared and noisy: a ratio whose quartiles straddle 1.00 is parity "
           "within the noise.", ""]
    verdicts = []
    if not args.skip_a:
        lines, per_family = part_a([m for m in models if m in registered], settings, args.batch, args.input)
        doc += ["## (a) eager: ours vs torchvision and timm", "", *lines, ""]
        worst = min(per_family.values(), default=float("nan"))
        verdicts.append(f"(a) worst family geometric mean {worst:.3f}, goal >= {args.goal_a}: "
                        f"{'met' if worst >= args.goal_a else 'NOT met'}")
    deploy = [m for m in DEPLOY_MODELS if m in registered]
    if not args.skip_b and deploy:
        lines, summary = part_b(deploy, settings, args.batch, args.input, args.compile)
        doc += ["## (b) deployment: ours `--fused --channels-last` vs torchvision eager", "", *lines, ""]
        verdicts.append(f"(b) vs torchvision eager {summary['vs_eager']:.3f}, vs torchvision channels-last "
                        f"{summary['vs_channels_last']:.3f}; goal >= {args.goal_b} vs eager: "
                        f"{'met' if summary['vs_eager'] >= args.goal_b else 'NOT met'}, goal >= {args.goal_b_cl} "
                        f"vs channels-last: {'met' if summary['vs_channels_last'] >= args.goal_b_cl else 'NOT met'}")
        if args.compile:
            verdicts.append(f"(b, for information: the goal is for eager fused+CL) ours fused+CL under torch.compile: "
                            f"{summary['compiled_vs_eager']:.3f} vs torchvision eager, "
                            f"{summary['compiled_vs_channels_last']:.3f} vs torchvision channels-last")
    doc += ["## Goals", "", *[f"- {v}" for v in verdicts], ""]
    write_report(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
