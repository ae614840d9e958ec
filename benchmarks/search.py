"""The architecture searches run as a user would run them (`archlab search ...`), their wall time and findings
recorded. Budget (issue #14): on `--data digits` at the quick budget, `archlab search compound` in at most 15
minutes and `archlab search mnas --trials 24` in at most 15 minutes on a 2-core CPU (`space` has no budget; it
can be recorded too: `--searches space`).

    python benchmarks/search.py                          # both, quick budget on digits, 2 workers
    python benchmarks/search.py --searches mnas --note "..."

Each search runs in a fresh folder under --keep (default: a temporary folder) through `python -m archlab search`,
so its time includes start-up, data loading, every trial, the latency measurements and the report. The record
(Markdown and JSON) goes to benchmarks/results/search-TAG.md/.json with the machine's load average before and
after: on a machine shared with other work the times are upper bounds of what the search needs alone.
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

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT_S = 900.0  # each search, quick budget on digits, 2-core CPU
COMMANDS = {"compound": ["compound"], "mnas": ["mnas", "--trials", "24"], "space": ["space"]}


def run_search(name: str, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "archlab", "search", *COMMANDS[name], "--data", args.data, "--budget", args.budget,
           "--workers", str(args.workers), "--out", str(folder / name), "--json", *args.extra.get(name, [])]
    start = time.perf_counter()
    load = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    record = {"search": name, "wall_s": wall, "command": " ".join(["python"] + cmd[1:]), "load_before": load,
              "load_after": os.getloadavg(), "report": str(folder / name / "report.md")}
    if proc.returncode != 0:
        return {**record, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return {**record, "result": json.loads(proc.stdout)}


def _load(values: tuple) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def compound_lines(r: dict) -> list[str]:
    res = r["result"]
    best = res.get("best")
    lines = [f"Coefficients found: **alpha = {best['alpha']:g}, beta = {best['beta']:g}, gamma = {best['gamma']:g}**"
             f" (constraint {best['constraint']:.3f}; val acc {best['acc_mean']:.2f} ± {best['acc_std'] or 0:.2f}%);"
             f" the paper's: 1.2, 1.1, 1.15." if best else "No candidate finished.", "",
             f"{res['points']} grid points within {res['tolerance']:g} of 2, {res['networks']} distinct networks, "
             f"{res['seeds']} seeds, base `{res['base']}` at {res['base_input_size']}px.", "",
             "Step 1, top 10 and the paper's point:", "", "| rank | alpha | beta | gamma | MACs | val acc (%) |",
             "|---:|---:|---:|---:|---:|---:|"]
    shown = [x for x in res["step1"] if (x.get("rank") or 99) <= 10 or x.get("paper")]
    for x in shown:
        a = "-" if x["acc_mean"] is None else f"{x['acc_mean']:.2f} ± {x['acc_std'] or 0:.2f}"
        lines.append(f"| {x.get('rank') or '-'} | {x['alpha']:g} | {x['beta']:g} | {x['gamma']:g}"
                     f"{' (paper)' if x.get('paper') else ''} | {x['macs'] / 1e6:.2f}M | {a} |")
    lines += ["", f"Step 2 ({res['step2']['status'] or 'complete'}):", "",
              "| coefficients | phi | params | MACs | val acc (%) |", "|---|---:|---:|---:|---:|"]
    for x in res["step2"]["rows"]:
        a = "-" if x["acc_mean"] is None else f"{x['acc_mean']:.2f} ± {x['acc_std'] or 0:.2f}"
        lines.append(f"| {x['coefficients']} ({x['alpha']:g}, {x['beta']:g}, {x['gamma']:g}) | {x['phi']} | "
                     f"{(x['params'] or 0) / 1e3:.1f}k | {(x['macs'] or 0) / 1e6:.2f}M | {a} |")
    if res.get("versus"):
        lines += ["", "Found vs the paper's (Welch's t-test at 5% on per-seed validation errors):", ""]
        for v in res["versus"]:
            p = "-" if v["p_value"] is None else f"{v['p_value']:.3f}"
            lines.append(f"- {v['where']}: {v['mean_better']:.2f} vs {v['mean_worse']:.2f}% error, p = {p}, "
                         f"**{v['verdict']}**")
    return lines


def mnas_lines(r: dict) -> list[str]:
    res = r["result"]
    lines = [f"{len(res['candidates'])} candidates ({res['options']['sampler']}, cost {res['options']['cost']}), "
             f"{len(res['front'])} on the Pareto front; anchor `{res['anchor']['spec']}` "
             f"{res['anchor'].get('median_ms', 0):.3f} ms.", "",
             "| candidate | model spec | MACs | val acc (%) | latency ms [q1-q3] |", "|---|---|---:|---:|---:|"]
    for x in sorted(res["front"], key=lambda x: x.get("latency_ms") or 0):
        lat = "-" if x.get("latency_ms") is None else \
            f"{x['latency_ms']:.3f} [{x['latency_q1_ms']:.3f}-{x['latency_q3_ms']:.3f}]"
        lines.append(f"| {x['label']} | `{x['spec']}` | {x['macs'] / 1e6:.2f}M | {x['acc_mean']:.2f} | {lat} |")
    return lines


def space_lines(r: dict) -> list[str]:
    res = r["result"]
    lines = [f"{res['samples']} models a space with {res['band'][0] / 1e6:g}M-{res['band'][1] / 1e6:g}M MACs at "
             f"{res['input_size']}px.", "", "| space | models trained | min error (%) | median | max |",
             "|---|---:|---:|---:|---:|"]
    for s in res["spaces"]:
        cells = ["-" if s[k] is None else f"{s[k]:.2f}" for k in ("min", "median", "max")]
        lines.append(f"| {s['space']} | {s['trained']}/{s['sampled']} | " + " | ".join(cells) + " |")
    for k in res["ks"]:
        if k.get("statistic") is not None:
            lines += ["", f"KS {k['a']} vs {k['b']}: D = {k['statistic']:.3f}, p = {k['p_value']:.3g}."]
    return lines


def markdown(records: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# Architecture search: {args.budget} budget on {args.data}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"CPUs, Python {platform.python_version()}; `--workers {args.workers}`.", "", args.note or "", "",
             "| search | wall time | limit | load average before / after (1/5/15 min) | stopped |",
             "|---|---:|---:|---|---|"]
    for r in records:
        limit = f"{LIMIT_S:.0f} s" if args.data == "digits" and args.budget == "quick" and \
            r["search"] != "space" else "-"
        stopped = r.get("error") or (r["result"].get("stopped") or "no")
        lines.append(f"| {r['search']} | {r['wall_s']:.0f} s | {limit} | {_load(r['load_before'])} / "
                     f"{_load(r['load_after'])} | {stopped} |")
    for r in records:
        lines += ["", f"## {r['search']}", "", f"`{r['command']}`", ""]
        if "error" in r:
            lines.append(f"error: {r['error']}")
            continue
        lines += {"compound": compound_lines, "mnas": mnas_lines, "space": space_lines}[r["search"]](r)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--budget", default="quick")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--searches", default="compound,mnas")
    p.add_argument("--compound-args", default="", help="extra arguments for the compound search")
    p.add_argument("--mnas-args", default="", help="extra arguments for the mnas search")
    p.add_argument("--space-args", default="", help="extra arguments for the space search")
    p.add_argument("--keep", help="folder for the search folders (default: a temporary one)")
    p.add_argument("--tag", help="name of the record (default: the data and budget)")
    p.add_argument("--note", help="a sentence for the record (e.g. that the machine was shared)")
    args = p.parse_args(argv)
    args.extra = {"compound": args.compound_args.split(), "mnas": args.mnas_args.split(),
                  "space": args.space_args.split()}
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="archlab-search-"))
    records = []
    for name in args.searches.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        records.append(run_search(name, args, folder))
        r = records[-1]
        print(f"  {r['wall_s']:.0f} s: {r.get('error') or 'done'}", file=sys.stderr, flush=True)
    tag = args.tag or f"{args.data}-{args.budget}"
    RESULTS.mkdir(exist_ok=True)
    text = markdown(records, args)
    (RESULTS / f"search-{tag}.md").write_text(text)
    slim = [{k: v for k, v in r.items() if k != "result"} | ({"result": {k: v for k, v in r["result"].items()
                                                                         if k != "trials"}} if "result" in r else {})
            for r in records]
    (RESULTS / f"search-{tag}.json").write_text(json.dumps(slim, indent=1, default=str) + "\n")
    print(text)
    print(f"written to {RESULTS / f'search-{tag}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
