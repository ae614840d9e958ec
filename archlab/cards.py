"""The model card: what a user needs to know about a registered model before building it (where it comes from,
its published figures and their sources, the preprocessing of its released weights). Plain data, below the
registry and everything that reads a card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelCard:
    """What a user needs to know about a registered model before building it.

    ``params``, ``macs`` and ``top1`` are *published* figures (``None`` where none was published); ``macs`` are
    multiply-accumulates of convolutions and linear layers at ``input_size``, the convention of the papers and
    torchvision. ``reference`` names the implementation whose parameter count and outputs we match, as
    ``"torchvision:resnet50"`` or ``"timm:seresnet50"``; ``None`` where no library has the model.
    """

    name: str
    family: str
    year: int
    paper: str
    arxiv: str
    innovation: str
    input_size: int = 224
    min_input_size: int = 32
    params: int | None = None
    macs: int | None = None
    top1: float | None = None
    top1_source: str | None = None
    reference: str | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    # Classes of the dataset the published figures refer to (1000: ImageNet; 10: CIFAR-10): ``params`` is the
    # count of the model built with this many classes.
    num_classes: int = 1000
    # Where ``macs`` comes from ("torchvision weights meta", "paper Table 6" ...), and anything a user should know
    # about the card's figures (a different evaluation resolution, a layout the paper figure does not describe).
    macs_source: str | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reference_source(self) -> str | None:
        return self.reference.split(":", 1)[0] if self.reference else None

    @property
    def reference_name(self) -> str | None:
        return self.reference.split(":", 1)[1] if self.reference else None
