"""``archlab cost``: one conv layer as standard, grouped and depthwise-separable convolutions, by the papers' formulas
and as counted on real layers (:mod:`archlab.analysis.cost`)."""

from __future__ import annotations

import argparse

from archlab.analysis.cost import cost_rows, output_size, separable_reduction
from archlab.cli.args import CLIError, positive_int, positive_ints
from archlab.cli.output import console, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cin", type=positive_int, required=True, metavar="C", help="input channels")
    p.add_argument("--cout", type=positive_int, required=True, metavar="C", help="output channels")
    p.add_argument("--kernel", "-k", type=positive_int, default=3, metavar="K", help="kernel size (default 3)")
    p.add_argument("--size", type=positive_int, required=True, metavar="N", help="input height = width")
    p.add_argument("--stride", type=positive_int, default=1, help="stride (default 1); padding is k//2")
    p.add_argument("--groups", type=positive_ints, default=[], metavar="LIST",
                   help="also grouped convolutions with these group counts, e.g. 32 (ResNeXt)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.kernel % 2 == 0:
        raise CLIError(f"--kernel must be odd (padding k//2 keeps the size), got {args.kernel}")
    rows = cost_rows(args.cin, args.cout, args.kernel, args.size, args.stride, args.groups)
    out = output_size(args.size, args.kernel, args.stride)
    formula = separable_reduction(args.cout, args.kernel)
    if args.json:
        print_json(dict(c_in=args.cin, c_out=args.cout, kernel=args.kernel, input=args.size, output=out,
                        stride=args.stride, separable_reduction_formula=formula, rows=rows))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.cin}->{args.cout} channels, {args.kernel}x{args.kernel}, {args.size}x{args.size} "
                        f"input -> {out}x{out} output", header_style="bold",
                  caption=f"formula: standard H·W·Cin·Cout·k², grouped /G, separable H·W·(Cin·k² + Cin·Cout); "
                          f"counted: archlab.analysis.profile (torch.utils.flop_counter) on a real layer. "
                          f"Separable/standard = 1/Cout + 1/k² = {formula:.4f}")
    for col in ("layer", "params", "MACs (formula)", "MACs (counted)", "vs standard"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r["layer"], f"{r['params']:,}", f"{r['macs']:,}", f"{r['counted']:,}",
                      f"{r['relative']:.4f} ({1 / r['relative']:.1f}x fewer)" if r["relative"] < 1 else "1")
    console().print(table)
    return 0
