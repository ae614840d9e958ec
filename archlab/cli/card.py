"""``archlab card``: a model's card, its published figures with their sources, and its released weights."""

from __future__ import annotations

import argparse

from archlab.analysis.seed_table import SEED_FIGURES
from archlab.cli.output import console, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name (see `archlab list`)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from archlab.pretrained import pretrained_weights
    from archlab.registry import model_card

    card = model_card(args.name)
    weights = pretrained_weights(card)
    if args.json:
        seed = SEED_FIGURES.get(card.name)
        print_json({**card.to_dict(), "pretrained": [w.to_dict() for w in weights],
                    "seed": seed.to_dict() if seed else None})
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
    if (seed := SEED_FIGURES.get(card.name)) is not None:  # the seed document's table quotes other figures: say what they are
        rows.append(("the seed's figures", f"{seed.params / 1e6:.1f}M params, {seed.macs / 1e9:.3g}G FLOPs "
                                           f"(multiply-adds), top-1 {seed.top1:.1f}%: {seed.note}"))
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)
    return 0
