"""``archlab study``: design claims tested on this machine and data. ``archlab study list`` names the built-in
studies, ``archlab study NAME`` (or ``FILE.toml``) runs one, ``archlab study show DIR`` prints a finished or running
one again. The work is :mod:`archlab.studies`."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from archlab.cli.args import CLIError, fraction, positive_int
from archlab.cli.output import console, print_json

BUDGETS = ("quick", "paper")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NAME|FILE.toml|list|show",
                   help="a built-in study (see `archlab study list`), a study file, `list`, or `show DIR`")
    p.add_argument("folder", nargs="?", metavar="DIR", help="with `show`: the study folder to print")
    p.add_argument("--budget", default="quick", metavar="quick|paper",
                   help="quick (default: minutes on a laptop CPU) or paper (the paper's recipe)")
    p.add_argument("--data", default="digits", metavar="SPEC",
                   help="as for `archlab train`: digits (default), fashion-mnist, a CIFAR folder, an ImageFolder root")
    p.add_argument("--data-fraction", type=fraction, metavar="F", help="train on this share of the training split")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="override the budget's epochs")
    p.add_argument("--seeds", type=positive_int, metavar="N", help="seeds per arm (default: the study's, 3)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="trials in parallel on this machine, the CPU threads split between them (default 1)")
    p.add_argument("--storage", metavar="URL",
                   help="a database URL shared by several machines (default: OUT/study.db, SQLite)")
    p.add_argument("--out", metavar="DIR", help="the study folder (default runs/study-NAME-BUDGET-DATA); running "
                                                "the same command again continues the study there")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available (speed study: both)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from archlab.studies import StudyError

    try:
        if args.target == "list":
            return _list(args)
        if args.target == "show":
            return _show(args)
        return _run(args)
    except StudyError as exc:
        raise CLIError(f"archlab study: {exc}") from None


def _list(args: argparse.Namespace) -> int:
    from archlab.studies import list_studies

    studies = list_studies()
    if args.json:
        print_json([{"name": s.name, "kind": s.kind, "claim": s.claim, "paper": s.source.paper,
                     "arxiv": s.source.arxiv, "where": s.source.where,
                     "arms": [a.label for a in s.arms] or [t.name for t in s.tables]} for s in studies])
        return 0
    from rich.table import Table

    table = Table(title=f"{len(studies)} design studies", header_style="bold")
    for col in ("study", "claim", "source", "arms"):
        table.add_column(col)
    for s in studies:
        arms = ", ".join(a.label for a in s.arms_at("quick")) or ", ".join(t.name for t in s.tables)
        table.add_row(s.name, s.claim, f"arXiv:{s.source.arxiv} {s.source.where}", arms)
    console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from archlab.studies.engine import reopen
    from archlab.studies.results import collect

    if not args.folder:
        raise CLIError("archlab study: show needs the study folder: archlab study show DIR")
    result = collect(reopen(args.folder))
    _render(result, args.json)
    return 0


def _load(target: str) -> tuple[Any, dict[str, Any]]:
    from archlab.studies import get_study

    if target.endswith(".toml") or Path(target).is_file():
        from archlab.studies.files import load_study_file

        return load_study_file(target)
    return get_study(target), {"builtin": target}


def _run(args: argparse.Namespace) -> int:
    from archlab.studies import Settings, StudyRun
    from archlab.studies.plan import data_name
    from archlab.studies.report import write_report
    from archlab.studies.results import arm_costs, collect

    if args.budget not in BUDGETS:
        raise CLIError(f"archlab study: unknown --budget {args.budget!r}; choose quick or paper")
    study, source = _load(args.target)
    seeds = tuple(range(args.seeds)) if args.seeds else None
    settings = Settings(budget=args.budget, data=args.data, seeds=seeds, epochs=args.epochs,
                        data_fraction=args.data_fraction, device=args.device)
    out = args.out or str(Path("runs") / f"study-{study.name}-{args.budget}-{data_name(args.data)}")
    runner = StudyRun(study, settings, out, args.storage, source)
    costs = arm_costs(runner)  # every arm builds, before any trial starts
    if study.kind == "train":
        _check_data(args.data, args.data_fraction)
    runner.enqueue_missing()
    workers = args.workers
    if study.kind == "speed" and workers > 1:  # timings taken side by side would time each other
        print("archlab: note: a speed study times one table at a time; --workers ignored", file=sys.stderr)
        workers = 1
    interrupted = _work(runner, workers)
    result = collect(runner, costs)
    write_report(result, runner.out)
    _render(result, args.json)
    if interrupted:
        print(f"archlab: study interrupted; run the same command again to continue it ({runner.out})",
              file=sys.stderr)
        return 130
    return 0


def _check_data(data: str, data_fraction: float | None) -> None:
    """The data is readable before any trial starts (a missing folder is one line, not one failure per trial)."""
    from archlab.preprocessing import Preprocessing
    from archlab.train.data import DataError, build_data

    if data == "digits":
        return
    try:
        build_data(data, lambda kind: Preprocessing(8, (0.5,) * 3, (0.5,) * 3), with_train=False)
    except DataError as exc:
        raise CLIError(f"archlab study: {str(exc).splitlines()[0]}") from None


def _work(runner: Any, workers: int) -> bool:
    """Run the trials (here, or in ``workers`` processes) with a progress line; True when interrupted."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = console(stderr=True)  # stdout stays for the results (and --json)
    progress = Progress(TextColumn(f"[bold]{runner.study.name}[/]"), BarColumn(bar_width=24), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=out,
                        disable=not out.is_terminal)
    done = threading.Event()

    def refresh(task: int) -> None:
        while not done.wait(1.0):
            p = runner.progress()
            eta = f"~{p['eta_s'] / 60:.0f} min left" if p["eta_s"] is not None else "time left: after the first trial"
            progress.update(task, completed=p["done"], total=p["total"],
                            info=f"running {p['running']}, left {p['left']}, failed {p['failed']}; {eta}")

    with progress:
        task = progress.add_task("trials", total=len(runner.plans), info="")
        thread = threading.Thread(target=refresh, args=(task,), daemon=True)
        thread.start()
        try:
            if workers == 1:
                runner.work()
            else:
                procs = runner.spawn_workers(workers)
                try:
                    while any(p.poll() is None for p in procs):
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    for p in procs:  # they got the terminal's SIGINT too: let them checkpoint and requeue
                        p.wait()
                    raise
        except KeyboardInterrupt:
            return True
        except Exception as exc:
            from archlab.train.loop import TrainingInterrupted

            if isinstance(exc, TrainingInterrupted):
                return True
            raise
        finally:
            done.set()
            thread.join()
    return False


def _render(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(r)
        return
    from rich.table import Table

    c = console()
    s = r["source"]
    c.print(f"[bold]{r['study']}[/]: {r['claim']}")
    c.print(f"source: {s['paper']} (arXiv:{s['arxiv']}), {s['where']}: {s['figures']}")
    if r["kind"] == "speed":
        for t in r["tables"]:
            table = Table(title=f"{t['name']} ({t['where']}, {t['device']}): {t['verdict']}", header_style="bold")
            for col in ("configuration", "MACs", "ours /s", "ours / first", t["paper_column"], "paper / first"):
                table.add_column(col, justify="left" if col == "configuration" else "right")
            for row in t["rows"]:
                table.add_row(row["label"], f"{row['macs'] / 1e6:.0f}M", f"{row['per_s']:.1f}", f"{row['ratio']:.2f}",
                              f"{row['paper']:g}", f"{row['paper_ratio']:.2f}")
            c.print(table)
    else:
        table = Table(title=f"{r['budget']} budget on {r['data']}", header_style="bold")
        for col in ("arm", "params", "MACs", "val error %", "train error %", "seeds", f"published ({s['metric']})"):
            table.add_column(col, justify="left" if col == "arm" else "right")
        for a in r["arms"]:
            def ms(m: str) -> str:
                mean, std = a.get(f"{m}_mean"), a.get(f"{m}_std")
                return "-" if mean is None else (f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}")
            table.add_row(a["label"], f"{a.get('params', 0) / 1e6:.3f}M", f"{a.get('macs', 0) / 1e6:.1f}M",
                          ms("val_error"), ms("train_error"), f"{a['seeds_done']}/{a['seeds']}",
                          "-" if a.get("published") is None else f"{a['published']:g}")
        c.print(table)
        for comp in r["comparisons"]:
            p = "-" if comp["p_value"] is None else f"{comp['p_value']:.3f}"
            c.print(f"  {comp['better']} < {comp['worse']} ({comp['metric']}): {comp['verdict']} (p = {p})"
                    + (f" {comp['reason']}" if comp.get("reason") else ""))
    for m in r.get("missing") or []:
        c.print(f"  missing {m['key']}: {m['why']}")
    for finding in r.get("findings") or []:
        c.print(f"  note: {finding}")
    c.print(f"[bold]verdict: {r['verdict']}[/] ({r['method']}); report: {Path(r['out']) / 'report.md'}")
