"""``archlab search compound``: EfficientNet's search for the compound-scaling coefficients (Tan & Le 2019,
"EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", arXiv:1905.11946, Sec. 3.3).

Step 1: fix phi = 1 and try every (alpha, beta, gamma) of a grid with alpha * beta^2 * gamma^2 within a tolerance
of 2 (the paper: "a small grid search"; it found alpha = 1.2, beta = 1.1, gamma = 1.15 on B0, constraint 1.92).
Each point is the base network scaled by it (:mod:`archlab.search.scalable`), trained as a study trial at several
seeds and ranked by validation accuracy (mean over the seeds). Points that round to the same network (same layers,
same input size) are trained once and share the result. Step 2: the best coefficients at phi = 1, 2, 3 beside the
paper's at the same phi (and the base, phi = 0): parameters, multiply-adds, accuracy.

The scaling convention is the formula (depth alpha^phi, width beta^phi, resolution gamma^phi), not the released
B1-B7 rows, which differ (docs/scaling.md). A small proxy task is not ImageNet: the coefficients that win on it
say what scales best on it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from archlab.search.runner import Clock, SearchError, SearchSettings, drive, open_round, round_results
from archlab.search.scalable import ScalableBase, scalable_base
from archlab.studies.plan import input_size_for
from archlab.studies.study import Arm, Source, Study
from archlab.studies.tables import RESNET_CIFAR, quick

PAPER_COEFFICIENTS = (1.2, 1.1, 1.15)  # Sec. 3.3, found on EfficientNet-B0 (constraint 1.9203)
TARGET = 2.0  # alpha * beta^2 * gamma^2 ≈ 2: FLOPs double per unit of phi
DEFAULT_GRID = "1.0:1.4:0.05"
DEFAULT_TOLERANCE = 0.08  # 4%: just wide enough to hold the paper's own point (1.9203)
DEFAULT_BASE = "cifar_resnet20:width_mult=0.5"
DEFAULT_PHIS = (1, 2, 3)
MAX_GRID_VALUES = 201
# The base trains at 16x16 on digits (upsampled from 8x8, so that resolution has whole pixels to scale by),
# at the data's own 28 on Fashion-MNIST and 32 elsewhere (CIFAR). Quick: 3 epochs of the studies' quick recipe
# (batch 32), 2 seeds (35 networks on the default grid: about 70 trials); paper: ResNet's CIFAR recipe (164 epochs),
# 3 seeds.
INPUT_SIZE = {"digits": 16, "fashion-mnist": 28, "*": 32}
BUDGETS = {"quick": quick(3, INPUT_SIZE), "paper": {**RESNET_CIFAR, "input_size": INPUT_SIZE}}
SEEDS = {"quick": 2, "paper": 3}
SOURCE = Source(
    paper="Tan & Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    arxiv="1905.11946", where="Sec. 3.3 (compound scaling method, step 1 and step 2)",
    figures="alpha = 1.2, beta = 1.1, gamma = 1.15 from a small grid search on B0 at phi = 1 under "
            "alpha * beta^2 * gamma^2 ≈ 2", metric="ImageNet top-1")


@dataclass(frozen=True)
class Coefficients:
    alpha: float
    beta: float
    gamma: float

    @property
    def constraint(self) -> float:
        return self.alpha * self.beta ** 2 * self.gamma ** 2

    def label(self, phi: float = 1) -> str:
        return f"a{self.alpha:g}-b{self.beta:g}-g{self.gamma:g}@phi{phi:g}"


@dataclass(frozen=True)
class CompoundOptions:
    base: str = DEFAULT_BASE
    grid: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] = ((), (), ())
    tolerance: float = DEFAULT_TOLERANCE
    phis: tuple[int, ...] = DEFAULT_PHIS


@dataclass
class Candidate:
    """One network of step 1: its coefficients (the representative of those that build it), the others that round
    to the same network, its spec and input size."""

    coefficients: Coefficients
    spec: str
    input_scale: float
    input_size: int
    same_as: list[Coefficients] = field(default_factory=list)


def parse_range(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` as the values from START to STOP (inclusive) in steps of STEP."""
    parts = text.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise SearchError(f"--grid takes START:STOP:STEP (e.g. {DEFAULT_GRID}), got {text!r}") from None
    if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
        raise SearchError(f"--grid {text!r}: needs finite START <= STOP and STEP > 0")
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n > MAX_GRID_VALUES:
        raise SearchError(f"--grid {text!r}: {n} values per coefficient; at most {MAX_GRID_VALUES}")
    if start < 1:
        raise SearchError(f"--grid {text!r}: alpha, beta and gamma must be >= 1 (the paper's constraint: a "
                          "coefficient below 1 would shrink the network as phi grows)")
    return tuple(round(start + i * step, 10) for i in range(n))


def parse_grid(text: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """One range for all three coefficients, or three (alpha, beta, gamma) separated by commas."""
    ranges = [parse_range(t.strip()) for t in text.split(",")]
    if len(ranges) == 1:
        return ranges[0], ranges[0], ranges[0]
    if len(ranges) != 3:
        raise SearchError(f"--grid takes one START:STOP:STEP range or three (alpha,beta,gamma), got {text!r}")
    return ranges[0], ranges[1], ranges[2]


def constrained_points(grid: tuple[tuple[float, ...], ...], tolerance: float) -> list[Coefficients]:
    """Every grid point with |alpha * beta^2 * gamma^2 - 2| <= tolerance; none is a SearchError naming the
    nearest point and how far it is."""
    points = [Coefficients(a, b, g) for a, b, g in itertools.product(*grid)]
    kept = [c for c in points if abs(c.constraint - TARGET) <= tolerance + 1e-12]
    if not kept:
        near = min(points, key=lambda c: abs(c.constraint - TARGET))
        raise SearchError(f"no grid point has alpha*beta^2*gamma^2 within {tolerance:g} of 2; the nearest, alpha="
                          f"{near.alpha:g} beta={near.beta:g} gamma={near.gamma:g}, gives {near.constraint:.4f} "
                          f"({abs(near.constraint - TARGET):.4f} away): widen --grid or --tolerance")
    return kept


def _network_key(spec: str, input_size: int) -> tuple[Any, ...]:
    """What makes two candidates the same network: the shapes of every parameter and the input size."""
    import torch

    from archlab.registry import create_from_spec

    with torch.device("meta"):
        model = create_from_spec(spec, num_classes=10)
    return (input_size, tuple(tuple(p.shape) for p in model.parameters()))


def step1_candidates(base: ScalableBase, points: list[Coefficients], base_size: int) -> list[Candidate]:
    """One candidate per distinct network; its representative is the paper's point when it is among them, else
    the point closest to the constraint (then the first in grid order), the others listed in ``same_as``."""
    groups: dict[tuple[Any, ...], list[tuple[Coefficients, str, float, int]]] = {}
    for c in points:
        spec, scale = base.scaled(1, c.alpha, c.beta, c.gamma)
        size = max(1, int(round(base_size * scale)))  # what the engine will feed it (plan_trials)
        groups.setdefault(_network_key(spec, size), []).append((c, spec, scale, size))
    out = []
    for members in groups.values():
        rep = min(members, key=lambda m: (not _is_paper(m[0]), abs(m[0].constraint - TARGET)))
        out.append(Candidate(rep[0], rep[1], rep[2], rep[3], [m[0] for m in members if m is not rep]))
    return out


def _study(name: str, claim: str, arms: list[Arm], seeds: int, notes: str) -> Study:
    return Study(name=name, claim=claim, source=SOURCE, arms=tuple(arms), seeds=tuple(range(seeds)),
                 budgets=BUDGETS, notes=notes)


def _arm(label: str, spec: str, scale: float) -> Arm:
    return Arm(label, spec, {"input_scale": scale} if scale != 1 else {})


def run_compound(options: CompoundOptions, settings: SearchSettings, out: Path,
                 on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Both steps, as far as the bounds allow; returns the results (:func:`archlab.search.report` renders them)."""
    clock = Clock(settings)
    base = scalable_base(options.base)
    points = constrained_points(options.grid, options.tolerance)
    base_size = input_size_for(BUDGETS[settings.budget]["input_size"], settings.data) or 32
    seeds = settings.seeds or SEEDS[settings.budget]
    candidates = step1_candidates(base, points, base_size)
    notes = f"base {base.spec} at {base_size}px; grid {len(points)} points within {options.tolerance:g} of 2"
    study1 = _study("search-compound-step1", "The best (alpha, beta, gamma) at phi = 1 under alpha*beta^2*gamma^2 "
                    "≈ 2", [_arm(c.coefficients.label(), c.spec, c.input_scale) for c in candidates], seeds, notes)
    run1 = open_round(study1, settings, out)
    stopped = drive(run1, settings.workers, clock, 0, on_progress and (lambda p: on_progress("step 1", p)))
    r1 = round_results(run1)
    arms1 = {a["label"]: a for a in r1["arms"]}
    rows = []
    for c in candidates:
        a = arms1[c.coefficients.label()]
        rows.append({**asdict(c.coefficients), "constraint": c.coefficients.constraint, "spec": c.spec,
                     "input_size": c.input_size, "params": a.get("params"), "macs": a.get("macs"),
                     **_accuracy(a), "same_as": [asdict(s) for s in c.same_as],
                     "paper": _is_paper(c.coefficients) or any(_is_paper(s) for s in c.same_as)})
    ranked = sorted((r for r in rows if r["acc_mean"] is not None), key=lambda r: -r["acc_mean"])
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    rows.sort(key=lambda r: (r.get("rank") or len(rows) + 1, -r["constraint"]))
    complete = stopped is None and not r1["missing"]
    best = ranked[0] if ranked else None
    errors1 = _per_seed(r1["trials"])
    paper_row = next((r for r in rows if r["paper"]), None)
    versus = []
    if best and paper_row and best is not paper_row:
        versus.append(_versus(Coefficients(best["alpha"], best["beta"], best["gamma"]).label(),
                              Coefficients(paper_row["alpha"], paper_row["beta"], paper_row["gamma"]).label(),
                              errors1, "step 1, phi = 1"))
    result: dict[str, Any] = {
        "search": "compound", "source": asdict(SOURCE), "base": base.spec, "base_kind": base.kind,
        "base_input_size": base_size, "grid": [list(g) for g in options.grid], "tolerance": options.tolerance,
        "points": len(points), "networks": len(candidates), "seeds": seeds, "budget": settings.budget,
        "data": settings.data, "data_fraction": settings.data_fraction,
        "recipe": {**r1["recipe"], **({"epochs": settings.epochs} if settings.epochs else {})},
        "storage": run1.storage_url, "out": str(out), "machine": r1["machine"], "step1": rows,
        "best": best and {k: best[k] for k in ("alpha", "beta", "gamma", "constraint", "acc_mean", "acc_std")},
        "paper_coefficients": dict(zip(("alpha", "beta", "gamma"), PAPER_COEFFICIENTS)),
        "step1_complete": complete, "missing": r1["missing"], "versus": versus,
        "trials": [{"round": "step1", **x} for x in r1["trials"]],
    }
    result["step2"] = {"status": "not run: step 1 is not complete" if not complete else
                       "not run: no --phi given" if not options.phis else "", "rows": []}
    if complete and best and options.phis:
        found = Coefficients(best["alpha"], best["beta"], best["gamma"])
        sets = [("found", found)] + ([] if _is_paper(found) else [("paper", Coefficients(*PAPER_COEFFICIENTS))])
        plan = [("base", None, 0)] + [(who, c, phi) for who, c in sets for phi in options.phis]
        arms2, seen = [], set()
        for who, c, phi in plan:
            spec, scale = (base.spec, 1.0) if c is None else base.scaled(phi, c.alpha, c.beta, c.gamma)
            label = "base@phi0" if c is None else c.label(phi)
            if label not in seen:
                seen.add(label)
                arms2.append(_arm(label, spec, scale))
        study2 = _study("search-compound-step2", "The found coefficients scale at least as well as the paper's at "
                        "phi = " + ", ".join(str(p) for p in options.phis), arms2, seeds, notes)
        run2 = open_round(study2, settings, out)
        done1 = r1["progress"]["done"]
        stopped = drive(run2, settings.workers, clock, done1, on_progress and (lambda p: on_progress("step 2", p)))
        r2 = round_results(run2)
        arms2r = {a["label"]: a for a in r2["arms"]}
        step2 = []
        for who, c, phi in plan:
            label = "base@phi0" if c is None else c.label(phi)
            a = arms2r[label]
            step2.append({"coefficients": who, "phi": phi, **(asdict(c) if c else {"alpha": 1.0, "beta": 1.0,
                                                                                    "gamma": 1.0}),
                          "spec": a["model"], "input_size": a.get("input_size"), "params": a.get("params"),
                          "macs": a.get("macs"), **_accuracy(a)})
        result["step2"] = {"status": "complete" if stopped is None and not r2["missing"] else "partial",
                           "rows": step2, "missing": r2["missing"]}
        errors2 = _per_seed(r2["trials"])
        if len(sets) > 1:  # step 2's phi = 1 is step 1's comparison again: said once
            result["versus"] = [v for v in result["versus"] if 1 not in options.phis]
            result["versus"] += [_versus(found.label(phi), Coefficients(*PAPER_COEFFICIENTS).label(phi), errors2,
                                         f"step 2, phi = {phi}") for phi in options.phis]
        result["trials"] += [{"round": "step2", **x} for x in r2["trials"]]
    result["stopped"] = stopped
    result["wall_s"] = clock.elapsed()
    return result


def _per_seed(trials: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each arm's validation errors, one per finished seed (the first finished trial of each key, as the engine
    counts them)."""
    seen, out = set(), {}
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["key"] not in seen and t.get("val_error") is not None:
            seen.add(t["key"])
            out.setdefault(t["arm"], []).append(t["val_error"])
    return out


def _versus(found: str, paper: str, errors: dict[str, list[float]], where: str) -> dict[str, Any]:
    """"found is better than paper" tested as the studies test an ordering (Welch's t-test at 5% on per-seed
    validation errors; archlab.studies.stats)."""
    from archlab.studies.stats import welch

    c = welch(errors.get(found, []), errors.get(paper, []), ("found", "paper"), "val_error", where).to_dict()
    return {"where": where, "found": found, "paper": paper, **c}


def _accuracy(arm: dict[str, Any]) -> dict[str, Any]:
    """Validation accuracy (%) as mean and standard deviation over the finished seeds (100 - the error)."""
    mean, std = arm.get("val_error_mean"), arm.get("val_error_std")
    return {"acc_mean": None if mean is None else 100.0 - mean, "acc_std": std, "seeds_done": arm.get("seeds_done"),
            "seeds": arm.get("seeds")}


def _is_paper(c: Coefficients) -> bool:
    return all(abs(x - y) < 1e-9 for x, y in zip((c.alpha, c.beta, c.gamma), PAPER_COEFFICIENTS))
