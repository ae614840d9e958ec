"""A study's trials at one budget on one dataset: which arm, which seed, and the TrainConfig fields of each
(the budget's recipe, the arm's changes, the run's overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.studies.study import Study


@dataclass(frozen=True)
class Settings:
    """How a study is run; everything that changes results is in the fingerprint."""

    budget: str = "quick"
    data: str = "digits"
    seeds: tuple[int, ...] | None = None  # None: the study's own
    epochs: int | None = None  # None: the budget's
    data_fraction: float | None = None
    device: str | None = None

    def fingerprint_fields(self) -> dict[str, Any]:
        return {"budget": self.budget, "data": data_name(self.data), "seeds": self.seeds, "epochs": self.epochs,
                "data_fraction": self.data_fraction}


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its key, its arm (or speed table) and seed, and for training the TrainConfig fields."""

    key: str
    arm: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)


def data_name(spec: str) -> str:
    return spec if spec in ("digits", "fashion-mnist") else (Path(spec).expanduser().resolve().name or spec)


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def trial_key(arm: str, seed: int) -> str:
    return f"{arm}|seed={seed}"


def input_size_for(value: Any, data: str) -> int | None:
    """A budget's input size: an integer, or a mapping from data name ('digits', 'fashion-mnist', '*') to one."""
    if value is None or isinstance(value, int):
        return value
    name = data_name(data)
    size = value.get(name, value.get("*"))
    return None if size is None else int(size)


def plan_trials(study: Study, settings: Settings) -> list[TrialPlan]:
    """Every trial of the study at this budget, seed-major (all arms' first seed first, so a study stopped early
    still has every arm)."""
    seeds = settings.seeds or study.seeds
    if study.kind == "speed":  # one trial per table and device: this CPU, and the GPU when there is one
        budget = dict(study.budgets.get(settings.budget, {}))
        return [TrialPlan(f"{table.name}|device={device}", table.name, 0, {**budget, "device": device})
                for device in speed_devices(settings.device) for table in study.tables]
    budget = dict(study.budgets.get(settings.budget, {}))
    base_size = input_size_for(budget.pop("input_size", None), settings.data)
    budget.pop("input_size_other", None)
    plans = []
    for seed in seeds:
        for arm in study.arms_at(settings.budget):
            recipe = {**budget, **{k: v for k, v in arm.recipe.items() if k != "input_scale"}}
            scale = arm.recipe.get("input_scale", 1.0)
            size = recipe.get("input_size", base_size)
            if size is not None:
                recipe["input_size"] = max(1, int(round(size * scale)))
            if settings.epochs:
                recipe["epochs"] = settings.epochs
                # A shorter run keeps its warm-up a fifth of it at most (a warm-up as long as the run never peaks).
                recipe["warmup_epochs"] = min(recipe.get("warmup_epochs", 0.0), settings.epochs / 5)
            if settings.data_fraction is not None:
                recipe["data_fraction"] = settings.data_fraction
            recipe.update(model=arm.model, data=settings.data, seed=seed, workers=0)
            if settings.device:
                recipe["device"] = settings.device
            plans.append(TrialPlan(trial_key(arm.label, seed), arm.label, seed, recipe))
    return plans


def speed_devices(device: str | None) -> tuple[str, ...]:
    if device:
        return (device,)
    import torch

    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
