"""``archlab compare``: the comparison table (:mod:`archlab.analysis.compare`) in the terminal, and with ``--out DIR``
as Markdown, CSV and JSON tables and plots: top-1 against multiply-adds (the efficiency frontier), top-1 against
measured latency, and the design patterns (resolution, channels, receptive field per stage)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from archlab.analysis.compare import DEFAULT_MODELS, Row, compare
from archlab.cli.args import CLIError, writable_dir
from archlab.cli.output import console, print_json, transient_progress


COLUMNS = ["model", "year", "params", "published", "Δ%", "MACs", "published", "Δ%", "top-1", "top-1 source",
           "act. mem", "CPU ms (b=1)", "key innovation", "seed: params", "seed: FLOPs", "seed: top-1",
           "seed's top-1 is"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


def table_cells(row: Row) -> list[str]:
    return [
        row.name, str(row.year), f"{row.params / 1e6:.2f}M",
        "-" if row.params_published is None else f"{row.params_published / 1e6:.2f}M", _pct(row.params_delta),
        f"{row.macs / 1e9:.3f}G@{row.resolution}",
        "-" if row.macs_published is None else f"{row.macs_published / 1e9:.3f}G", _pct(row.macs_delta),
        "-" if row.top1 is None else f"{row.top1:.1f}", row.top1_source or "-",
        f"{row.activation_bytes / 2**20:.0f} MiB", "-" if row.latency_ms is None else f"{row.latency_ms:.1f}",
        row.innovation,
        *((f"{row.seed.params / 1e6:.1f}M", f"{row.seed.macs / 1e9:.3g}G", f"{row.seed.top1:.1f}", row.seed.note)
          if row.seed else ("-", "-", "-", "-")),
    ]


def to_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], out: Path) -> list[Path]:
    """Markdown, CSV and JSON tables, the accuracy plots and the design-patterns plot; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    dicts = [r.to_dict() for r in rows]
    md, cs, js = out / "compare.md", out / "compare.csv", out / "compare.json"
    md.write_text("# Architecture comparison (archlab compare)\n\n" + to_markdown(rows))
    with cs.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dicts[0]))
        writer.writeheader()
        writer.writerows(dicts)
    js.write_text(json.dumps(dicts, indent=2))
    written = [md, cs, js]
    from archlab.plots import plot_accuracy_vs

    written.append(plot_accuracy_vs(rows, "macs", out / "top1_vs_macs.png"))
    if any(r.latency_ms for r in rows):
        written.append(plot_accuracy_vs(rows, "latency_ms", out / "top1_vs_latency.png"))
    from archlab.analysis.trace import stage_trace
    from archlab.plots import plot_stage_traces

    # The seed's three design patterns for the same models: resolution, channels, receptive field per stage.
    written.append(plot_stage_traces([stage_trace(r.name) for r in rows], out / "design_patterns.png"))
    return written


def print_table(rows: list[Row]) -> None:
    """A terminal-width table (the full one, with sources, goes to --out); key innovations listed below it."""
    from rich.table import Table

    table = Table(title="Architecture comparison: measured here, published figures from the model cards",
                  header_style="bold", caption="Δ: measured vs published; top-1 sources in compare.md (--out)")
    seeded = any(r.seed for r in rows)
    for col in ("model", "year", "params (Δ%)", "MACs @res (Δ%)", "top-1", "act. mem", "CPU ms b=1") + \
            (("seed: params / FLOPs / top-1",) if seeded else ()):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        cells = table_cells(r)
        table.add_row(r.name, cells[1], f"{cells[2]} ({cells[4]})", f"{cells[5]} ({cells[7]})", cells[8],
                      cells[10], cells[11], *((" / ".join(cells[13:16]),) if seeded else ()))
    out = console()
    out.print(table)
    for r in rows:
        out.print(f"[bold]{r.name}[/bold]: {r.innovation}", highlight=False)
    if seeded:  # why the seed's figures are not the cards'
        out.print("The seed's figures (its section 5 table; its FLOPs are multiply-adds) and what its top-1 is:")
        for r in rows:
            if r.seed:
                out.print(f"  {r.name}: {r.seed.top1:.1f}% is {r.seed.note}", highlight=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help=f"models or patterns such as 'roadmap*' to compare (default: "
                                             f"{', '.join(DEFAULT_MODELS)})")
    p.add_argument("--out", type=Path, help="write compare.md/.csv/.json and the PNG plots to this folder")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import archlab

    names = []
    for given in args.models:  # a pattern ('roadmap*') stands for the models it matches, in list order
        matched = archlab.list_models(given) if any(c in given for c in "*?[") else [given]
        if not matched:
            raise CLIError(f"no model matches {given!r}; try `archlab list`")
        names += matched
    names = list(dict.fromkeys(names)) or DEFAULT_MODELS  # a name given twice: one row
    for name in names:
        archlab.model_card(name)
    if args.out is not None:
        writable_dir(args.out, "--out")
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<34}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with transient_progress(*columns, stderr=False, disable=args.json) as progress:
        task = progress.add_task("measuring", total=len(names))
        rows = compare(names, bench=not args.no_bench,
                       on_row=lambda i, n: progress.update(task, completed=i, description=f"measuring {n}"))
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        print_table(rows)
    if args.out is not None:
        for path in write_outputs(rows, args.out):
            if not args.json:
                console().print(f"wrote {path}")
    return 0
