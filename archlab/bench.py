"""Speed and memory benchmarks of archlab models, interleaved with the reference implementations.

A *row* is one model at one batch size; its *contenders* (ours, torchvision's, timm's ...) are built once, warmed
up, then timed in turns — ours, theirs, ours, theirs — with the starting contender alternating from repeat to
repeat, so that a burst of load from a neighbour on a shared machine hits every contender alike rather than skewing
one of them. With ``--vs``, ours is given the reference's weights (both are built from the same seed), so that the
two compute the same function on the same numbers. Each repeat is one step: a forward pass (``infer``) or forward +
backward + SGD step (``train``). On CUDA a step is timed with CUDA events after a synchronize; on CPU with
``time.perf_counter``.

Peak memory per step: on CUDA, ``torch.cuda.max_memory_allocated`` during one step above what was allocated before
it, plus the model's own parameters and buffers; on CPU (Linux), the peak rise of the process RSS while one step
runs, sampled every 0.5 ms (activations and workspace; weights excluded); elsewhere ``None``.

The ``archlab bench`` command is :mod:`archlab.cli.bench`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


# Same architecture, another name in timm (where timm's name differs from ours).
TIMM_EQUIVALENT: dict[str, str] = {
    "mobilenet_v1": "mobilenetv1_100",
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
}
SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class Settings:
    """How every contender of a run is timed."""

    device: str = "cpu"
    mode: str = "infer"
    amp: str | None = None
    compile: bool = False
    input_size: int | None = None  # None: the model card's input_size
    repeats: int = 20
    warmup: int = 5
    precision: str = "fp32"  # 'bf16': weights and input cast to bfloat16 (the fused form: fuse(precision='bf16'))


@dataclass
class Contender:
    """One implementation in a row: ``label`` ('ours', 'torchvision:resnet50'), how to build it, its format."""

    label: str
    build: Callable[[], nn.Module]
    channels_last: bool = False
    fused: bool = False
    onednn: bool = True  # with fused, on CPU: conv + activation / residual add as oneDNN primitives
    is_ours: bool = False
    compiled: bool = False  # torch.compile this contender even when the row's Settings.compile is off
    times_ms: list[float] = field(default_factory=list)
    peak_bytes: int | None = None


def reference_for(name: str, source: str) -> str | None:
    """The reference of the same architecture in ``source`` ('torchvision' / 'timm'), as 'source:name'."""
    import archlab

    card = archlab.model_card(name)
    if card.reference_source == source:
        return card.reference
    if source == "torchvision":
        import torchvision

        return f"torchvision:{name}" if name in torchvision.models.list_models() else None
    if source == "timm":
        import timm

        candidate = TIMM_EQUIVALENT.get(name, name)
        return f"timm:{candidate}" if candidate in timm.list_models() else None
    raise ValueError(f"unknown reference source {source!r}; known: {', '.join(SOURCES)}")


def build_reference(reference: str, seed: int = 0) -> nn.Module:
    """A reference model ('torchvision:resnet50', 'timm:efficientnet_b0') with random weights drawn from
    ``seed`` (the global RNG is left as it was), so that two builds hold the same weights."""
    source, name = reference.split(":", 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "torchvision":
            import torchvision

            return torchvision.models.get_model(name, weights=None)
        if source == "timm":
            import timm

            return timm.create_model(name, pretrained=False)
    raise ValueError(f"unknown reference source {source!r}")


def build_ours(name: str, weights_from: str | None = None) -> nn.Module:
    """Our model ``name``; with ``weights_from`` ('torchvision:resnet50'), holding that reference's weights
    (the seeded build of :func:`build_reference`), so that ours and theirs compute the same function on the
    same numbers and only the implementations differ."""
    import archlab

    model = archlab.create_model(name)
    if weights_from is not None:
        source = weights_from.split(":", 1)[0]
        archlab.load_reference_weights(model, build_reference(weights_from).state_dict(), source=source)
    return model


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_heap() -> None:
    """Hand malloc's free pages back to the OS (glibc), so that a step's allocations show up as RSS growth
    instead of reusing pages kept since the warm-up."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_peak_rss_delta(step: Callable[[], None]) -> int | None:
    """Peak rise of the process RSS while ``step`` runs, sampled from a thread (torch ops release the GIL)."""
    base = _rss_bytes()
    if base is None:
        return None
    _release_free_heap()
    base = _rss_bytes() or base
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        step()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], _rss_bytes() or 0) - base)


class _Runner:
    """A built contender on its device with its input, optimizer and autocast context: ``step()`` runs once."""

    def __init__(self, c: Contender, s: Settings, batch: int, size: int) -> None:
        from archlab.deploy import fuse

        model = c.build()
        self.dev = torch.device(s.device)
        dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
        if c.fused:  # on CPU with oneDNN's conv + activation / residual-add primitives
            model = fuse(model, onednn=c.onednn and self.dev.type == "cpu", precision=s.precision)
        model = model.to(dtype)
        fmt = torch.channels_last if c.channels_last else torch.contiguous_format
        model = model.to(self.dev, memory_format=fmt)
        model.train(s.mode == "train")
        self.own_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        in_chans = getattr(model, "in_chans", 3)
        self.x = torch.randn(batch, in_chans, size, size, device=self.dev, dtype=dtype).contiguous(memory_format=fmt)
        compiled = s.compile or c.compiled
        self.model = torch.compile(model) if compiled else model
        self.train = s.mode == "train"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.amp or "")
        self.autocast = (lambda: torch.autocast(self.dev.type, dtype=dtype)) if dtype else contextlib.nullcontext
        if self.train:
            self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            self.scaler = torch.amp.GradScaler(self.dev.type, enabled=s.amp == "fp16" and self.dev.type == "cuda")
            self.target: torch.Tensor | None = None  # class indices, drawn once the head size is seen
        self.grad_ctx = contextlib.nullcontext if self.train else (torch.no_grad if compiled else torch.inference_mode)
        # Compiled inference with freezing: weights become constants that inductor folds and prepacks. Inductor
        # reads the flag when it compiles (the first step), not in torch.compile(), whose options= ignores it.
        self.inductor_ctx = contextlib.nullcontext
        if compiled and not self.train:
            import torch._inductor.config as inductor_config

            self.inductor_ctx = lambda: inductor_config.patch(freezing=True)

    def step(self) -> None:
        with self.inductor_ctx(), self.grad_ctx(), self.autocast():
            out = self.model(self.x)
            if not self.train:
                return
            logits = out if isinstance(out, torch.Tensor) else out[0]  # GoogLeNet/Inception: with auxiliary logits
            if self.target is None:
                self.target = torch.randint(0, logits.shape[-1], logits.shape[:1], device=self.dev)
            loss = self.model.training_loss(out, self.target) if hasattr(self.model, "training_loss") else \
                F.cross_entropy(logits.float(), self.target)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def timed_step(self) -> float:
        """Milliseconds of one step."""
        if self.dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.dev)
            start.record()
            self.step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        self.step()
        return (time.perf_counter() - t0) * 1e3

    def peak_memory(self) -> int | None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            before = torch.cuda.memory_allocated(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.step()
            torch.cuda.synchronize(self.dev)
            return torch.cuda.max_memory_allocated(self.dev) - before + self.own_bytes
        return _cpu_peak_rss_delta(self.step)


def bench_row(
    contenders: list[Contender],
    batch: int,
    settings: Settings,
    input_size: int,
    on_step: Callable[[], None] | None = None,
    measure_memory: bool = True,
) -> None:
    """Time every contender at ``batch``, interleaved; fills ``times_ms`` (and ``peak_bytes``) in place."""
    runners = [_Runner(c, settings, batch, input_size) for c in contenders]
    try:
        for r in range(settings.warmup + settings.repeats):
            # Alternate who goes first, so neither side always runs right after the other (caches, turbo).
            order = list(enumerate(runners)) if r % 2 == 0 else list(enumerate(runners))[::-1]
            for i, runner in order:
                ms = runner.timed_step()
                if r >= settings.warmup:
                    contenders[i].times_ms.append(ms)
                if on_step:
                    on_step()
        for c, runner in zip(contenders, runners):
            c.peak_bytes = runner.peak_memory() if measure_memory else None
    finally:
        del runners
        gc.collect()
        if settings.device == "cuda":
            torch.cuda.empty_cache()


def summarize(c: Contender, batch: int) -> dict[str, Any]:
    """Median, quartiles, min/max of a contender's step times, and its throughput."""
    t = sorted(c.times_ms)
    q1, _, q3 = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else (t[0], t[0], t[0])
    med = statistics.median(t)
    return dict(impl=c.label, batch=batch, median_ms=med, q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, min_ms=t[0],
                max_ms=t[-1], images_per_s=batch * 1e3 / med, peak_mem_bytes=c.peak_bytes, repeats=len(t),
                channels_last=c.channels_last, fused=c.fused)


def paired_ratio(theirs: Contender, ours: Contender) -> tuple[float, float, float]:
    """Speed ratio ours/theirs from interleaved steps: per repeat, theirs_ms / ours_ms of the two steps of that
    repeat; the median and quartiles over the repeats. Pairing cancels load that drifts during a run, which a
    ratio of two medians does not."""
    ratios = [t / o for t, o in zip(theirs.times_ms, ours.times_ms)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, mid, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return mid, q1, q3


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def write_report(lines: list[str], out: Path) -> None:
    """A benchmark script's Markdown report: written to ``out`` (folders made), printed, and its path logged."""
    from archlab.train.checkpoint import atomic_write_text

    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)  # an interrupted run leaves the previous report whole
    print(text)
    print(f"written to {out}", file=sys.stderr, flush=True)


def build_named(name: str) -> nn.Module:
    """A model by name: registered (a spec such as 'resnet50' or 'mobilenet_v2:width_mult=0.5') or a library's
    own ('timm:NAME', 'torchvision:NAME', seeded: :func:`build_reference`)."""
    import archlab

    if ":" in name and name.split(":", 1)[0] in SOURCES:
        return build_reference(name)
    return archlab.create_model(name)
