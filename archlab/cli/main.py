"""The ``archlab`` command line: the command table, the parser, and the one error form.

Every command answers bad input with one line on stderr, "archlab: error: ...", and exit code 2 (set
``ARCHLAB_DEBUG=1`` for the traceback). A command is a module of this package with ``add_arguments(parser)`` and
``run(args) -> int``: it parses, calls the library, and renders what the library returns. Modules are imported only
when the parser is built, and the library never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Sequence

from archlab.cli.args import CLIError

# command -> (module of archlab.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("listing", "list the registered models"),
    "card": ("card", "a model's card: paper, key innovation, published figures and their sources"),
    "summary": ("summary", "per-layer table: output shape, params, MACs, receptive field"),
    "trace": ("trace", "per-stage resolution, channels, blocks, stride and receptive field"),
    "erf": ("erf", "effective receptive field per stage: how much of its window a unit uses"),
    "train": ("train", "train a model (digits, CIFAR, ImageFolder; torchrun for DDP)"),
    "eval": ("evaluate", "top-1/top-5 of saved weights with the model card's preprocessing"),
    "compare": ("compare", "the architecture comparison table: params, MACs, top-1, memory, latency"),
    "cost": ("cost", "one conv layer: standard vs grouped vs depthwise-separable cost"),
    "scale": ("scale", "compound scaling measured: params and MACs of B0 scaled by phi vs 2^phi"),
    "bench": ("bench", "time models (speed, memory), optionally against torchvision/timm in the same run"),
    "export": ("export", "export to ONNX or a torch.export program, checked by running the file"),
    "study": ("study", "test a design claim (degradation, cardinality, SE ...) on this machine and data"),
    "search": ("search", "architecture search: compound-scaling coefficients, latency-aware designs, design spaces"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        raise CLIError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from archlab import __version__

    parser = _Parser(prog="archlab", description="Build, measure, scale and compare convolutional networks.")
    parser.add_argument("--version", action="version", version=f"archlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"archlab.cli.{module_name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
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
