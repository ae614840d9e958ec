"""Receptive field, effective stride and offset of every tensor a network computes, propagated through the real graph.

The arithmetic is that of Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill 2019) and Dumoulin & Visin, "A guide to convolution arithmetic" (arXiv:1603.07285). Per spatial axis a
feature map is described by three numbers (:class:`AxisRF`): the receptive-field ``size`` of one unit in input
pixels, the ``jump`` (effective stride: input pixels between neighbouring units) and ``start``, the centre of the
first unit's field in input pixel coordinates (pixel ``i``'s centre is ``i``). A k x k conv with stride s, padding p
and dilation d maps (size, jump, start) to (size + (k_eff-1)*jump, jump*s, start + ((k_eff-1)/2 - p)*jump) with
k_eff = d*(k-1)+1.

Instead of assuming a chain of layers, :class:`ReceptiveFieldTracker` is a ``TorchDispatchMode`` that sees every
aten op of a forward pass on meta tensors and keeps the geometry of each tensor it produces (by identity), so
multi-path graphs come out right: an op with several image-derived inputs (residual ``add``, DenseNet ``cat``)
covers the union of their fields, a reduction over a whole axis (global pooling, ``flatten`` before a linear layer)
covers the whole axis, and a map that only broadcasts into the output — the 1x1 squeeze-excitation gate that
scales every position — sets ``global_context`` instead of widening the local field: every unit then also depends on
the whole image, through a global average. The sizes reported are the theoretical ones, not clipped to the image.

The geometry is per tensor, the widest over its channels, so ops that only move channels need nothing of their own:
Inception's and SqueezeNet's branches are concatenated (the union of the branch fields), ShuffleNet's channel split
(``chunk``: each half keeps the input's field; the half that skips the branch rejoins by concatenation) and its
channel shuffle (a 5-D view, a transpose, a flatten: the same positions). A max-pool with ``ceil_mode`` only adds a
last unit whose window overhangs the map; the first unit, and so every unit's field, is placed as without it.
These are checked against gradient footprints in tests/test_inception.py and tests/test_shufflenet.py, and
Inception-v3's end-points against google-research/receptive_field's published table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from archlab.analysis.meta import (
    MetaFastPath,
    ModuleScopes,
    bind_args,
    meta_input,
    on_meta,
    pair,
    resolve_input_size,
    run_forward,
)

aten = torch.ops.aten


@dataclass(frozen=True)
class AxisRF:
    """Receptive field of a feature map along one axis: ``size``, ``jump`` (effective stride), ``start``."""

    size: float
    jump: float
    start: float

    @property
    def padding(self) -> float:
        """How many pixels the first unit's field reaches before pixel 0 (the effective padding)."""
        return (self.size - 1) / 2 - self.start

    def window(self, kernel: float, stride: float, padding: float, dilation: int = 1) -> "AxisRF":
        k_eff = dilation * (kernel - 1) + 1
        return AxisRF(self.size + (k_eff - 1) * self.jump, self.jump * stride,
                      self.start + ((k_eff - 1) / 2 - padding) * self.jump)

    def reduce(self, n: int) -> "AxisRF":
        """One unit that sees all ``n`` units of this axis (global pooling, flatten)."""
        return self.window(n, n, 0)

    def adaptive(self, n: int, out: int) -> "AxisRF":
        """Adaptive pooling of ``n`` units to ``out`` bins; uneven bins use the widest one (an upper bound)."""
        if n % out == 0:
            return self.window(n // out, n // out, 0)
        widest = max(math.ceil((i + 1) * n / out) - (i * n) // out for i in range(out))
        return self.window(widest, n / out, 0)

    def shift(self, units: float, step: int = 1) -> "AxisRF":
        """Start ``units`` later and keep every ``step``-th unit (padding is a negative shift, slicing a positive)."""
        return AxisRF(self.size, self.jump * step, self.start + units * self.jump)


def union(fields: list[AxisRF]) -> AxisRF:
    """The field of a unit that depends on the same position of several maps: the union of their intervals."""
    lo = min(f.start - (f.size - 1) / 2 for f in fields)
    hi = max(f.start + (f.size - 1) / 2 for f in fields)
    return AxisRF(hi - lo + 1, max(f.jump for f in fields), (lo + hi) / 2)


@dataclass(frozen=True)
class Geometry:
    """Receptive field of every unit of a tensor along the image's height and width."""

    h: AxisRF
    w: AxisRF
    global_context: bool = False

    @property
    def size(self) -> tuple[float, float]:
        return (self.h.size, self.w.size)

    @property
    def stride(self) -> tuple[float, float]:
        return (self.h.jump, self.w.jump)

    @property
    def start(self) -> tuple[float, float]:
        return (self.h.start, self.w.start)

    @property
    def padding(self) -> tuple[float, float]:
        """Effective padding: how far the first unit's field reaches before pixel 0, along (H, W)."""
        return (self.h.padding, self.w.padding)

    def map(self, fn_h, fn_w) -> "Geometry":
        return Geometry(fn_h(self.h), fn_w(self.w), self.global_context)

    def to_dict(self) -> dict[str, Any]:
        return dict(size=list(self.size), stride=list(self.stride), start=list(self.start),
                    padding=list(self.padding), global_context=self.global_context)


IMAGE = Geometry(AxisRF(1, 1, 0), AxisRF(1, 1, 0))


def spatial(t: torch.Tensor) -> tuple[int, int] | None:
    """(H, W) of an image-like tensor (N, C, H, W, or a 5-D channel-shuffle view); None for vectors."""
    return (int(t.shape[-2]), int(t.shape[-1])) if t.ndim >= 4 else None


_WINDOWED = {aten.convolution, aten.max_pool2d_with_indices, aten.max_pool2d, aten.avg_pool2d}
_ADAPTIVE = {aten._adaptive_avg_pool2d, aten.adaptive_avg_pool2d, aten.adaptive_max_pool2d}
_REDUCTIONS = {aten.mean, aten.sum, aten.amax, aten.amin}
_VIEWS = {getattr(aten, n) for n in ("view", "_unsafe_view", "reshape", "flatten", "squeeze", "unsqueeze")}


class ReceptiveFieldTracker(TorchDispatchMode):
    """Give every tensor computed from ``image`` its :class:`Geometry` (see the module docstring).

    Ops it cannot model along a spatial axis (upsampling, transposed convolution) give their output no geometry
    and are listed in ``unsupported``.
    """

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self._geometry: dict[int, tuple[torch.Tensor, Geometry | None]] = {id(image): (image, IMAGE)}
        self.unsupported: set[str] = set()

    def geometry_of(self, t: Any) -> Geometry | None:
        """Geometry of a tensor (the first tensor of a tuple/list), None if it does not derive from the image."""
        tensors = [x for x in tree_flatten(t)[0] if isinstance(x, torch.Tensor)]
        if not tensors or id(tensors[0]) not in self._geometry:
            return None
        return self._geometry[id(tensors[0])][1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [(t, self._geometry[id(t)][1]) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and id(t) in self._geometry]
        if not inputs:
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return out
        geometry = None if any(g is None for _, g in inputs) else self._propagate(func, args, kwargs, inputs, outs[0])
        for t in outs:
            if t.ndim == outs[0].ndim:
                self._geometry[id(t)] = (t, geometry)
        return out

    def _propagate(self, func, args, kwargs, inputs, out: torch.Tensor) -> Geometry | None:
        packet = func._overloadpacket
        x, geometry = inputs[0]
        in_hw, out_hw = spatial(x), spatial(out)
        if packet in _WINDOWED:
            bound = bind_args(func, args, kwargs)
            if bound.get("transposed"):
                self.unsupported.add(str(packet))
                return None
            kernel = tuple(bound["weight"].shape[-2:]) if packet is aten.convolution else pair(bound["kernel_size"])
            stride = pair(bound.get("stride") or kernel)
            padding, dilation = pair(bound.get("padding", 0)), pair(bound.get("dilation", 1))
            return Geometry(*(getattr(geometry, a).window(kernel[i], stride[i], padding[i], dilation[i])
                              for i, a in enumerate("hw")), geometry.global_context)
        if packet in _ADAPTIVE:
            return Geometry(geometry.h.adaptive(in_hw[0], out_hw[0]), geometry.w.adaptive(in_hw[1], out_hw[1]),
                            geometry.global_context)
        if packet in _REDUCTIONS and in_hw is not None:
            dims = bind_args(func, args, kwargs).get("dim") or range(x.ndim)
            dims = {d % x.ndim for d in ([dims] if isinstance(dims, int) else dims)}
            h = geometry.h.reduce(in_hw[0]) if x.ndim - 2 in dims else geometry.h
            w = geometry.w.reduce(in_hw[1]) if x.ndim - 1 in dims else geometry.w
            return Geometry(h, w, geometry.global_context)
        if packet is aten.constant_pad_nd:
            pad = list(bind_args(func, args, kwargs)["pad"]) + [0, 0, 0, 0]
            return geometry.map(lambda a: a.shift(-pad[2]), lambda a: a.shift(-pad[0]))
        if packet is aten.slice and in_hw is not None:
            bound = bind_args(func, args, kwargs)
            dim = bound.get("dim", 0) % x.ndim
            if dim in (x.ndim - 2, x.ndim - 1):
                begin = bound.get("start") or 0
                begin = begin + x.shape[dim] if begin < 0 else begin
                shifted = lambda a: a.shift(begin, bound.get("step", 1))  # noqa: E731
                return geometry.map(shifted, lambda a: a) if dim == x.ndim - 2 else geometry.map(lambda a: a, shifted)
        if packet in _VIEWS and in_hw is not None and in_hw != out_hw:
            return geometry.map(lambda a: a.reduce(in_hw[0]), lambda a: a.reduce(in_hw[1]))
        return self._combine(packet, inputs, out_hw)

    def _combine(self, packet, inputs, out_hw) -> Geometry | None:
        """Elementwise ops, concatenation, matmuls: each output unit sees the same position of every input."""
        per_axis: list[list[AxisRF]] = [[], []]
        global_context = any(g.global_context for _, g in inputs)
        for t, g in inputs:
            hw = spatial(t) or (1, 1)
            for axis, name in enumerate("hw"):
                if out_hw is None or hw[axis] == out_hw[axis]:
                    per_axis[axis].append(getattr(g, name))
                elif hw[axis] == 1:
                    global_context = True  # a single value broadcast to every position (the SE gate)
                else:
                    self.unsupported.add(str(packet))
                    return None
        if not per_axis[0] or not per_axis[1]:
            return None
        return Geometry(union(per_axis[0]), union(per_axis[1]), global_context)


def receptive_fields(
    model_or_name: nn.Module | str, input_size: int | tuple[int, int] | None = None
) -> dict[str, Geometry | None]:
    """Geometry of the output of every module (its last call), in the order modules finish; '' is the model."""
    with on_meta(model_or_name) as (model, name):
        size = resolve_input_size(model, input_size)
        x = meta_input(model, size)
        model.eval()
        tracker = ReceptiveFieldTracker(x)
        found: dict[str, Geometry | None] = {}
        with ModuleScopes(model, [lambda n, out: found.__setitem__(n, tracker.geometry_of(out))]):
            with torch.no_grad(), MetaFastPath(), tracker:
                run_forward(model, x, name)
        return found
