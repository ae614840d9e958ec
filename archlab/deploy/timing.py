"""Deployment runtimes timed side by side (``archlab bench --runtime ...``): each given the same weights and input,
each in its own process by default, in alternated blocks, with its outputs compared to float32 eager PyTorch's.

Why processes: ONNX Runtime's and OpenVINO's worker threads spin after each call (one measurement each on this
project's machine, batch-1 MobileNetV2: in the 200 ms after a call ONNX Runtime's process used 25 ms of CPU time,
OpenVINO's 1 ms, PyTorch's OpenMP pool 8 ms), which in one process steals the cores from whatever runs next;
turning ONNX Runtime's spinning off instead made that call 3x slower on the loaded machine (docs/deployment.md).
In processes of their own, each runtime keeps the thread pool its library sets up, and the untimed step that
starts each block absorbs what the previous block's pool leaves spinning. How each runtime is prepared is
:mod:`archlab.deploy.runtimes`.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from archlab.bench import Contender, build_named, summarize
from archlab.deploy.memory import keep_freed_memory

# In the fused runtime's own process, freed memory is kept for reuse (archlab.deploy.memory: as ONNX Runtime's and
# OpenVINO's arenas do), unless this variable is 0 in that process's environment (the caller's, or a pair's own:
# a benchmark's A/B).
KEEP_MEMORY_VAR = "ARCHLAB_KEEP_FREED_MEMORY"
# Between two blocks of runtimes in their own processes, the cores are left idle this long: a runtime's pool keeps
# spinning after its last call (ONNX Runtime's for tens of ms), and the untimed step that starts each block did not
# absorb it. Measured: with ours, ours again and ONNX Runtime alternated, the form timed right after ONNX Runtime in
# every other round ran MobileNetV2 at batch 1 in 8.6 ms against 5.4 ms for the same form placed elsewhere.
IDLE_BETWEEN_BLOCKS_S = 0.25


@dataclass(frozen=True)
class RuntimeJob:
    """One runtime to time, everything it needs to build itself (in this process or a fresh one)."""

    runtime: str
    precision: str
    model: str
    state_path: str  # the weights every runtime loads (saved once by the caller)
    onnx_path: str | None  # the BatchNorm-folded ONNX file (ONNX Runtime, OpenVINO)
    batch: int
    size: int
    in_chans: int
    device: str
    threads: int
    warmup: int
    spinning: bool
    seed: int = 0
    env: tuple[tuple[str, str], ...] = ()  # environment variables of its process (e.g. OpenMP's wait policy)
    keep_memory: bool = False  # call keep_freed_memory() first, unless KEEP_MEMORY_VAR=0 (a process of its own)


def trained_like_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affine terms drawn at random, as a trained network has them, so activations keep
    their scale (with the initial identity statistics MobileNet's and EfficientNet's logits are ~1e-9, and tiny
    values are not what a deployed network computes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def runtime_example(batch: int, in_chans: int, size: int, seed: int = 0) -> torch.Tensor:
    """The input every runtime of a run sees (a seeded draw, the same in every process)."""
    return torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(seed))


class _RuntimeRunner:
    """A runtime built, run once (its outputs kept for the comparison) and warmed up; ``time(n)`` times n steps."""

    def __init__(self, job: RuntimeJob) -> None:
        from archlab.deploy.runtimes import prepare

        torch.set_num_threads(job.threads)
        kept = job.keep_memory and os.environ.get(KEEP_MEMORY_VAR, "1") != "0" and keep_freed_memory()
        model = build_named(job.model)
        model.load_state_dict(torch.load(job.state_path, weights_only=True))
        model.eval()
        self.x = runtime_example(job.batch, job.in_chans, job.size, job.seed)
        self.prepared = prepare(job.runtime, model, self.x, job.precision, job.device, job.threads, job.onnx_path,
                                job.spinning)
        if kept:
            self.prepared.detail += ", freed memory kept for reuse (archlab.deploy.keep_freed_memory)"
        del model
        self.device = torch.device(job.device)
        self.output = self.prepared.run(self.x)  # torch.compile compiles here
        for _ in range(job.warmup):
            self.prepared.run(self.x)

    def time(self, n: int, settle: int = 1) -> list[float]:
        """Milliseconds of each of ``n`` steps, after ``settle`` untimed ones (the first step after another
        runtime's block meets cold caches and that runtime's thread pool still spinning down)."""
        for _ in range(settle):
            self.prepared.run(self.x)
        times = []
        for _ in range(n):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            self.prepared.run(self.x)  # outputs come back to the CPU: the step includes the copy
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def worker_main() -> None:
    """A worker process (``python -c "from archlab.deploy.timing import worker_main; worker_main()"``): read a
    :class:`RuntimeJob` on stdin, build the runtime, answer ('ready', outputs, detail), then time blocks on
    request. Messages are pickles on the original stdout; anything printed (by a native library too) goes to
    stderr, so it cannot corrupt them."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inbox = sys.stdin.buffer

    def send(message: tuple) -> None:
        pickle.dump(message, channel)
        channel.flush()

    job = pickle.load(inbox)
    try:
        runner = _RuntimeRunner(job)
        send(("ready", runner.output, runner.prepared.detail))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it as one line
        send(("error", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"))
        return
    while True:
        message = pickle.load(inbox)
        if message[0] != "time":
            break
        send(("times", runner.time(*message[1:])))


class _ProcessRunner:
    """The same interface as :class:`_RuntimeRunner`, the runtime living in a fresh interpreter of its own (a
    subprocess, not multiprocessing's spawn, which would re-run the caller's main script in the child)."""

    def __init__(self, job: RuntimeJob, log_dir: str) -> None:
        import subprocess

        import archlab

        root = str(Path(archlab.__file__).resolve().parents[1])  # the child imports this archlab
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               **dict(job.env)}
        self.log = open(os.path.join(log_dir, f"{job.runtime}-{job.precision}.log"), "w+b")  # noqa: SIM115
        # The interpreter starts (and imports torch) now, beside the other runtimes'; it builds its runtime only
        # when ready() sends it the job, one runtime at a time, so that a reported compile time is its own (seven
        # runtimes compiling at once on 2 cores had shown ResNet-50's 0.6 s oneDNN Graph compile as 10.3 s).
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from archlab.deploy.timing import worker_main; worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.job = job

    def _send(self, obj: object) -> None:
        pickle.dump(obj, self.process.stdin)
        self.process.stdin.flush()

    def _recv(self) -> tuple:
        try:
            return pickle.load(self.process.stdout)
        except EOFError:  # the worker died (out of memory, a crash in a runtime's native code)
            self.log.seek(0)
            lines = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
            raise RuntimeError(f"runtime {self.job.runtime} ({self.job.precision}): its process exited with code "
                               f"{self.process.wait(10)}{': ' + lines[-1].strip() if lines else ''}") from None

    def ready(self) -> None:
        """Send the job, and wait while the worker builds the runtime and runs it once."""
        self._send(self.job)
        status, *payload = self._recv()
        if status == "error":
            raise RuntimeError(f"runtime {self.job.runtime} ({self.job.precision}): {payload[0]}")
        self.output, detail = payload
        self.prepared = SimpleNamespace(detail=detail)

    def time(self, n: int, settle: int = 1) -> list[float]:
        self._send(("time", n, settle))
        return self._recv()[1]

    def close(self) -> None:
        try:
            self._send(("stop",))
            self.process.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(10)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it does not stop, so it is stopped
            self.process.kill()
            self.process.wait()
        self.log.close()


@dataclass
class RuntimeRun:
    """What :func:`bench_runtimes` measured: one row per (runtime, precision), and how it was timed."""

    rows: list[dict[str, Any]]
    timing: str


def bench_runtimes(name: str, pairs: list[tuple], batch: int, size: int, repeats: int = 20,
                   warmup: int = 5, device: str = "cpu", threads: int | None = None, isolate: bool = True,
                   rounds: int | None = None, on_block: Callable[[int], None] | None = None,
                   weights: Callable[[torch.nn.Module], None] | None = None) -> RuntimeRun:
    """Time model ``name`` (random weights, the same in every runtime) in each (runtime, precision) of ``pairs``
    (:func:`archlab.deploy.runtimes.check_runtimes`) at ``batch`` x ``size`` x ``size``. A pair may carry a third
    item, a dict of environment variables for that runtime's process (``isolate`` only): the same runtime twice,
    with and without ``OMP_WAIT_POLICY=PASSIVE``, is two entries.

    ``isolate``: each runtime in its own spawned process, with its thread pool as its library sets it up (ONNX
    Runtime spinning); else all in this process, ONNX Runtime's spinning off. Either way the ``repeats`` timed
    steps of each runtime are split into ``rounds`` blocks (default up to 5), run runtime after runtime with the
    order reversed every round, so that load drifting on a shared machine meets every runtime alike; each block
    starts with one untimed step. Each row: the step times' median, quartiles, images/s, and the max |diff| of
    its outputs from float32 eager PyTorch's on the same input, against :func:`agreement_tolerance`
    (``agrees``), and the share of the batch whose top-1 class is eager's (``top1_agree``). ``weights``, if given,
    changes the built model's weights in place before every runtime gets them (a benchmark's own draw).
    """
    import tempfile

    entries = [(p[0], p[1], dict(p[2]) if len(p) > 2 else {}) for p in pairs]
    if not isolate and any(env for *_, env in entries):
        raise ValueError("environment variables of a runtime apply to runtimes in their own processes")

    from archlab.deploy import fuse
    from archlab.deploy.export import export_onnx
    from archlab.deploy.runtimes import FUSED, agreement_tolerance

    threads = threads or torch.get_num_threads()
    rounds = max(1, min(rounds or 5, repeats))
    model = build_named(name).eval()
    if weights is not None:
        weights(model)
    in_chans = getattr(model, "in_chans", 3)
    x = runtime_example(batch, in_chans, size)
    with torch.inference_mode():
        reference = model(x).float()
    runners: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="archlab-runtimes-") as tmp:
        state_path = os.path.join(tmp, "weights.pt")
        torch.save(model.state_dict(), state_path)
        onnx_path = None
        if any(r in ("onnxruntime", "openvino") for r, _, _ in entries):
            onnx_path = os.path.join(tmp, "model.onnx")
            export_onnx(fuse(model), onnx_path, size)
        del model
        jobs = [RuntimeJob(r, p, name, state_path, onnx_path, batch, size, in_chans, device, threads, warmup,
                           spinning=isolate, env=tuple(sorted(env.items())),
                           keep_memory=isolate and r in FUSED)
                for r, p, env in entries]
        try:
            if isolate:
                runners = [_ProcessRunner(job, tmp) for job in jobs]  # started in parallel, built one at a time
                for runner in runners:
                    runner.ready()
            else:
                for job in jobs:
                    runners.append(_RuntimeRunner(job))
            times: list[list[float]] = [[] for _ in runners]
            blocks = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
            for i, n in enumerate(blocks):
                order = list(range(len(runners)))
                for k in order if i % 2 == 0 else order[::-1]:
                    if isolate and len(runners) > 1:
                        time.sleep(IDLE_BETWEEN_BLOCKS_S)  # the previous block's thread pool stops spinning
                    times[k] += runners[k].time(n)
                    if on_block:
                        on_block(n)
        finally:
            for runner in runners:
                if isinstance(runner, _ProcessRunner):
                    runner.close()
    scale = reference.abs().max().item()
    rows = []
    for (runtime, precision, env), runner, t in zip(entries, runners, times):
        summary = summarize(Contender(runtime, lambda: None, times_ms=t), batch)
        diff = (runner.output - reference).abs().max().item()
        tolerance = agreement_tolerance(precision, scale)
        top1 = (runner.output.argmax(-1) == reference.argmax(-1)).float().mean().item()
        rows.append(dict(model=name, input=size, runtime=runtime, precision=precision,
                         **{k: v for k, v in summary.items() if k not in ("impl", "channels_last", "fused")},
                         impl=" ".join([runtime] + ([precision] if precision != "fp32" else [])
                                       + [f"{k}={v}" for k, v in sorted(env.items())]),
                         env=env, max_abs_diff=diff, output_scale=scale, tolerance=tolerance,
                         agrees=diff <= tolerance, top1_agree=top1, detail=runner.prepared.detail))
    eager = next((r for r in rows if r["runtime"] == "eager" and r["precision"] == "fp32" and not r["env"]), None)
    for r in rows:
        r["speed_vs_eager"] = r["images_per_s"] / eager["images_per_s"] if eager else None
    how = (f"each runtime in its own process, the cores idle {IDLE_BETWEEN_BLOCKS_S * 1e3:.0f} ms between blocks"
           if isolate else
           "all runtimes in this process, ONNX Runtime's thread spinning off (OpenVINO has no switch)")
    timing = (f"{how}; {repeats} timed steps each in {rounds} alternated blocks (order reversed every round, one "
              f"untimed step before each block), after {warmup} warm-up steps; {threads} thread(s); medians")
    return RuntimeRun(rows, timing)
