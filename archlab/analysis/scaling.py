"""Compound scaling measured (Tan & Le 2019, arXiv:1905.11946, section 3.3): the formula of :mod:`archlab.scaling`
applied to real networks, their parameters and multiply-adds counted (``archlab scale`` prints the table).

The formula promises FLOPs that grow by ``(alpha * beta**2 * gamma**2) ** phi ≈ 2 ** phi``. For each ``phi``, B0 is
scaled by :func:`archlab.scaling.compound` (``create_model("efficientnet", phi=...)``) at the formula's resolution,
and, for integer ``phi`` 1..7, the released EfficientNet-B{phi} is built at its released resolution. Counting runs on
the meta device (:func:`archlab.analysis.profile`), so even B7 at 600x600 costs well under a second and no memory.

The measured growth differs from ``1.92 ** phi`` for reasons the formula ignores: channels are rounded to
multiples of 8 and layer counts rounded up, the resolution is rounded, and the stem and head do not scale with
depth. The released B1–B7 grow more slowly still: their coefficients are not the formula's (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from archlab.analysis.meta import MetaFastPath
from archlab.analysis.profile import profile
from archlab.scaling import RELEASED, compound


@dataclass(frozen=True)
class ScaledRow:
    """One scaled network, measured: its multipliers, resolution, params and multiply-adds."""

    model: str  # "efficientnet (phi=1.5)" or "efficientnet_b3"
    kind: str  # "formula" or "released"
    phi: float
    depth_mult: float
    width_mult: float
    resolution: int
    params: int
    macs: int
    macs_ratio: float  # measured multiply-adds over B0's at 224
    expected_ratio: float  # constraint ** phi: what the formula promises
    params_ratio: float  # measured parameters over B0's


def _measure(name: str, resolution: int, **kwargs: float) -> tuple[int, int]:
    from archlab.registry import create_model

    with torch.device("meta"), MetaFastPath():  # no real weights: shapes are all the counting needs
        model = create_model(name, **kwargs)
    p = profile(model, input_size=resolution, training_memory=False)
    return p.params, p.macs


def scaling_table(
    phis: list[float],
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    released: bool = True,
    on_row: Callable[[int, float], None] | None = None,
) -> list[ScaledRow]:
    """Measured params and multiply-adds of compound-scaled B0 for each ``phi`` (and of the released B1–B7
    at the integer ``phi`` among them when ``released``), with the FLOPs growth the formula expects.
    ``on_row(index, phi)`` is called before each ``phi`` is measured (for a progress bar)."""
    base_params, base_macs = _measure("efficientnet_b0", 224)
    rows = []
    for index, phi in enumerate(phis):
        if on_row:
            on_row(index, phi)
        s = compound(phi, alpha, beta, gamma)
        params, macs = _measure("efficientnet", s.resolution, phi=phi, alpha=alpha, beta=beta, gamma=gamma)
        rows.append(ScaledRow(f"efficientnet (phi={phi:g})", "formula", float(phi), s.depth_mult, s.width_mult,
                              s.resolution, params, macs, macs / base_macs, s.flops_ratio, params / base_params))
        name = f"efficientnet_b{int(phi)}"
        if released and float(phi).is_integer() and 1 <= phi <= 7:
            r = RELEASED[name]
            params, macs = _measure(name, r.resolution)
            rows.append(ScaledRow(name, "released", float(phi), r.depth_mult, r.width_mult, r.resolution, params,
                                  macs, macs / base_macs, s.flops_ratio, params / base_params))
    return rows
