"""Test helpers shared by several test files."""

from __future__ import annotations

import functools

import torch
from torch import nn

import archlab
from archlab.deploy.timing import trained_like_norms


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=4)
def cached_model(name: str) -> nn.Module:
    """One eval-mode instance per model name for read-only tests (building VGG takes a second)."""
    return archlab.create_model(name).eval()


def build_reference(card: archlab.ModelCard, **kwargs) -> nn.Module:
    """The reference implementation named by a model card, with random weights."""
    source, name = card.reference.split(":", 1)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    raise ValueError(source)


# RegNetY-128GF (644M parameters, ~8 s to build on one core) is RegNetY-32GF's builder and blocks with another row
# of design-space parameters: the registry-wide tests that run every model for real (fusion, oneDNN, forward and
# backward) check it through RegNetY-32GF; parity and the meta-device tests still build it.
HEAVIEST = {"regnet_y_128gf"}


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, every LayerNorm non-trivial affine terms and
    every layer scale (ConvNeXt's, 1e-6 at init) values near 1, so a mis-wired norm or block changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("layer_scale", "gamma") and "norm" not in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    trained_like_norms(model, seed)  # the BatchNorms: what `bench --runtime` draws


def positive(model: nn.Module) -> nn.Module:
    """All weights 1/fan-in, no bias, average instead of max pooling: every path carries a positive gradient, so
    the input-gradient footprint of one output unit is exactly its receptive field (clipped to the image)."""
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model.eval()
