"""Small layers shared by every family: conv-norm-act, squeeze-excitation, drop-path, activations.

The module names inside these layers follow torchvision's (``Conv2dNormActivation`` is a Sequential of
``0`` conv, ``1`` norm, ``2`` act; ``SqueezeExcitation`` has ``fc1``/``fc2``) so that reference checkpoints
load into archlab models key for key.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

ActFactory = Callable[..., nn.Module]

_ACTIVATIONS: dict[str, ActFactory] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def get_act(name: str | ActFactory | None) -> ActFactory:
    """Return an activation constructor from a name ('relu', 'hswish', ...) or pass a constructor through."""
    if name is None:
        return nn.Identity
    if callable(name):
        return name
    try:
        return _ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}") from None


def make_act(name: str | ActFactory | None, inplace: bool = True) -> nn.Module:
    """Instantiate an activation, in place where the activation supports it."""
    factory = get_act(name)
    if factory in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid):
        return factory(inplace=inplace)
    return factory()


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """h-sigmoid (MobileNetV3): ReLU6(x + 3) / 6, a piecewise-linear sigmoid that is cheap on mobile hardware."""
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """h-swish (MobileNetV3): x * ReLU6(x + 3) / 6, the seed's formula."""
    return x * hard_sigmoid(x)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` without going more than 10% below it.

    The rule of the MobileNetV2 / EfficientNet reference code: hardware likes channel counts that are multiples
    of 8, and a rounding that loses more than 10% of the width is bumped up by one divisor.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return int(new_value)


class ConvNormAct(nn.Sequential):
    """Conv2d → BatchNorm2d → activation, with 'same' padding for odd kernels (``0``, ``1``, ``2`` as in torchvision).

    ``act=None`` gives a linear conv-norm (the linear bottleneck of MobileNetV2); ``norm=False`` drops the norm
    and gives the conv a bias.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: str | ActFactory | None = "relu",
        norm: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: int | None = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)
        self.out_channels = out_chs


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, arXiv:1709.01507): global pool → 1x1 reduce → act → 1x1 expand → gate.

    The two fully connected layers are 1x1 convolutions with bias, which is what torchvision and timm use
    (``fc1``/``fc2``), so their checkpoints load unchanged.
    """

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        act: str | ActFactory = "relu",
        gate: str | ActFactory = "sigmoid",
    ) -> None:
        super().__init__()
        if reduced_channels < 1:
            raise ValueError(f"squeeze-excitation needs >= 1 reduced channel, got {reduced_channels}")
        self.fc1 = nn.Conv2d(channels, reduced_channels, 1)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(reduced_channels, channels, 1)
        self.gate = make_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * self.gate(scale)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample, rescale the survivors."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def residual_add(branch: torch.Tensor, shortcut: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``drop_path(branch) + shortcut``, added in place into the branch output (as torchvision's ResNet does): the
    branch ends in a BN, a conv or an SE product, none of whose backward needs its output, so one activation
    fewer is allocated per block."""
    out = drop_path(branch)
    out += shortcut
    return out


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; an identity at eval time and when ``p == 0``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(model: nn.Module, conv_mode: str = "fan_out", linear: str = "normal") -> None:
    """The initialisation every family's reference code uses, with its two variable parts as arguments.

    Convolutions: He normal (He et al. 2015, arXiv:1502.01852) on ``conv_mode`` ('fan_out' in torchvision's
    ResNet/MobileNet/EfficientNet, 'fan_in' in DenseNet), zero bias. Norms: weight 1, bias 0. Linear layers:
    ``'normal'`` N(0, 0.01) (VGG, MobileNet), ``'uniform'`` U(±1/sqrt(out)) (EfficientNet), ``'zero_bias'``
    (PyTorch's default weight, zero bias: DenseNet) or ``'default'`` (PyTorch's default: ResNet).
    """
    if linear not in ("normal", "uniform", "zero_bias", "default"):
        raise ValueError(f"unknown linear init {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            elif linear == "uniform":
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            if linear != "default":
                nn.init.zeros_(m.bias)
