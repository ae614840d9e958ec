"""``archlab eval``: top-1 / top-5 of saved or released weights, with the model card's (or the training run's)
preprocessing (:func:`archlab.train.evaluate.evaluate_weights`)."""

from __future__ import annotations

import argparse

from archlab.cli.args import CLIError, nonneg_int, positive_int
from archlab.cli.output import console, print_json, transient_progress
from archlab.cli.train import clean_data_error


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (see `archlab list`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", metavar="FILE",
                       help="archlab checkpoint, .safetensors, or a torchvision/timm state-dict file")
    which.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                       help="the released ImageNet weights (downloaded once; a TAG from `archlab card` picks "
                            "another release), evaluated with their own preprocessing")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="'digits' (its val split), 'fashion-mnist' (its 10,000 test images), a CIFAR folder (test "
                        "split), an ImageFolder root (val/)")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="B")
    p.add_argument("--source", choices=("archlab", "torchvision", "timm"), default="archlab",
                   help="naming convention of the weights' keys (default archlab)")
    p.add_argument("--num-classes", type=positive_int, help="classifier size (default: from the checkpoint/data)")
    p.add_argument("--workers", type=nonneg_int, default=0, metavar="N")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--bad-images", choices=("refuse", "skip"), default="refuse",
                   help="undecodable images, all found before evaluating: refuse (default: list them all) or skip")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
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
                                      pretrained=args.pretrained, bad_images=args.bad_images)
        except DataError as exc:
            raise CLIError(f"archlab eval: {clean_data_error(exc)}") from None
    if args.json:
        print_json(result)
    else:
        console().print(f"[bold]{args.model}[/] on {result['data']}: top-1 {result['top1']:.2f}%  "
                         f"top-5 {result['top5']:.2f}%  ({result['images']} images, loss {result['loss']:.4f})")
    return 0
