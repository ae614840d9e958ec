"""MobileNet V3 (Howard et al. 2019, "Searching for MobileNetV3", arXiv:1905.02244): MobileNetV2's inverted
residual blocks, with the per-block kernel, expansion and SE choices found by platform-aware NAS (MnasNet) and
NetAdapt, plus three hand-made changes:

* h-swish, x * ReLU6(x + 3) / 6, a piecewise-linear swish that costs little on mobile hardware, used in the stem
  and the deeper half of the network (where tensors are small, so its cost is low and its gain largest);
* squeeze-and-excitation in some blocks, its bottleneck sized from the *expanded* width (1/4 of it, rounded to 8)
  and gated by h-sigmoid, ReLU6(x + 3) / 6;
* a redesigned last stage (Figure 5): the layer that builds the final 1280 (Large) / 1024 (Small) features runs
  after global pooling, on a 1x1 map instead of 7x7, and without BN; the depthwise and projection layers that fed
  it are dropped, so the stage ends in one 1x1 conv to 6x the last block width (960 / 576). This saves about 11%
  of latency at no accuracy cost. The stem also shrinks from 32 to 16 filters (with h-swish).

The layer names follow torchvision (``features.N`` with ``block.M`` inside a block, ``classifier.N``; BN eps 0.001
and momentum 0.01) so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from archlab.layers import ConvNormAct, DropPath, SqueezeExcite, init_weights, make_act, make_divisible, residual_add
from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.weights import KeyMap

BN_ARGS = dict(bn_eps=0.001, bn_momentum=0.01)


class Bneck(NamedTuple):
    """One row of the paper's Tables 1-2: a 'bneck' (inverted residual) block."""

    kernel: int
    exp: int  # expanded width
    out: int
    se: bool
    nl: str  # non-linearity: "relu" or "hswish"
    stride: int


# Table 1 (MobileNetV3-Large), between the stem (3x3 conv, 16, h-swish, stride 2) and the head.
MOBILENET_V3_LARGE: list[Bneck] = [
    Bneck(3, 16, 16, False, "relu", 1),
    Bneck(3, 64, 24, False, "relu", 2),
    Bneck(3, 72, 24, False, "relu", 1),
    Bneck(5, 72, 40, True, "relu", 2),
    Bneck(5, 120, 40, True, "relu", 1),
    Bneck(5, 120, 40, True, "relu", 1),
    Bneck(3, 240, 80, False, "hswish", 2),
    Bneck(3, 200, 80, False, "hswish", 1),
    Bneck(3, 184, 80, False, "hswish", 1),
    Bneck(3, 184, 80, False, "hswish", 1),
    Bneck(3, 480, 112, True, "hswish", 1),
    Bneck(3, 672, 112, True, "hswish", 1),
    Bneck(5, 672, 160, True, "hswish", 2),
    Bneck(5, 960, 160, True, "hswish", 1),
    Bneck(5, 960, 160, True, "hswish", 1),
]

# Table 2 (MobileNetV3-Small).
MOBILENET_V3_SMALL: list[Bneck] = [
    Bneck(3, 16, 16, True, "relu", 2),
    Bneck(3, 72, 24, False, "relu", 2),
    Bneck(3, 88, 24, False, "relu", 1),
    Bneck(5, 96, 40, True, "hswish", 2),
    Bneck(5, 240, 40, True, "hswish", 1),
    Bneck(5, 240, 40, True, "hswish", 1),
    Bneck(5, 120, 48, True, "hswish", 1),
    Bneck(5, 144, 48, True, "hswish", 1),
    Bneck(5, 288, 96, True, "hswish", 2),
    Bneck(5, 576, 96, True, "hswish", 1),
    Bneck(5, 576, 96, True, "hswish", 1),
]

STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6  # the head's 1x1 conv: 960 = 6 x 160 (Large), 576 = 6 x 96 (Small)
# name: (block table, width of the pooled 1x1 layer before the classifier)
MOBILENET_V3_VARIANTS: dict[str, tuple[list[Bneck], int]] = {
    "mobilenet_v3_large": (MOBILENET_V3_LARGE, 1280),
    "mobilenet_v3_small": (MOBILENET_V3_SMALL, 1024),
}


def timm_key_map(blocks: list[Bneck]) -> KeyMap:
    """timm's mobilenetv3_large_100 / _small_100 in torchvision's names (see archlab.weights.KeyMap).

    timm calls the stem conv_stem/bn1 and groups the bnecks into stages of equal output width: the j-th bneck of
    stage i is blocks.{i}.{j} (torchvision: features.N, numbered flat). Inside a bneck: conv_pw (expand), conv_dw,
    se (conv_reduce, conv_expand), conv_pwl (project) with bn1..bn3; a bneck without expansion is "depthwise
    separable": conv_dw/bn1, se, conv_pw/bn2. The last 1x1 conv is a stage of its own (conv, bn1), and the pooled
    1x1 layer is conv_head, a 1x1 conv where torchvision has a Linear (reshaped). timm's BN eps is 1e-5.
    """
    rules: list = [(r"^conv_stem\.", "features.0.0."), (r"^bn1\.", "features.0.1.")]
    stage, j, in_chs = -1, 0, STEM_CHANNELS
    for n, cfg in enumerate(blocks, start=1):
        stage, j = (stage + 1, 0) if n == 1 or cfg.out != blocks[n - 2].out else (stage, j + 1)
        expanded = cfg.exp != in_chs
        # timm's (conv, bn) names of the bneck's layers, in our order: [expand], depthwise, [SE], project.
        layers = [("conv_pw", "bn1"), ("conv_dw", "bn2")] if expanded else [("conv_dw", "bn1")]
        layers += [("se", None)] if cfg.se else []
        layers += [("conv_pwl", "bn3") if expanded else ("conv_pw", "bn2")]
        for position, (conv, bn) in enumerate(layers):
            theirs, ours = rf"^blocks\.{stage}\.{j}\.", f"features.{n}.block.{position}."
            if bn is None:
                rules.append((theirs + r"se\.", ours))
            else:
                rules += [(theirs + conv + r"\.", ours + "0."), (theirs + bn + r"\.", ours + "1.")]
        in_chs = cfg.out
    last = len(blocks) + 1
    rules += [
        (rf"^blocks\.{stage + 1}\.0\.conv\.", f"features.{last}.0."),
        (rf"^blocks\.{stage + 1}\.0\.bn1\.", f"features.{last}.1."),
        (r"\.conv_reduce\.", ".fc1."),
        (r"\.conv_expand\.", ".fc2."),
        (r"^classifier\.", "classifier.3."),  # before conv_head becomes classifier.0
        (r"^conv_head\.", "classifier.0."),
    ]
    return KeyMap(rules=rules, reshaped=("classifier.0.weight",), bn_eps=1e-5)


class InvertedResidualSE(nn.Module):
    """1x1 expand (skipped when exp == in), kxk depthwise, optional SE, 1x1 linear projection (+ residual)."""

    def __init__(self, in_chs: int, cfg: Bneck, exp: int, out_chs: int, drop_path: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if exp != in_chs:
            layers.append(ConvNormAct(in_chs, exp, 1, act=cfg.nl, **BN_ARGS))
        layers.append(ConvNormAct(exp, exp, cfg.kernel, cfg.stride, groups=exp, act=cfg.nl, **BN_ARGS))
        if cfg.se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4, 8), act="relu", gate="hard_sigmoid"))
        layers.append(ConvNormAct(exp, out_chs, 1, act=None, **BN_ARGS))
        self.block = nn.Sequential(*layers)
        self.use_residual = cfg.stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path if self.use_residual else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return residual_add(self.block(x), x, self.drop_path)
        return self.block(x)


WIDTH_RULES = ("torchvision", "paper")


class MobileNetV3(PooledClassifierNet):
    """MobileNet V3 from a bneck table: stem, blocks, 1x1 conv, pool, 1x1 'conv' (a Linear) with h-swish, FC.

    ``width_mult`` scales the widths by one of two rules, identical at 1.0:

    * ``"torchvision"``: every width of the table, expanded widths and the pooled 1280/1024 layer included, is
      scaled and rounded to a multiple of 8 (torchvision's ``width_mult``);
    * ``"paper"``: the rule of the authors' TensorFlow code, behind the paper's Table 3 (MobileNetV3-Large 0.75:
      4.0M params, 155M MAdds) and timm's ``mobilenetv3_*_075``: a block's expanded width is its expansion
      *ratio* (the table's exp / its input width) times the already rounded input width, and the pooled layer
      keeps its full width, which protects accuracy at small multipliers for the price of a few parameters.
    """

    def __init__(
        self,
        blocks: list[Bneck],
        last_channels: int,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        width_rule: str = "torchvision",
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if width_rule not in WIDTH_RULES:
            raise ValueError(f"width_rule must be one of {', '.join(WIDTH_RULES)}, got {width_rule!r}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.timm_key_map = timm_key_map(blocks)

        def width(chs: int) -> int:
            return make_divisible(chs * width_mult, 8)

        def expanded(cfg: Bneck, in_table: int, in_chs: int) -> int:
            if width_rule == "paper":
                return make_divisible(in_chs * cfg.exp / in_table, 8)
            return width(cfg.exp)

        chs, in_table = width(STEM_CHANNELS), STEM_CHANNELS
        layers: list[nn.Module] = [ConvNormAct(in_chans, chs, 3, 2, act="hswish", **BN_ARGS)]
        reduction = 2
        self.feature_info = []
        for index, cfg in enumerate(blocks):
            if cfg.stride > 1:
                # A stage output is the last map before the resolution halves.
                last = f"features.{len(layers) - 1}"
                self.feature_info.append(dict(module=last, num_chs=chs, reduction=reduction))
                reduction *= cfg.stride
            # Stochastic depth rises linearly with depth (as timm does); torchvision has none (rate 0).
            rate = drop_path_rate * index / len(blocks)
            layers.append(InvertedResidualSE(chs, cfg, expanded(cfg, in_table, chs), width(cfg.out), rate))
            chs, in_table = width(cfg.out), cfg.out
        head_chs = LAST_CONV_EXPANSION * chs
        layers.append(ConvNormAct(chs, head_chs, 1, act="hswish", **BN_ARGS))
        self.feature_info.append(dict(module=f"features.{len(layers) - 1}", num_chs=head_chs, reduction=reduction))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = last_channels if width_rule == "paper" else width(last_channels)
        # On the pooled vector the paper's "conv2d 1x1, NBN" layers are Linear layers (torchvision's naming).
        self.classifier = nn.Sequential(
            nn.Linear(head_chs, self.num_features),
            make_act("hswish"),
            nn.Dropout(drop_rate),
            linear_or_identity(self.num_features, num_classes),
        )
        init_weights(self)

def mobilenet_v3(variant: str, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    if variant not in MOBILENET_V3_VARIANTS:
        raise ValueError(f"unknown MobileNetV3 variant {variant!r}; one of {', '.join(MOBILENET_V3_VARIANTS)}")
    blocks, last_channels = MOBILENET_V3_VARIANTS[variant]
    return MobileNetV3(blocks, last_channels, width_mult=width_mult, **kwargs)


# Params: the exact count of the reference (which the parity test checks). Multiply-adds and top-1: torchvision's
# MobileNet_V3_*_Weights.IMAGENET1K_V1 metadata (its "GFLOPS" count multiply-adds) for the two torchvision models; the
# paper's Table 3 for the 0.75 multipliers, built by the paper's width rule (our count: 154.6M and 43.4M MACs).
_TORCHVISION = "torchvision IMAGENET1K_V1 weights"
_PAPER = "paper Table 3"
_VARIANTS = [
    # name, bneck table, width_mult, width rule, params, macs, top1, source of macs/top1, reference
    ("mobilenet_v3_large", "mobilenet_v3_large", 1.0, "torchvision", 5_483_032, 217_000_000, 74.042, _TORCHVISION,
     "torchvision:mobilenet_v3_large"),
    ("mobilenet_v3_small", "mobilenet_v3_small", 1.0, "torchvision", 2_542_856, 57_000_000, 67.668, _TORCHVISION,
     "torchvision:mobilenet_v3_small"),
    ("mobilenet_v3_large_075", "mobilenet_v3_large", 0.75, "paper", 3_993_528, 155_000_000, 73.3, _PAPER,
     "timm:mobilenetv3_large_075"),
    ("mobilenet_v3_small_075", "mobilenet_v3_small", 0.75, "paper", 2_041_872, 44_000_000, 65.4, _PAPER,
     "timm:mobilenetv3_small_075"),
]
# timm's preprocessing for its 0.75 models (bicubic for the released small_075 weights).
_PREPROCESSING = {
    "mobilenet_v3_large_075": dict(crop_pct=0.875),
    "mobilenet_v3_small_075": dict(interpolation="bicubic", crop_pct=0.875),
}

for _name, _blocks, _width, _rule, _params, _macs, _top1, _source, _reference in _VARIANTS:
    register(
        mobilenet_v3,
        ModelCard(
            name=_name,
            family="mobilenet_v3",
            year=2019,
            paper="Searching for MobileNetV3",
            arxiv="1905.02244",
            innovation="NAS-found inverted residuals with SE, h-swish, and a cheaper redesigned last stage",
            input_size=224,
            min_input_size=1,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)" if _source == _TORCHVISION else _source,
            top1=_top1,
            top1_source=_source,
            reference=_reference,
            notes="" if _width == 1.0 else "Width multiplier 0.75 by the paper's rule (width_rule='paper': expansion "
                  "ratios times the rounded input width, the pooled layer kept at full width), as timm's model; "
                  "torchvision's rule (width_rule='torchvision') gives a smaller network.",
            default_kwargs=dict(variant=_blocks, width_mult=_width, width_rule=_rule),
            **_PREPROCESSING.get(_name, {}),
        ),
    )
