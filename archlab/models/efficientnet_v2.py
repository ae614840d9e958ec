"""EfficientNetV2 (Tan & Le 2021, "EfficientNetV2: Smaller Models and Faster Training", arXiv:2104.00298): an
EfficientNet searched for training speed as well as accuracy and size. Its main change is the Fused-MBConv block
in the early stages: MBConv's 1x1 expansion and depthwise kxk conv replaced by one regular kxk conv, which uses
accelerators far better on the large early feature maps (depthwise convs are memory-bound there) for a few more
FLOPs; the later stages keep MBConv with squeeze-excitation. The searched network also prefers smaller expansion
ratios and 3x3 kernels everywhere, and drops B0's last stride-1 stage. (The paper's other contribution, training
with progressive resizing and regularization, is a recipe, not an architecture.)

One stage table per variant: S is the paper's Table 4; M and L are torchvision's (the paper gives no table for
them; they are scaled from S, deeper and wider, with a seventh stage). The MBConv block, its squeeze-excitation
and stochastic depth are EfficientNet's (:mod:`archlab.models.efficientnet`). BatchNorm eps is 1e-3 (torchvision
keeps TensorFlow's, momentum 0.1). Layer names follow torchvision (``features.N.M.block.K``, ``classifier.1``) so
its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from archlab.layers import ConvNormAct, init_weights
from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.models.efficientnet import MBConv, ResidualMBBlock, mbconv_body
from archlab.registry import ModelCard, register

BN_ARGS = dict(bn_eps=1e-3, bn_momentum=0.1)
BLOCKS = ("fused", "mbconv")


class V2Stage(NamedTuple):
    """One row of Table 4: ``layers`` blocks of type ``block``; the first has ``stride``. MBConv stages carry SE
    (squeeze to 1/4 of the block input width); Fused-MBConv stages have none."""

    block: str  # "fused" (Fused-MBConv) or "mbconv"
    expand: int  # hidden width = expand * block input width
    kernel: int
    stride: int
    channels: int
    layers: int


class V2Table(NamedTuple):
    stem: int  # stage 0: Conv3x3, stride 2
    stages: tuple[V2Stage, ...]
    head: int  # last stage: Conv1x1 & pooling & FC


# The paper's Table 4 (EfficientNetV2-S; trained at up to 300, evaluated at 384).
V2_S = V2Table(
    stem=24,
    stages=(
        # block, expand, kernel, stride, channels, layers
        V2Stage("fused", 1, 3, 1, 24, 2),  # stage 1: Fused-MBConv1, k3x3
        V2Stage("fused", 4, 3, 2, 48, 4),  # stage 2: Fused-MBConv4, k3x3
        V2Stage("fused", 4, 3, 2, 64, 4),  # stage 3: Fused-MBConv4, k3x3
        V2Stage("mbconv", 4, 3, 2, 128, 6),  # stage 4: MBConv4, k3x3, SE0.25
        V2Stage("mbconv", 6, 3, 1, 160, 9),  # stage 5: MBConv6, k3x3, SE0.25
        V2Stage("mbconv", 6, 3, 2, 256, 15),  # stage 6: MBConv6, k3x3, SE0.25
    ),
    head=1280,
)
# torchvision's M and L (the released weights' architectures).
V2_M = V2Table(
    stem=24,
    stages=(
        V2Stage("fused", 1, 3, 1, 24, 3),
        V2Stage("fused", 4, 3, 2, 48, 5),
        V2Stage("fused", 4, 3, 2, 80, 5),
        V2Stage("mbconv", 4, 3, 2, 160, 7),
        V2Stage("mbconv", 6, 3, 1, 176, 14),
        V2Stage("mbconv", 6, 3, 2, 304, 18),
        V2Stage("mbconv", 6, 3, 1, 512, 5),
    ),
    head=1280,
)
V2_L = V2Table(
    stem=32,
    stages=(
        V2Stage("fused", 1, 3, 1, 32, 4),
        V2Stage("fused", 4, 3, 2, 64, 7),
        V2Stage("fused", 4, 3, 2, 96, 7),
        V2Stage("mbconv", 4, 3, 2, 192, 10),
        V2Stage("mbconv", 6, 3, 1, 224, 19),
        V2Stage("mbconv", 6, 3, 2, 384, 25),
        V2Stage("mbconv", 6, 3, 1, 640, 7),
    ),
    head=1280,
)
TABLES = {"s": V2_S, "m": V2_M, "l": V2_L}


class FusedMBConv(ResidualMBBlock):
    """Fused-MBConv (paper Fig. 2): a regular kxk conv (carrying the stride) expands and filters at once, SiLU, then
    a linear 1x1 projection; with expand 1 the kxk conv maps straight to the output width (and keeps its SiLU). No
    squeeze-excitation. The residual (with stochastic depth) is used when shapes allow it."""

    def __init__(
        self, in_chs: int, out_chs: int, expand: int, kernel: int, stride: int, drop_path: float, bn_eps: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        hidden = in_chs * expand
        if expand != 1:
            layers = [
                ConvNormAct(in_chs, hidden, kernel, stride, act="silu", **norm),
                ConvNormAct(hidden, out_chs, 1, act=None, **norm),
            ]
        else:
            layers = [ConvNormAct(in_chs, out_chs, kernel, stride, act="silu", **norm)]
        self._finish(layers, in_chs, out_chs, stride, drop_path)


class EfficientNetV2(PooledClassifierNet):
    """EfficientNetV2 from a stage table: 3x3 stem, Fused-MBConv then MBConv stages, 1x1 head, pool, dropout, FC."""

    def __init__(
        self,
        table: V2Table,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        bad = [s.block for s in table.stages if s.block not in BLOCKS]
        if bad:
            raise ValueError(f"stage block must be one of {', '.join(BLOCKS)}, got {bad[0]!r}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers, self.feature_info = mbconv_body(
            table, in_chans, drop_path_rate, BN_ARGS, lambda stage: FusedMBConv if stage.block == "fused" else MBConv)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = table.head
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), linear_or_identity(table.head, num_classes))
        init_weights(self, linear="uniform")


def efficientnet_v2(variant: str, drop_rate: float = 0.2, **kwargs) -> EfficientNetV2:
    """EfficientNetV2-S / M / L (``variant`` "s", "m", "l")."""
    if variant not in TABLES:
        raise ValueError(f"unknown EfficientNetV2 variant {variant!r}; one of {', '.join(TABLES)}")
    return EfficientNetV2(TABLES[variant], drop_rate=drop_rate, **kwargs)


# Params: the exact count of torchvision's model. Multiply-adds (_ops, its "GFLOPS", which count multiply-adds) at
# the evaluation resolution, top-1 and preprocessing: torchvision's IMAGENET1K_V1 weights meta and transforms
# (no crop: resized straight to the evaluation size; S and M bilinear with ImageNet mean/std, L ported from the
# TensorFlow weights, bicubic with mean = std = 0.5). Classifier dropout: torchvision's defaults.
_VARIANTS = [
    # name, variant, dropout, params, macs, top1, size, interpolation, mean/std
    ("efficientnet_v2_s", "s", 0.2, 21_458_488, 8_366_000_000, 84.228, 384, "bilinear", None),
    ("efficientnet_v2_m", "m", 0.3, 54_139_356, 24_582_000_000, 85.112, 480, "bilinear", None),
    ("efficientnet_v2_l", "l", 0.4, 118_515_272, 56_080_000_000, 85.808, 480, "bicubic", (0.5, 0.5, 0.5)),
]

for _name, _variant, _dropout, _params, _macs, _top1, _size, _interpolation, _stats in _VARIANTS:
    register(
        efficientnet_v2,
        ModelCard(
            name=_name,
            family="efficientnet_v2",
            year=2021,
            paper="EfficientNetV2: Smaller Models and Faster Training",
            arxiv="2104.00298",
            innovation="Fused-MBConv (one regular conv for expand + depthwise) in early stages, searched for "
            "training speed",
            input_size=_size,
            # Every stride-2 conv pads (k - 1) // 2, so a 1-pixel input keeps one pixel to the end. (torchvision's
            # weights meta says min_size 33: a statement about its weights, not a limit of the network.)
            min_input_size=1,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            interpolation=_interpolation,
            crop_pct=1.0,
            **(dict(mean=_stats, std=_stats) if _stats else {}),
            notes=f"Evaluated at {_size}x{_size}, resized without a crop ({_interpolation}); BatchNorm eps 1e-3 as "
            "torchvision. " + ("Mean and std 0.5: the weights are ported from TensorFlow. " if _stats else "")
            + ("The paper trains S at up to 300 px (progressive resizing) and evaluates at 384."
               if _variant == "s" else "Architecture: torchvision's table (the paper gives Table 4 for S only)."),
            default_kwargs=dict(variant=_variant, drop_rate=_dropout),
        ),
    )
