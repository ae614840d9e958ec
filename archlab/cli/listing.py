"""``archlab list``: the registered models, as a table or JSON."""

from __future__ import annotations

import argparse

from archlab.cli.args import CLIError
from archlab.cli.output import console, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*' (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
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
