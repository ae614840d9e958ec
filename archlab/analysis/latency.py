"""Measured time per layer: where a forward pass really spends its time on this machine, beside the
multiply-adds it is usually judged by.

MACs and latency part ways: a depthwise convolution does little arithmetic per byte it moves, so MobileNet's
depthwise layers take a far larger share of the time than of the multiply-adds. The summary table puts the two
shares side by side (``archlab summary NAME --time``).

Method: the real model (random weights: speed does not depend on their values) in eval mode, one input of
batch 1 by default, forward hooks timing every module call with ``time.perf_counter`` (CPU execution is
synchronous; on CUDA every hook synchronises, which costs a little). A row's time is the sum of the inclusive
times of its outermost called modules; time spent outside every row (a flatten in the model's own forward) is
``(other)``. One untimed warm-up pass, then passes until ``repeats`` are done or ``budget_s`` has elapsed
(at least 3); each figure is the median over the passes.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from archlab.analysis.summary import LayerRow, Summary, owning_row


def layer_times(
    model_or_name: nn.Module | str,
    rows: list[str],
    input_size: tuple[int, int],
    batch_size: int = 1,
    repeats: int = 10,
    budget_s: float = 5.0,
) -> tuple[dict[str, float], float]:
    """Median milliseconds per row (module names, as in a :class:`~archlab.analysis.summary.Summary`) and of the
    whole forward pass. Rows must not nest."""
    from archlab.registry import create_from_spec, model_card, parse_model_spec

    if isinstance(model_or_name, str):
        num_classes = model_card(parse_model_spec(model_or_name)[0]).num_classes
        model = create_from_spec(model_or_name, num_classes=num_classes)
    else:
        model = model_or_name
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(batch_size, getattr(model, "in_chans", 3), *input_size, device=device)
    row_set = set(rows)
    names = {m: n for n, m in model.named_modules()}
    starts: dict[str, list[float]] = defaultdict(list)
    inclusive: dict[str, float] = defaultdict(float)
    active: list[str] = []  # names of the modules running now, outermost first

    def pre(module: nn.Module, args: Any) -> None:
        sync()
        name = names[module]
        active.append(name)
        starts[name].append(time.perf_counter())

    def post(module: nn.Module, args: Any, output: Any) -> None:
        sync()
        name = names[module]
        elapsed = time.perf_counter() - starts[name].pop()
        active.pop()
        owner = owning_row(name, row_set)
        # Count only the outermost running module of each row: nested calls are inside its time already.
        if owner is not None and not any(owning_row(a, row_set) == owner for a in active):
            inclusive[owner] += elapsed

    handles = []
    for module in model.modules():
        if module is not model:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    per_row: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    try:
        with torch.no_grad():
            model(x)  # warm-up: allocator, oneDNN primitive caches
            began = time.perf_counter()
            while len(totals) < repeats and (len(totals) < 3 or time.perf_counter() - began < budget_s):
                inclusive.clear()
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                totals.append((time.perf_counter() - t0) * 1e3)
                for r in rows:
                    per_row[r].append(inclusive.get(r, 0.0) * 1e3)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {r: statistics.median(v) for r, v in per_row.items()}, statistics.median(totals)


def with_times(summary: Summary, model_or_name: nn.Module | str | None = None, batch_size: int = 1) -> Summary:
    """``summary`` with each row's measured time and share of a forward pass on this machine
    (:func:`layer_times`); ``model_or_name`` defaults to the summary's model name."""
    names = [r.name for r in summary.rows if r.name != "(other)"]
    times, total = layer_times(model_or_name or summary.name, names, summary.input_size, batch_size)
    rows = [replace(r, time_ms=times[r.name], time_share=times[r.name] / total) for r in summary.rows
            if r.name != "(other)"]
    other_macs = sum(r.macs for r in summary.rows if r.name == "(other)")
    rest = max(total - sum(times.values()), 0.0)
    # Time outside every row: ops in the model's own forward (flatten, a functional residual at the top).
    rows.append(LayerRow("(other)", "-", None, 0, other_macs, other_macs / summary.macs if summary.macs else 0.0,
                         None, None, time_ms=rest, time_share=rest / total))
    return replace(summary, rows=rows, time_ms=total, time_batch=batch_size)
