"""``archlab search mnas``: a latency-aware search of a mobile design space (Tan et al. 2018, "MnasNet:
Platform-Aware Neural Architecture Search for Mobile", arXiv:1807.11626).

The space is MnasNet's factorized hierarchical one (Sec. 4.1) on MnasNet-B1's six stages (:data:`SPACE`): each
stage picks its own depthwise kernel, expansion, number of layers (B1's -1, 0 or +1, as the paper's "0, +1, -1")
and squeeze-excitation, and the network a width multiplier. A candidate is a model spec every archlab command takes
(``mnasnet1_0:stages=k3e3r3-k5e6r2se-...,width_mult=0.5,bn_momentum=0.1``, :func:`archlab.models.mnasnet.parse_stages`).

Objectives: validation accuracy after a short training (a design-study trial) and the cost, latency measured on this
CPU (:mod:`archlab.search.latency`) or multiply-adds. Optuna's samplers propose candidates in batches (random, TPE,
NSGA-II with the batch as its population) and are told both objectives (the Pareto front), or MnasNet's scalar reward
ACC x (LAT / T)^w with w = -0.07 (Eq. 2, the soft constraint) when a target latency T is given.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from archlab.models.mnasnet import MNASNET_B1, MnasStage, stages_text
from archlab.search.runner import Clock, SearchError, SearchSettings, drive, open_round, round_results
from archlab.studies.plan import input_size_for
from archlab.studies.study import Arm, Source, Study

# Per stage: kernel, expansion, layers relative to B1, squeeze-excitation; and the width multiplier.
SPACE: dict[str, tuple[Any, ...]] = {
    "kernel": (3, 5, 7),
    "expand": (3, 6),
    "layers": (-1, 0, 1),
    "se": (False, True),
    "width_mult": (0.35, 0.5, 0.75, 1.0),
}
SAMPLERS = ("random", "tpe", "nsga2")
COSTS = ("latency", "macs")
REWARD_W = -0.07  # MnasNet Eq. 2: alpha = beta = -0.07
BN_MOMENTUM = 0.1  # a short proxy training needs BatchNorm statistics that follow the weights (B1's is 0.0003)
ANCHOR = f"mnasnet1_0:width_mult=0.5,bn_momentum={BN_MOMENTUM}"  # MnasNet-B1 at half width: the latency anchor
DEFAULT_TRIALS = 24
DEFAULT_BATCH = 8
INPUT_SIZE = {"*": 32}  # five stride-2 stages keep a 1x1 map at 32x32
# Quick: 4 epochs of AdamW at batch 32 (45 steps an epoch on digits; in a few epochs a mobile net learns digits
# faster so than with SGD at lr 0.1); paper: the paper's proxy training length, 5 epochs (Sec. 6: "fewer training
# steps (5 epochs)"), same optimizer. One seed per candidate.
_RECIPE = dict(batch_size=32, opt="adamw", lr=0.005, weight_decay=0.05, sched="cosine", warmup_epochs=0.5,
               label_smoothing=0.0, input_size=INPUT_SIZE)
BUDGETS = {"quick": {**_RECIPE, "epochs": 4}, "paper": {**_RECIPE, "epochs": 5}}
SEEDS = {"quick": 1, "paper": 1}
SOURCE = Source(paper="Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le 2018, MnasNet: Platform-Aware Neural "
                      "Architecture Search for Mobile", arxiv="1807.11626",
                where="Sec. 3 (objective, Eq. 2) and Sec. 4.1 (factorized hierarchical search space)",
                figures="reward ACC x (LAT/T)^w, w = -0.07; per-block kernel 3/5, SE 0/0.25, layers 0/+1/-1",
                metric="ImageNet top-1")


@dataclass(frozen=True)
class MnasOptions:
    sampler: str = "tpe"
    cost: str = "latency"
    target_ms: float | None = None  # given: MnasNet's scalar reward instead of two objectives
    batch: int = DEFAULT_BATCH
    w: float = REWARD_W


def check_options(o: MnasOptions) -> None:
    if o.sampler not in SAMPLERS:
        raise SearchError(f"unknown --sampler {o.sampler!r}; choose {', '.join(SAMPLERS)}")
    if o.cost not in COSTS:
        raise SearchError(f"unknown --cost {o.cost!r}; choose {', '.join(COSTS)}")
    if o.target_ms is not None and not 0 < o.target_ms < float("inf"):
        raise SearchError(f"--target-ms must be > 0 (MnasNet's target latency T), got {o.target_ms:g}")
    if o.target_ms is not None and o.cost != "latency":
        raise SearchError("--target-ms sets MnasNet's latency reward; it needs --cost latency")


def distributions() -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    d = {f"s{i}_{k}": CategoricalDistribution(SPACE[k]) for i in range(1, len(MNASNET_B1) + 1)
         for k in ("kernel", "expand", "layers", "se")}
    d["width_mult"] = CategoricalDistribution(SPACE["width_mult"])
    return d


def spec_of(params: dict[str, Any]) -> str:
    """The model spec of a point of the space."""
    stages = [MnasStage(params[f"s{i}_expand"], params[f"s{i}_kernel"], b1.stride, b1.channels,
                        max(1, b1.layers + params[f"s{i}_layers"]), bool(params[f"s{i}_se"]))
              for i, b1 in enumerate(MNASNET_B1, start=1)]
    return f"mnasnet1_0:stages={stages_text(stages)},width_mult={params['width_mult']},bn_momentum={BN_MOMENTUM}"


def reward(acc: float, latency_ms: float, target_ms: float, w: float = REWARD_W) -> float:
    """MnasNet's Eq. 2: ACC x (LAT / T)^w (accuracy as a fraction)."""
    return acc / 100.0 * (latency_ms / target_ms) ** w


def _sampler(o: MnasOptions, seed: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        if o.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if o.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=o.batch, multivariate=True,
                                              constant_liar=True)
        return optuna.samplers.NSGAIISampler(population_size=max(2, o.batch), seed=seed)


def _open(o: MnasOptions, settings: SearchSettings, out: Path) -> tuple[Any, str]:
    """The sampler's study (its own Optuna study in the search's storage), checked against the settings."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = f"search-mnas/{settings.budget}/{settings.data}"
    record = {"space": {k: list(v) for k, v in SPACE.items()}, "options": asdict(o), "anchor": ANCHOR,
              "settings": settings.fingerprint_fields(), "budget": BUDGETS[settings.budget]}
    fingerprint = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                 else {})
        directions = ["maximize"] if o.target_ms else ["maximize", "minimize"]
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds; the user fixes the URL
        raise SearchError(f"cannot open the search storage {url!r}: {str(exc).strip().splitlines()[0]}") from None
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("record", json.loads(json.dumps(record, default=str)))
    elif study.user_attrs["fingerprint"] != fingerprint:
        raise SearchError(f"{url} already holds search {name} with another space, sampler, cost or budget "
                          f"({study.user_attrs.get('record', {}).get('options')}); use another --out (or --storage)")
    return study, url


def _ask(study: Any, o: MnasOptions, k: int, size: int) -> None:
    """Ask the sampler for ``k`` candidates, one batch: each gets its spec, cost and batch number."""
    import optuna
    import torch

    from archlab.analysis import profile
    from archlab.registry import create_from_spec

    seeded = optuna.load_study(study_name=study.study_name, storage=study._storage,
                               sampler=_sampler(o, seed=len(study.get_trials(deepcopy=False))))
    asked = [seeded.ask(distributions()) for _ in range(k)]
    for t in asked:
        spec = spec_of(t.params)
        with torch.device("meta"):
            p = profile(create_from_spec(spec, num_classes=10), input_size=size, training_memory=False)
        for key, value in (("batch", asked[0].number), ("spec", spec), ("label", f"c{t.number:03d}"),
                           ("params", p.params), ("macs", p.macs)):
            t.set_user_attr(key, value)


def run_mnas(o: MnasOptions, settings: SearchSettings, out: Path,
             on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Ask, measure, train and tell batch after batch until the bounds; returns the results with the Pareto front
    (every finished candidate timed again, all in one interleaved session)."""
    from optuna.trial import TrialState

    from archlab.search import latency

    check_options(o)
    clock = Clock(settings)
    cap = settings.trials or (None if settings.time_limit_s else DEFAULT_TRIALS)
    study, url = _open(o, settings, out)
    size = input_size_for(INPUT_SIZE, settings.data) or 32
    seeds = settings.seeds or SEEDS[settings.budget]
    stopped, batches = None, 0
    while True:
        trials = study.get_trials(deepcopy=False)
        pending = [t for t in trials if t.state == TrialState.RUNNING]
        if not pending:
            stopped = clock.reason(-1) if clock.out_of_time() else None
            left = o.batch if cap is None else cap - len(trials)
            if stopped or left <= 0:
                break
            _ask(study, o, min(o.batch, left), size)
            continue
        batch_id = min(t.user_attrs["batch"] for t in pending)
        members = [t for t in pending if t.user_attrs["batch"] == batch_id]
        if o.cost == "latency" and any("latency" not in t.user_attrs for t in members):
            anchor, lats = latency.measure([t.user_attrs["spec"] for t in members], ANCHOR, size)
            if "anchor_ms" not in study.user_attrs:
                study.set_user_attr("anchor_ms", anchor.median_ms)
            for t, lat in zip(members, lats):
                study._storage.set_trial_user_attr(t._trial_id, "latency", lat.to_dict())
            members = [study._storage.get_trial(t._trial_id) for t in members]
        finished = {t.user_attrs["spec"]: t for t in trials if t.state == TrialState.COMPLETE}
        for t in [t for t in members if t.user_attrs["spec"] in finished]:  # sampled before: its result stands
            first = finished[t.user_attrs["spec"]]
            for key in ("acc", "acc_std"):
                study._storage.set_trial_user_attr(t._trial_id, key, first.user_attrs.get(key))
            study._storage.set_trial_user_attr(t._trial_id, "duplicate_of", first.number)
            study.tell(t.number, first.values, skip_if_finished=True)
        members = [t for t in members if t.user_attrs["spec"] not in finished]
        if not members:
            continue
        arms, label_of = [], {}
        for t in members:
            spec = t.user_attrs["spec"]
            if spec not in label_of:  # two asks of one network train once
                label_of[spec] = t.user_attrs["label"]
                arms.append(Arm(t.user_attrs["label"], spec))
        round_study = Study(name=f"search-mnas-batch{batch_id}", claim=f"candidates {len(arms)} of a {o.sampler} "
                            f"batch", source=SOURCE, arms=tuple(arms), seeds=tuple(range(seeds)), budgets=BUDGETS)
        run = open_round(round_study, settings, out)
        told = sum(1 for t in trials if t.state != TrialState.RUNNING)
        step = f"batch {batches + 1}: candidates {told}-{told + len(members)}" + (f" of {cap}" if cap else "")
        stopped = drive(run, settings.workers, Clock(SearchSettings(time_limit_s=_left(settings, clock))), 0,
                        on_progress and (lambda p: on_progress(step, p)))
        arms_done = {a["label"]: a for a in round_results(run)["arms"]}
        anchor_ms = study.user_attrs.get("anchor_ms")
        for t in members:
            a = arms_done[label_of[t.user_attrs["spec"]]]
            if a["seeds_done"] < a["seeds"] and stopped:
                continue  # not finished: the next run trains it on
            if not a["seeds_done"]:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                continue
            acc = 100.0 - a["val_error_mean"]
            study._storage.set_trial_user_attr(t._trial_id, "acc", acc)
            study._storage.set_trial_user_attr(t._trial_id, "acc_std", a["val_error_std"])
            cost = (t.user_attrs["latency"]["ratio"] * anchor_ms) if o.cost == "latency" else t.user_attrs["macs"]
            values = [reward(acc, cost, o.target_ms, o.w)] if o.target_ms else [acc, cost]
            study.tell(t.number, values, skip_if_finished=True)
        batches += 1
        if stopped:
            break
    return _results(study, o, settings, url, out, size, stopped, clock)


def _left(settings: SearchSettings, clock: Clock) -> float | None:
    return None if settings.time_limit_s is None else max(0.0, settings.time_limit_s - clock.elapsed())


def _results(study: Any, o: MnasOptions, settings: SearchSettings, url: str, out: Path, size: int,
             stopped: str | None, clock: Clock) -> dict[str, Any]:
    from optuna.trial import TrialState

    from archlab.plots import pareto_front
    from archlab.search import latency

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    specs = sorted({t.user_attrs["spec"] for t in done})
    final: dict[str, Any] = {}
    anchor = None
    if specs:  # one interleaved session for every finished candidate: the figures the front is drawn from
        anchor, lats = latency.measure(specs, ANCHOR, size)
        final = dict(zip(specs, lats))
    rows = []
    for t in sorted(done, key=lambda t: t.number):
        a, lat = t.user_attrs, final.get(t.user_attrs["spec"])
        row = {"number": t.number, "label": a["label"], "spec": a["spec"], "batch": a["batch"],
               "width_mult": t.params["width_mult"], "stages": a["spec"].split("stages=")[1].split(",")[0],
               "params": a["params"], "macs": a["macs"], "acc_mean": a.get("acc"), "acc_std": a.get("acc_std"),
               # On the anchor's scale: the median per-repeat ratio to the anchor (which cancels load that drifts
               # during the session) times the anchor's median; the spread is the ratio's quartiles likewise.
               "latency_ms": lat.ratio * anchor.median_ms if lat else None,
               "latency_q1_ms": lat.ratio_q1 * anchor.median_ms if lat else None,
               "latency_q3_ms": lat.ratio_q3 * anchor.median_ms if lat else None,
               "latency_raw_ms": lat.median_ms if lat else None, "latency_vs_anchor": lat.ratio if lat else None,
               "search_latency_ms": (a["latency"]["ratio"] * study.user_attrs["anchor_ms"]) if "latency" in a
               else None}
        if o.target_ms and lat:
            row["reward"] = reward(row["acc_mean"], row["latency_ms"], o.target_ms, o.w)
        rows.append(row)
    cost_key = "latency_ms" if o.cost == "latency" else "macs"
    usable = [r for r in rows if r.get(cost_key) is not None and r.get("acc_mean") is not None]
    front = [usable[i] for i in pareto_front([(r[cost_key], r["acc_mean"]) for r in usable])]
    for r in rows:
        r["pareto"] = r in front
    best = max((r for r in rows if "reward" in r), key=lambda r: r["reward"], default=None)
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in
              (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL)}
    return {
        "search": "mnas", "source": asdict(SOURCE), "options": asdict(o), "space": {k: list(v) for k, v in
                                                                                  SPACE.items()},
        "anchor": {"spec": ANCHOR, **(anchor.to_dict() if anchor else {})}, "input_size": size,
        "budget": settings.budget, "data": settings.data, "data_fraction": settings.data_fraction,
        "recipe": {**BUDGETS[settings.budget], **({"epochs": settings.epochs} if settings.epochs else {})},
        "seeds": settings.seeds or SEEDS[settings.budget], "storage": url, "out": str(out), "candidates": rows,
        "front": front, "cost_key": cost_key, "best_reward": best, "counts": counts, "stopped": stopped,
        "wall_s": clock.elapsed(), "machine": machine(),
    }


def machine() -> dict[str, Any]:
    """The machine a search ran on (the studies' record: platform, processor, torch, CPUs, threads)."""
    import os
    import platform

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
