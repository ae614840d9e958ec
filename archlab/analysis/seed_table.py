"""The seed document's comparison table ("Architecture Design Principles", section 5), as it is written, with what
each of its figures is: a reader holding the seed sees AlexNet at 63.3% where the card (torchvision's released
weights) says 56.5%, and this says why.

The seed's "FLOPs" are multiply-adds (ResNet-50: 4.1B, torchvision's 4.09 GMACs; the ResNet paper's "3.8 billion
FLOPs" counts the same thing), so they sit beside archlab's MAC count. Where a figure is not the card's, ``note``
says what it is, from the paper where the paper has it; where its source could not be found, it says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SeedFigures:
    """One row of the seed's table and where its figures come from."""

    model: str  # the registered model the row is about
    year: int
    params: int  # as the seed rounds it
    macs: int  # the seed's "FLOPs"
    top1: float
    note: str  # what the top-1 is, where it is not the card's (the default released weights')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SEED_TABLE: list[SeedFigures] = [
    SeedFigures("alexnet", 2012, 61_000_000, 720_000_000, 63.3,
                "the paper's ensemble of seven CNNs, two of them pre-trained on the ImageNet Fall 2011 release "
                "(Krizhevsky et al. 2012, Table 2: 36.7% top-1 error on ILSVRC-2012); one CNN scores 59.3% (40.7% "
                "error), torchvision's single re-trained model 56.5%"),
    SeedFigures("vgg16", 2014, 138_000_000, 15_500_000_000, 71.5,
                "about torchvision's released VGG-16 (71.59%); the paper's own single-scale figure for "
                "configuration D is 73.0% (arXiv:1409.1556, Table 3: 27.0% top-1 error at S = Q = 256)"),
    SeedFigures("resnet50", 2015, 25_600_000, 4_100_000_000, 76.2,
                "about torchvision's original release (76.13%); the paper's 10-crop figure is 77.15% "
                "(arXiv:1512.03385, Table 3: 22.85% top-1 error)"),
    SeedFigures("resnet152", 2015, 60_200_000, 11_600_000_000, 77.6,
                "source not found: neither the paper's 10-crop figure (78.57%, Table 3: 21.43% error) nor "
                "torchvision's release (78.31%); its 11.6B multiply-adds are 1% above the 11.5G counted here"),
    SeedFigures("densenet201", 2017, 20_000_000, 4_300_000_000, 77.4,
                "the paper's single-crop figure (arXiv:1608.06993, Table 3: 22.58% top-1 error; 10-crop: 21.46%), "
                "not torchvision's release of the authors' weights (76.90%)"),
    SeedFigures("mobilenet_v2", 2018, 3_500_000, 300_000_000, 72.0,
                "the paper's figure (arXiv:1801.04381, Table 4: 72.0%, 300M multiply-adds, 3.4M params); "
                "torchvision's release scores 71.88%"),
    SeedFigures("efficientnet_b0", 2019, 5_300_000, 390_000_000, 77.1,
                "the paper's figure (arXiv:1905.11946, Table 2: 77.1%, 0.39B FLOPS); torchvision's release of "
                "the ported weights scores 77.69%"),
    SeedFigures("efficientnet_b7", 2019, 66_000_000, 37_000_000_000, 84.4,
                "the paper's first-version figure (arXiv:1905.11946v1, Table 2: 84.4% at 600x600, 37B FLOPS; "
                "later versions give 84.3%); torchvision's release scores 84.12%"),
]
SEED_FIGURES: dict[str, SeedFigures] = {row.model: row for row in SEED_TABLE}
