"""MnasNet (Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le 2018, "MnasNet: Platform-Aware Neural Architecture
Search for Mobile", arXiv:1807.11626): a mobile network found by reinforcement-learning architecture search whose
reward counts the *measured* latency on a phone next to accuracy, in a factorized hierarchical search space where
each stage picks its own block (kernel 3 or 5, expansion 3 or 6, number of layers), so the network is not one
block repeated.

This is MnasNet-B1, the searched network without squeeze-excitation (the authors' TensorFlow reference calls it
``mnasnet_b1``; the paper's final MnasNet-A1 adds SE to some stages), as torchvision implements it: a 3x3 stem, a
depthwise-separable conv, six stages of MobileNetV2 inverted residuals (ReLU, linear bottleneck) and a 1x1 conv to
1280. ``width_mult`` (torchvision's ``alpha``) scales every width but the 1280, the stem's included (torchvision's
"version 2"; its first release kept the stem at 32 and 16 channels), rounded to multiples of 8 without going more
than 10% down. BatchNorm momentum is 0.0003, the TensorFlow decay 0.9997 in PyTorch's convention.

Layer names follow torchvision (``layers.0`` ... ``layers.16`` flat, ``layers.N.M.layers.K`` inside a stage,
``classifier.1``) so its checkpoints load unchanged.

The paper's search space is open to specs (``archlab search mnas``): ``stages`` gives each of the six stages its own
kernel, expansion, repeats and squeeze-excitation, one ``k{kernel}e{expand}r{repeats}[se]`` per stage joined by
``-`` (strides and widths stay B1's; :func:`parse_stages`), e.g.
``mnasnet1_0:stages=k3e3r3-k5e3r3se-k5e6r3-k3e6r2-k5e6r4se-k3e6r1`` (B1's own table with SE in two stages). SE is
MnasNet-A1's: after the depthwise conv, squeezing to a quarter of the block's input width, ReLU, sigmoid gate.
``bn_momentum`` (default torchvision's 0.0003) lets a short proxy training keep usable BatchNorm statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

import re

from archlab.layers import ConvNormAct, DropPath, SqueezeExcite, init_weights, make_divisible, residual_add
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register

BN_MOMENTUM = 1 - 0.9997  # TF's moving-average decay 0.9997 (torchvision writes it the same way)
SE_RATIO = 0.25  # MnasNet-A1's squeeze width: a quarter of the block's input width


class MnasStage(NamedTuple):
    """One stage of MnasNet-B1: ``layers`` inverted residuals, the first with ``stride``."""

    expand: int  # hidden width = expand * block input width
    kernel: int  # depthwise kernel
    stride: int
    channels: int
    layers: int
    se: bool = False  # MnasNet-A1's squeeze-excitation; B1 has none


STEM_CHANNELS = 32  # 3x3 conv, stride 2
SEPARABLE_CHANNELS = 16  # depthwise 3x3 + linear 1x1 projection, no residual
MNASNET_B1: list[MnasStage] = [
    # expand, kernel, stride, channels, layers (112x112 after the stem)
    MnasStage(3, 3, 2, 24, 3),  # -> 56
    MnasStage(3, 5, 2, 40, 3),  # -> 28
    MnasStage(6, 5, 2, 80, 3),  # -> 14
    MnasStage(6, 3, 1, 96, 2),
    MnasStage(6, 5, 2, 192, 4),  # -> 7
    MnasStage(6, 3, 1, 320, 1),
]
HEAD_CHANNELS = 1280  # never scaled
KERNELS = (3, 5, 7)
_STAGE = re.compile(r"k(\d+)e(\d+)r(\d+)(se)?")


def parse_stages(text: str) -> list[MnasStage]:
    """Six ``k{kernel}e{expand}r{repeats}[se]`` joined by ``-`` as B1's stages with those choices (B1's strides and
    widths); anything else is a ValueError naming the stage."""
    parts = text.split("-") if isinstance(text, str) else []
    if len(parts) != len(MNASNET_B1):
        raise ValueError(f"stages takes {len(MNASNET_B1)} stages k{{kernel}}e{{expand}}r{{repeats}}[se] joined by '-', "
                         f"e.g. k3e3r3-k5e3r3se-k5e6r3-k3e6r2-k5e6r4-k3e6r1; got {text!r}")
    stages = []
    for i, (part, b1) in enumerate(zip(parts, MNASNET_B1), start=1):
        m = _STAGE.fullmatch(part)
        if not m:
            raise ValueError(f"stages: stage {i} {part!r} is not k{{kernel}}e{{expand}}r{{repeats}}[se] "
                             "(e.g. k5e6r3se)")
        kernel, expand, repeats = int(m[1]), int(m[2]), int(m[3])
        if kernel not in KERNELS or expand < 1 or repeats < 1:
            raise ValueError(f"stages: stage {i} {part!r}: kernel must be one of {', '.join(map(str, KERNELS))}, "
                             "expansion and repeats >= 1")
        stages.append(b1._replace(kernel=kernel, expand=expand, layers=repeats, se=bool(m[4])))
    return stages


def stages_text(stages: list[MnasStage]) -> str:
    """The ``stages`` spec value of a stage table (the inverse of :func:`parse_stages`)."""
    return "-".join(f"k{s.kernel}e{s.expand}r{s.layers}{'se' if s.se else ''}" for s in stages)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, kxk depthwise-BN-ReLU, 1x1 linear projection-BN (+ residual where the shape allows),
    flat in ``layers`` as torchvision's keys need (``layers.0`` ... ``layers.7``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expand: int, drop_path: float,
                 se: bool = False, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        hidden = in_chs * expand
        norm = dict(bn_momentum=bn_momentum)
        squeeze = [SqueezeExcite(hidden, max(1, int(in_chs * SE_RATIO)), act="relu")] if se else []
        self.layers = nn.Sequential(
            *ConvNormAct(in_chs, hidden, 1, **norm),
            *ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, **norm),
            *squeeze,
            *ConvNormAct(hidden, out_chs, 1, act=None, **norm),
        )
        self.use_residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path if self.use_residual else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return residual_add(self.layers(x), x, self.drop_path)
        return self.layers(x)


class MNASNet(ArchNet):
    """MnasNet-B1 from its stage table: stem, separable conv, inverted residual stages, 1x1 head, pool, FC."""

    def __init__(
        self,
        stages: list[MnasStage] = MNASNET_B1,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
        norm = dict(bn_momentum=bn_momentum)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate

        def width(chs: int) -> int:
            return make_divisible(chs * width_mult, 8)

        stem, chs = width(STEM_CHANNELS), width(SEPARABLE_CHANNELS)
        layers: list[nn.Module] = [
            *ConvNormAct(in_chans, stem, 3, 2, **norm),
            *ConvNormAct(stem, stem, 3, groups=stem, **norm),
            *ConvNormAct(stem, chs, 1, act=None, **norm),
        ]
        reduction = 2
        self.feature_info = []
        total, index = sum(s.layers for s in stages), 0
        for stage in stages:
            if stage.stride > 1:
                # A stage output is the last map before the resolution halves.
                self.feature_info.append(dict(module=f"layers.{len(layers) - 1}", num_chs=chs, reduction=reduction))
                reduction *= stage.stride
            blocks = []
            for i in range(stage.layers):
                # Stochastic depth rises linearly with depth (as timm does); torchvision has none (rate 0).
                rate = drop_path_rate * index / total
                out_chs = width(stage.channels)
                blocks.append(InvertedResidual(chs, out_chs, stage.kernel, stage.stride if i == 0 else 1,
                                               stage.expand, rate, stage.se, bn_momentum))
                chs, index = out_chs, index + 1
            layers.append(nn.Sequential(*blocks))
        layers += [*ConvNormAct(chs, HEAD_CHANNELS, 1, **norm)]
        self.feature_info.append(dict(module=f"layers.{len(layers) - 1}", num_chs=HEAD_CHANNELS, reduction=reduction))
        self.layers = nn.Sequential(*layers)
        self.num_features = HEAD_CHANNELS
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), linear_or_identity(HEAD_CHANNELS, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, linear="default")
        # The reference's classifier init: uniform with the variance 1 / out_features (Kaiming, linear gain).
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="sigmoid")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[0](x.mean((2, 3)))  # global average pool, dropout
        return x if pre_logits else self.classifier[1](x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[1] = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def mnasnet(width_mult: float = 1.0, stages: str | None = None, **kwargs) -> MNASNet:
    """MnasNet-B1 at ``width_mult``, or with each stage's own kernel, expansion, repeats and SE (``stages``,
    :func:`parse_stages`)."""
    return MNASNet(MNASNET_B1 if stages is None else parse_stages(stages), width_mult=width_mult, **kwargs)


# Params: the exact count of torchvision's model. Multiply-adds ("GFLOPS" _ops, which count multiply-adds), top-1
# and preprocessing: torchvision's IMAGENET1K_V1 weights meta (0.75 and 1.3 were trained later with its newer
# recipe and are evaluated after resizing to 232; 0.5 and 1.0 after resizing to 256).
_VARIANTS = [
    # name, width_mult, params, macs, top1, resize
    ("mnasnet0_5", 0.5, 2_218_512, 104_000_000, 67.734, 256),
    ("mnasnet0_75", 0.75, 3_170_208, 215_000_000, 71.18, 232),
    ("mnasnet1_0", 1.0, 4_383_312, 314_000_000, 73.456, 256),
    ("mnasnet1_3", 1.3, 6_282_256, 526_000_000, 76.506, 232),
]

for _name, _width, _params, _macs, _top1, _resize in _VARIANTS:
    register(
        mnasnet,
        ModelCard(
            name=_name,
            family="mnasnet",
            year=2018,
            paper="MnasNet: Platform-Aware Neural Architecture Search for Mobile",
            arxiv="1807.11626",
            innovation="Architecture search rewarding measured on-phone latency, with a different block per stage",
            input_size=224,
            min_input_size=1,  # every strided conv pads (k - 1) // 2: 1 pixel stays 1 pixel
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            crop_pct=224 / _resize,
            notes="MnasNet-B1 (no squeeze-excitation), torchvision's layout: the stem scales with width_mult "
            "(torchvision's version 2), BatchNorm momentum 0.0003 (TensorFlow's decay 0.9997).",
            default_kwargs=dict(width_mult=_width),
        ),
    )
