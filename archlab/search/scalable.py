"""A base network that compound scaling can grow: the builders that take depth and width multipliers.

Compound scaling (Tan & Le 2019, arXiv:1905.11946, Sec. 3.3, Eq. 3) multiplies a base network's depth by
``alpha ** phi``, its width by ``beta ** phi`` and its input resolution by ``gamma ** phi``. The formula is the
convention here (``archlab.scaling.compound``), not the released B1-B7 rows, which differ (docs/scaling.md). Three
kinds of base take the multipliers, each rounding as its builder does:

* ``efficientnet`` (the formula builder): ``phi``, ``alpha``, ``beta``, ``gamma`` go to the builder itself, which
  rounds layers up and widths to multiples of 8 (the reference code's round_repeats / round_filters);
* a builder with ``depth_mult`` and ``width_mult`` keys (``efficientnet_b0`` ... ``b7``): the multipliers are
  multiplied onto the base's own, so ``efficientnet_b0:width_mult=0.25`` is B0 at a quarter width, scaled;
* a CIFAR ResNet (``cifar_resnet20`` ...; depth 6n+2 or 9n+2, ``width_mult``): ``n`` blocks per stage become
  ``round(n * alpha ** phi)`` (to nearest, half up: with 3 blocks per stage the reference's rounding up would turn
  every alpha > 1 into 4 blocks, a third more depth), the width multiplier ``width_mult * beta ** phi`` (the builder
  rounds channels to whole numbers).

The resolution multiplier is the engine's ``input_scale`` (the trial's input size times it, to the nearest pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archlab.search.runner import SearchError

KINDS = ("efficientnet-formula", "multipliers", "cifar-resnet")


@dataclass(frozen=True)
class ScalableBase:
    """The base of a compound-scaling search, parsed: its spec, registered name, overrides and kind."""

    spec: str
    name: str
    overrides: dict[str, Any]
    kind: str

    def scaled(self, phi: float, alpha: float, beta: float, gamma: float) -> tuple[str, float]:
        """(the model spec of the base scaled by these coefficients at ``phi``, the resolution multiplier)."""
        if self.kind == "efficientnet-formula":
            keys = {**self.overrides, "phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma}
        elif self.kind == "multipliers":
            keys = {**self.overrides, "depth_mult": _round(self._own("depth_mult") * alpha ** phi),
                    "width_mult": _round(self._own("width_mult") * beta ** phi)}
        else:
            from archlab.models.cifar_resnet import BLOCK_KINDS, blocks_per_stage

            kind = BLOCK_KINDS[self._own("block")]
            n = blocks_per_stage(kind, int(self._own("depth")))
            blocks = max(1, math.floor(n * alpha ** phi + 0.5))
            keys = {**self.overrides, "depth": len(kind.widths) * kind.layers_per_block * blocks + 2,
                    "width_mult": _round(self._own("width_mult") * beta ** phi)}
        return spec_of(self.name, keys), gamma ** phi

    def _own(self, key: str) -> Any:
        from archlab.registry import _entry

        defaults = {"depth_mult": 1.0, "width_mult": 1.0}
        return self.overrides.get(key, _entry(self.name).card.default_kwargs.get(key, defaults.get(key)))


def _round(x: float) -> float:
    return round(x, 6)  # a readable spec; 1e-6 of a multiplier changes no channel count


def spec_of(name: str, keys: dict[str, Any]) -> str:
    """A model spec from a name and builder keys (what :func:`archlab.registry.parse_model_spec` reads back)."""
    if not keys:
        return name
    return name + ":" + ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in keys.items())


def scalable_base(spec: str, num_classes: int = 10) -> ScalableBase:
    """Parse and check a base spec: it must build, and be one of the three kinds (module docstring). Anything else
    is a one-line :class:`SearchError`."""
    import torch

    from archlab.registry import _accepted_arguments, _entry, create_from_spec, parse_model_spec

    try:
        name, overrides = parse_model_spec(spec)
        with torch.device("meta"):
            create_from_spec(spec, num_classes=num_classes)
    except ValueError as exc:
        text = str(exc).strip().splitlines()
        raise SearchError(f"--base {spec!r} does not build: {text[0] if text else type(exc).__name__}") from None
    entry = _entry(name)
    accepted = _accepted_arguments(entry.builder) or set()
    if name == "efficientnet":
        if overrides.get("phi", 0) != 0 or {"alpha", "beta", "gamma"} & set(overrides):
            raise SearchError(f"--base {spec!r}: the base is the unscaled network (phi=0); the search chooses alpha, "
                              "beta and gamma")
        kind = "efficientnet-formula"
    elif {"depth_mult", "width_mult"} <= accepted:
        kind = "multipliers"
    elif entry.card.family == "cifar_resnet" and "width_mult" in accepted:
        kind = "cifar-resnet"
    else:
        raise SearchError(f"--base {spec!r}: compound scaling needs a builder that takes depth and width multipliers: "
                          "efficientnet, efficientnet_b0 (depth_mult, width_mult) or a CIFAR ResNet such as "
                          "cifar_resnet20 (depth, width_mult)")
    return ScalableBase(spec, name, overrides, kind)
