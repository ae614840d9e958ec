"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017, "Densely Connected Convolutional Networks",
arXiv:1608.06993): inside a dense block every layer receives the concatenation of all earlier feature maps and adds
``growth_rate`` new channels, so features are reused instead of re-learned and gradients reach every layer directly.

This is DenseNet-BC, the ImageNet models of the paper's Table 1: each layer is BN-ReLU-1x1 conv (bottleneck to
``4 * growth_rate`` channels) then BN-ReLU-3x3 conv; transitions halve the channels (compression 0.5) and the map
size. Module names follow torchvision (``features.denseblockN.denselayerM.conv1`` ...) so its checkpoints load
unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archlab.layers import init_weights
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.weights import KeyMap

BN_SIZE = 4  # the 1x1 bottleneck has BN_SIZE * growth_rate channels ("B" in DenseNet-BC)
COMPRESSION = 0.5  # a transition keeps this fraction of the channels ("C" in DenseNet-BC)


class DenseNetConfig(NamedTuple):
    growth_rate: int  # k: channels each dense layer adds
    block_config: tuple[int, int, int, int]  # dense layers in each of the four blocks
    init_features: int  # channels of the 7x7 stem conv (2k)


# The paper's Table 1 (DenseNet-161 is the k=48 model released with the paper's code).
DENSENET_CONFIGS: dict[str, DenseNetConfig] = {
    "densenet121": DenseNetConfig(32, (6, 12, 24, 16), 64),
    "densenet161": DenseNetConfig(48, (6, 12, 36, 24), 96),
    "densenet169": DenseNetConfig(32, (6, 12, 32, 32), 64),
    "densenet201": DenseNetConfig(32, (6, 12, 48, 32), 64),
}
# timm's densenet121..201 use torchvision's names and BN settings, so their checkpoints load with no timm_key_map.
# torchvision's released DenseNet files predate its module names: a dense layer's parameters are stored as
# 'norm.1', 'conv.2' ... where the modules are norm1, conv2 (torchvision renames them when it loads its own files).
TORCHVISION_KEY_MAP = KeyMap(rules=[(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.")])


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) then BN-ReLU-3x3 conv, producing ``growth_rate`` new channels."""

    def __init__(self, in_chs: int, growth_rate: int) -> None:
        super().__init__()
        mid_chs = BN_SIZE * growth_rate
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_chs, growth_rate, 3, padding=1, bias=False)

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(earlier, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the block outputs its input and every layer's output, concatenated."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_chs + i * growth_rate, growth_rate)
        self.out_chs = in_chs + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compression) then 2x2 average pooling: the only place the map size shrinks."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_chs),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_chs, out_chs, 1, bias=False),
                pool=nn.AvgPool2d(2, 2),
            )
        )


class DenseNet(ArchNet):
    """DenseNet-BC from a config row: 7x7 stem, four dense blocks joined by transitions, BN-ReLU, pool, FC."""

    torchvision_key_map = TORCHVISION_KEY_MAP

    def __init__(
        self,
        config: DenseNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError(
                "DenseNet has no residual branches (layers are concatenated, not added), so drop_path_rate must be 0"
            )
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        chs = config.init_features
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(in_chans, chs, 7, 2, 3, bias=False),
                norm0=nn.BatchNorm2d(chs),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, 2, 1),
            )
        )
        self.feature_info = []
        reduction = 4
        last = len(config.block_config)
        for i, num_layers in enumerate(config.block_config, start=1):
            block = DenseBlock(num_layers, chs, config.growth_rate)
            self.features.add_module(f"denseblock{i}", block)
            chs = block.out_chs
            if i < last:
                # A block's concatenated output is the richest map at its resolution (as timm reports it); the
                # transition after it compresses and pools.
                self.feature_info.append(dict(module=f"features.denseblock{i}", num_chs=chs, reduction=reduction))
                out_chs = int(chs * COMPRESSION)
                self.features.add_module(f"transition{i}", Transition(chs, out_chs))
                chs, reduction = out_chs, reduction * 2
        self.features.add_module("norm5", nn.BatchNorm2d(chs))
        self.feature_info.append(dict(module="features.norm5", num_chs=chs, reduction=reduction))
        self.num_features = chs
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = linear_or_identity(chs, num_classes)
        init_weights(self, conv_mode="fan_in", linear="zero_bias")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # norm5 has no ReLU module of its own (torchvision applies it functionally); not in place, so the
        # feature map a caller passed in is left as it was.
        x = torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def densenet(
    variant: str, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0
) -> DenseNet:
    if variant not in DENSENET_CONFIGS:
        raise ValueError(f"unknown DenseNet variant {variant!r}; one of {', '.join(DENSENET_CONFIGS)}")
    return DenseNet(DENSENET_CONFIGS[variant], num_classes, in_chans, drop_rate, drop_path_rate)


# Published figures from torchvision's IMAGENET1K_V1 weights meta: num_params, "_ops" (multiply-adds at 224,
# in GMACs) and acc@1.
_VARIANTS = [
    # name, params, macs, top1
    ("densenet121", 7_978_856, 2_834_000_000, 74.434),
    ("densenet161", 28_681_000, 7_728_000_000, 77.138),
    ("densenet169", 14_149_480, 3_360_000_000, 75.600),
    ("densenet201", 20_013_928, 4_291_000_000, 76.896),
]

for _name, _params, _macs, _top1 in _VARIANTS:
    register(
        densenet,
        ModelCard(
            name=_name,
            family="densenet",
            year=2017,
            paper="Densely Connected Convolutional Networks",
            arxiv="1608.06993",
            innovation="Dense connectivity: each layer sees the concatenated maps of all earlier layers in its block",
            # 29: stride-2 stem conv and max-pool, then three 2x2 average pools need a map of at least 8x8
            # after the stem (28 -> 14 -> 7 -> 3 -> 1, and the third transition's pool fails).
            min_input_size=29,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            default_kwargs=dict(variant=_name),
        ),
    )
