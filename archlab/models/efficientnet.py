"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
arXiv:1905.11946): a searched mobile baseline (B0, built from MBConv blocks with squeeze-excitation and SiLU)
scaled up in depth, width and resolution together.

B0 is one stage table (the paper's Table 1). Every other variant is that table passed through :func:`scale` with
a row of :data:`archlab.scaling.RELEASED` (B1–B7), or with :func:`archlab.scaling.compound` for any ``phi``
(``create_model("efficientnet", phi=1.5)``). Layer names follow torchvision (``features.N.M.block.K``,
``classifier.1``) so its checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from archlab.layers import ConvNormAct, DropPath, SqueezeExcite, init_weights, make_divisible, residual_add
from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.scaling import RELEASED, CompoundScaling, compound
from archlab.weights import KeyMap


@dataclass(frozen=True)
class MBConvStage:
    """One row of Table 1: ``layers`` MBConv blocks; the first has ``stride``, the others stride 1."""

    expand: int  # MBConv1 / MBConv6: hidden width = expand * block input width
    kernel: int  # depthwise kernel size
    stride: int
    channels: int
    layers: int


@dataclass(frozen=True)
class EfficientNetTable:
    """Stem conv3x3 width, the MBConv stages, head conv1x1 width (stages 1, 2–8 and 9 of Table 1)."""

    stem: int
    stages: tuple[MBConvStage, ...]
    head: int


# The paper's Table 1 (EfficientNet-B0 at 224x224). Resolutions: 112 after the stem, then /2 at each stride 2.
B0 = EfficientNetTable(
    stem=32,  # stage 1: Conv3x3, stride 2
    stages=(
        # expand, kernel, stride, channels, layers
        MBConvStage(1, 3, 1, 16, 1),  # stage 2: MBConv1 k3x3, 112x112
        MBConvStage(6, 3, 2, 24, 2),  # stage 3: MBConv6 k3x3, 112 -> 56
        MBConvStage(6, 5, 2, 40, 2),  # stage 4: MBConv6 k5x5, 56 -> 28
        MBConvStage(6, 3, 2, 80, 3),  # stage 5: MBConv6 k3x3, 28 -> 14
        MBConvStage(6, 5, 1, 112, 3),  # stage 6: MBConv6 k5x5, 14x14
        MBConvStage(6, 5, 2, 192, 4),  # stage 7: MBConv6 k5x5, 14 -> 7
        MBConvStage(6, 3, 1, 320, 1),  # stage 8: MBConv6 k3x3, 7x7
    ),
    head=1280,  # stage 9: Conv1x1, pooling, FC
)
SE_RATIO = 0.25  # squeeze width = 1/4 of the block *input* width (not of the expanded width)

# timm's efficientnet_b0..b7 (not the tf_ ones, which pad like TensorFlow) in torchvision's names. timm calls the
# stem conv_stem/bn1, stage i blocks.{i}, the head conv_head/bn2; inside a block conv_pw (expand), conv_dw, se
# (conv_reduce, conv_expand), conv_pwl (project) with bn1..bn3, except in stage 0 (expand 1, a "depthwise
# separable" block) where the projection is conv_pw/bn2. Rules apply in order (archlab.weights.KeyMap).
TIMM_KEY_MAP = KeyMap(
    rules=[
        (r"^blocks\.0\.(\d+)\.conv_dw\.", r"blocks.0.\1.block.0.0."),
        (r"^blocks\.0\.(\d+)\.bn1\.", r"blocks.0.\1.block.0.1."),
        (r"^blocks\.0\.(\d+)\.se\.", r"blocks.0.\1.block.1."),
        (r"^blocks\.0\.(\d+)\.conv_pw\.", r"blocks.0.\1.block.2.0."),
        (r"^blocks\.0\.(\d+)\.bn2\.", r"blocks.0.\1.block.2.1."),
        (r"\.conv_pw\.", ".block.0.0."),
        (r"\.bn1\.", ".block.0.1."),
        (r"\.conv_dw\.", ".block.1.0."),
        (r"\.bn2\.", ".block.1.1."),
        (r"\.se\.", ".block.2."),
        (r"\.conv_pwl\.", ".block.3.0."),
        (r"\.bn3\.", ".block.3.1."),
        (r"\.conv_reduce\.", ".fc1."),
        (r"\.conv_expand\.", ".fc2."),
        (r"^blocks\.(\d+)\.", lambda m: f"features.{int(m[1]) + 1}."),  # features.0 is the stem
        (r"^conv_stem\.", "features.0.0."),
        (r"^bn1\.", "features.0.1."),
        (r"^conv_head\.", f"features.{len(B0.stages) + 1}.0."),
        (r"^bn2\.", f"features.{len(B0.stages) + 1}.1."),
        (r"^classifier\.", "classifier.1."),
    ],
    bn_eps=1e-5,  # timm uses 1e-5 for B5-B7 too (torchvision, and so ours, 1e-3): the loaded model takes it
)


def scale(table: EfficientNetTable, width_mult: float, depth_mult: float) -> EfficientNetTable:
    """The one scaling rule of every EfficientNet variant (the reference code's round_filters / round_repeats).

    Every width (stem, stages, head) is multiplied by ``width_mult`` and rounded to a multiple of 8 (never more
    than 10% down); every stage's layer count is multiplied by ``depth_mult`` and rounded *up*.
    """
    for name, mult in (("width_mult", width_mult), ("depth_mult", depth_mult)):
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {mult!r}")

    def width(chs: int) -> int:
        return make_divisible(chs * width_mult, 8)

    stages = tuple(
        replace(s, channels=width(s.channels), layers=int(math.ceil(s.layers * depth_mult))) for s in table.stages
    )
    return EfficientNetTable(stem=width(table.stem), stages=stages, head=width(table.head))


class ResidualMBBlock(nn.Module):
    """What MBConv and EfficientNetV2's Fused-MBConv share: a ``block`` (their layers in order), added to the
    input with stochastic depth where the shapes allow it (stride 1, same width)."""

    def _finish(self, layers: list[nn.Module], in_chs: int, out_chs: int, stride: int, drop_path: float) -> None:
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.use_residual else nn.Identity()
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return residual_add(out, x, self.drop_path) if self.use_residual else out


class MBConv(ResidualMBBlock):
    """Mobile inverted bottleneck (MobileNetV2, arXiv:1801.04381) with squeeze-excitation (arXiv:1709.01507).

    expand 1x1 -> depthwise kxk -> SE -> linear 1x1 projection, SiLU after the first two; ``block`` holds these in
    order (no expand conv when expand == 1). The residual (with stochastic depth) is used when shapes allow it.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        expand: int,
        kernel: int,
        stride: int,
        drop_path: float,
        bn_eps: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        hidden = in_chs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_chs, hidden, 1, act="silu", **norm))
        layers += [
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act="silu", **norm),
            SqueezeExcite(hidden, max(1, int(in_chs * SE_RATIO)), act="silu"),
            ConvNormAct(hidden, out_chs, 1, act=None, **norm),  # linear: no activation on the bottleneck
        ]
        self._finish(layers, in_chs, out_chs, stride, drop_path)


def mbconv_body(table: Any, in_chans: int, drop_path_rate: float, norm: dict[str, float],
                block_for: Callable[[Any], type[nn.Module]] = lambda stage: MBConv) -> tuple[list[nn.Module], list[dict]]:
    """The layers of an EfficientNet-style body from a stage table (``stem``, ``stages`` with layers / channels /
    expand / kernel / stride, ``head``): a 3x3 stride-2 stem, one Sequential of blocks per stage
    (``block_for(stage)``: MBConv, or EfficientNetV2's Fused-MBConv), the 1x1 head conv; and the feature info, one
    entry per resolution (its last stage). Shared by EfficientNet and EfficientNetV2."""
    layers: list[nn.Module] = [ConvNormAct(in_chans, table.stem, 3, 2, act="silu", **norm)]
    feature_info: list[dict] = []
    total_blocks = sum(s.layers for s in table.stages)
    chs, reduction, block_idx = table.stem, 2, 0
    for stage in table.stages:
        blocks = []
        for i in range(stage.layers):
            stride = stage.stride if i == 0 else 1
            # Stochastic depth rises linearly with block index, as in the reference: rate * idx / total, so
            # the first block is never dropped and the last is dropped with rate * (total - 1) / total.
            rate = drop_path_rate * block_idx / total_blocks
            blocks.append(block_for(stage)(chs, stage.channels, stage.expand, stage.kernel, stride, rate, **norm))
            chs, block_idx = stage.channels, block_idx + 1
        reduction *= stage.stride
        layers.append(nn.Sequential(*blocks))
        # One feature per resolution: its last stage (a stride-2 stage starts a new resolution).
        info = dict(module=f"features.{len(layers) - 1}", num_chs=chs, reduction=reduction)
        if feature_info and feature_info[-1]["reduction"] == reduction:
            feature_info[-1] = info
        else:
            feature_info.append(info)
    layers.append(ConvNormAct(chs, table.head, 1, act="silu", **norm))
    return layers, feature_info


class EfficientNet(PooledClassifierNet):
    """EfficientNet from a (scaled) stage table: stem, MBConv stages, 1x1 head conv, pool, dropout, FC."""

    timm_key_map = TIMM_KEY_MAP

    def __init__(
        self,
        table: EfficientNetTable,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        layers, self.feature_info = mbconv_body(table, in_chans, drop_path_rate, norm)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = table.head
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), linear_or_identity(table.head, num_classes))
        init_weights(self, linear="uniform")

def efficientnet_scaled(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    drop_rate: float = 0.2,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    **kwargs,
) -> EfficientNet:
    """B0 scaled by explicit multipliers: the builder of the released efficientnet_b0..b7."""
    return EfficientNet(
        scale(B0, width_mult, depth_mult), drop_rate=drop_rate, bn_eps=bn_eps, bn_momentum=bn_momentum, **kwargs
    )


def efficientnet_compound(
    phi: float = 0.0,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    drop_rate: float = 0.2,
    **kwargs,
) -> EfficientNet:
    """B0 compound-scaled by ``phi`` (section 3.3): multipliers from :func:`archlab.scaling.compound`.

    Any real ``phi >= 0``; ``phi=0`` is exactly B0. The input resolution the formula intends is in
    ``model.scaling.resolution``. The classifier dropout stays B0's 0.2 (the paper gives no rule for it).
    """
    scaling: CompoundScaling = compound(phi, alpha, beta, gamma)
    model = efficientnet_scaled(scaling.width_mult, scaling.depth_mult, drop_rate=drop_rate, **kwargs)
    model.scaling = scaling
    return model


_PAPER = "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
_INNOVATION = "Compound scaling of depth, width and resolution of a searched MBConv+SE baseline"
# torchvision ported B5-B7 from the TensorFlow weights and keeps TF's batch-norm settings for them.
_TF_NORM = dict(bn_eps=1e-3, bn_momentum=0.01)

# Published figures of torchvision's IMAGENET1K_V1 weights (torchvision.models.EfficientNet_BN_Weights meta):
# num_params; _ops ("GFLOPS", in fact multiply-adds) at the weights' evaluation crop; acc@1; eval transform
# (resize to `resize`, centre crop `crop`, bicubic). The crop is the paper's resolution except for B2, whose
# torchvision weights are evaluated at 288: its card keeps the paper's 260 and the paper's figures (_B2_PAPER).
_VARIANTS = [
    # name, params, macs, top1, crop, resize, norm
    ("efficientnet_b0", 5_288_548, 386_000_000, 77.692, 224, 256, {}),
    ("efficientnet_b1", 7_794_184, 687_000_000, 78.642, 240, 256, {}),
    ("efficientnet_b2", 9_109_994, 1_088_000_000, 80.608, 288, 288, {}),
    ("efficientnet_b3", 12_233_232, 1_827_000_000, 82.008, 300, 320, {}),
    ("efficientnet_b4", 19_341_616, 4_394_000_000, 83.384, 380, 384, {}),
    ("efficientnet_b5", 30_389_784, 10_266_000_000, 83.444, 456, 456, _TF_NORM),
    ("efficientnet_b6", 43_040_704, 19_068_000_000, 84.008, 528, 528, _TF_NORM),
    ("efficientnet_b7", 66_347_960, 37_746_000_000, 84.122, 600, 600, _TF_NORM),
]

# Every stride-2 conv pads (k - 1) // 2, so any size >= 1 keeps at least one pixel to the end.
_MIN_INPUT_SIZE = 1

# B2 at the paper's 260x260: Table 2's 1.0B FLOPs (multiply-adds; we count 0.994G) and 80.1% top-1.
_B2_PAPER = dict(
    input_size=260,
    macs=1_000_000_000,
    macs_source="paper Table 2 (1.0B FLOPs, which count multiply-adds)",
    top1=80.1,
    top1_source="paper Table 2",
    notes="torchvision's IMAGENET1K_V1 weights are evaluated at 288x288 (80.608% top-1, 1.088G multiply-adds); "
    "the card gives the paper's resolution and figures.",
)

for _name, _params, _macs, _top1, _crop, _resize, _norm in _VARIANTS:
    _row = RELEASED[_name]
    _card = dict(
        input_size=_crop,
        macs=_macs,
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        top1=_top1,
        top1_source="torchvision IMAGENET1K_V1 weights",
    )
    if _name == "efficientnet_b2":
        _card.update(_B2_PAPER)
    register(
        efficientnet_scaled,
        ModelCard(
            name=_name,
            family="efficientnet",
            year=2019,
            paper=_PAPER,
            arxiv="1905.11946",
            innovation=_INNOVATION,
            min_input_size=_MIN_INPUT_SIZE,
            params=_params,
            reference=f"torchvision:{_name}",
            interpolation="bicubic",
            crop_pct=_crop / _resize,
            **_card,
            default_kwargs=dict(
                width_mult=_row.width_mult, depth_mult=_row.depth_mult, drop_rate=_row.dropout, **_norm
            ),
        ),
    )

# The formula itself: compound-scaled B0 for any phi (default 0 = B0, whose figures the card gives). No weights
# were released for formula-scaled networks, hence no top-1.
register(
    efficientnet_compound,
    ModelCard(
        name="efficientnet",
        family="efficientnet",
        year=2019,
        paper=_PAPER,
        arxiv="1905.11946",
        innovation=_INNOVATION + "; any phi via alpha^phi, beta^phi, gamma^phi",
        input_size=224,
        min_input_size=_MIN_INPUT_SIZE,
        params=5_288_548,
        macs=386_000_000,
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        reference="torchvision:efficientnet_b0",
        interpolation="bicubic",
        crop_pct=224 / 256,
        default_kwargs=dict(phi=0.0),
    ),
)
