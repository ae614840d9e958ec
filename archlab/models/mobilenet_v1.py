"""MobileNet V1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861): every convolution after the stem is factorised into a 3x3 depthwise conv (one
filter per channel, spatial filtering) and a 1x1 pointwise conv (channel mixing), for 8-9x fewer multiply-adds
than a full 3x3 conv.

Two global knobs trade accuracy for cost. The width multiplier alpha (``width_mult``: the paper's 1.0, 0.75, 0.5,
0.25) thins every layer, cutting multiply-adds and parameters by about alpha^2. The resolution multiplier rho is
simply the input size: the card's default is 224, and the paper also reports 192, 160 and 128 (any size >= 1 runs,
the classifier follows a global average pool); it cuts multiply-adds by rho^2 and leaves parameters unchanged.

``separable=False`` builds the paper's "Conv MobileNet" of Table 4 instead: every depthwise-separable block
replaced by one full 3x3 conv with the same input, output and stride (29.3M parameters and 4866M multiply-adds
against 4.2M and 569M, for 71.7% against 70.6% top-1): the baseline of the depthwise-separable design study.

The layer names and details follow timm's ``mobilenetv1_100`` (``conv_stem``, ``bn1``, ``blocks.{stage}.{block}``
with ``conv_dw``/``bn1``/``conv_pw``/``bn2``, ``classifier``; ReLU6 where the paper says ReLU; widths rounded to
multiples of 8; no 1x1 head conv) so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from archlab.layers import init_weights, make_act, make_divisible
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register

# The paper's Table 1 after the stem (a full 3x3 conv, stride 2, 32 channels), one row per stage:
# output channels of the pointwise convs, number of depthwise-separable blocks, stride of the first depthwise conv.
# Table 1 lists the last stage's second block with stride 2, but its output is 7x7 like the first: the released
# model (and timm) uses stride 1 there, as here.
STEM_CHANNELS = 32
MOBILENET_V1_STAGES: list[tuple[int, int, int]] = [
    # out_chs, repeats, stride
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU6, then 1x1 pointwise conv-BN-ReLU6 (Figure 3, right). No residual in V1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, act: str = "relu6") -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, padding=1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = make_act(act)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class FullConv(nn.Module):
    """The block a depthwise-separable one replaces: one full 3x3 conv-BN-ReLU6 from ``in_chs`` to ``out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, act: str = "relu6") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MobileNetV1(ArchNet):
    """MobileNet V1 from a stage table: stem conv, stages of depthwise-separable blocks, global pool, one FC."""

    def __init__(
        self,
        stages: list[tuple[int, int, int]] = MOBILENET_V1_STAGES,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        act: str = "relu6",
        separable: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(separable, bool):  # "false" would be truthy
            raise ValueError(f"separable must be True or False, got {separable!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if drop_path_rate:
            raise ValueError("MobileNet V1 has no residual branches, so drop_path_rate must be 0")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate

        def width(chs: int) -> int:
            # timm's rounding: the nearest multiple of 8, never more than 10% below alpha * chs.
            return make_divisible(chs * width_mult, 8)

        chs = width(STEM_CHANNELS)
        self.conv_stem = nn.Conv2d(in_chans, chs, 3, 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = make_act(act)
        reduction = 2
        self.feature_info = []
        stage_modules: list[nn.Module] = []
        block = DepthwiseSeparable if separable else FullConv
        for index, (out_chs, repeats, stride) in enumerate(stages):
            blocks = []
            for i in range(repeats):
                blocks.append(block(chs, width(out_chs), stride if i == 0 else 1, act))
                chs = width(out_chs)
            reduction *= stride
            stage_modules.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(module=f"blocks.{index}", num_chs=chs, reduction=reduction))
        self.blocks = nn.Sequential(*stage_modules)
        self.num_features = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = linear_or_identity(chs, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.classifier(self.dropout(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def mobilenet_v1(width_mult: float = 1.0, **kwargs) -> MobileNetV1:
    return MobileNetV1(MOBILENET_V1_STAGES, width_mult=width_mult, **kwargs)


# Params: exact count of timm's mobilenetv1_100 weights. Multiply-adds at 224: the paper's Table 8 (569M).
# Top-1: the paper's 1.0 MobileNet-224 (Table 8); timm's ra4 weights score higher but their figure is not
# available offline. Preprocessing: timm's mobilenetv1_100.ra4_e3600_r224_in1k config (Inception mean/std, bicubic).
register(
    mobilenet_v1,
    ModelCard(
        name="mobilenet_v1",
        family="mobilenet_v1",
        year=2017,
        paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
        arxiv="1704.04861",
        innovation="Depthwise separable convolutions; width (alpha) and resolution (rho) multipliers",
        input_size=224,
        min_input_size=1,
        params=4_231_976,
        macs=569_000_000,
        macs_source="paper Table 6 (mult-adds)",
        top1=70.6,
        top1_source="paper",
        reference="timm:mobilenetv1_100",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        crop_pct=0.875,
        default_kwargs=dict(width_mult=1.0),
    ),
)
