"""The one engine every study runs on: trials (arm x seed, or a speed table) kept in Optuna's storage.

* The study's state is an Optuna study in a database: by default a SQLite file in the study folder
  (``OUT/study.db``); any SQLAlchemy URL (``--storage postgresql://...``) lets many machines work on one study.
  The trials are enqueued once, in seed-major order; a worker *claims* the next waiting trial with one atomic
  WAITING -> RUNNING update (the one Optuna's own ``ask`` makes), so no two workers ever hold the same trial.
* Nothing lost: a training trial is an ``archlab train`` run (:func:`archlab.train.loop.train`) in its own folder
  (``OUT/trials/ARM/seedN``) with checkpoints; a trial found there is resumed exactly from its checkpoint. A worker
  that is interrupted (SIGINT/SIGTERM) checkpoints, marks its trial failed and enqueues it again; one that dies
  (SIGKILL, a lost machine) stops sending heartbeats, and the next worker to look reclaims its trial at once when
  the dead process was on its own host, or after the grace period (Optuna's heartbeat) otherwise.
* Nothing twice: a claimed trial whose key (arm, seed) already finished elsewhere is pruned, not run, and the
  results count one finished trial per key (the first).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from archlab.studies.plan import Settings, data_name, plan_trials
from archlab.studies.study import BUDGETS, Study, StudyError, validate

HOST = socket.gethostname()
STUDY_FILE = "study.json"  # the folder's pointer to its storage and settings, for `archlab study show`


# Tries to open a storage whose schema another worker may be creating at the same moment (see open_storage).
SCHEMA_ATTEMPTS = 5


def open_storage(url: str, heartbeat_s: int, grace_s: int, on_stale: Callable[..., None]) -> Any:
    """An Optuna RDB storage with heartbeats; a URL that cannot be opened is a one-line StudyError."""
    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                  grace_period=grace_s, heartbeat_stale_trial_callback=on_stale)
        except (IntegrityError, ProgrammingError) as exc:
            # Optuna creates its tables when they are missing, and two workers starting at once on a fresh
            # PostgreSQL database both try (seen in tests/test_study_postgres.py: "duplicate key value violates
            # unique constraint pg_type_typname_nsp_index"); the one that lost finds them there on its next try.
            attempt += 1
            if attempt == SCHEMA_ATTEMPTS:
                raise _storage_error(url, exc) from None
            time.sleep(0.2 * attempt)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds; the user fixes the URL
            raise _storage_error(url, exc) from None


def _storage_error(url: str, exc: BaseException) -> StudyError:
    """The one-line error for a storage URL that cannot be opened: the first line of the cause, and for a missing
    database driver the module that is missing."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ImportError) and isinstance(cause, ImportError):
        hint = "; name the installed driver: postgresql+psycopg2://..." if url.startswith("postgresql:") else ""
        message += f" ({cause}{hint})"
    return StudyError(f"cannot open the study storage {url!r}: {message}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class StudyRun:
    """A study at one budget on one dataset, bound to its folder and storage.

    ``source`` says where the study comes from ({"builtin": name} or {"toml": text}), so that a worker process
    and ``archlab study show`` can rebuild it.
    """

    def __init__(self, study: Study, settings: Settings, out: str | os.PathLike[str], storage: str | None = None,
                 source: dict[str, Any] | None = None, heartbeat_s: int = 30, grace_s: int = 120) -> None:
        if settings.budget not in BUDGETS:
            raise StudyError(f"unknown budget {settings.budget!r}; known: {', '.join(BUDGETS)}")
        self.study, self.settings = validate(study), settings
        self.source = source or {"builtin": study.name}
        self.out = Path(out)
        _check_writable(self.out)
        self.storage_url = storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.plans = plan_trials(study, settings)
        if not self.plans:
            raise StudyError(f"study {study.name} has no trial at the {settings.budget} budget")
        self.by_key = {p.key: p for p in self.plans}
        self.fingerprint = study.fingerprint(**settings.fingerprint_fields())
        self.storage = open_storage(self.storage_url, heartbeat_s, grace_s, self._requeue_stale)
        self.name = f"{study.name}/{settings.budget}/{data_name(settings.data)}"
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self.optuna_study = self._open_study()
        self.started = time.time()

    # ------------------------------------------------------------------------------------------------ set-up

    def _open_study(self) -> Any:
        import optuna

        try:
            study = optuna.create_study(storage=self.storage, study_name=self.name, direction="minimize",
                                        load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - a database that refuses the schema, a locked file ...
            raise StudyError(f"cannot create the study in {self.storage_url!r}: {str(exc).splitlines()[0]}") from None
        attrs = study.user_attrs
        if "fingerprint" not in attrs:
            study.set_user_attr("fingerprint", self.fingerprint)
            study.set_user_attr("source", self.source)
            study.set_user_attr("settings", _jsonable(asdict(self.settings)))
        elif attrs["fingerprint"] != self.fingerprint:
            raise StudyError(f"{self.storage_url} already holds study {self.name} with other arms or settings "
                             f"({attrs.get('settings')}); use another --out (or --storage) for this one")
        self._write_pointer()
        return study

    def _write_pointer(self) -> None:
        pointer = {"study": self.name, "storage": self.storage_url, "fingerprint": self.fingerprint,
                   "source": self.source, "settings": _jsonable(asdict(self.settings))}
        (self.out / STUDY_FILE).write_text(json.dumps(pointer, indent=2) + "\n")

    def enqueue_missing(self) -> int:
        """Enqueue every planned trial that is neither finished, waiting, running, nor recorded as diverged (a
        divergence is a result: it would diverge again). Returns how many were enqueued."""
        from optuna.trial import TrialState

        seen: dict[str, list[Any]] = {}
        for t in self.optuna_study.get_trials(deepcopy=False):
            seen.setdefault(t.user_attrs.get("key", ""), []).append(t)
        added = 0
        for plan in self.plans:
            trials = seen.get(plan.key, [])
            if any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in trials):
                continue
            if any(str(t.user_attrs.get("failure", "")).startswith("diverged") for t in trials):
                continue
            self.optuna_study.enqueue_trial({}, user_attrs={"key": plan.key, "arm": plan.arm, "seed": plan.seed})
            added += 1
        return added

    # --------------------------------------------------------------------------------------------- claiming

    def _trials(self, *states: Any) -> list[Any]:
        return self.storage.get_all_trials(self.optuna_study._study_id, deepcopy=False, states=states or None)

    def claim(self) -> Any | None:
        """The next waiting trial, now RUNNING and ours; None when none is waiting."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in self._trials(TrialState.WAITING):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue  # another worker took it first
            except UpdateFinishedTrialError:
                continue
            self.storage.set_trial_system_attr(t._trial_id, "worker", {"host": HOST, "pid": os.getpid()})
            self.storage.record_heartbeat(t._trial_id)
            return self.storage.get_trial(t._trial_id)
        return None

    def _requeue(self, trial: Any, extra: dict[str, Any] | None = None) -> None:
        attrs = {k: trial.user_attrs[k] for k in ("key", "arm", "seed") if k in trial.user_attrs}
        self.optuna_study.enqueue_trial({}, user_attrs={**attrs, "retry_of": trial.number, **(extra or {})})

    def _requeue_stale(self, study: Any, trial: Any) -> None:  # Optuna's heartbeat callback
        self._requeue(trial)

    def reclaim_stale(self) -> int:
        """Fail and re-enqueue trials whose worker is gone: a dead process on this host at once, any other after
        the heartbeat grace period. Returns how many."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        count = 0
        for t in self._trials(TrialState.RUNNING):
            worker = t.system_attrs.get("worker") or {}
            pid = worker.get("pid")
            if worker.get("host") != HOST or pid in (None, os.getpid()) or _pid_alive(int(pid)):
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, "failure", f"worker lost (pid {pid} on {HOST} ended)")
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue  # another worker reclaimed it, or it finished after all
            self._requeue(t)
            count += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
            fail_stale_trials(self.optuna_study)
        return count

    # ---------------------------------------------------------------------------------------------- working

    def work(self, threads: int | None = None, stop: threading.Event | None = None,
             on_trial: Callable[[str, str], None] | None = None) -> int:
        """Run trials until none is waiting or running anywhere (a worker waits for the others' trials, to pick
        them up if their worker dies). Returns the number of trials this call ran."""
        from archlab.studies.trials import run_trial

        if threads:
            import torch

            torch.set_num_threads(threads)
        ran = 0
        self.enqueue_missing()
        while stop is None or not stop.is_set():
            self.reclaim_stale()
            trial = self.claim()
            if trial is None:
                from optuna.trial import TrialState

                if not self._trials(TrialState.RUNNING, TrialState.WAITING):
                    break
                time.sleep(min(2.0, self.heartbeat_s))
                continue
            key = trial.user_attrs.get("key", "")
            if key not in self.by_key or self._finished_elsewhere(trial, key):
                continue
            if on_trial:
                on_trial("start", key)
            beat = _Heartbeat(self.storage, trial._trial_id, self.heartbeat_s)
            try:
                outcome = run_trial(self, trial, self.by_key[key])
            except BaseException:
                beat.stop()
                self._finish(trial, "FAIL", {"failure": "interrupted"})
                self._requeue(trial)
                raise
            beat.stop()
            self._finish(trial, outcome.state, outcome.attrs, outcome.value)
            ran += 1
            if on_trial:
                on_trial(outcome.state.lower(), key)
        return ran

    def _finished_elsewhere(self, trial: Any, key: str) -> bool:
        """True (and the trial pruned) when its key finished in another trial, or runs in an older one (two
        workers that enqueued the same study at the same instant: the older trial wins)."""
        from optuna.trial import TrialState

        same = [t for t in self._trials(TrialState.COMPLETE, TrialState.RUNNING)
                if t.user_attrs.get("key") == key and t.number != trial.number]
        other = [t for t in same if t.state == TrialState.COMPLETE or t.number < trial.number]
        if other:
            self._finish(trial, "PRUNED", {"duplicate_of": other[0].number})
        return bool(other)

    def _finish(self, trial: Any, state: str, attrs: dict[str, Any], value: float | None = None) -> None:
        """Record attributes, then the final state; a trial reclaimed meanwhile (its heartbeat stalled) stays as
        the reclaimer left it, and its retry finds this trial's finished run folder."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(trial._trial_id, k, _jsonable(v))
            values = [value] if state == "COMPLETE" and value is not None else None
            self.storage.set_trial_state_values(trial._trial_id, TrialState[state], values)
        except UpdateFinishedTrialError:
            pass

    def spawn_workers(self, n: int) -> list[subprocess.Popen]:
        """Start ``n`` worker processes on this machine, the CPU threads split between them; each runs
        :meth:`work` on the same storage (python -m archlab.studies.worker)."""
        threads = max(1, (os.cpu_count() or 1) // n)
        payload = {"source": self.source, "settings": _jsonable(asdict(self.settings)), "out": str(self.out),
                   "storage": self.storage_url, "threads": threads, "heartbeat_s": self.heartbeat_s,
                   "grace_s": self.grace_s}
        path = self.out / "workers.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        return [subprocess.Popen([sys.executable, "-m", "archlab.studies.worker", str(path)], env=env)
                for _ in range(n)]

    # ------------------------------------------------------------------------------------------- progress

    def progress(self) -> dict[str, Any]:
        """Trials done / failed / running / left and an estimate of the time left (mean finished-trial time)."""
        from optuna.trial import TrialState

        trials = self._trials()
        done = {t.user_attrs.get("key") for t in trials if t.state == TrialState.COMPLETE}
        running = {t.user_attrs.get("key") for t in trials if t.state == TrialState.RUNNING} - done
        waiting = {t.user_attrs.get("key") for t in trials if t.state == TrialState.WAITING} - done - running
        failed = set(self.by_key) - done - running - waiting
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                     if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
        workers = max(1, len(running))
        eta = None
        if durations:
            eta = sum(durations) / len(durations) * (len(waiting) + 0.5 * len(running)) / workers
        return {"total": len(self.by_key), "done": len(done & set(self.by_key)), "running": len(running),
                "left": len(waiting), "failed": len(failed), "eta_s": eta, "elapsed_s": time.time() - self.started}


class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds from a daemon thread until stopped."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a database hiccup: the next beat tries again
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def reopen(folder: str | os.PathLike[str]) -> StudyRun:
    """The study run a folder holds (its ``study.json``), for ``archlab study show``."""
    from archlab.studies.files import study_from_source

    pointer_path = Path(folder) / STUDY_FILE
    if not pointer_path.is_file():
        raise StudyError(f"{folder} holds no study (no {STUDY_FILE}); run one with `archlab study NAME --out DIR`")
    try:
        pointer = json.loads(pointer_path.read_text())
        settings = dict(pointer["settings"])
    except (ValueError, KeyError) as exc:
        raise StudyError(f"{pointer_path}: unreadable ({exc})") from None
    settings["seeds"] = tuple(settings["seeds"]) if settings.get("seeds") else None
    return StudyRun(study_from_source(pointer["source"]), Settings(**settings), folder, pointer["storage"],
                    pointer["source"])


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
