"""One trial, run: a training trial is an ``archlab train`` run in its own folder, resumed exactly from its
checkpoint when one is there; a speed trial times one table's rows interleaved on one device."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archlab.studies.plan import slug

if TYPE_CHECKING:
    from archlab.studies.engine import StudyRun
    from archlab.studies.plan import TrialPlan

# Fields a resumed trial may differ in from its checkpoint: they change neither the maths nor the data order.
RESUMABLE = ("run_dir", "workers", "device", "data", "grad_checkpointing")


@dataclass
class Outcome:
    state: str  # COMPLETE / FAIL
    attrs: dict[str, Any] = field(default_factory=dict)
    value: float | None = None


def run_trial(run: StudyRun, trial: Any, plan: TrialPlan) -> Outcome:
    if run.study.kind == "speed":
        return run_speed_trial(run, plan)
    return run_training_trial(run, plan)


def trial_dir(out: Path, arm: str, seed: int) -> Path:
    return Path(out) / "trials" / slug(arm) / f"seed{seed}"


def run_training_trial(run: StudyRun, plan: TrialPlan) -> Outcome:
    """Train (or finish training) one arm at one seed. Divergence and errors become a failed trial with its
    reason; an interruption (SIGINT/SIGTERM, after the loop's checkpoint) propagates to the engine."""
    import torch

    from archlab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from archlab.train.distributed import DistContext
    from archlab.train.loop import TrainingDiverged, TrainingInterrupted, train
    from archlab.train.recipe import resolve_config

    run_dir = trial_dir(run.out, plan.arm, plan.seed)
    try:
        cfg = resolve_config(dict(plan.config), str(run_dir))
        resume = None
        if (run_dir / CHECKPOINT_NAME).exists():
            resume = load_checkpoint(run_dir)
            differs = _differences(resume.get("config", {}), dataclasses.asdict(cfg))
            if differs:
                return Outcome("FAIL", {"failure": f"error: {run_dir} holds a run with other settings "
                                                   f"({', '.join(differs)}); remove it to run this trial afresh"})
        name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(name, 0) if name == "cuda" else torch.device("cpu")
        result = train(cfg, DistContext(device=device), None, resume=resume)
    except TrainingDiverged as exc:
        return Outcome("FAIL", {"failure": f"diverged: {exc}"})
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the study goes on; the verdict names what is missing
        text = str(exc).strip().splitlines()
        return Outcome("FAIL", {"failure": f"error: {type(exc).__name__}: {text[0] if text else ''}"})
    history = read_history(run_dir)
    if not history:
        return Outcome("FAIL", {"failure": "error: the run recorded no epoch"})
    last = history[-1]
    attrs = {
        "val_error": last["val_error"], "train_error": last["train_error"], "epochs": len(history),
        "seconds": sum(r["epoch_s"] for r in history), "input_size": cfg.input_size,
        "weights_sha256": result.get("weights_sha256"), "run_dir": str(run_dir.relative_to(run.out)),
        "history": [{k: r[k] for k in ("epoch", "train_error", "val_error", "train_loss", "val_loss")}
                    for r in history],
        "threads": torch.get_num_threads(), "device": str(device),
    }
    return Outcome("COMPLETE", attrs, attrs[run.study.metric])


def _differences(saved: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in planned.items() if k not in RESUMABLE and k in saved and saved[k] != v)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """A run's metrics.csv as rows of floats, with the errors the studies rank by."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            r = {k: float(v) for k, v in row.items() if v not in ("", None)}
            r["val_error"] = round(100.0 - r["val_acc"], 4)
            r["train_error"] = round(100.0 - r["train_acc"], 4)
            rows.append(r)
    return rows


def run_speed_trial(run: StudyRun, plan: TrialPlan) -> Outcome:
    """Time every row of one table interleaved (:func:`archlab.bench.bench_row`); throughput per row."""
    import torch

    from archlab.analysis import profile
    from archlab.bench import Contender, Settings, bench_row
    from archlab.studies.speed import INPUT_SIZE

    table = next(t for t in run.study.tables if t.name == plan.arm)
    device = plan.config["device"]
    batch = 8 if device == "cuda" else 1  # the paper: GPU at batch 8, ARM at batch 1
    contenders = [Contender(row.label, row.build) for row in table.rows]
    settings = Settings(device=device, mode="infer", repeats=int(plan.config.get("repeats", 30)),
                        warmup=int(plan.config.get("warmup", 5)))
    try:
        bench_row(contenders, batch, settings, INPUT_SIZE, measure_memory=False)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()
        return Outcome("FAIL", {"failure": f"error: {type(exc).__name__}: {text[0] if text else ''}"})
    rows = []
    for row, c in zip(table.rows, contenders):
        median = sorted(c.times_ms)[len(c.times_ms) // 2]
        rows.append({"label": row.label, "times_ms": [round(t, 4) for t in c.times_ms], "median_ms": median,
                     "per_s": 1e3 / median, "macs": profile(row.build(), input_size=INPUT_SIZE).macs})
    return Outcome("COMPLETE", {"rows": rows, "device": device, "batch": batch,
                                "threads": torch.get_num_threads()})
