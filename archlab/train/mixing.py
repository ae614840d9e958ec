"""MixUp and CutMix, drawn per sample so that training stays exact.

MixUp (Zhang et al. 2017, arXiv:1710.09412) trains on ``lam * x_i + (1 - lam) * x_j`` with the target mixed in the
same proportion; CutMix (Yun et al. 2019, arXiv:1905.04899) pastes a box of ``x_j`` into ``x_i`` and mixes the
targets by the box's area. ``lam`` comes from Beta(alpha, alpha).

The usual implementations pair each image with another image *of the same batch*. Here the partner is another
sample of the dataset, drawn (like the mixing weight and the box) from the sample's own seeded generator
(:class:`archlab.train.data.SeededDataset`): what a training sample looks like stays a function of (seed, epoch,
index). Batch-level pairing would make it depend on how the global batch is split over processes, and exact
resume and 1-vs-N-process equality (which the training loop guarantees) would no longer hold. The price: each
mixed sample decodes and augments two images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset


class MixedDataset(Dataset):
    """Wraps a dataset of (image tensor, class index): each item becomes (mixed image, soft target of
    ``num_classes`` probabilities). With both alphas > 0, MixUp or CutMix is chosen with equal odds (as timm does);
    ``prob`` is the chance that a sample is mixed at all (else its one-hot target)."""

    def __init__(self, dataset: Dataset, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha or cutmix_alpha):
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, one of them > 0; got {mixup_alpha}, "
                             f"{cutmix_alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.dataset, self.num_classes, self.prob = dataset, num_classes, prob
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha

    def __len__(self) -> int:
        return len(self.dataset)

    def _one_hot(self, label: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)
        target[int(label)] = 1.0
        return target

    @staticmethod
    def _beta(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        target = self._one_hot(label)
        if float(torch.rand(())) >= self.prob:
            return image, target
        other = int(torch.randint(len(self.dataset), ()))
        image_j, label_j = self.dataset[other]
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < 0.5)
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            image, lam = cutmix(image, image_j, lam)
        else:
            lam = self._beta(self.mixup_alpha)
            image = image * lam + image_j * (1.0 - lam)
        return image, target * lam + self._one_hot(label_j) * (1.0 - lam)


def cutmix(image: torch.Tensor, other: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a box of ``other`` covering about ``1 - lam`` of the image, centred uniformly at random (clipped at
    the border); returns the image and the weight of ``image`` that the box actually left, by area."""
    h, w = image.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    mixed = image.clone()
    mixed[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def soft_accuracy_targets(targets: torch.Tensor) -> torch.Tensor:
    """Class indices to score accuracy against: the targets themselves, or the largest share of a soft target."""
    return targets.argmax(1) if targets.ndim == 2 else targets


def mixing_from_config(cfg: Any) -> dict[str, float] | None:
    """The :class:`MixedDataset` arguments of a run's config, or None when it mixes nothing."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    return dict(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob)
