"""``archlab trace``: resolution, channels, blocks, stride and receptive field per stage, for one model or
several side by side."""

from __future__ import annotations

import argparse

from archlab.cli.args import SPEC_HELP, plot_path, positive_int
from archlab.cli.output import console, draw_plot, num, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help=SPEC_HELP + "; several are traced side by side")
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="square input size (default: each model card's)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw resolution, channels and receptive field per stage, one line per model")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (a list for several models)")


def run(args: argparse.Namespace) -> int:
    from archlab.analysis.trace import stage_trace

    plot = plot_path(args.plot)
    traces = [stage_trace(name, args.input) for name in dict.fromkeys(args.names)]  # a name given twice: once
    if plot is not None:
        from archlab.plots import plot_stage_traces

        draw_plot(plot_stage_traces, traces, plot)
    if args.json:
        print_json(traces[0].to_dict() if len(traces) == 1 else [t.to_dict() for t in traces])
        return 0
    from rich.table import Table

    out = console()
    for t in traces:
        h, w = t.input_size
        table = Table(title=f"{t.name} at {h}x{w}", header_style="bold",
                      caption="blocks: residual/dense/inverted blocks finishing in the stage (conv layers for "
                              "AlexNet/VGG; stems, transitions and head convs not counted); stride: cumulative; "
                              "RF: receptive field (+: global context through SE/pooling)")
        for col, justify in (("stage", "left"), ("module", "left"), ("resolution", "right"), ("channels", "right"),
                             ("blocks", "right"), ("stride", "right"), ("RF", "right")):
            table.add_column(col, justify=justify)
        for s in t.stages:
            table.add_row(s.name, s.module or "-", f"{s.resolution[0]}x{s.resolution[1]}", str(s.channels),
                          str(s.blocks) if s.blocks else "-", num(s.stride),
                          num(s.receptive_field) + ("+" if s.global_context else ""))
        out.print(table)
        out.print(f"{t.name}: {t.resolution_pattern} and {t.channel_pattern}")
    if plot is not None:
        out.print(f"plot written to {plot}")
    return 0
