"""``archlab erf``: the effective receptive field of each stage beside the theoretical one."""

from __future__ import annotations

import argparse

from archlab.cli.args import SPEC_HELP, CLIError, fraction, plot_path, positive_int
from archlab.cli.output import console, draw_plot, print_json, transient_progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help=SPEC_HELP)
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="square input size (default: the model card's)")
    p.add_argument("--mass", type=fraction, default=0.95,
                   help="share of the input gradient the effective field holds (default 0.95)")
    p.add_argument("--samples", type=positive_int, default=4, help="random inputs averaged (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw each stage's input-gradient map with both fields outlined")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from archlab.analysis.effective_rf import effective_receptive_field
    from archlab.registry import model_card, parse_model_spec

    plot = plot_path(args.plot)
    size = args.input or model_card(parse_model_spec(args.name)[0]).input_size
    if size > 1024:
        raise CLIError(f"--input {size}: the effective receptive field runs real forward and backward passes; "
                       "use 1024 or less")
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    # Progress on stderr (transient), so that --json on stdout stays clean.
    with transient_progress(TextColumn(f"{args.name}: forward + backward per random input"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        task = progress.add_task("erf", total=args.samples)
        erf = effective_receptive_field(args.name, size, args.mass, args.samples, args.seed,
                                        on_sample=lambda done: progress.update(task, completed=done))
    if plot is not None:
        from archlab.plots import plot_effective_rf

        draw_plot(plot_effective_rf, erf, plot)
    if args.json:
        print_json(erf.to_dict())
        return 0
    from rich.table import Table

    table = Table(title=f"{erf.name} at {size}x{size}: effective receptive field ({100 * erf.mass:g}% of the input "
                        f"gradient, {erf.samples} random inputs, weights as built)", header_style="bold",
                  caption="theoretical: pixels that can reach the centre unit (clipped to the image; +: the whole "
                          "image also reaches it through squeeze-and-excitation); effective: side of the centred "
                          "square holding the gradient mass; area: effective² / theoretical²")
    for col, justify in (("stage", "left"), ("module", "left"), ("resolution", "right"), ("theoretical", "right"),
                         ("effective", "right"), ("area used", "right")):
        table.add_column(col, justify=justify)
    for s in erf.stages:
        table.add_row(s.stage, s.module, f"{s.resolution[0]}x{s.resolution[1]}",
                      f"{s.theoretical}{'+' if s.global_context else ''}", str(s.effective), f"{100 * s.fraction:.0f}%")
    out = console()
    out.print(table)
    if plot is not None:
        out.print(f"plot written to {plot}")
    return 0
