"""The ``archlab`` command line: one sub-command per job, each in the module that does the work.

Every command answers bad input with one line on stderr and exit code 2 (set ``ARCHLAB_DEBUG=1`` for the
traceback). A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

# sub-command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("archlab.cli", "list the registered models"),
    "card": ("archlab.cli", "a model's card: paper, key innovation, published figures and their sources"),
    "summary": ("archlab.analysis.commands", "per-layer table: output shape, params, MACs, receptive field"),
    "trace": ("archlab.analysis.commands", "per-stage resolution, channels, blocks, stride and receptive field"),
    "erf": ("archlab.analysis.commands", "effective receptive field per stage: how much of its window a unit uses"),
    "train": ("archlab.train.commands", "train a model (digits, CIFAR, ImageFolder; torchrun for DDP)"),
    "eval": ("archlab.train.commands", "top-1/top-5 of saved weights with the model card's preprocessing"),
    "compare": ("archlab.compare", "the architecture comparison table: params, MACs, top-1, memory, latency"),
    "cost": ("archlab.analysis.cost", "one conv layer: standard vs grouped vs depthwise-separable cost"),
    "scale": ("archlab.scaling_report", "compound scaling measured: params and MACs of B0 scaled by phi vs 2^phi"),
    "bench": ("archlab.bench_command",
              "time models (speed, memory), optionally against torchvision/timm in the same run"),
    "export": ("archlab.export", "export to ONNX or a torch.export program, checked by running the file"),
}


class CLIError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        raise CLIError(f"{self.prog}: {message}")


def positive_ints(text: str) -> list[int]:
    """Parse '1,8,32' into [1, 8, 32], every value >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be an integer >= 1, got {text!r}")
    return values


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a bad value is one line and exit 2, like any bad input)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its error message
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def plot_path(text: str | None) -> Path | None:
    """The --plot file as a Path (None when not asked for), checked before any work is done."""
    if not text:
        return None
    plot = Path(text)
    if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CLIError(f"--plot takes a .png, .svg or .pdf file, got {text!r}")
    if not plot.parent.is_dir():
        raise CLIError(f"--plot: folder {str(plot.parent)!r} does not exist")
    return plot


def draw_plot(plotter: Callable[[Any, Path], Any], data: Any, plot: Path) -> None:
    """``plotter(data, plot)``, a file that cannot be written being bad input (one line, exit 2)."""
    try:
        plotter(data, plot)
    except OSError as exc:
        raise CLIError(f"--plot: cannot write {str(plot)!r}: {exc.strerror or exc}") from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def transient_progress(*columns: Any, stderr: bool = True, disable: bool = False) -> Any:
    """A rich progress bar that vanishes when done, on stderr by default (``--json`` on stdout stays clean), and
    shown only on a terminal: in a pipe or a log a transient bar leaves nothing but an empty line behind."""
    from rich.console import Console
    from rich.progress import Progress

    out = Console(stderr=stderr)
    return Progress(*columns, console=out, transient=True, disable=disable or not out.is_terminal)


def console(stderr: bool = False):
    """A rich console; when output is not a terminal, at least 160 columns, so tables are not squeezed to 80."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() else max(int(columns) if columns.isdigit() else 0, 160)
    return Console(stderr=stderr, width=width)


def build_parser() -> argparse.ArgumentParser:
    from archlab import __version__

    parser = _Parser(prog="archlab", description="Build, measure, scale and compare convolutional networks.")
    parser.add_argument("--version", action="version", version=f"archlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(module, f"add_{name}_arguments")(p)
        p.set_defaults(_run=getattr(module, f"run_{name}"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("archlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `archlab summary ... | head`: the reader left; not an error worth a traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so Python's exit-time flush does not raise again
        return 0
    except (CLIError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # One form for every error: "archlab: error: [COMMAND: ]what", whoever raised it (argparse names the
        # subcommand as "archlab summary: ...").
        command = re.match(r"archlab(?: ([a-z]+))?: ", message)
        if command and (command.group(1) is None or command.group(1) in COMMANDS):
            message = message[command.end():]
            message = f"{command.group(1)}: {message}" if command.group(1) else message
        print(f"archlab: error: {message}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------- archlab list


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*' (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_list(args: argparse.Namespace) -> int:
    from archlab.registry import list_models, model_card

    names = list_models(args.pattern)
    if not names:
        raise CLIError(f"no model matches {args.pattern!r}; try `archlab list`")
    cards = [model_card(n) for n in names]
    if args.json:
        print_json([c.to_dict() for c in cards])
        return 0
    from rich.table import Table

    table = Table(title=f"{len(cards)} model{'s' if len(cards) != 1 else ''}", header_style="bold")
    for col, justify in (("name", "left"), ("family", "left"), ("year", "right"), ("params", "right"),
                         ("MACs", "right"), ("top-1", "right"), ("res", "right")):
        table.add_column(col, justify=justify)
    for c in cards:
        table.add_row(
            c.name,
            c.family,
            str(c.year),
            f"{c.params / 1e6:.2f}M" if c.params else "-",
            f"{c.macs / 1e9:.2f}G" if c.macs else "-",
            f"{c.top1:.1f}" if c.top1 else "-",
            str(c.input_size),
        )
    console().print(table)
    return 0


# ---------------------------------------------------------------------------------------------- archlab card


def add_card_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name (see `archlab list`)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_card(args: argparse.Namespace) -> int:
    from archlab.pretrained import pretrained_weights
    from archlab.registry import model_card

    card = model_card(args.name)
    weights = pretrained_weights(args.name)
    if args.json:
        print_json({**card.to_dict(), "pretrained": [w.to_dict() for w in weights]})
        return 0
    from rich.table import Table

    def fig(value: float | None, scale: float, unit: str, source: str | None) -> str:
        if value is None:
            return "- (none published)"
        return f"{value / scale:.4g}{unit}" + (f"  ({source})" if source else "")

    table = Table(show_header=False, title=f"{card.name}: {card.family}, {card.year}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("paper", f"{card.paper} (arXiv:{card.arxiv})"),
        ("key innovation", card.innovation),
        ("input", f"{card.input_size}x{card.input_size} "
                  f"(smallest accepted: {card.min_input_size}x{card.min_input_size})"),
        ("params", fig(card.params, 1e6, "M", f"{card.num_classes} classes")),
        ("multiply-adds", fig(card.macs, 1e9, "G", card.macs_source)),
        ("top-1", fig(card.top1, 1, "%", card.top1_source)),
        ("matches", card.reference or "- (no library implements it)"),
        ("preprocessing", f"{card.interpolation}, crop {card.crop_pct:.3f}, mean {card.mean}, std {card.std}"),
    ]
    for w in weights:
        prep = w.preprocessing
        scored = f"top-1 {w.top1:.2f}%, " if w.top1 is not None else ""
        rows.append((f"pretrained={w.tag!r}" if not w.default else f"pretrained=True ({w.tag})",
                     f"{w.source}, {scored}evaluated at {prep.input_size} (resize {round(prep.input_size / prep.crop_pct)}, "
                     f"{prep.interpolation})"))
    if card.notes:
        rows.append(("notes", card.notes))
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)
    return 0
