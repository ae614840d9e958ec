"""How an image becomes a network input at evaluation: a property of a model card and of its released weights.

It lives below both the model side (:mod:`archlab.pretrained`, which records the transform each release was scored
with) and the training side (:mod:`archlab.train.data`, which builds the transforms), so neither reaches into the
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``input_size / crop_pct``, centre-crop ``input_size``, scale to [0, 1], normalise
    with ``mean``/``std`` (the model card's fields)."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, mean=list(self.mean), std=list(self.std),
                    interpolation=self.interpolation, crop_pct=self.crop_pct)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(int(d["input_size"]), tuple(d["mean"]), tuple(d["std"]), d["interpolation"], float(d["crop_pct"]))

    @classmethod
    def from_card(cls, card: Any, input_size: int | None = None) -> "Preprocessing":
        return cls(input_size or card.input_size, tuple(card.mean), tuple(card.std), card.interpolation,
                   card.crop_pct)
