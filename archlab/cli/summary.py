"""``archlab summary``: the per-layer table of a model (output shape, params, MACs, receptive field; with
``--time``, measured time per row), as a table, JSON, CSV or a plot."""

from __future__ import annotations

import argparse
import csv
import sys

import torch

from archlab.cli.args import SPEC_HELP, CLIError, plot_path, positive_int
from archlab.cli.output import console, count, draw_plot, pair, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help=SPEC_HELP)
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="square input size (default: the model card's)")
    p.add_argument("--depth", type=int, default=2, metavar="N", help="module nesting depth of the rows (default 2)")
    p.add_argument("--time", action="store_true",
                   help="also measure each row's time on this CPU (real forward passes, batch 1) beside its MACs")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw each row's share of params, MACs (and with --time, of the time) as bars")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def run(args: argparse.Namespace) -> int:
    from archlab.analysis.latency import with_times
    from archlab.analysis.summary import summarize

    if args.depth < 1:
        raise CLIError(f"--depth must be >= 1, got {args.depth}")
    plot = plot_path(args.plot)
    s = summarize(args.name, args.input, depth=args.depth)
    if args.time:
        if s.input_size[0] * s.input_size[1] > 1024 * 1024:
            raise CLIError(f"--time runs real forward passes; use --input 1024 or less (got {s.input_size[0]})")
        s = with_times(s)
    if plot is not None:
        from archlab.plots import plot_layer_shares

        draw_plot(plot_layer_shares, s, plot)
    if args.json:
        print_json(s.to_dict())
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["name", "type", "output_shape", "params", "macs", "share", "receptive_field", "stride",
                         "global_context", "padding"] + (["time_ms", "time_share"] if args.time else []))
        for r in s.rows:
            shape = "x".join(map(str, r.output_shape)) if r.output_shape else ""
            timing = [f"{r.time_ms:.4f}", f"{r.time_share:.6f}"] if args.time else []
            writer.writerow([r.name, r.type, shape, r.params, r.macs, f"{r.share:.6f}", pair(r.receptive_field),
                             pair(r.stride), int(r.global_context), pair(r.padding), *timing])
        return 0
    from rich.table import Table

    h, w = s.input_size
    timed = f", {s.time_ms:.1f} ms per forward (batch {s.time_batch}, {torch.get_num_threads()} thread(s))" \
        if args.time else ""
    table = Table(title=f"{s.name} at {h}x{w}: {count(s.params)} params, {count(s.macs)} MACs{timed}",
                  header_style="bold", caption="RF: receptive field in input pixels (+: also sees the whole image "
                  "through a global pool); stride: effective stride; pad: effective padding"
                  + ("; ms / % time: measured here, median of forward passes" if args.time else ""))
    columns = [("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right"), ("MACs", "right"),
               ("%", "right")] + ([("ms", "right"), ("% time", "right")] if args.time else []) + \
        [("RF", "right"), ("stride", "right"), ("pad", "right")]
    for col, justify in columns:
        # Long names wrap rather than end in an ellipsis; numbers never wrap.
        table.add_column(col, justify=justify, overflow="fold", no_wrap=justify == "right")
    for r in s.rows:
        table.add_row(
            r.name,
            r.type,
            "x".join(map(str, r.output_shape[1:])) if r.output_shape else "-",
            count(r.params) if r.params else "-",
            count(r.macs) if r.macs else "-",
            f"{100 * r.share:.1f}" if r.macs else "-",
            *([f"{r.time_ms:.2f}", f"{100 * r.time_share:.1f}"] if args.time else []),
            pair(r.receptive_field) + ("+" if r.global_context else ""),
            pair(r.stride),
            pair(r.padding),
        )
    console().print(table)
    if plot is not None:
        console().print(f"plot written to {plot}")
    return 0
