"""Latency as a search measures it: batch 1 on one CPU thread (the paper's single phone core), in archlab's CPU
inference form (``fuse(model, onednn=True)``, channels-last), every candidate timed in turns with the others and
with an anchor network, repeat after repeat (:func:`archlab.bench.bench_row`), so that load from a neighbour on a
shared machine hits every candidate alike.

Candidates measured in different batches are put on one scale through the anchor: a candidate's latency is the
median over repeats of its time over the anchor's time *in the same repeat*, times the anchor's median of the first
batch. The final report times every finished candidate again, all in one interleaved session.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

REPEATS = 40
WARMUP = 8


@dataclass(frozen=True)
class Latency:
    """One model's batch-1 latency (ms) from interleaved repeats: median and quartiles of its own times, and of its
    per-repeat ratio to the anchor."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    ratio: float  # median of (this repeat's time / the anchor's in the same repeat)
    ratio_q1: float
    ratio_q3: float
    repeats: int

    def scaled_ms(self, anchor_ms: float) -> float:
        """On the anchor's scale: the ratio times the anchor's reference latency."""
        return self.ratio * anchor_ms

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, mid, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, mid, q3


def measure(specs: Sequence[str], anchor: str, input_size: int, num_classes: int = 10, repeats: int | None = None,
            warmup: int | None = None, threads: int = 1) -> tuple[Latency, list[Latency]]:
    """(the anchor's latency, each spec's), all timed in one interleaved session on this CPU with ``threads``
    threads (one by default: batch-1 latency of a small net on a shared machine is steadiest on one)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(specs, anchor, input_size, num_classes, REPEATS if repeats is None else repeats,
                        WARMUP if warmup is None else warmup)
    finally:
        torch.set_num_threads(previous)


def _measure(specs: Sequence[str], anchor: str, input_size: int, num_classes: int, repeats: int,
             warmup: int) -> tuple[Latency, list[Latency]]:
    from archlab.bench import Contender, Settings, bench_row
    from archlab.registry import create_from_spec

    def builder(spec: str):
        return lambda: create_from_spec(spec, num_classes=num_classes)

    contenders = [Contender(label, builder(spec), channels_last=True, fused=True, onednn=True)
                  for label, spec in [("anchor", anchor), *((f"c{i}", s) for i, s in enumerate(specs))]]
    bench_row(contenders, 1, Settings(device="cpu", mode="infer", repeats=repeats, warmup=warmup), input_size,
              measure_memory=False)
    base = contenders[0].times_ms
    out = []
    for c in contenders:
        q1, mid, q3 = _quartiles(c.times_ms)
        r1, rmid, r3 = _quartiles([t / b for t, b in zip(c.times_ms, base)])
        out.append(Latency(mid, q1, q3, rmid, r1, r3, len(c.times_ms)))
    return out[0], out[1:]
