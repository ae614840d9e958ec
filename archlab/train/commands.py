"""``archlab train`` and ``archlab eval``: argument parsing, defaults per dataset, and turning failures into
one-line messages. The work itself is in :mod:`archlab.train.loop` and :mod:`archlab.train.evaluate`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from archlab.cli import CLIError, console, nonneg_int, positive_int, print_json, transient_progress

# Defaults per kind of data, chosen so that `archlab train MODEL --data KIND` gives a sensible run as is.
# digits: cifar_resnet20 reaches >97% val in a few CPU minutes; cifar: He et al. 2015 (arXiv:1512.03385) sec. 4.2
# at 200 epochs with a cosine schedule; imagefolder: the torchvision ImageNet recipe (lr 0.1 per 256 images).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=10, batch_size=64, warmup_epochs=1.0, label_smoothing=0.1, workers=0, channels_last=True),
    "cifar": dict(epochs=200, batch_size=128, warmup_epochs=1.0, label_smoothing=0.0, workers=4),
    "imagefolder": dict(epochs=90, batch_size=256, warmup_epochs=5.0, label_smoothing=0.1, workers=8),
}
OPT_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=5e-4), "adamw": dict(lr=2e-3, weight_decay=0.05)}
# Options a resumed run may change: they affect neither the maths nor the data order.
RESUMABLE_OVERRIDES = ("workers", "data", "device", "grad_checkpointing")


def _float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (lo < value if lo_open else lo <= value) or not (value < hi if hi_open else value <= hi):
            raise argparse.ArgumentTypeError(f"must be in {'(' if lo_open else '['}{lo}, {hi}"
                                             f"{')' if hi_open else ']'}, got {value}")
        return value
    return parse


# ------------------------------------------------------------------------------------------------- train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    inf = float("inf")
    p.add_argument("model", help="registered model name (see `archlab list`)")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="'digits', a CIFAR-10/100 python-format folder, or an ImageFolder root with train/ and val/")
    p.add_argument("--epochs", type=positive_int, help="default: 10 digits, 200 CIFAR, 90 ImageFolder")
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help="global batch size, split over torchrun processes (default: 64 / 128 / 256)")
    p.add_argument("--lr", type=_float_in(0, inf, lo_open=True), help="peak learning rate (sgd 0.1, adamw 2e-3)")
    p.add_argument("--weight-decay", type=_float_in(0, inf), help="sgd 5e-4, adamw 0.05; never on norms/biases")
    p.add_argument("--opt", choices=("sgd", "adamw"), help="optimizer (default sgd, Nesterov momentum 0.9)")
    p.add_argument("--sched", choices=("cosine", "none"), help="LR schedule after warm-up (default cosine)")
    p.add_argument("--warmup-epochs", type=_float_in(0, inf), help="linear LR warm-up (default 1; 5 ImageFolder)")
    p.add_argument("--label-smoothing", type=_float_in(0, 1), help="default 0.1 (0 for CIFAR)")
    p.add_argument("--drop-path", type=_float_in(0, 1), help="stochastic-depth rate (default 0)")
    p.add_argument("--augment", choices=("none", "trivial", "randaugment", "autoaugment"),
                   help="per-image augmentation policy on top of crop/flip (default none; torchvision's newer "
                        "recipes use trivial)")
    p.add_argument("--random-erase", type=_float_in(0, 1), metavar="P",
                   help="random-erasing probability (default 0; torchvision's recipes use 0.1)")
    p.add_argument("--mixup", type=_float_in(0, inf), metavar="ALPHA",
                   help="MixUp with weights from Beta(ALPHA, ALPHA), partner drawn per sample (default off; 0.2)")
    p.add_argument("--cutmix", type=_float_in(0, inf), metavar="ALPHA",
                   help="CutMix with box areas from Beta(ALPHA, ALPHA) (default off; 1.0); with --mixup, "
                        "either one per sample")
    p.add_argument("--mix-prob", type=_float_in(0, 1, hi_open=False), metavar="P",
                   help="chance that a sample is mixed at all (default 1)")
    p.add_argument("--ema", type=_float_in(0, 1, lo_open=True), nargs="?", const=0.999, metavar="DECAY",
                   help="keep an EMA of the weights (decay 0.999 if no value) and validate it too")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast precision (CPU: bf16 only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default on for digits: 2x faster convolutions on CPU)")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--input-size", type=positive_int, metavar="N", help="default: 32 digits/CIFAR, card's else")
    p.add_argument("--workers", type=nonneg_int, metavar="N", help="data-loading processes per rank")
    p.add_argument("--clip-grad", type=_float_in(0, inf, lo_open=True), metavar="NORM", help="clip grad norm")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                   help="start from the released ImageNet weights (a TAG from `archlab card` picks another "
                        "release); the classifier is new where the data has other classes")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute each block during backward: less activation memory, identical results")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def data_kind(spec: str) -> str:
    from archlab.train.data import _cifar_root

    if spec == "digits":
        return "digits"
    path = Path(spec).expanduser()
    return "cifar" if path.is_dir() and _cifar_root(path) else "imagefolder"


def _given(args: argparse.Namespace) -> dict[str, Any]:
    from archlab.train.loop import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def resolve_config(args: argparse.Namespace, run_dir: str):
    """A fresh run's :class:`TrainConfig`: what the user gave, else the defaults for the data and optimizer."""
    from archlab.train.loop import TrainConfig

    given = _given(args)
    kind = data_kind(args.data)
    opt = given.get("opt", "sgd")
    values: dict[str, Any] = {**KIND_DEFAULTS[kind], **OPT_DEFAULTS[opt], "opt": opt}
    if kind != "digits":
        values["workers"] = min(values["workers"], os.cpu_count() or 1)
    values.update(given)
    values["run_dir"] = run_dir
    return TrainConfig(**values)


def resume_config(args: argparse.Namespace, saved: dict[str, Any]):
    """A resumed run keeps its configuration; only options that change neither maths nor data order may differ."""
    from archlab.train.loop import TrainConfig

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


def _clean_data_error(exc: BaseException) -> str:
    """The user's message inside an error re-raised from a DataLoader worker (which prefixes a traceback)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if "DataError: " in line:
            return line.split("DataError: ", 1)[1]
    return lines[0] if lines else type(exc).__name__


def run_train(args: argparse.Namespace) -> int:
    from archlab.registry import model_card
    from archlab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from archlab.train.data import DataError
    from archlab.train.distributed import init_distributed, shutdown
    from archlab.train.loop import TrainingDiverged, TrainingInterrupted, train

    model_card(args.model)  # unknown model: one line naming the closest ones
    if args.resume and args.out:
        raise CLIError("archlab train: give --resume RUN_DIR or --out RUN_DIR, not both")
    if args.amp == "fp16" and (args.device == "cpu" or not _cuda_available()):
        raise CLIError("archlab train: --amp fp16 needs a CUDA device; on CPU use --amp bf16")
    resume = None
    if args.resume:
        resume = load_checkpoint(args.resume)
        cfg = resume_config(args, resume["config"])
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data_name = "digits" if args.data == "digits" else Path(args.data).expanduser().resolve().name
        run_dir = args.out or os.path.join("runs", f"{args.model}-{data_name}-{stamp}")
        if (Path(run_dir) / CHECKPOINT_NAME).exists():
            raise CLIError(f"archlab train: {run_dir} already holds a run; continue it with --resume {run_dir} "
                           f"or choose another --out")
        cfg = resolve_config(args, run_dir)
        if args.mix_prob is not None and not (cfg.mixup or cfg.cutmix):
            raise CLIError("archlab train: --mix-prob applies with --mixup or --cutmix")
    ctx = init_distributed(cfg.device)
    try:
        progress_console = console(stderr=args.json)
        result = train(cfg, ctx, progress_console if ctx.is_main else None, resume=resume)
    except TrainingInterrupted as exc:
        if ctx.is_main:
            print(f"archlab: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except TrainingDiverged as exc:
        print(f"archlab: error: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:
        raise CLIError(f"archlab train: {_clean_data_error(exc)}") from None
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


# -------------------------------------------------------------------------------------------------- eval


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (see `archlab list`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", metavar="FILE",
                       help="archlab checkpoint, .safetensors, or a torchvision/timm state-dict file")
    which.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                       help="the released ImageNet weights (downloaded once; a TAG from `archlab card` picks "
                            "another release), evaluated with their own preprocessing")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="'digits' (its val split), a CIFAR folder (test split), an ImageFolder root (val/)")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="B")
    p.add_argument("--source", choices=("archlab", "torchvision", "timm"), default="archlab",
                   help="naming convention of the weights' keys (default archlab)")
    p.add_argument("--num-classes", type=positive_int, help="classifier size (default: from the checkpoint/data)")
    p.add_argument("--workers", type=nonneg_int, default=0, metavar="N")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run_eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from archlab.registry import model_card
    from archlab.train.data import DataError
    from archlab.train.evaluate import evaluate_weights

    model_card(args.model)
    with transient_progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            stderr=args.json) as progress:
        def track(total: int):
            task = progress.add_task("eval", total=total)
            return lambda n: progress.update(task, advance=n)

        try:
            result = evaluate_weights(args.model, args.weights, args.data, args.batch_size, args.source,
                                      args.workers, args.device, args.num_classes, progress=track,
                                      pretrained=args.pretrained)
        except DataError as exc:
            raise CLIError(f"archlab eval: {_clean_data_error(exc)}") from None
    if args.json:
        print_json(result)
    else:
        console().print(f"[bold]{args.model}[/] on {result['data']}: top-1 {result['top1']:.2f}%  "
                         f"top-5 {result['top5']:.2f}%  ({result['images']} images, loss {result['loss']:.4f})")
    return 0
