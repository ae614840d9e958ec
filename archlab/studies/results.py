"""A study's results as one plain dictionary (what ``results.json`` holds and every report renders): every trial,
per arm its cost and metric (mean ± std over the finished seeds), each predicted ordering tested, the verdict, and
what is missing."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archlab.studies.plan import trial_key
from archlab.studies.stats import METHOD_SPEED, METHOD_TRAIN, mean_std, overall, paired_log_ratio, welch
from archlab.studies.study import METRICS, StudyError

if TYPE_CHECKING:
    from archlab.studies.engine import StudyRun

CEILING = 2.0  # every arm below this error (%): the data may be too easy to separate the arms


def dataset_classes(data: str) -> int:
    """Classes of a data spec without loading it (for counting parameters)."""
    if data in ("digits", "fashion-mnist"):
        return 10
    path = Path(data).expanduser()
    if (path / "cifar-100-python").is_dir() or path.name == "cifar-100-python":
        return 100
    train = path / "train"
    if train.is_dir():
        return max(1, sum(1 for p in train.iterdir() if p.is_dir()))
    return 10


def arm_costs(run: StudyRun) -> dict[str, dict[str, Any]]:
    """Parameters and multiply-adds of every arm at its trial's input size, built on the meta device; an arm whose
    model spec does not build is a StudyError naming the arm."""
    import torch

    from archlab.analysis import profile
    from archlab.registry import create_from_spec

    if run.study.kind == "speed":
        return {}
    classes = dataset_classes(run.settings.data)
    costs = {}
    for arm in run.study.arms_at(run.settings.budget):
        plan = run.by_key[trial_key(arm.label, (run.settings.seeds or run.study.seeds)[0])]
        size = plan.config.get("input_size") or 32
        try:
            with torch.device("meta"):
                model = create_from_spec(arm.model, num_classes=classes)
            p = profile(model, input_size=size)
        except Exception as exc:  # noqa: BLE001 - unknown names, bad keys, bad values: the arm is what to fix
            text = str(exc).strip().splitlines()
            raise StudyError(f"study {run.study.name}: arm {arm.label!r}: model {arm.model!r} does not build: "
                             f"{text[0] if text else type(exc).__name__}") from None
        costs[arm.label] = {"params": p.params, "macs": p.macs, "input_size": size}
    return costs


def _trial_rows(run: StudyRun) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every trial as a row, and the one counted per key (the first finished)."""
    from optuna.trial import TrialState

    rows, counted = [], {}
    for t in sorted(run._trials(), key=lambda t: t.number):
        a = t.user_attrs
        duration = None
        if t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        row = {"number": t.number, "key": a.get("key"), "arm": a.get("arm"), "seed": a.get("seed"),
               "state": t.state.name, "failure": a.get("failure"), "duplicate_of": a.get("duplicate_of"),
               "retry_of": a.get("retry_of"), "wall_s": duration, "worker": t.system_attrs.get("worker")}
        for k in ("val_error", "train_error", "epochs", "seconds", "input_size", "run_dir", "weights_sha256",
                  "threads", "device"):
            row[k] = a.get(k)
        rows.append(row)
        if t.state == TrialState.COMPLETE and row["key"] not in counted:
            counted[row["key"]] = {**row, "history": a.get("history"), "rows": a.get("rows"),
                                   "batch": a.get("batch")}
    return rows, counted


def _why_missing(rows: list[dict[str, Any]], key: str) -> str:
    mine = [r for r in rows if r["key"] == key]
    if not mine:
        return "not started"
    last = mine[-1]
    if last["state"] == "RUNNING":
        return "running"
    if last["state"] == "WAITING":
        return "waiting"
    return last["failure"] or "failed (worker lost)"


def collect(run: StudyRun, costs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole study as a plain dict (see the module docstring)."""
    import torch

    study, settings = run.study, run.settings
    rows, counted = _trial_rows(run)
    progress = run.progress()
    result: dict[str, Any] = {
        "study": study.name, "claim": study.claim, "kind": study.kind, "source": study.to_dict()["source"],
        "notes": study.notes, "budget": settings.budget, "data": settings.data,
        "data_fraction": settings.data_fraction, "recipe": study.to_dict()["budgets"].get(settings.budget, {}),
        "storage": run.storage_url, "out": str(run.out), "progress": progress, "trials": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads()},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    missing = [{"key": k, "why": _why_missing(rows, k)} for k in run.by_key if k not in counted]
    result["missing"] = missing
    if study.kind == "speed":
        return {**result, **_speed(run, counted)}
    costs = costs if costs is not None else arm_costs(run)
    seeds = settings.seeds or study.seeds
    arms, values = [], {}
    for arm in study.arms_at(settings.budget):
        finished = [counted[trial_key(arm.label, s)] for s in seeds if trial_key(arm.label, s) in counted]
        values[arm.label] = {m: [r[m] for r in finished if r.get(m) is not None] for m in METRICS}
        entry = {"label": arm.label, "model": arm.model, "published": arm.published, "seeds_done": len(finished),
                 "seeds": len(seeds), **costs.get(arm.label, {})}
        for m in METRICS:
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std(values[arm.label][m])
        entry["curves"] = [r["history"] for r in finished if r.get("history")]
        arms.append(entry)
    labels = {a["label"] for a in arms}
    comparisons = [welch(values[e.better][e.metric], values[e.worse][e.metric], (e.better, e.worse), e.metric, e.why)
                   for e in study.expect if e.better in labels and e.worse in labels]
    notes = []
    means = [a["val_error_mean"] for a in arms if a["val_error_mean"] is not None]
    if means and max(means) < CEILING:
        notes.append(f"every arm is below {CEILING:g}% validation error: the data may be too easy for the arms "
                     f"to differ (a harder dataset: --data fashion-mnist)")
    return {**result, "arms": arms, "comparisons": [c.to_dict() for c in comparisons], "method": METHOD_TRAIN,
            "verdict": overall(comparisons), "findings": notes}


def _speed(run: StudyRun, counted: dict[str, Any]) -> dict[str, Any]:
    tables, verdicts = [], []
    for plan in run.plans:
        table = next(t for t in run.study.tables if t.name == plan.arm)
        done = counted.get(plan.key)
        device = plan.config["device"]
        column = table.gpu_column if device == "cuda" else table.cpu_column
        paper = list(table.paper[column])
        entry = {"name": table.name, "claim": table.claim, "where": table.where, "device": device,
                 "paper_column": column, "paper": {k: list(v) for k, v in table.paper.items()}, "rows": [],
                 "comparisons": [], "verdict": "inconclusive"}
        if done:
            by_label = {r["label"]: r for r in done["rows"]}
            first = done["rows"][0]
            for i, r in enumerate(done["rows"]):
                entry["rows"].append({**{k: v for k, v in r.items() if k != "times_ms"},
                                      "ratio": r["per_s"] / first["per_s"], "paper": paper[i],
                                      "paper_ratio": paper[i] / paper[0]})
            comps = [paired_log_ratio(by_label[e.better]["times_ms"], by_label[e.worse]["times_ms"],
                                      (e.better, e.worse), e.why) for e in table.expect]
            entry["comparisons"] = [c.to_dict() for c in comps]
            entry["verdict"] = overall(comps)
            entry["batch"], entry["threads"] = done.get("batch"), done.get("threads")
        verdicts.append(entry["verdict"])
        tables.append(entry)
    verdict = ("contradicted" if "contradicted" in verdicts else
               "holds" if verdicts and all(v == "holds" for v in verdicts) else "inconclusive")
    return {"tables": tables, "method": METHOD_SPEED, "verdict": verdict, "findings": []}

