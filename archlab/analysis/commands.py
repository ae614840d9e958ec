"""``archlab summary`` and ``archlab trace``: the per-layer table and the stage trace of a registered model."""

from __future__ import annotations

import argparse
import csv
import sys

import torch

from archlab.cli import CLIError, console, draw_plot, plot_path, positive_int, print_json, transient_progress

SPEC_HELP = ("a registered model name (see `archlab list`), or NAME:key=value[,key=value...] to change its "
             "builder's arguments, e.g. resnet50:output_stride=8 or mobilenet_v2:width_mult=0.5")


def _count(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def _pair(p: tuple[float, float] | None) -> str:
    if p is None:
        return "?"
    return _num(p[0]) if p[0] == p[1] else f"{_num(p[0])}x{_num(p[1])}"


# ------------------------------------------------------------------------------------------- archlab summary


def add_summary_arguments(p: argparse.ArgumentParser) -> None:
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


def run_summary(args: argparse.Namespace) -> int:
    from archlab.analysis.summary import summarize, with_times

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
            writer.writerow([r.name, r.type, shape, r.params, r.macs, f"{r.share:.6f}", _pair(r.receptive_field),
                             _pair(r.stride), int(r.global_context), _pair(r.padding), *timing])
        return 0
    from rich.table import Table

    h, w = s.input_size
    timed = f", {s.time_ms:.1f} ms per forward (batch {s.time_batch}, {torch.get_num_threads()} thread(s))" \
        if args.time else ""
    table = Table(title=f"{s.name} at {h}x{w}: {_count(s.params)} params, {_count(s.macs)} MACs{timed}",
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
            _count(r.params) if r.params else "-",
            _count(r.macs) if r.macs else "-",
            f"{100 * r.share:.1f}" if r.macs else "-",
            *([f"{r.time_ms:.2f}", f"{100 * r.time_share:.1f}"] if args.time else []),
            _pair(r.receptive_field) + ("+" if r.global_context else ""),
            _pair(r.stride),
            _pair(r.padding),
        )
    console().print(table)
    if plot is not None:
        console().print(f"plot written to {plot}")
    return 0


# --------------------------------------------------------------------------------------------- archlab trace


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help=SPEC_HELP + "; several are traced side by side")
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="square input size (default: each model card's)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw resolution, channels and receptive field per stage, one line per model")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (a list for several models)")


def run_trace(args: argparse.Namespace) -> int:
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
                          str(s.blocks) if s.blocks else "-", _num(s.stride),
                          _num(s.receptive_field) + ("+" if s.global_context else ""))
        out.print(table)
        out.print(f"{t.name}: {t.resolution_pattern} and {t.channel_pattern}")
    if plot is not None:
        out.print(f"plot written to {plot}")
    return 0


# ----------------------------------------------------------------------------------------------- archlab erf


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def add_erf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help=SPEC_HELP)
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="square input size (default: the model card's)")
    p.add_argument("--mass", type=_fraction, default=0.95,
                   help="share of the input gradient the effective field holds (default 0.95)")
    p.add_argument("--samples", type=positive_int, default=4, help="random inputs averaged (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw each stage's input-gradient map with both fields outlined")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_erf(args: argparse.Namespace) -> int:
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
