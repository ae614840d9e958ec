"""What a design study is, as data: the claim, where it was published and with which figures, the arms that test
it, and the ordering the claim predicts.

A study reads like the ablation table of its paper (see :mod:`archlab.studies.tables`): one row per arm, a model
spec (``NAME:key=value``, :func:`archlab.registry.parse_model_spec`) and the recipe changes that make the arm,
the paper's figure beside it. The engine (:mod:`archlab.studies.engine`) runs every study the same way; a user's
study file (:mod:`archlab.studies.files`) has the same fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

# Trial metrics a training study can rank arms by; all are errors (%), lower is better.
METRICS = {
    "val_error": "validation error (%) after the last epoch",
    "train_error": "training error (%) over the last epoch (augmented batches, as the papers' training curves)",
}
BUDGETS = ("quick", "paper")
# TrainConfig fields a study may not set: they belong to the engine (run folder, data, seed) or the machine.
ENGINE_FIELDS = ("model", "data", "run_dir", "seed", "device", "workers", "pretrained", "resume")


class StudyError(ValueError):
    """A study that cannot run as given: an unknown name, a bad field, an arm whose model does not build ..."""


@dataclass(frozen=True)
class Source:
    """Where the claim was published: ``where`` names the table or figure, ``figures`` says what it reports (the
    numbers themselves sit on the arms, ``Arm.published``), ``metric`` what those numbers measure."""

    paper: str
    arxiv: str
    where: str
    figures: str
    metric: str = ""


@dataclass(frozen=True)
class Arm:
    """One row of the study: a label, a model spec, the recipe changes that make this arm (TrainConfig fields, and
    ``input_scale``: the budget's input size times this), the paper's figure for it (in ``Source.metric``), and
    the budgets it runs at (the deepest nets only at the paper budget, as the papers' tables)."""

    label: str
    model: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    published: float | None = None
    budgets: tuple[str, ...] = BUDGETS


@dataclass(frozen=True)
class Expect:
    """One ordering the claim predicts: ``better`` has a lower ``metric`` than ``worse`` (for a speed study:
    ``better`` runs faster)."""

    better: str
    worse: str
    metric: str = "val_error"
    why: str = ""


@dataclass(frozen=True)
class Study:
    """A design claim put to the test: the arms trained (or timed) on the user's machine and data, ``seeds`` times
    each, and the claim's orderings (``expect``) checked by a stated test (:mod:`archlab.studies.stats`).

    ``budgets`` maps ``quick`` / ``paper`` to the recipe of every trial (TrainConfig fields; ``input_size`` is
    for ``--data digits``, ``input_size_other`` for other data, where the images are bigger). A speed study
    (``kind="speed"``) has ``tables`` instead of arms (:mod:`archlab.studies.speed`).
    """

    name: str
    claim: str
    source: Source
    arms: tuple[Arm, ...] = ()
    expect: tuple[Expect, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    metric: str = "val_error"
    budgets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    notes: str = ""
    kind: str = "train"
    tables: tuple[Any, ...] = ()

    def arms_at(self, budget: str) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if budget in a.budgets)

    def arm(self, label: str) -> Arm:
        for a in self.arms:
            if a.label == label:
                return a
        raise StudyError(f"study {self.name}: no arm {label!r}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def fingerprint(self, **settings: Any) -> str:
        """A short hash of the table and the run settings: a study folder holds one of them, never a mix."""
        text = json.dumps({"study": self.to_dict(), **settings}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(obj: Any) -> Any:
    """Tuples and mappings as JSON-ready lists and dicts."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def validate(study: Study) -> Study:
    """Check a study's fields against each other (arms named in ``expect`` exist, budgets and metrics known, recipe
    keys are TrainConfig fields); the message names the field. Model specs are checked by the engine, which
    builds every arm before the first trial."""
    from archlab.train.loop import TrainConfig

    where = f"study {study.name}"
    if not study.name or not study.claim:
        raise StudyError(f"{where}: name and claim are required")
    if study.kind not in ("train", "speed"):
        raise StudyError(f"{where}: kind must be 'train' or 'speed', got {study.kind!r}")
    if study.kind == "speed":
        if not study.tables:
            raise StudyError(f"{where}: a speed study needs tables")
        return study
    if not study.arms:
        raise StudyError(f"{where}: no arms")
    labels = [a.label for a in study.arms]
    if len(set(labels)) != len(labels):
        raise StudyError(f"{where}: arm labels must be unique, got {labels}")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise StudyError(f"{where}: seeds must be distinct integers, got {list(study.seeds)}")
    if study.metric not in METRICS:
        raise StudyError(f"{where}: metric must be one of {', '.join(METRICS)}, got {study.metric!r}")
    allowed = {f.name for f in dataclasses.fields(TrainConfig)} - set(ENGINE_FIELDS)
    for budget, recipe in study.budgets.items():
        if budget not in BUDGETS:
            raise StudyError(f"{where}: budgets.{budget}: unknown budget; known: {', '.join(BUDGETS)}")
        _check_recipe(f"{where}: budgets.{budget}", recipe, allowed | {"input_size_other"})
    for arm in study.arms:
        _check_recipe(f"{where}: arm {arm.label!r} recipe", arm.recipe, allowed | {"input_scale"})
        unknown = [b for b in arm.budgets if b not in BUDGETS]
        if unknown:
            raise StudyError(f"{where}: arm {arm.label!r}: unknown budget {unknown[0]!r}; known: {', '.join(BUDGETS)}")
    for e in study.expect:
        for label in (e.better, e.worse):
            if label not in labels:
                hint = difflib.get_close_matches(label, labels, n=1)
                raise StudyError(f"{where}: expect names arm {label!r}, which the study does not have"
                                 + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if e.metric not in METRICS:
            raise StudyError(f"{where}: expect {e.better} < {e.worse}: metric must be one of "
                             f"{', '.join(METRICS)}, got {e.metric!r}")
    return study


def _check_recipe(where: str, recipe: Mapping[str, Any], allowed: set[str]) -> None:
    for key in recipe:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise StudyError(f"{where}: unknown field {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + " (a TrainConfig field other than the engine's)")
