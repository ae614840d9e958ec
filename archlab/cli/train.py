"""``archlab train``: argument parsing, resuming a run, and turning failures into one-line messages. The recipe's
defaults are :mod:`archlab.train.recipe`; the work is :func:`archlab.train.loop.train`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archlab.cli.args import SPEC_HELP, CLIError, float_in, fraction, nonneg_int, positive_int, writable_dir
from archlab.cli.output import console, print_json

if TYPE_CHECKING:
    from archlab.train.loop import TrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    inf = float("inf")
    p.add_argument("model", help=SPEC_HELP)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="'digits', 'fashion-mnist' (apt-get install dataset-fashion-mnist, or a folder of its four IDX "
                        "files), a CIFAR-10/100 python-format folder, or an ImageFolder root with train/ and val/")
    p.add_argument("--data-fraction", type=fraction, metavar="F",
                   help="train on a fixed-seed share F of the training split (default 1; validation stays whole)")
    p.add_argument("--epochs", type=positive_int, help="default: 10 digits, 200 CIFAR, 90 ImageFolder")
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help="global batch size, split over torchrun processes (default: 64 / 128 / 256)")
    p.add_argument("--lr", type=float_in(0, inf, lo_open=True), help="peak learning rate (sgd 0.1, adamw 2e-3)")
    p.add_argument("--weight-decay", type=float_in(0, inf), help="sgd 5e-4, adamw 0.05; never on norms/biases")
    p.add_argument("--opt", choices=("sgd", "adamw"), help="optimizer (default sgd, Nesterov momentum 0.9)")
    p.add_argument("--sched", choices=("cosine", "step", "none"),
                   help="LR schedule after warm-up (default cosine; step: /10 at 50%% and 75%%, He et al.'s CIFAR one)")
    p.add_argument("--warmup-epochs", type=float_in(0, inf), help="linear LR warm-up (default 1; 5 ImageFolder)")
    p.add_argument("--label-smoothing", type=float_in(0, 1), help="default 0.1 (0 for CIFAR)")
    p.add_argument("--drop-path", type=float_in(0, 1), help="stochastic-depth rate (default 0)")
    p.add_argument("--augment", choices=("none", "trivial", "randaugment", "autoaugment"),
                   help="per-image augmentation policy on top of crop/flip (default none; torchvision's newer "
                        "recipes use trivial)")
    p.add_argument("--random-erase", type=float_in(0, 1), metavar="P",
                   help="random-erasing probability (default 0; torchvision's recipes use 0.1)")
    p.add_argument("--mixup", type=float_in(0, inf), metavar="ALPHA",
                   help="MixUp with weights from Beta(ALPHA, ALPHA), partner drawn per sample (default off; 0.2)")
    p.add_argument("--cutmix", type=float_in(0, inf), metavar="ALPHA",
                   help="CutMix with box areas from Beta(ALPHA, ALPHA) (default off; 1.0); with --mixup, "
                        "either one per sample")
    p.add_argument("--mix-prob", type=float_in(0, 1, hi_open=False), metavar="P",
                   help="chance that a sample is mixed at all (default 1)")
    p.add_argument("--ema", type=float_in(0, 1, lo_open=True), nargs="?", const=0.999, metavar="DECAY",
                   help="keep an EMA of the weights (decay 0.999 if no value) and validate it too")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast precision (CPU: bf16 only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default on for digits: 2x faster convolutions on CPU)")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--input-size", type=positive_int, metavar="N", help="default: 32 digits/CIFAR, card's else")
    p.add_argument("--workers", type=nonneg_int, metavar="N", help="data-loading processes per rank")
    p.add_argument("--clip-grad", type=float_in(0, inf, lo_open=True), metavar="NORM", help="clip grad norm")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                   help="start from the released ImageNet weights (a TAG from `archlab card` picks another "
                        "release); the classifier is new where the data has other classes")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute each block during backward: less activation memory, identical results")
    p.add_argument("--bad-images", choices=("refuse", "skip"),
                   help="undecodable ImageFolder images, all found before training: refuse (default: list them all "
                        "and stop) or skip (train without them, named in the run folder's skipped_images.txt)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    from archlab.train.loop import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def resume_config(args: argparse.Namespace, saved: dict[str, Any]) -> TrainConfig:
    """A resumed run keeps its configuration; only options that change neither maths nor data order may differ."""
    from archlab.train.loop import TrainConfig
    from archlab.train.recipe import RESUMABLE_OVERRIDES

    if saved.get("model") != args.model:
        raise CLIError(f"archlab train: {args.resume} is a run of {saved.get('model')}, not {args.model}")
    values = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
    for name, value in _given(args).items():
        if name in RESUMABLE_OVERRIDES or name == "model":
            values[name] = value
        elif value != values.get(name):
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"archlab train: {flag} {value} differs from the resumed run's {values.get(name)}; "
                           f"a resumed run keeps its configuration (start a new run with --out instead)")
    values["run_dir"] = str(Path(args.resume))
    return TrainConfig(**values)


def clean_data_error(exc: BaseException) -> str:
    """The user's message inside an error re-raised from a DataLoader worker (which prefixes a traceback)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if "DataError: " in line:
            return line.split("DataError: ", 1)[1]
    return lines[0] if lines else type(exc).__name__


def run(args: argparse.Namespace) -> int:
    from archlab.registry import model_card, parse_model_spec
    from archlab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from archlab.train.data import DataError
    from archlab.train.distributed import init_distributed, shutdown
    from archlab.train.loop import TrainingDiverged, TrainingInterrupted, train
    from archlab.train.recipe import KIND_DEFAULTS, data_kind, resolve_config

    model_card(parse_model_spec(args.model)[0])  # unknown model: one line naming the closest ones
    if args.resume and args.out:
        raise CLIError("archlab train: give --resume RUN_DIR or --out RUN_DIR, not both")
    if args.amp == "fp16" and (args.device == "cpu" or not _cuda_available()):
        raise CLIError("archlab train: --amp fp16 needs a CUDA device; on CPU use --amp bf16")
    resume, notes = None, []
    if args.resume:
        if Path(args.resume).is_file():  # the checkpoint file itself: its run folder is what resumes
            if Path(args.resume).name != CHECKPOINT_NAME:
                raise CLIError(f"archlab train: --resume takes a run folder (or its {CHECKPOINT_NAME}), "
                               f"got the file {args.resume}")
            args.resume = str(Path(args.resume).parent)
        resume = load_checkpoint(args.resume)
        cfg = resume_config(args, resume["config"])
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data_name = "digits" if args.data == "digits" else Path(args.data).expanduser().resolve().name
        run_dir = args.out or os.path.join("runs", f"{args.model}-{data_name}-{stamp}")
        if (Path(run_dir) / CHECKPOINT_NAME).exists():
            raise CLIError(f"archlab train: {run_dir} already holds a run; continue it with --resume {run_dir} "
                           f"or choose another --out")
        writable_dir(run_dir, "--out")  # before the data and the model are built
        cfg = resolve_config(_given(args), run_dir)
        if args.mix_prob is not None and not (cfg.mixup or cfg.cutmix):
            raise CLIError("archlab train: --mix-prob applies with --mixup or --cutmix")
        default_warmup = KIND_DEFAULTS[data_kind(args.data)]["warmup_epochs"]
        if args.warmup_epochs is None and cfg.warmup_epochs < default_warmup:
            notes.append(f"warm-up shortened to {cfg.warmup_epochs:g} epochs (a fifth of this {cfg.epochs}-epoch "
                         f"run; the default is {default_warmup:g}); --warmup-epochs sets it")
    ctx = init_distributed(cfg.device)
    try:
        progress_console = console(stderr=args.json)
        result = train(cfg, ctx, progress_console if ctx.is_main else None, resume=resume, notes=tuple(notes))
    except TrainingInterrupted as exc:
        if ctx.is_main:
            print(f"archlab: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except TrainingDiverged as exc:
        print(f"archlab: error: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:
        raise CLIError(f"archlab train: {clean_data_error(exc)}") from None
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return 0
    if args.json:
        print_json(result)
    else:
        ema = f" (EMA {result['val_acc_ema']:.2f}%)" if result.get("val_acc_ema") is not None else ""
        console().print(f"[bold]{cfg.model}[/]: val top-1 {result['val_acc']:.2f}%{ema} after "
                         f"{result['epochs']} epoch{'s' if result['epochs'] != 1 else ''} in {result['seconds']:.0f}s; run folder {result['run_dir']}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
