"""Compound scaling (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
arXiv:1905.11946, section 3.3).

One coefficient ``phi`` scales a baseline network in all three dimensions at once::

    depth      d = alpha ** phi
    width      w = beta  ** phi
    resolution r = gamma ** phi        subject to  alpha * beta**2 * gamma**2 ≈ 2,  alpha, beta, gamma >= 1

FLOPs of a convolutional network grow linearly with depth and quadratically with width and resolution, so the
FLOPs grow by ``(alpha * beta**2 * gamma**2) ** phi ≈ 2 ** phi``. The paper's grid search on B0 found
alpha = 1.2, beta = 1.1, gamma = 1.15 (constraint value 1.92).

The released B1–B7 do *not* use these formula values: their (width, depth, resolution) come from a fixed table
in the reference code (:data:`RELEASED`). :func:`formula_vs_released` puts the two side by side; see
docs/scaling.md. :func:`archlab.analysis.scaling.scaling_table` measures both on real networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Resolutions from the formula are rounded to the nearest multiple of 8: at phi = 0 this gives the base 224
# unchanged, and every feature map down to stride 8 then has an integer size. (The released resolutions are
# multiples of 4: 240, 260, 300, ...; there is no published rounding rule, so this is our choice.)
RESOLUTION_MULTIPLE = 8


@dataclass(frozen=True)
class CompoundScaling:
    """The multipliers that compound scaling gives for one ``phi``."""

    phi: float
    alpha: float
    beta: float
    gamma: float
    depth_mult: float  # alpha ** phi: layers per stage are multiplied by this (then rounded up)
    width_mult: float  # beta ** phi: channels are multiplied by this (then rounded to a multiple of 8)
    resolution_exact: float  # base_resolution * gamma ** phi, before rounding
    resolution: int  # resolution_exact rounded to the nearest multiple of RESOLUTION_MULTIPLE
    constraint: float  # alpha * beta**2 * gamma**2, the paper's "≈ 2"
    flops_ratio: float  # constraint ** phi: expected FLOPs relative to the baseline


def _check_coefficient(name: str, value: float) -> None:
    # The paper's constraint: alpha, beta, gamma >= 1 (a multiplier that does not shrink the network).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{name} must be a finite number >= 1, got {value!r}")


def compound(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = 224,
) -> CompoundScaling:
    """Depth, width and resolution multipliers for compound coefficient ``phi`` (any real ``phi >= 0``).

    >>> s = compound(1)
    >>> round(s.depth_mult, 3), round(s.width_mult, 3), s.resolution, round(s.constraint, 4)
    (1.2, 1.1, 256, 1.9203)
    """
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi) or phi < 0:
        raise ValueError(f"phi (the compound coefficient) must be a finite number >= 0, got {phi!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        _check_coefficient(name, value)
    if isinstance(base_resolution, bool) or not isinstance(base_resolution, int) or base_resolution < 1:
        raise ValueError(f"base_resolution must be an integer >= 1, got {base_resolution!r}")
    exact = base_resolution * gamma**phi
    # Round half up (not Python's round-half-to-even), and never below one multiple.
    resolution = max(RESOLUTION_MULTIPLE, math.floor(exact / RESOLUTION_MULTIPLE + 0.5) * RESOLUTION_MULTIPLE)
    constraint = alpha * beta**2 * gamma**2
    return CompoundScaling(
        phi=float(phi),
        alpha=float(alpha),
        beta=float(beta),
        gamma=float(gamma),
        depth_mult=alpha**phi,
        width_mult=beta**phi,
        resolution_exact=exact,
        resolution=resolution,
        constraint=constraint,
        flops_ratio=constraint**phi,
    )


@dataclass(frozen=True)
class ReleasedScaling:
    """One row of the released EfficientNet table: multipliers applied to B0, input size, classifier dropout."""

    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


# The coefficients of the released EfficientNet-B0..B7: the reference TPU code's ``efficientnet_params`` table
# (width, depth, resolution, dropout), also used by torchvision and timm. They are not the formula's values.
RELEASED: dict[str, ReleasedScaling] = {
    "efficientnet_b0": ReleasedScaling(1.0, 1.0, 224, 0.2),
    "efficientnet_b1": ReleasedScaling(1.0, 1.1, 240, 0.2),
    "efficientnet_b2": ReleasedScaling(1.1, 1.2, 260, 0.3),
    "efficientnet_b3": ReleasedScaling(1.2, 1.4, 300, 0.3),
    "efficientnet_b4": ReleasedScaling(1.4, 1.8, 380, 0.4),
    "efficientnet_b5": ReleasedScaling(1.6, 2.2, 456, 0.4),
    "efficientnet_b6": ReleasedScaling(1.8, 2.6, 528, 0.5),
    "efficientnet_b7": ReleasedScaling(2.0, 3.1, 600, 0.5),
}


@dataclass(frozen=True)
class FormulaVsReleased:
    """The formula's multipliers at ``phi`` next to those of the released ``efficientnet_b{phi}``."""

    phi: int
    name: str
    formula: CompoundScaling
    released: ReleasedScaling


def formula_vs_released(phis: range = range(1, 8)) -> list[FormulaVsReleased]:
    """For phi = 1..7: what compound(phi) gives and what the released B1..B7 actually use."""
    return [
        FormulaVsReleased(phi, f"efficientnet_b{phi}", compound(phi), RELEASED[f"efficientnet_b{phi}"]) for phi in phis
    ]


def released_flops_ratio(row: ReleasedScaling, base_resolution: int = 224) -> float:
    """The FLOPs growth over B0 that a released row's multipliers imply by the paper's d·w²·r² rule.

    An estimate from the multipliers (rounding of channels and layers ignored), comparable to 1.92^phi.
    """
    return row.depth_mult * row.width_mult**2 * (row.resolution / base_resolution) ** 2


def comparison_markdown() -> str:
    """The :func:`formula_vs_released` table as Markdown (docs/scaling.md embeds this output verbatim)."""
    lines = [
        "| phi | model | depth: formula 1.2^phi | depth: released | width: formula 1.1^phi | width: released "
        "| resolution: formula 224·1.15^phi (→ multiple of 8) | resolution: released "
        "| FLOPs ratio: formula 1.92^phi | FLOPs ratio: released d·w²·(r/224)² |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in formula_vs_released():
        f, r = row.formula, row.released
        lines.append(
            f"| {row.phi} | {row.name} | {f.depth_mult:.3f} | {r.depth_mult:.1f} | {f.width_mult:.3f} | "
            f"{r.width_mult:.1f} | {f.resolution_exact:.1f} (→ {f.resolution}) | {r.resolution} | "
            f"{f.flops_ratio:.2f} | {released_flops_ratio(r):.2f} |"
        )
    return "\n".join(lines)
