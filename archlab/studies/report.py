"""A study's report from its results (:func:`archlab.studies.results.collect`): ``report.md`` (the claim, the
paper's figures beside ours, per arm params / MACs / metric mean ± std, each predicted ordering tested, the
verdict and what is missing), ``results.json`` and ``trials.csv`` (every trial), and the plots
(:mod:`archlab.plots`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

TRIAL_COLUMNS = ("number", "key", "arm", "seed", "state", "val_error", "train_error", "epochs", "seconds",
                 "wall_s", "input_size", "threads", "device", "failure", "duplicate_of", "retry_of", "run_dir",
                 "weights_sha256")
METRIC_NAMES = {"val_error": "val error (%)", "train_error": "train error (%)", "time": "time"}


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _mean_std(arm: dict[str, Any], metric: str) -> str:
    mean, std = arm.get(f"{metric}_mean"), arm.get(f"{metric}_std")
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _header(r: dict[str, Any]) -> list[str]:
    s = r["source"]
    progress = r["progress"]
    recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
    fraction = f", data fraction {r['data_fraction']}" if r.get("data_fraction") else ""
    m = r["machine"]
    data = "" if r["kind"] == "speed" else f" on `{r['data']}`{fraction}"
    lines = [f"# Design study `{r['study']}`: **{r['verdict']}**", "",
             f"**Claim.** {r['claim']}", "",
             f"**Source.** {s['paper']} (arXiv:{s['arxiv']}), {s['where']}: {s['figures']}.", "",
             f"**Run.** budget `{r['budget']}` ({recipe}){data}; trials done "
             f"{progress['done']}/{progress['total']} (running {progress['running']}, left {progress['left']}, "
             f"failed {progress['failed']}); {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}; written "
             f"{r['written']}."]
    if r.get("notes"):
        lines += ["", f"**Notes.** {r['notes']}"]
    return lines


def _comparisons(comps: list[dict[str, Any]], unit: str) -> list[str]:
    lines = ["| prediction | metric | ours | difference | p | verdict |", "|---|---|---:|---:|---:|---|"]
    digits = 3 if unit == "ms" else 2
    for c in comps:
        ours = f"{_num(c['mean_better'], digits)} vs {_num(c['mean_worse'], digits)}"
        verdict = f"**{c['verdict']}**" + (f" ({c['reason']})" if c.get("reason") else "")
        lines.append(f"| {c['better']} < {c['worse']}{(' — ' + c['why']) if c.get('why') else ''} | "
                     f"{METRIC_NAMES.get(c['metric'], c['metric'])}{' (median ms)' if unit == 'ms' else ''} | "
                     f"{ours} | {_num(c['difference'], digits)} | {_p(c['p_value'])} | {verdict} |")
    return lines


def render_markdown(r: dict[str, Any]) -> str:
    lines = _header(r)
    if r["kind"] == "speed":
        lines += _speed_markdown(r)
    else:
        lines += _train_markdown(r)
    if r.get("missing"):
        lines += ["", "**Missing.** " + "; ".join(f"{m['key']}: {m['why']}" for m in r["missing"])
                  + ". The verdict is computed without them."]
    for finding in r.get("findings") or []:
        lines += ["", f"**Note.** {finding}"]
    lines += ["", f"**Method.** {r['method']}.", ""]
    return "\n".join(lines)


def _train_markdown(r: dict[str, Any]) -> list[str]:
    published = r["source"].get("metric") or "published"
    first_macs = r["arms"][0].get("macs") if r["arms"] else None
    lines = ["", "| arm | model | params | MACs | MACs vs first | val error (%) | train error (%) | seeds | "
                 f"published: {published} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in r["arms"]:
        rel = f"{a['macs'] / first_macs:.3f}x" if a.get("macs") and first_macs else "-"
        lines.append(f"| {a['label']} | `{a['model']}` | {_count(a.get('params'))} | {_count(a.get('macs'))} | {rel} | "
                     f"{_mean_std(a, 'val_error')} | {_mean_std(a, 'train_error')} | {a['seeds_done']}/{a['seeds']} | "
                     f"{_num(a.get('published'))} |")
    lines += ["", "Metric: mean ± standard deviation over the finished seeds, after the last epoch (validation "
                  "split); MACs at the trial's input size.", "", "## The orderings the claim predicts", ""]
    lines += _comparisons(r["comparisons"], "")
    lines += ["", "![training curves](curves.png)", "", "![metric against multiply-adds](metric_vs_macs.png)"]
    return lines


def _speed_markdown(r: dict[str, Any]) -> list[str]:
    lines = []
    for t in r["tables"]:
        batch = t.get("batch")
        lines += ["", f"## {t['name']} ({t['where']}, {t['device']}): **{t['verdict']}**", "", t["claim"], ""]
        if not t["rows"]:
            lines.append("Not measured yet.")
            continue
        unit = "batches/s" if batch and batch > 1 else "images/s"
        lines += [f"| configuration | MACs | ours ({unit}, batch {batch}, {t.get('threads')} threads) | ours / first "
                  f"| paper: {t['paper_column']} | paper / first |", "|---|---:|---:|---:|---:|---:|"]
        for row in t["rows"]:
            lines.append(f"| {row['label']} | {_count(row['macs'])} | {row['per_s']:.1f} | {row['ratio']:.2f} | "
                         f"{row['paper']:g} | {row['paper_ratio']:.2f} |")
        lines += [""] + _comparisons(t["comparisons"], "ms")
    lines += ["", "![throughput ratios against the paper's](speed.png)"]
    return lines


def trials_csv(r: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in r["trials"]:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in TRIAL_COLUMNS})
    return buf.getvalue()


def write_report(r: dict[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    """report.md, results.json, trials.csv and the plots in ``out``; returns the paths written."""
    from archlab.train.checkpoint import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.md", out / "results.json", out / "trials.csv"]
    atomic_write_text(paths[0], render_markdown(r))
    atomic_write_text(paths[1], json.dumps(r, indent=1, default=str) + "\n")
    atomic_write_text(paths[2], trials_csv(r))
    if plots:
        from archlab import plots as p

        title = f"{r['study']} ({r['budget']} budget" + (")" if r["kind"] == "speed" else f", {r['data']})")
        if r["kind"] == "speed":
            paths.append(p.plot_speed_study(r["tables"], title, out / "speed.png"))
        elif r.get("arms"):
            paths.append(p.plot_study_curves(r["arms"], title, out / "curves.png"))
            paths.append(p.plot_study_cost(r["arms"], "val_error", title, out / "metric_vs_macs.png"))
    return paths
