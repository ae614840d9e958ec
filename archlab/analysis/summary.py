"""A per-layer table of a network: output shape, parameters, multiply-adds, share of the total, receptive field.

One forward pass on the meta device does everything: :class:`~archlab.analysis.profile.OpCounter` counts each aten
op into the innermost running module, :class:`~archlab.analysis.receptive_field.ReceptiveFieldTracker` follows the
geometry of every tensor, and module hooks note each module's output. Rows are the modules at ``depth`` (1: the
model's children) plus shallower modules without children, in the order they first run, so every convolution is in
exactly one row and the MAC shares add up to 100%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from archlab.analysis.meta import MetaFastPath, ModuleScopes, meta_input, on_meta, resolve_input_size, run_forward
from archlab.analysis.profile import OpCounter, Tally, count_params
from archlab.analysis.receptive_field import Geometry, ReceptiveFieldTracker


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int
    share: float  # of the model's total MACs, 0..1
    receptive_field: tuple[float, float] | None  # (H, W) in input pixels; None where it cannot be traced
    stride: tuple[float, float] | None  # effective stride (jump) in input pixels
    padding: tuple[float, float] | None = None  # effective padding: how far the first unit's field starts before 0
    global_context: bool = False  # the units also see the whole image through a global pool (SE gate)
    time_ms: float | None = None  # measured (see archlab.analysis.latency.with_times), median over forward passes
    time_share: float | None = None  # of the measured forward pass, 0..1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    name: str
    input_size: tuple[int, int]
    depth: int
    params: int
    macs: int
    rows: list[LayerRow]
    time_ms: float | None = None  # a whole forward pass, measured (see archlab.analysis.latency.with_times)
    time_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [r.to_dict() for r in self.rows]}


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def _frontier(started: list[str], depth: int) -> list[str]:
    """Modules at ``depth``, and shallower modules none of whose children ran, in first-run order.

    A module counts as run when one of its descendants ran: VGG's head runs ``classifier[:-1]``, a slice that is
    a new Sequential, so ``classifier`` itself is never called.
    """
    ran: list[str] = []
    for name in started:
        parts = name.split(".") if name else []
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in ran:
                ran.append(prefix)
    parents = {n.rsplit(".", 1)[0] if "." in n else "" for n in ran if n}
    return [n for n in ran if n and (_depth(n) == depth or (_depth(n) < depth and n not in parents))]


def owning_row(name: str, rows: set[str]) -> str | None:
    """The row a module's ops are counted in: itself or its nearest ancestor that is a row."""
    while name:
        if name in rows:
            return name
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return None


def summarize(
    model_or_name: nn.Module | str, input_size: int | tuple[int, int] | None = None, depth: int = 2
) -> Summary:
    """Per-layer rows of a model (or a registered name) at ``input_size`` (None: its card's), to ``depth`` levels."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    with on_meta(model_or_name) as (model, name):
        size = resolve_input_size(model, input_size)
        x = meta_input(model, size)
        model.eval()
        tracker = ReceptiveFieldTracker(x)
        seen: dict[str, tuple[tuple[int, ...] | None, Geometry | None]] = {}

        def observe(module_name: str, output: Any) -> None:
            first = output if isinstance(output, torch.Tensor) else next(
                (t for t in (output if isinstance(output, (tuple, list)) else ()) if isinstance(t, torch.Tensor)),
                None)
            shape = tuple(first.shape) if first is not None else None
            seen[module_name] = (shape, tracker.geometry_of(first) if first is not None else None)

        with ModuleScopes(model, [observe]) as scopes, torch.no_grad(), MetaFastPath(), OpCounter(scopes) as counter:
            with tracker:
                run_forward(model, x, name)
        modules = dict(model.named_modules())
        names = _frontier(scopes.started, depth)
        tallies: dict[str, Tally] = {n: Tally() for n in names}
        row_set = set(names)
        for module_name, tally in counter.by_module.items():
            owner = owning_row(module_name, row_set)
            if owner is not None:
                tallies[owner].add(tally)
        total = counter.total
        rows = []
        for n in names:
            if n not in seen:  # never called itself (a slice of it ran): the output of its last descendant
                n_last = [m for m in seen if m.startswith(n + ".")]
                seen[n] = seen[n_last[-1]] if n_last else (None, None)
            shape, geometry = seen[n]
            rows.append(LayerRow(
                name=n,
                type=type(modules[n]).__name__,
                output_shape=shape,
                params=sum(p.numel() for p in modules[n].parameters()),
                macs=tallies[n].macs,
                share=tallies[n].macs / total.macs if total.macs else 0.0,
                receptive_field=geometry.size if geometry else None,
                stride=geometry.stride if geometry else None,
                padding=geometry.padding if geometry else None,
                global_context=geometry.global_context if geometry else False,
            ))
        rest = total.macs - sum(r.macs for r in rows)
        if rest:  # ops run directly in a parent's forward (a functional conv, say)
            rows.append(LayerRow("(other)", "-", None, 0, rest, rest / total.macs, None, None))
        return Summary(name, size, depth, count_params(model)[0], total.macs, rows)
