"""Effective receptive fields: how much of its theoretical receptive field a unit actually uses.

Luo et al. 2016, "Understanding the Effective Receptive Field in Deep Convolutional Neural Networks"
(arXiv:1701.04128): the input pixels that can influence a unit (its theoretical receptive field, what
:func:`archlab.analysis.stage_trace` reports) do not influence it equally. The gradient of the unit with respect to
the input is roughly Gaussian, concentrated in the middle, and its spread grows only like the square root of the
depth, so the *effective* receptive field is a fraction of the theoretical one; training and skip connections
change it.

Measured here directly: for each stage output of a model, the centre unit (summed over channels) is
back-propagated to the input, ``|d unit / d input|`` is summed over colour channels and averaged over a few
random inputs, and the effective size is the side of the smallest centred square that holds ``mass`` (default
95%) of that gradient. Real forward and backward passes (CPU), not the meta device: the gradient needs numbers.
The weights are the model's as built (archlab's initialisation) unless you pass a model that holds others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class StageERF:
    """One stage output: theoretical receptive field (clipped to the image) and the effective one."""

    stage: str
    module: str
    resolution: tuple[int, int]
    theoretical: int  # side in input pixels, clipped to the input
    effective: int  # side of the centred square holding ``mass`` of the input gradient
    centre: tuple[float, float]  # (row, column) of the gradient's centre of mass in the input: where the unit looks
    gradient: list[list[float]] = field(repr=False, default_factory=list)  # normalised |gradient| map, for plots
    # The unit also sees the whole image through a global pool (squeeze-and-excitation): its gradient reaches past
    # the theoretical (local) field, so the effective field may exceed it (``fraction`` > 1).
    global_context: bool = False

    @property
    def fraction(self) -> float:
        """Effective over theoretical area: how much of its window a unit really uses."""
        return (self.effective / self.theoretical) ** 2 if self.theoretical else float("nan")


@dataclass(frozen=True)
class EffectiveRF:
    name: str
    input_size: int
    mass: float
    samples: int
    stages: list[StageERF]

    def to_dict(self, with_maps: bool = False) -> dict[str, Any]:
        stages = []
        for s in self.stages:
            d = asdict(s)
            d["fraction"] = s.fraction
            if not with_maps:
                d.pop("gradient")
            stages.append(d)
        return dict(name=self.name, input_size=self.input_size, mass=self.mass, samples=self.samples, stages=stages)


def centre_of_mass(weights: torch.Tensor) -> tuple[float, float]:
    """(row, column) of a non-negative 2-D map's centre of mass."""
    weights = weights.double()
    total = float(weights.sum())
    ys = torch.arange(weights.shape[0], dtype=torch.float64)
    xs = torch.arange(weights.shape[1], dtype=torch.float64)
    return float((weights.sum(1) * ys).sum()) / total, float((weights.sum(0) * xs).sum()) / total


def centred_square_holding(weights: torch.Tensor, mass: float) -> int:
    """Side of the smallest square, centred on the map's centre of mass, whose sum is at least ``mass`` of the
    total (at most the map's size). The centre of mass is where the unit looks: with strides and padding that
    can be a pixel or two off the image centre, which a square fixed on the image centre would count as spread.
    """
    h, w = weights.shape
    weights = weights.double()
    total = float(weights.sum())
    if total <= 0:
        return 0
    cy, cx = centre_of_mass(weights)
    ys = torch.arange(h, dtype=torch.float64).sub(cy).abs()
    xs = torch.arange(w, dtype=torch.float64).sub(cx).abs()
    # Chebyshev distance of every pixel from the centre: a centred square of side s holds distance <= (s - 1) / 2.
    dist = torch.maximum(ys[:, None], xs[None, :])
    order = torch.argsort(dist.flatten(), stable=True)
    sorted_dist = dist.flatten()[order]
    cumulative = weights.flatten()[order].cumsum(0)
    # The first ring at which the cumulative mass is reached; include all pixels of that ring.
    reached = int(torch.nonzero(cumulative >= mass * total - 1e-12 * total)[0])
    radius = float(sorted_dist[reached])
    return min(int(round(2 * radius + 1)), max(h, w))


def effective_receptive_field(
    model_or_name: nn.Module | str,
    input_size: int | None = None,
    mass: float = 0.95,
    samples: int = 4,
    seed: int = 0,
    on_sample: Callable[[int], None] | None = None,
) -> EffectiveRF:
    """Effective receptive field of every stage output of an archlab model (see the module docstring).

    ``on_sample(i)`` is called after each random input's forward and backward passes (for a progress bar)."""
    from archlab.analysis.trace import stage_trace
    from archlab.models.base import FeatureExtractor
    from archlab.registry import create_from_spec, model_card, parse_model_spec

    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if isinstance(model_or_name, str):
        name = model_or_name
        size = input_size or model_card(parse_model_spec(name)[0]).input_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_from_spec(name)
    else:
        model = model_or_name
        card = getattr(model, "card", None)
        name = card.name if card is not None else type(model).__name__
        size = input_size or (card.input_size if card is not None else 224)
    trace = stage_trace(model, size)  # validates the size; theoretical fields from the graph
    extractor = FeatureExtractor(model).eval()
    in_chans = getattr(model, "in_chans", 3)
    generator = torch.Generator().manual_seed(seed)
    grads: list[torch.Tensor] | None = None
    for sample in range(samples):
        x = torch.randn(1, in_chans, size, size, generator=generator).requires_grad_(True)
        feats = extractor(x)
        units = [f[0, :, (f.shape[-2] - 1) // 2, (f.shape[-1] - 1) // 2].sum() for f in feats]
        per_stage = []
        for i, unit in enumerate(units):
            (g,) = torch.autograd.grad(unit, x, retain_graph=i < len(units) - 1)
            per_stage.append(g[0].abs().sum(0))
        grads = per_stage if grads is None else [a + b for a, b in zip(grads, per_stage)]
        if on_sample:
            on_sample(sample + 1)
    stages = []
    for s, g in zip(trace.stages[1:-1], grads or []):
        theoretical = int(min(s.receptive_field, size))
        peak = float(g.max())
        if peak <= 0:
            raise ValueError(f"{name}: the centre unit of {s.name} has no gradient with respect to the input")
        # Without global context the gradient is exactly zero outside the theoretical field, so the effective one
        # is never larger; the clip only absorbs the half-pixel of a centre of mass that falls between pixels.
        effective = min(centred_square_holding(g, mass), size if s.global_context else theoretical)
        stages.append(StageERF(s.name, s.module, s.resolution, theoretical, effective, centre_of_mass(g),
                               (g / peak).tolist(), s.global_context))
    return EffectiveRF(name, size, mass, samples, stages)
