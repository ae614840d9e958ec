"""Every built-in design study run as a user would run it (`archlab study NAME`), its wall time and verdict
recorded: the quick budget on digits must finish in at most 10 minutes on a 2-core CPU per training study, and the
speed study in at most 3.

    python benchmarks/studies.py                       # quick budget on digits, 2 workers
    python benchmarks/studies.py --data fashion-mnist --data-fraction 0.1 --epochs-scale 0.5 --tag fashion-mnist

Each study runs in a fresh folder under --keep (default: a temporary folder), through `python -m archlab study`,
so its time includes start-up, data loading, every trial and the report. The record (Markdown and JSON) goes to
benchmarks/results/studies-TAG.md/.json, with the machine's load average before and after: on a machine shared
with other work the times are upper bounds of what the study needs alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archlab.studies import list_studies

RESULTS = Path(__file__).resolve().parent / "results"
LIMITS = {"train": 600.0, "speed": 180.0}  # seconds, on a 2-core CPU, quick budget on digits


def study_epochs(name: str, args: argparse.Namespace) -> int | None:
    """--epochs, or the study's own epochs at this budget times --epochs-scale (at least 1)."""
    if args.epochs or not args.epochs_scale:
        return args.epochs
    from archlab.studies import get_study

    study = get_study(name)
    epochs = study.budgets.get(args.budget, {}).get("epochs")
    return None if epochs is None else max(1, round(epochs * args.epochs_scale))


def run_study(name: str, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "archlab", "study", name, "--data", args.data, "--out", str(folder / name),
           "--workers", str(args.workers), "--json"]
    for flag, value in (("--data-fraction", args.data_fraction), ("--epochs", study_epochs(name, args)),
                        ("--budget", args.budget), ("--seeds", args.seeds)):
        if value is not None:
            cmd += [flag, str(value)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"study": name, "wall_s": wall, "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                "command": " ".join(cmd[1:])}
    result = json.loads(proc.stdout)
    return {"study": name, "wall_s": wall, "result": result, "command": " ".join(["python"] + cmd[1:])}


def _arm_line(a: dict) -> str:
    mean, std = a.get("val_error_mean"), a.get("val_error_std")
    tm, ts = a.get("train_error_mean"), a.get("train_error_std")
    val = "-" if mean is None else f"{mean:.2f} ± {std or 0:.2f}"
    train = "-" if tm is None else f"{tm:.2f} ± {ts or 0:.2f}"
    pub = "-" if a.get("published") is None else f"{a['published']:g}"
    return f"| {a['label']} | {a['macs'] / 1e6:.2f}M | {val} | {train} | {a['seeds_done']}/{a['seeds']} | {pub} |"


def markdown(records: list[dict], args: argparse.Namespace, load: tuple[tuple, tuple]) -> str:
    lines = [f"# Design studies: {args.budget} budget on {args.data}"
             + (f" (data fraction {args.data_fraction})" if args.data_fraction else ""), "",
             f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"CPUs, Python {platform.python_version()}; `--workers {args.workers}`"
             + (f", `--epochs {args.epochs}`" if args.epochs else "")
             + (f", each study's epochs x {args.epochs_scale}" if args.epochs_scale else "")
             + f"; load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load[0])} before, "
             f"{'/'.join(f'{v:.1f}' for v in load[1])} after.",
             "", args.note or "", "",
             "| study | wall time | limit | verdict | orderings (holds / contradicted / inconclusive) |",
             "|---|---:|---:|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['study']} | {r['wall_s']:.0f} s | - | error: {r['error']} | |")
            continue
        res = r["result"]
        comps = res.get("comparisons") or [c for t in res.get("tables", []) for c in t["comparisons"]]
        counts = [sum(c["verdict"] == v for c in comps) for v in ("holds", "contradicted", "inconclusive")]
        limit = LIMITS[res["kind"]] if args.data == "digits" and args.budget == "quick" else None
        lines.append(f"| {r['study']} | {r['wall_s']:.0f} s | {f'{limit:.0f} s' if limit else '-'} | "
                     f"**{res['verdict']}** | {' / '.join(map(str, counts))} |")
    for r in records:
        if "error" in r:
            continue
        res = r["result"]
        lines += ["", f"## {r['study']}: {res['verdict']}", "", f"`{r['command']}`", ""]
        if res["kind"] == "speed":
            for t in res["tables"]:
                lines.append(f"- {t['name']} ({t['device']}): **{t['verdict']}**; ours / first row: "
                             + ", ".join(f"{row['label']} {row['ratio']:.2f} (paper {row['paper_ratio']:.2f})"
                                         for row in t["rows"]))
            continue
        lines += ["| arm | MACs | val error (%) | train error (%) | seeds | published |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [_arm_line(a) for a in res["arms"]]
        lines.append("")
        for c in res["comparisons"]:
            p = "-" if c["p_value"] is None else f"{c['p_value']:.3f}"
            lines.append(f"- {c['better']} < {c['worse']} ({c['metric']}): **{c['verdict']}**, p = {p}"
                         + (f" ({c['reason']})" if c.get("reason") else ""))
        for m in res.get("missing") or []:
            lines.append(f"- missing {m['key']}: {m['why']}")
        for f in res.get("findings") or []:
            lines.append(f"- note: {f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--budget", default="quick")
    p.add_argument("--data-fraction", type=float)
    p.add_argument("--epochs", type=int, help="every study's epochs")
    p.add_argument("--epochs-scale", type=float, help="each study's own epochs times this (rounded, at least 1)")
    p.add_argument("--seeds", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--studies", help="comma-separated names (default: all built-in)")
    p.add_argument("--keep", help="folder for the study folders (default: a temporary one)")
    p.add_argument("--tag", help="name of the record (default: the data and budget)")
    p.add_argument("--note", help="a sentence for the record (e.g. that the machine was shared)")
    args = p.parse_args(argv)
    names = args.studies.split(",") if args.studies else [s.name for s in list_studies()]
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="archlab-studies-"))
    load_before = os.getloadavg()
    records = []
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        records.append(run_study(name, args, folder))
        r = records[-1]
        print(f"  {r['wall_s']:.0f} s: {r.get('error') or r['result']['verdict']}", file=sys.stderr, flush=True)
    text = markdown(records, args, (load_before, os.getloadavg()))
    tag = args.tag or f"{args.data}-{args.budget}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"studies-{tag}.md").write_text(text)
    (RESULTS / f"studies-{tag}.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "result"} | ({"verdict": r["result"]["verdict"],
          "comparisons": r["result"].get("comparisons"), "arms": [{k: v for k, v in a.items() if k != "curves"}
          for a in r["result"].get("arms", [])], "tables": r["result"].get("tables")} if "result" in r else {})
         for r in records], indent=1) + "\n")
    print(text)
    print(f"written to {RESULTS / f'studies-{tag}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
