"""``archlab scale``: compound scaling measured (Tan & Le 2019, arXiv:1905.11946, section 3.3): for each ``phi``,
B0 scaled by the formula, and the released B1-B7, counted on the meta device
(:func:`archlab.analysis.scaling.scaling_table`) beside the growth the formula promises,
``(alpha * beta**2 * gamma**2) ** phi``."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict

from archlab.cli.args import CLIError, plot_path
from archlab.cli.output import console, draw_plot, print_json, transient_progress
from archlab.analysis.scaling import scaling_table
from archlab.scaling import compound


def _phi_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"every phi must be a finite number >= 0, got {text!r}")
    return values


def _coefficient(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (a multiplier that does not shrink), "
                                         f"got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phi", type=_phi_list, default=[0, 1, 2, 3, 4, 5, 6, 7], metavar="LIST",
                   help="compound coefficients, e.g. 0,0.5,1 (default 0..7)")
    p.add_argument("--alpha", type=_coefficient, default=1.2, help="depth base (default 1.2, the paper's)")
    p.add_argument("--beta", type=_coefficient, default=1.1, help="width base (default 1.1)")
    p.add_argument("--gamma", type=_coefficient, default=1.15, help="resolution base (default 1.15)")
    p.add_argument("--no-released", action="store_true", help="leave out the released B1-B7 rows")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw multiply-adds and parameters over B0's against phi, with the formula's promise")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    plot = plot_path(args.plot)
    constraint = compound(0, args.alpha, args.beta, args.gamma).constraint
    biggest = max(args.phi)
    if constraint**biggest > 1e4:  # B0 is 0.39 GMACs: beyond ~4 TMACs a single image is not a useful network
        raise CLIError(f"phi={biggest:g} with alpha*beta^2*gamma^2={constraint:.3f} asks for "
                       f"{constraint**biggest:.3g}x B0's multiply-adds; choose a smaller phi")
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    # Progress on stderr (transient), so that --json on stdout stays clean.
    with transient_progress(TextColumn("counting {task.description}"), BarColumn(), MofNCompleteColumn()) as progress:
        task = progress.add_task("B0", total=len(args.phi))
        rows = scaling_table(args.phi, args.alpha, args.beta, args.gamma, released=not args.no_released,
                             on_row=lambda i, phi: progress.update(task, completed=i, description=f"phi={phi:g}"))
    if plot is not None:
        from archlab.plots import plot_scaling

        draw_plot(lambda r, p: plot_scaling(r, constraint, p), rows, plot)
    if args.json:
        print_json(dict(alpha=args.alpha, beta=args.beta, gamma=args.gamma, constraint=constraint,
                        rows=[asdict(r) for r in rows]))
        return 0
    from rich.table import Table

    table = Table(title=f"compound scaling of EfficientNet-B0: alpha={args.alpha:g}, beta={args.beta:g}, "
                        f"gamma={args.gamma:g}, alpha*beta^2*gamma^2 = {constraint:.4f}",
                  header_style="bold",
                  caption="MACs ×B0: measured multiply-adds over B0's at 224; expected: (alpha*beta^2*gamma^2)^phi. "
                          "Released B1-B7 use their own coefficients, not the formula's.")
    for col in ("model", "phi", "depth ×", "width ×", "resolution", "params", "MACs", "MACs ×B0", "expected ×B0"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r.model if r.kind == "formula" else f"  {r.model} (released)", f"{r.phi:g}",
                      f"{r.depth_mult:.3f}", f"{r.width_mult:.3f}", str(r.resolution), f"{r.params / 1e6:.2f}M",
                      f"{r.macs / 1e9:.3f}G", f"{r.macs_ratio:.2f}", f"{r.expected_ratio:.2f}")
    console().print(table)
    if plot is not None:
        console().print(f"plot written to {plot}")
    return 0
