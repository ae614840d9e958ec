"""A search's report from its results: ``report.md``, ``results.json``, the candidates as CSV, every trial as
``trials.csv`` (the engine's columns, :mod:`archlab.studies.report`) and the plot (:mod:`archlab.plots`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from archlab.studies.report import TRIAL_COLUMNS

CONVENTION = ("Scaling convention: the formula of Sec. 3.3 (depth x alpha^phi, width x beta^phi, resolution x "
              "gamma^phi), not the released EfficientNet-B1..B7 rows, whose multipliers come from a fixed table and "
              "differ (docs/scaling.md).")
PROXY = ("A small proxy task is not ImageNet: coefficients that win here say what scales best on this data, model "
         "and budget; the paper's were found on EfficientNet-B0 trained on ImageNet.")


def count(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def acc(row: dict[str, Any]) -> str:
    mean, std = row.get("acc_mean"), row.get("acc_std")
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine") or {}
    return f"{m.get('processor', '?')}, {m.get('cpu_count', '?')} CPUs, torch {m.get('torch', '?')}"


def _stopped(r: dict[str, Any]) -> list[str]:
    if not r.get("stopped"):
        return []
    return ["", f"**Stopped early** ({r['stopped']}): the tables hold what had finished. Run the same command again "
                "to continue; finished trials are reused and an interrupted one resumes from its checkpoint."]


# ------------------------------------------------------------------------------------------------ compound

STEP1_COLUMNS = ("rank", "alpha", "beta", "gamma", "constraint", "spec", "input_size", "params", "macs", "acc_mean",
                 "acc_std", "seeds_done", "seeds", "paper", "same_as")
STEP2_COLUMNS = ("coefficients", "phi", "alpha", "beta", "gamma", "spec", "input_size", "params", "macs",
                 "acc_mean", "acc_std", "seeds_done", "seeds")


def compound_markdown(r: dict[str, Any]) -> str:
    best = r.get("best")
    head = (f"alpha = {best['alpha']:g}, beta = {best['beta']:g}, gamma = {best['gamma']:g}" if best else
            "no candidate finished")
    s = r["source"]
    fraction = f", data fraction {r['data_fraction']}" if r.get("data_fraction") else ""
    recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
    lines = [f"# Compound-scaling search: {head}", "",
             f"**Method.** {s['paper']} (arXiv:{s['arxiv']}), {s['where']}: step 1 trains the base scaled by every "
             f"grid point (alpha, beta, gamma) at phi = 1 with |alpha*beta^2*gamma^2 - 2| <= {r['tolerance']:g} and "
             "ranks them by validation accuracy (mean ± standard deviation over seeds); step 2 scales the base "
             "with the best coefficients and with the paper's (1.2, 1.1, 1.15) at the same phi.", "",
             f"**{CONVENTION}**", "", f"**{PROXY}**", "",
             f"**Run.** base `{r['base']}` at {r['base_input_size']}px ({r['base_kind']}); {r['points']} grid points "
             f"meet the constraint, {r['networks']} distinct networks after rounding; {r['seeds']} seeds each; budget "
             f"`{r['budget']}` ({recipe}) on `{r['data']}`{fraction}; {_machine(r)}; wall time {r['wall_s']:.0f} s."]
    lines += _stopped(r)
    lines += ["", "## Step 1: phi = 1, ranked by validation accuracy", "",
              "| rank | alpha | beta | gamma | a·b²·g² | model spec | input | params | MACs | val acc (%) | seeds "
              "| also |", "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for row in r["step1"]:
        also = ", ".join(f"({c['alpha']:g}, {c['beta']:g}, {c['gamma']:g})" for c in row["same_as"])
        mark = " (paper)" if row.get("paper") else ""
        lines.append(f"| {row.get('rank') or '-'} | {row['alpha']:g} | {row['beta']:g} | {row['gamma']:g}{mark} | "
                     f"{row['constraint']:.3f} | `{row['spec']}` | {row['input_size']} | {count(row['params'])} | "
                     f"{count(row['macs'])} | {acc(row)} | {row['seeds_done']}/{row['seeds']} | {also} |")
    lines += ["", "'also': grid points that round to the same network (same layers and input size), trained once. "
                  "MACs: multiply-adds at the trial's input size."]
    step2 = r["step2"]
    lines += ["", "## Step 2: the best coefficients and the paper's at phi = 0..3", ""]
    if not step2["rows"]:
        lines.append(f"Step 2 {step2['status']}.")
    else:
        base_macs = next((x["macs"] for x in step2["rows"] if x["phi"] == 0), None)
        lines += ["| coefficients | phi | (alpha, beta, gamma) | model spec | input | params | MACs | MACs / base | "
                  "2^phi | val acc (%) | seeds |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in step2["rows"]:
            ratio = f"{x['macs'] / base_macs:.2f}" if x.get("macs") and base_macs else "-"
            lines.append(f"| {x['coefficients']} | {x['phi']} | ({x['alpha']:g}, {x['beta']:g}, {x['gamma']:g}) | "
                         f"`{x['spec']}` | {x['input_size']} | {count(x['params'])} | {count(x['macs'])} | {ratio} | "
                         f"{2 ** x['phi']} | {acc(x)} | {x['seeds_done']}/{x['seeds']} |")
        if step2["status"] != "complete":
            lines += ["", f"Step 2 is {step2['status']}."]
    if r.get("versus"):
        lines += ["", "## Found vs the paper's coefficients", "",
                  "| where | val error (%): found vs paper | difference | p | verdict |", "|---|---:|---:|---:|---|"]
        for v in r["versus"]:
            ours = "-" if v["mean_better"] is None or v["mean_worse"] is None else \
                f"{v['mean_better']:.2f} vs {v['mean_worse']:.2f}"
            diff = "-" if v["difference"] is None else f"{v['difference']:.2f}"
            p = "-" if v["p_value"] is None else f"{v['p_value']:.3f}"
            lines.append(f"| {v['where']} | {ours} | {diff} | {p} | {v['verdict']}"
                         + (f" ({v['reason']})" if v.get("reason") else "") + " |")
        lines += ["", "'holds': the found coefficients have the lower error at 5% (Welch's t-test on the per-seed "
                      "errors, as `archlab study` tests an ordering); 'inconclusive': within the seeds' noise."]
    missing = list(r.get("missing") or []) + list(step2.get("missing") or [])
    if missing:
        lines += ["", "**Missing.** " + "; ".join(f"{m['key']}: {m['why']}" for m in missing) + "."]
    lines += ["", "![step 1 and step 2](compound.png)", ""]
    return "\n".join(lines)


def write_compound(r: dict[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    from archlab.train.checkpoint import atomic_write_text

    out = Path(out)
    paths = [out / "report.md", out / "results.json", out / "step1.csv", out / "step2.csv", out / "trials.csv"]
    atomic_write_text(paths[0], compound_markdown(r))
    atomic_write_text(paths[1], json.dumps(r, indent=1, default=str) + "\n")
    atomic_write_text(paths[2], _csv([{**x, "same_as": " ".join(f"{c['alpha']:g}/{c['beta']:g}/{c['gamma']:g}"
                                                                  for c in x["same_as"])} for x in r["step1"]],
                                     STEP1_COLUMNS))
    atomic_write_text(paths[3], _csv(r["step2"]["rows"], STEP2_COLUMNS))
    atomic_write_text(paths[4], _csv(r["trials"], ("round",) + TRIAL_COLUMNS))
    if plots:
        from archlab.plots import plot_compound_search

        paths.append(plot_compound_search(r, out / "compound.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- mnas

MNAS_COLUMNS = ("number", "label", "pareto", "spec", "width_mult", "stages", "params", "macs", "acc_mean", "acc_std",
                "latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_raw_ms", "latency_vs_anchor",
                "search_latency_ms", "reward",
                "batch")


def _lat(row: dict[str, Any]) -> str:
    if row.get("latency_ms") is None:
        return "-"
    return f"{row['latency_ms']:.3f} [{row['latency_q1_ms']:.3f}-{row['latency_q3_ms']:.3f}]"


def _mnas_row(x: dict[str, Any], reward: bool) -> str:
    ratio = "-" if x.get("latency_vs_anchor") is None else f"{x['latency_vs_anchor']:.2f}"
    extra = f" {x['reward']:.4f} |" if reward else ""
    return (f"| {x['label']} | `{x['spec']}` | {count(x['params'])} | {count(x['macs'])} | {acc(x)} | {_lat(x)} | "
            f"{ratio} |{extra}")


def mnas_markdown(r: dict[str, Any]) -> str:
    o, s, a = r["options"], r["source"], r["anchor"]
    reward = bool(o.get("target_ms"))
    cost = "measured latency" if r["cost_key"] == "latency_ms" else "multiply-adds"
    objective = (f"MnasNet's reward ACC x (LAT/T)^w with T = {o['target_ms']:g} ms, w = {o['w']:g}" if reward else
                 f"two objectives, validation accuracy (up) and {cost} (down)")
    recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
    fraction = f", data fraction {r['data_fraction']}" if r.get("data_fraction") else ""
    anchor = f"{a['median_ms']:.3f} ms" if a.get("median_ms") else "not measured"
    lines = [f"# Latency-aware search (MnasNet): {len(r['candidates'])} candidates, {len(r['front'])} on the front",
             "", f"**Method.** {s['paper']} (arXiv:{s['arxiv']}), {s['where']}. Per stage of MnasNet-B1: kernel "
             f"{r['space']['kernel']}, expansion {r['space']['expand']}, layers B1's + {r['space']['layers']}, SE "
             f"on/off; width multiplier {r['space']['width_mult']}. Sampler `{o['sampler']}` (Optuna) in batches of "
             f"{o['batch']}, told {objective}.", "",
             "**Latency.** Batch 1 on one thread of this CPU in archlab's inference form "
             "(`fuse(model, onednn=True)`, channels-last), every model timed in turns with the others and with the "
             f"anchor `{a['spec']}` ({anchor}), repeat after repeat; the table's figures come from one final session "
             "holding every finished candidate: 'vs anchor' is the median over repeats of the candidate's time over "
             "the anchor's in the same repeat (which cancels load that drifts), the latency that ratio times the "
             "anchor's median, [its first-third quartile] likewise. The sampler was told each batch's figures, put "
             "on one scale through the anchor.", "",
             f"**Run.** budget `{r['budget']}` ({recipe}), {r['seeds']} seed(s) per candidate, input "
             f"{r['input_size']}px"
             f" on `{r['data']}`{fraction}; trials: {r['counts']}; {_machine(r)}; wall time {r['wall_s']:.0f} s.",
             "", "**A small proxy task is not ImageNet, and this CPU is not a Pixel phone**: the front says which "
             "designs of this space are fast here and learn this data in this budget."]
    lines += _stopped(r)
    head = ("| candidate | model spec | params | MACs | val acc (%) | latency (ms) | vs anchor |" +
            (" reward |" if reward else ""))
    rule = "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if reward else "")
    lines += ["", f"## Pareto front ({cost} against validation accuracy)", "", head, rule]
    lines += [_mnas_row(x, reward) for x in sorted(r["front"], key=lambda x: x.get(r["cost_key"]) or 0)]
    if reward and r.get("best_reward"):
        b = r["best_reward"]
        lines += ["", f"Highest reward: {b['label']} (`{b['spec']}`), {b['reward']:.4f}."]
    lines += ["", "## Every candidate", "", head, rule]
    lines += [_mnas_row(x, reward) for x in r["candidates"]]
    lines += ["", "![the front](pareto.png)", ""]
    return "\n".join(lines)


def write_mnas(r: dict[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    from archlab.train.checkpoint import atomic_write_text

    out = Path(out)
    paths = [out / "report.md", out / "results.json", out / "candidates.csv"]
    atomic_write_text(paths[0], mnas_markdown(r))
    atomic_write_text(paths[1], json.dumps(r, indent=1, default=str) + "\n")
    atomic_write_text(paths[2], _csv(r["candidates"], MNAS_COLUMNS))
    if plots and r["candidates"]:
        from archlab.plots import plot_pareto_search

        paths.append(plot_pareto_search(r, out / "pareto.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- space

SPACE_COLUMNS = ("label", "space", "spec", "params", "macs", "tries", "val_error", "val_error_std", "seeds_done",
                 "seeds")


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def space_markdown(r: dict[str, Any]) -> str:
    s = r["source"]
    band = f"{r['band'][0] / 1e6:g}M-{r['band'][1] / 1e6:g}M"
    recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
    fraction = f", data fraction {r['data_fraction']}" if r.get("data_fraction") else ""
    names = " vs ".join(x["space"] for x in r["spaces"])
    lines = [f"# Design spaces compared: {names}", "",
             f"**Method.** {s['paper']} (arXiv:{s['arxiv']}), {s['where']}: {r['samples']} models sampled from each "
             f"space with {band} multiply-adds at {r['input_size']}px (rejection sampling), each trained briefly; "
             "a space is its error EDF, F(e) = the share of its models with validation error up to e, and two "
             "spaces differ by the Kolmogorov-Smirnov statistic D, the largest gap between their EDFs "
             "(scipy.stats.ks_2samp, with its p-value).", "",
             f"**Run.** budget `{r['budget']}` ({recipe}), {r['seeds']} seed(s) a model, on `{r['data']}`{fraction}; "
             f"{_machine(r)}; wall time {r['wall_s']:.0f} s.", "",
             "**A small proxy task is not ImageNet**: the EDFs say how the spaces' models fare on this data in this "
             "budget."]
    lines += _stopped(r)
    lines += ["", "| space | source | models trained | min error (%) | median | max |", "|---|---|---:|---:|---:|---:|"]
    for x in r["spaces"]:
        lines.append(f"| {x['space']} | {x['source']} | {x['trained']}/{x['sampled']} | {_err(x['min'])} | "
                     f"{_err(x['median'])} | {_err(x['max'])} |")
    if r["ks"]:
        lines += ["", "| spaces | KS statistic D | p-value |", "|---|---:|---:|"]
        for k in r["ks"]:
            d = "-" if k.get("statistic") is None else f"{k['statistic']:.3f}"
            pv = "-" if k.get("p_value") is None else f"{k['p_value']:.3g}"
            lines.append(f"| {k['a']} vs {k['b']} | {d} | {pv} |")
    lines += ["", "![error EDFs](edf.png)", "", "## Every model", "",
              "| model | model spec | params | MACs | tries | val error (%) | seeds |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for m in r["models"]:
        lines.append(f"| {m['label']} | `{m['spec']}` | {count(m['params'])} | {count(m['macs'])} | {m['tries']} | "
                     f"{_err(m['val_error'])} | {m['seeds_done']}/{m['seeds']} |")
    if r.get("missing"):
        lines += ["", "**Missing.** " + "; ".join(f"{m['key']}: {m['why']}" for m in r["missing"]) + "."]
    return "\n".join(lines) + "\n"


def write_space(r: dict[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    from archlab.train.checkpoint import atomic_write_text

    out = Path(out)
    paths = [out / "report.md", out / "results.json", out / "models.csv", out / "trials.csv"]
    atomic_write_text(paths[0], space_markdown(r))
    atomic_write_text(paths[1], json.dumps(r, indent=1, default=str) + "\n")
    atomic_write_text(paths[2], _csv(r["models"], SPACE_COLUMNS))
    atomic_write_text(paths[3], _csv(r["trials"], TRIAL_COLUMNS))
    if plots:
        from archlab.plots import plot_space_edf

        paths.append(plot_space_edf(r, out / "edf.png"))
    return paths
