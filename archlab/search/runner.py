"""How every search trains its candidates: as design-study trials, on the engine of :mod:`archlab.studies`.

A search round is a :class:`~archlab.studies.study.Study` whose arms are the round's candidates (model specs); the
engine (:class:`~archlab.studies.engine.StudyRun`) runs it with everything a study has: Optuna storage (SQLite in
the search folder, or ``--storage URL``), ``--workers`` processes, trials resumed exactly from their checkpoints,
duplicates pruned, divergence recorded. The round's study travels to the worker processes as a study file
(:func:`study_toml`, read back by :func:`archlab.studies.files.study_from_toml`), so no second engine exists.

:func:`drive` adds what a search needs on top: a bound on the number of trials (``--trials``) and on the wall time
(``--time-limit``). A trial running when the time is up is stopped after its current step with a checkpoint, as by
Ctrl-C, and the next run of the same command resumes it; a search stopped early reports what it has.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archlab.studies.engine import StudyRun
from archlab.studies.plan import Settings
from archlab.studies.study import Study, StudyError


class SearchError(ValueError):
    """A search that cannot run as given (a grid without a point, a base that does not build ...): one line."""


@dataclass(frozen=True)
class SearchSettings:
    """What every search sub-command shares: budget, data, storage, workers and the two bounds."""

    budget: str = "quick"
    data: str = "digits"
    data_fraction: float | None = None
    epochs: int | None = None  # None: the budget's
    seeds: int | None = None  # seeds per candidate; None: the budget's
    workers: int = 1
    storage: str | None = None  # None: OUT/study.db (SQLite)
    trials: int | None = None  # at most this many finished trials (compound, space) or candidates (mnas)
    time_limit_s: float | None = None
    device: str | None = None

    def engine(self) -> Settings:
        return Settings(budget=self.budget, data=self.data, epochs=self.epochs, data_fraction=self.data_fraction,
                        device=self.device)

    def fingerprint_fields(self) -> dict[str, Any]:
        """Settings that change results (the bounds and the workers do not)."""
        return {"budget": self.budget, "data": self.data, "data_fraction": self.data_fraction,
                "epochs": self.epochs, "seeds": self.seeds}


class Clock:
    """The search's two bounds, counted from the start of this command: ``reason(done)`` says why to stop (or
    None)."""

    def __init__(self, settings: SearchSettings) -> None:
        self.started = time.time()
        self.trials, self.limit = settings.trials, settings.time_limit_s

    def elapsed(self) -> float:
        return time.time() - self.started

    def out_of_time(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit

    def reason(self, done: int) -> str | None:
        if self.out_of_time():
            return f"time limit ({self.limit:g} s) reached"
        if self.trials is not None and done >= self.trials:
            return f"trial bound (--trials {self.trials}) reached"
        return None


# ------------------------------------------------------------------------------------------------ study files


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string (same escapes)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def study_toml(study: Study) -> str:
    """The study as a study file (docs/studies.md), which the engine's worker processes read back exactly."""
    s = study.source
    lines = [f"name = {_toml_value(study.name)}", f"claim = {_toml_value(study.claim)}",
             f"seeds = {_toml_value(list(study.seeds))}", f"metric = {_toml_value(study.metric)}",
             f"notes = {_toml_value(study.notes)}",
             "source = " + _toml_value({"paper": s.paper, "arxiv": s.arxiv, "where": s.where, "figures": s.figures,
                                        "metric": s.metric}),
             "budgets = " + _toml_value({k: dict(v) for k, v in study.budgets.items()})]
    for arm in study.arms:
        lines += ["", "[[arms]]", f"label = {_toml_value(arm.label)}", f"model = {_toml_value(arm.model)}",
                  f"recipe = {_toml_value(dict(arm.recipe))}", f"budgets = {_toml_value(list(arm.budgets))}"]
        if arm.published is not None:
            lines.append(f"published = {_toml_value(arm.published)}")
    return "\n".join(lines) + "\n"


def open_round(study: Study, settings: SearchSettings, out: Path) -> StudyRun:
    """The engine's run of one round, in the search folder (trials in OUT/trials/ARM/seedN, storage shared by every
    round of the search)."""
    text = study_toml(study)
    try:
        return StudyRun(study, settings.engine(), out, settings.storage,
                        {"toml": text, "file": f"{study.name} (archlab search)"})
    except StudyError as exc:
        raise SearchError(str(exc)) from None


# ------------------------------------------------------------------------------------------------------ driving


def drive(run: StudyRun, workers: int, clock: Clock, done_before: int = 0,
          on_progress: Callable[[dict[str, Any]], None] | None = None) -> str | None:
    """Run the round's trials until none is left (returns None) or a bound or Ctrl-C stops it (returns why).

    ``done_before``: trials finished in earlier rounds of this search, counted against ``--trials``. In this
    process (``workers == 1``) SIGINT and SIGTERM are caught while no trial trains, so that a stop never lands inside
    a database write; during a trial the training loop's own handler checkpoints and stops it. At the time limit
    the running trial gets SIGTERM (each second until it stops: the first may land before its loop listens), as do
    worker processes, whose training loop treats it the same way.
    """
    run.enqueue_missing()
    if clock.reason(done_before + run.progress()["done"]):
        return clock.reason(done_before + run.progress()["done"])
    if workers > 1:
        return _drive_workers(run, workers, clock, done_before, on_progress)
    stop, state = threading.Event(), {"reason": None, "training": False}
    # Signals reach the training loop only in the main thread; elsewhere a time limit waits for the trial to end.
    can_signal = threading.current_thread() is threading.main_thread()

    def on_trial(event: str, key: str) -> None:
        state["training"] = event == "start"
        if event != "start":
            reason = clock.reason(done_before + run.progress()["done"])
            if reason:
                state["reason"] = reason
                stop.set()

    def stop_trial() -> None:
        # Only to a Python handler (the training loop's, or ours between trials): a SIGTERM that landed while the
        # default action was in place (a race at a handler hand-over) would kill this process, report unwritten.
        if callable(signal.getsignal(signal.SIGTERM)):
            os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        timed_out = False
        while True:
            if timed_out:  # until the running trial has stopped: the first signal may land before it listens
                time.sleep(1.0)
                if not state["training"] or not can_signal:
                    return
                stop_trial()
                continue
            if stop.wait(1.0):
                return
            progress = run.progress()
            if on_progress:
                on_progress(progress)
            if clock.out_of_time():
                state["reason"] = state["reason"] or clock.reason(done_before + progress["done"])
                stop.set()
                timed_out = True
                if state["training"] and can_signal:
                    stop_trial()  # the training loop checkpoints and stops

    def on_signal(signum: int, frame: Any) -> None:
        state["reason"] = state["reason"] or "interrupted"
        stop.set()

    previous = {sig: _install(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run.work(stop=stop, on_trial=on_trial)
    except KeyboardInterrupt:
        state["reason"] = state["reason"] or "interrupted"
    except Exception as exc:
        from archlab.train.loop import TrainingInterrupted

        if not isinstance(exc, TrainingInterrupted):
            raise
        state["reason"] = state["reason"] or "interrupted"
    finally:
        state["training"] = False
        stop.set()
        watcher.join()
        for sig, handler in previous.items():
            _install(sig, handler)
    if on_progress:
        on_progress(run.progress())
    return state["reason"]


def _drive_workers(run: StudyRun, workers: int, clock: Clock, done_before: int,
                   on_progress: Callable[[dict[str, Any]], None] | None) -> str | None:
    reason = None

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal reason
        reason = reason or "interrupted"

    previous = _install(signal.SIGINT, on_sigint)
    procs = run.spawn_workers(workers)
    try:
        stopping = False
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            progress = run.progress()
            if on_progress:
                on_progress(progress)
            reason = reason or clock.reason(done_before + progress["done"])
            if reason and not stopping:
                stopping = True
                for p in procs:  # SIGTERM: a training trial checkpoints and is enqueued again
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
    finally:
        for p in procs:
            p.wait()
        _install(signal.SIGINT, previous)
    if on_progress:
        on_progress(run.progress())
    return reason


def _install(sig: int, handler: Any) -> Any:
    """signal.signal where it can be (the main thread); elsewhere nothing changes and None is returned."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(sig, handler)


def round_results(run: StudyRun) -> dict[str, Any]:
    """The engine's results of a round (:func:`archlab.studies.results.collect`): every trial and, per arm,
    params, MACs and the validation error as mean and standard deviation over its finished seeds."""
    from archlab.studies.results import collect

    try:
        return collect(run)
    except StudyError as exc:
        raise SearchError(str(exc)) from None


def write_json(path: Path, obj: Any) -> None:
    from archlab.train.checkpoint import atomic_write_text

    atomic_write_text(Path(path), json.dumps(obj, indent=1, default=str) + "\n")
