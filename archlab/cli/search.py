"""``archlab search``: architecture search on this machine and data. ``compound`` finds EfficientNet's compound
scaling coefficients, ``mnas`` searches a mobile design space for accuracy against measured latency (or
multiply-adds), ``space`` compares design spaces by the error distribution of models sampled from them. The work
is :mod:`archlab.search`; trials run on the design-study engine (:mod:`archlab.studies`)."""

from __future__ import annotations

import argparse
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from archlab.cli.args import CLIError, SPEC_HELP, fraction, positive_int, writable_dir
from archlab.cli.output import console, print_json

BUDGETS = ("quick", "paper")


class _SubParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # "archlab: error: search: compound: ...", exit 2
        raise CLIError(f"archlab search: {self.prog.rsplit(' ', 1)[-1]}: {message}")


def duration(text: str) -> float:
    """An argparse type: seconds, or a number with s, m or h (90, 90s, 15m, 1.5h), > 0."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0 such as 900, 15m or 1.5h, got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="compound|mnas|space", parser_class=_SubParser)
    sub.required = True
    c = sub.add_parser("compound", help="EfficientNet's grid search for alpha, beta, gamma (arXiv:1905.11946 "
                                        "Sec. 3.3), then phi = 1, 2, 3 beside the paper's coefficients")
    c.add_argument("--base", metavar="SPEC", default=None,
                   help="the network to scale (default cifar_resnet20:width_mult=0.5): efficientnet, "
                        "efficientnet_b0[:width_mult=...] or a CIFAR ResNet. " + SPEC_HELP)
    c.add_argument("--grid", metavar="START:STOP:STEP", default=None,
                   help="grid of each coefficient (default 1.0:1.4:0.05), or three ranges alpha,beta,gamma")
    c.add_argument("--tolerance", type=positive_float, default=None, metavar="T",
                   help="keep points with |alpha*beta^2*gamma^2 - 2| <= T (default 0.08, which holds the paper's "
                        "1.92)")
    c.add_argument("--phi", metavar="1,2,3", default="1,2,3", help="step 2's compound coefficients (default 1,2,3)")
    _shared(c, "compound")
    c.set_defaults(_search=_compound)
    m = sub.add_parser("mnas", help="latency-aware search of a mobile design space (MnasNet, arXiv:1807.11626): "
                                    "accuracy against latency or multiply-adds, the Pareto front")
    m.add_argument("--sampler", default="tpe", metavar="random|tpe|nsga2", help="Optuna's sampler (default tpe)")
    m.add_argument("--cost", default="latency", metavar="latency|macs",
                   help="the second objective: latency measured on this CPU (default) or multiply-adds")
    m.add_argument("--target-ms", type=float, metavar="T",
                   help="search by MnasNet's reward ACC x (LAT/T)^w (w = -0.07) instead of two objectives")
    m.add_argument("--batch", type=positive_int, default=None, metavar="N",
                   help="candidates sampled at a time (NSGA-II's population; default 8)")
    _shared(m, "mnas")
    m.set_defaults(_search=_mnas)
    s = sub.add_parser("space", help="design spaces compared by the error EDFs of models sampled from them "
                                     "(arXiv:1905.13214, arXiv:2003.13678), with the KS statistic")
    s.add_argument("--space", default="anynet,regnet", metavar="anynet|regnet|FILE[,...]",
                   help="the spaces to compare, comma-separated: built-in anynet (AnyNetX_C) and regnet (RegNetX), "
                        "or TOML files (docs/search.md); default anynet,regnet")
    s.add_argument("--samples", type=positive_int, metavar="N", help="models per space (default: quick 16, paper 100)")
    s.add_argument("--macs", default="4:8", metavar="LO:HI",
                   help="the multiply-add band, in millions at the trial's input size (default 4:8)")
    s.add_argument("--max-tries", type=positive_int, default=None, metavar="N",
                   help="draws per model before a space is said not to reach the band (default 500)")
    _shared(s, "space")
    s.set_defaults(_search=_space)


def _shared(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--budget", default="quick", metavar="quick|paper",
                   help="quick (default: minutes on a laptop CPU) or paper (the paper's own training recipe "
                        "where it gives one; docs/search.md)")
    p.add_argument("--data", default="digits", metavar="SPEC",
                   help="as for `archlab train`: digits (default), fashion-mnist, a CIFAR folder, an ImageFolder root")
    p.add_argument("--data-fraction", type=fraction, metavar="F", help="train on this share of the training split")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="override the budget's epochs")
    p.add_argument("--seeds", type=positive_int, metavar="N", help="seeds per candidate (default: the budget's)")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="stop once N trials have finished (mnas: N candidates), counting earlier runs in --out")
    p.add_argument("--time-limit", type=duration, metavar="T",
                   help="stop after T (900, 15m, 1.5h); a trial running then is checkpointed and resumed next time")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="trials in parallel on this machine, the CPU threads split between them (default 1)")
    p.add_argument("--storage", metavar="URL",
                   help="a database URL shared by several machines (default: OUT/study.db, SQLite)")
    p.add_argument("--out", metavar="DIR", help=f"the search folder (default runs/search-{kind}-BUDGET-DATA); "
                                                 "running the same command again continues the search there")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where trials train (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from archlab.search import SearchError
    from archlab.studies import StudyError

    try:
        return args._search(args)
    except (SearchError, StudyError) as exc:
        raise CLIError(f"archlab search: {args.kind}: {exc}") from None


def _settings(args: argparse.Namespace) -> Any:
    from archlab.search import SearchSettings

    if args.budget not in BUDGETS:
        raise CLIError(f"archlab search: {args.kind}: unknown --budget {args.budget!r}; choose quick or paper")
    return SearchSettings(budget=args.budget, data=args.data, data_fraction=args.data_fraction, epochs=args.epochs,
                          seeds=args.seeds, workers=args.workers, storage=args.storage, trials=args.trials,
                          time_limit_s=args.time_limit, device=args.device)


def _out(args: argparse.Namespace) -> Path:
    from archlab.studies.plan import data_name

    out = args.out or str(Path("runs") / f"search-{args.kind}-{args.budget}-{data_name(args.data)}")
    return writable_dir(out, "--out")


def _check_data(args: argparse.Namespace) -> None:
    from archlab.cli.study import _check_data as check

    check(args.data, args.data_fraction)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated integers such as 1,2,3, got {text!r}") from None
    if any(v < 1 for v in values) or len(set(values)) != len(values):
        raise CLIError(f"{flag} takes distinct integers >= 1, got {text!r}")
    return values


def _compound(args: argparse.Namespace) -> int:
    from archlab.search import compound as cs
    from archlab.search.report import write_compound

    options = cs.CompoundOptions(base=args.base or cs.DEFAULT_BASE, grid=cs.parse_grid(args.grid or cs.DEFAULT_GRID),
                                 tolerance=cs.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
                                 phis=_ints(args.phi, "--phi"))
    settings = _settings(args)
    cs.constrained_points(options.grid, options.tolerance)  # bad input before any folder is made
    cs.scalable_base(options.base)
    out = _out(args)
    _check_data(args)
    result = _with_progress("compound", lambda cb: cs.run_compound(options, settings, out, cb))
    write_compound(result, out)
    if args.json:
        print_json(result)
    else:
        _render_compound(result, out)
    return _exit(result, out)


def _exit(result: dict[str, Any], out: Path) -> int:
    if result.get("stopped") == "interrupted":
        print(f"archlab: search interrupted; run the same command again to continue it ({out})", file=sys.stderr)
        return 130
    if result.get("stopped"):
        print(f"archlab: note: search stopped early ({result['stopped']}); the report has what finished; the same "
              f"command continues it ({out})", file=sys.stderr)
    return 0


def _with_progress(name: str, work: Callable[[Callable[[str, dict[str, Any]], None]], dict[str, Any]]) -> Any:
    """Run ``work(callback)`` under a progress line on stderr (stdout stays for the results and --json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = console(stderr=True)
    progress = Progress(TextColumn(f"[bold]search {name}[/]"), TextColumn("{task.fields[step]}"),
                        BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=out, disable=not out.is_terminal)
    lock = threading.Lock()
    with progress:
        task = progress.add_task("trials", total=None, step="", info="")

        def update(step: str, p: dict[str, Any]) -> None:
            eta = f"~{p['eta_s'] / 60:.0f} min left" if p.get("eta_s") is not None else ""
            with lock:
                progress.update(task, completed=p["done"], total=p["total"], step=step,
                                info=f"running {p['running']}, left {p['left']}, failed {p['failed']} {eta}")

        return work(update)


def _render_compound(r: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from archlab.search.report import acc, count

    c = console()
    table = Table(title=f"step 1: {r['networks']} networks ({r['points']} grid points), phi = 1, base {r['base']}",
                  header_style="bold")
    for col in ("rank", "alpha", "beta", "gamma", "a·b²·g²", "input", "params", "MACs", "val acc %", "seeds"):
        table.add_column(col, justify="right")
    for row in r["step1"][:15]:
        table.add_row(str(row.get("rank") or "-"), f"{row['alpha']:g}", f"{row['beta']:g}",
                      f"{row['gamma']:g}" + (" (paper)" if row.get("paper") else ""), f"{row['constraint']:.3f}",
                      str(row["input_size"]), count(row["params"]), count(row["macs"]), acc(row),
                      f"{row['seeds_done']}/{row['seeds']}")
    c.print(table)
    if len(r["step1"]) > 15:
        c.print(f"  ... {len(r['step1']) - 15} more in the report")
    if r["step2"]["rows"]:
        t2 = Table(title="step 2: found vs the paper's coefficients", header_style="bold")
        for col in ("coefficients", "phi", "(alpha, beta, gamma)", "input", "params", "MACs", "val acc %", "seeds"):
            t2.add_column(col, justify="left" if col == "coefficients" else "right")
        for x in r["step2"]["rows"]:
            t2.add_row(x["coefficients"], str(x["phi"]), f"({x['alpha']:g}, {x['beta']:g}, {x['gamma']:g})",
                       str(x["input_size"]), count(x["params"]), count(x["macs"]), acc(x),
                       f"{x['seeds_done']}/{x['seeds']}")
        c.print(t2)
    else:
        c.print(f"step 2 {r['step2']['status']}")
    best = r.get("best")
    if best:
        c.print(f"[bold]best: alpha={best['alpha']:g} beta={best['beta']:g} gamma={best['gamma']:g}[/] "
                f"(constraint {best['constraint']:.3f}; paper: 1.2, 1.1, 1.15); report: {out / 'report.md'}")


def _mnas(args: argparse.Namespace) -> int:
    from archlab.search import mnas as ms
    from archlab.search.report import write_mnas

    options = ms.MnasOptions(sampler=args.sampler, cost=args.cost, target_ms=args.target_ms,
                             batch=args.batch or ms.DEFAULT_BATCH)
    ms.check_options(options)
    settings = _settings(args)
    out = _out(args)
    _check_data(args)
    result = _with_progress("mnas", lambda cb: ms.run_mnas(options, settings, out, cb))
    write_mnas(result, out)
    if args.json:
        print_json(result)
    else:
        _render_mnas(result, out)
    return _exit(result, out)


def _render_mnas(r: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from archlab.search.report import acc, count

    c = console()
    reward = bool(r["options"].get("target_ms"))
    table = Table(title=f"Pareto front: {len(r['front'])} of {len(r['candidates'])} candidates "
                        f"({r['options']['sampler']}, cost {r['options']['cost']})", header_style="bold")
    for col in ("candidate", "model spec", "MACs", "val acc %", "latency ms [q1-q3]", "vs anchor") + \
            (("reward",) if reward else ()):
        table.add_column(col, justify="left" if col in ("candidate", "model spec") else "right", overflow="fold")
    for x in sorted(r["front"], key=lambda x: x.get(r["cost_key"]) or 0):
        lat = "-" if x.get("latency_ms") is None else \
            f"{x['latency_ms']:.3f} [{x['latency_q1_ms']:.3f}-{x['latency_q3_ms']:.3f}]"
        table.add_row(x["label"], x["spec"], count(x["macs"]), acc(x), lat,
                      "-" if x.get("latency_vs_anchor") is None else f"{x['latency_vs_anchor']:.2f}",
                      *((f"{x['reward']:.4f}",) if reward else ()))
    c.print(table)
    a = r["anchor"]
    if a.get("median_ms"):
        c.print(f"anchor {a['spec']}: {a['median_ms']:.3f} ms at batch 1 (fused, oneDNN, channels-last)")
    c.print(f"report: {out / 'report.md'}")


def _space(args: argparse.Namespace) -> int:
    from archlab.search import space as sp
    from archlab.search.report import write_space

    options = sp.SpaceOptions(spaces=tuple(x.strip() for x in args.space.split(",") if x.strip()),
                              samples=args.samples, band=sp.parse_band(args.macs),
                              max_tries=args.max_tries or sp.DEFAULT_MAX_TRIES)
    settings = _settings(args)
    sp.sample_all(options, settings)  # bad spaces, and a band no sample reaches, before any folder is made
    out = _out(args)
    _check_data(args)
    result = _with_progress("space", lambda cb: sp.run_space(options, settings, out, cb))
    write_space(result, out)
    if args.json:
        print_json(result)
    else:
        _render_space(result, out)
    return _exit(result, out)


def _render_space(r: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    c = console()
    table = Table(title=f"error EDFs: {r['samples']} models a space, {r['band'][0] / 1e6:g}M-{r['band'][1] / 1e6:g}M "
                        "MACs", header_style="bold")
    for col in ("space", "trained", "min error %", "median", "max"):
        table.add_column(col, justify="left" if col == "space" else "right")
    for x in r["spaces"]:
        table.add_row(x["space"], f"{x['trained']}/{x['sampled']}", *("-" if x[k] is None else f"{x[k]:.2f}"
                                                                      for k in ("min", "median", "max")))
    c.print(table)
    for k in r["ks"]:
        if k.get("statistic") is not None:
            c.print(f"  KS {k['a']} vs {k['b']}: D = {k['statistic']:.3f}, p = {k['p_value']:.3g}")
    c.print(f"report: {out / 'report.md'}")
