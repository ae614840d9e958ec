"""ResNet and its direct descendants, from one stage table and one builder loop.

* ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition", arXiv:1512.03385): stacks of residual
  blocks ``y = relu(F(x) + x)``; the identity shortcut lets 50-152 layer networks train better than shallow ones.
* ResNeXt (Xie et al. 2016, "Aggregated Residual Transformations for Deep Neural Networks", arXiv:1611.05431):
  the bottleneck's 3x3 conv split into ``groups`` paths of ``base_width`` channels ("cardinality").
* Wide ResNet (Zagoruyko & Komodakis 2016, "Wide Residual Networks", arXiv:1605.07146): the bottleneck's inner
  width doubled.
* SE-ResNet / SE-ResNeXt (Hu et al. 2017, "Squeeze-and-Excitation Networks", arXiv:1709.01507): a channel gate on
  the residual branch, after its last BN and before the addition.

Layer names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.2.bn3``, ``downsample.0/1``,
``fc``); timm names its SE ResNets the same way (plus ``se.fc1``/``se.fc2``), so checkpoints of both load unchanged.
The stride of a downsampling bottleneck sits on its 3x3 conv ("ResNet v1.5", as in torchvision and timm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.layers import DropPath, SqueezeExcite, init_weights, make_divisible, residual_add
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register

# The paper's Table 1: conv2_x .. conv5_x as (stage name, width, stride). The width is that of the 3x3 convs; a
# bottleneck block outputs 4x that. The stem (7x7/2 conv, 3x3/2 max-pool) already reduced the input by 4.
RESNET_STAGES: list[tuple[str, int, int]] = [
    ("layer1", 64, 1),
    ("layer2", 128, 2),
    ("layer3", 256, 2),
    ("layer4", 512, 2),
]
STEM_WIDTH = 64
STEM_REDUCTION = 4
OUTPUT_STRIDES = (8, 16, 32)
# SE reduction ratio r = 16 (paper Sec. 6.1); timm rounds the squeezed width to a multiple of 8, never down.
SE_RATIO = 16


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). The first carries the stride; dilation as in timm's BasicBlock."""

    expansion = 1

    def __init__(
        self, in_chs: int, width: int, stride: int, dilation: int, first_dilation: int,
        groups: int, base_width: int, se: bool, drop_path: float,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, out_chs, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.se = squeeze_excite(out_chs) if se else None
        self.drop_path = DropPath(drop_path)
        self.downsample = shortcut_projection(in_chs, out_chs, stride)
        self.act2 = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(residual_add(out, shortcut, self.drop_path))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (grouped, strided, dilated) -> 1x1 expand x4, the block of ResNet-50 and deeper.

    The 3x3 width is ``int(width * base_width / 64) * groups``: torchvision's rule, which gives ResNeXt's
    "32x4d" (32 groups of 4 channels at the first stage) and Wide ResNet's doubled width (base_width 128).
    """

    expansion = 4

    def __init__(
        self, in_chs: int, width: int, stride: int, dilation: int, first_dilation: int,
        groups: int, base_width: int, se: bool, drop_path: float,
    ) -> None:
        super().__init__()
        inner = int(width * base_width / 64) * groups
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = nn.ReLU(inplace=True)
        # The only 3x3 of the block takes the dilation of the previous stage in a stage's first block (torchvision).
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, first_dilation, first_dilation, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(inner, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = squeeze_excite(out_chs) if se else None
        self.drop_path = DropPath(drop_path)
        self.downsample = shortcut_projection(in_chs, out_chs, stride)
        self.act3 = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act3(residual_add(out, shortcut, self.drop_path))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def squeeze_excite(channels: int) -> SqueezeExcite:
    return SqueezeExcite(channels, make_divisible(channels / SE_RATIO, 8, round_limit=0.0))


def shortcut_projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential | None:
    """Option B of the paper: a strided 1x1 conv + BN where the shape changes, the identity elsewhere."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class ResNet(ArchNet):
    """ResNet from a stage table: 7x7/2 stem + max-pool, four stages of residual blocks, global pool, FC."""

    def __init__(
        self,
        block: str,
        repeats: tuple[int, ...],
        groups: int = 1,
        base_width: int = 64,
        se: bool = False,
        output_stride: int = 32,
        zero_init_last_bn: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        block_cls = _check_config(block, repeats, groups, base_width, output_stride, se)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.conv1 = nn.Conv2d(in_chans, STEM_WIDTH, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = [dict(module="relu", num_chs=STEM_WIDTH, reduction=2)]

        chs, reduction, dilation = STEM_WIDTH, STEM_REDUCTION, 1
        total_blocks, block_idx = sum(repeats), 0
        for (stage_name, width, stride), n in zip(RESNET_STAGES, repeats):
            # Past the requested output stride, a stage keeps the resolution and dilates its 3x3 convs instead,
            # so the receptive field grows as if it had downsampled (DeepLab's atrous ResNet).
            first_dilation = dilation
            if reduction * stride > output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            blocks = []
            for i in range(n):
                # Stochastic depth rising linearly from 0 at the first block to drop_path_rate at the last.
                p = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(
                    block_cls(
                        chs, width, stride if i == 0 else 1, dilation, first_dilation if i == 0 else dilation,
                        groups, base_width, se, p,
                    )
                )
                chs, block_idx = width * block_cls.expansion, block_idx + 1
            self.add_module(stage_name, nn.Sequential(*blocks))
            self.feature_info.append(dict(module=stage_name, num_chs=chs, reduction=reduction))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs
        self.fc = linear_or_identity(chs, num_classes)
        self._init_weights(zero_init_last_bn)

    def _init_weights(self, zero_init_last_bn: bool) -> None:
        # He normal on fan_out, as torchvision; nn.Linear keeps PyTorch's default init, also as torchvision.
        init_weights(self, linear="default")
        if zero_init_last_bn:
            # Each block then starts as the identity (Goyal et al. 2017, arXiv:1706.02677).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def _check_config(
    block: str, repeats: tuple[int, ...], groups: int, base_width: int, output_stride: int, se: bool
) -> type[BasicBlock] | type[Bottleneck]:
    if not isinstance(se, bool):  # "false" would be truthy: an SE network built by mistake
        raise ValueError(f"se must be True or False, got {se!r}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
    if len(repeats) != len(RESNET_STAGES) or not all(isinstance(n, int) and n >= 1 for n in repeats):
        raise ValueError(f"repeats must be {len(RESNET_STAGES)} integers >= 1, got {repeats!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups (cardinality) must be an integer >= 1, got {groups!r}")
    if not isinstance(base_width, int) or base_width < 1:
        raise ValueError(f"base_width (channels per group in layer1) must be an integer >= 1, got {base_width!r}")
    if block == "basic" and (groups, base_width) != (1, 64):
        raise ValueError(
            f"BasicBlock ResNets (resnet18/34) have no grouped conv: groups must be 1 and base_width 64, "
            f"got groups={groups}, base_width={base_width}; use a bottleneck model (resnet50, resnext50_32x4d)"
        )
    return BLOCKS[block]


# Blocks per stage (conv2_x .. conv5_x), the paper's Table 1 columns.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

_PAPERS = {
    "resnet": (2015, "Deep Residual Learning for Image Recognition", "1512.03385"),
    "resnext": (2016, "Aggregated Residual Transformations for Deep Neural Networks", "1611.05431"),
    "wide": (2016, "Wide Residual Networks", "1605.07146"),
    "se": (2017, "Squeeze-and-Excitation Networks", "1709.01507"),
}
_INNOVATIONS = {
    "basic": "Residual learning: identity shortcuts around pairs of 3x3 convs let deeper plain nets train better",
    "bottleneck": "Bottleneck residual blocks (1x1 reduce, 3x3, 1x1 expand) make 50-152 layers affordable",
    "resnext": "Cardinality: the bottleneck 3x3 split into many grouped paths beats going deeper or wider",
    "wide": "Width over depth: bottleneck 3x3 convs twice as wide, fewer layers needed for the same accuracy",
    "se": "Squeeze-and-excitation: a gate from globally pooled features rescales the channels of each branch",
}

# torchvision figures: params = meta["num_params"], multiply-adds = meta["_ops"] (its "GFLOPS", which counts
# multiply-adds) at 224, top-1 = meta["_metrics"] of the IMAGENET1K_V1 weights (torchvision 0.29).
# SE figures: params = exact count of timm's architecture; multiply-adds: none published for this layout (see
# _SE_NOTE); top-1 = the authors' released weights (github.com/hujie-frank/SENet README, 224 single crop: SE-ResNet-50
# 22.37% error, SE-ResNeXt-101 (32x4d) 19.81%).
_VARIANTS = [
    # name, paper, depth, groups, base_width, se, params, macs, top1
    ("resnet18", "resnet", 18, 1, 64, False, 11_689_512, 1_814_000_000, 69.758),
    ("resnet34", "resnet", 34, 1, 64, False, 21_797_672, 3_664_000_000, 73.314),
    ("resnet50", "resnet", 50, 1, 64, False, 25_557_032, 4_089_000_000, 76.130),
    ("resnet101", "resnet", 101, 1, 64, False, 44_549_160, 7_801_000_000, 77.374),
    ("resnet152", "resnet", 152, 1, 64, False, 60_192_808, 11_514_000_000, 78.312),
    ("resnext50_32x4d", "resnext", 50, 32, 4, False, 25_028_904, 4_230_000_000, 77.618),
    ("resnext101_32x8d", "resnext", 101, 32, 8, False, 88_791_336, 16_414_000_000, 79.312),
    ("resnext101_64x4d", "resnext", 101, 64, 4, False, 83_455_272, 15_460_000_000, 83.246),
    ("wide_resnet50_2", "wide", 50, 1, 128, False, 68_883_240, 11_398_000_000, 78.468),
    ("wide_resnet101_2", "wide", 101, 1, 128, False, 126_886_696, 22_753_000_000, 78.848),
    ("seresnet50", "se", 50, 1, 64, True, 28_088_024, None, 77.63),
    ("seresnet101", "se", 101, 1, 64, True, 49_326_872, None, 78.25),
    ("seresnet152", "se", 152, 1, 64, True, 66_821_848, None, 78.66),
    ("seresnext50_32x4d", "se", 50, 32, 4, True, 27_559_896, None, 79.03),
    ("seresnext101_32x4d", "se", 101, 32, 4, True, 48_955_416, None, 80.19),
]

_FAMILIES = {"resnet": "resnet", "resnext": "resnext", "wide": "wide_resnet", "se": "se_resnet"}
# The SE paper's GFLOPs (3.87G for SE-ResNet-50, Table 2) and its released weights describe the Caffe layout, with
# the stride on the first 1x1 conv; ours (and timm's) puts it on the 3x3, as torchvision's ResNet does. No
# multiply-add figure is published for this layout, so the card gives none (`archlab compare` shows the count).
_SE_NOTE = (
    "Layout of timm's seresnet (stride on the 3x3 conv). The paper's GFLOPs and the top-1 of the authors' released "
    "weights are for the Caffe layout with the stride on the first 1x1 conv."
)

# Preprocessing of the reference weights: torchvision resizes to 256 and crops 224 (bilinear), except the newer
# resnext101_64x4d recipe (resize 232); timm's SE ResNets use bicubic, seresnet50's default a1 weights crop 0.95.
_PREPROCESSING = {
    "resnext101_64x4d": dict(crop_pct=224 / 232),
    "seresnet50": dict(interpolation="bicubic", crop_pct=0.95),
    "seresnet101": dict(interpolation="bicubic"),
    "seresnet152": dict(interpolation="bicubic"),
    "seresnext50_32x4d": dict(interpolation="bicubic"),
    "seresnext101_32x4d": dict(interpolation="bicubic"),
}

for _name, _paper, _depth, _groups, _base_width, _se, _params, _macs, _top1 in _VARIANTS:
    _block, _repeats = DEPTHS[_depth]
    _year, _title, _arxiv = _PAPERS[_paper]
    register(
        ResNet,
        ModelCard(
            name=_name,
            family=_FAMILIES[_paper],
            year=_year,
            paper=_title,
            arxiv=_arxiv,
            innovation=_INNOVATIONS[_block if _paper == "resnet" else _paper],
            # A 1x1 input survives: the stem conv (7x7/2, pad 3), the max-pool (3x3/2, pad 1) and every strided
            # conv map 1 pixel to 1 pixel, and the head pools globally.
            min_input_size=1,
            params=_params,
            macs=_macs,
            macs_source=None if _macs is None else "torchvision weights meta (_ops: multiply-adds)",
            notes=_SE_NOTE if _se else "",
            top1=_top1,
            top1_source="paper authors' released weights" if _se else "torchvision IMAGENET1K_V1 weights",
            reference=f"timm:{_name}" if _se else f"torchvision:{_name}",
            default_kwargs=dict(block=_block, repeats=_repeats, groups=_groups, base_width=_base_width, se=_se),
            **_PREPROCESSING.get(_name, {}),
        ),
    )
