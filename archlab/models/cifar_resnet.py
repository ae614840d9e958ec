"""ResNets for CIFAR-size (32x32) images, their plain twins, and the pre-activation ResNets.

* He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Section 4.2: a 3x3
  conv with 16 filters, then three stages of ``n`` BasicBlocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
  filters, global average pooling and a fully connected layer: ``6n + 2`` weighted layers. Shortcuts are "option A":
  identities, subsampled by 2 and zero-padded with extra channels where the shape changes, so they add no
  parameter and a *plain* net with the same layers has exactly the same parameter count (the paper's Fig. 6).
* He, Zhang, Ren & Sun 2016, "Identity Mappings in Deep Residual Networks" (arXiv:1603.05027): BN-ReLU moved before
  each conv ("pre-activation") so the shortcut path stays a pure identity from block to block; bottleneck blocks
  (1x1, 3x3, 1x1 with 4x expansion to 64/128/256 channels) give ``9n + 2`` layers — ResNet-164 and ResNet-1001.
  Where the shape changes, the shortcut is a 1x1 projection that shares the block's pre-activation.
* Xie, Girshick, Dollár, Tu & He 2016, "Aggregated Residual Transformations for Deep Neural Networks"
  (arXiv:1611.05431), Sec. 5.3 / Table 7: ResNeXt-29 for CIFAR, a 64-filter 3x3 stem and three stages of three
  bottleneck blocks (1x1, grouped 3x3, 1x1 to 256/512/1024 channels), ``9n + 2`` layers; "8x64d" is 8 groups of 64
  channels in the first stage (torchvision's width rule, :class:`archlab.models.resnet.Bottleneck`, projection
  shortcuts where the shape changes).

Two switches serve the design studies (``archlab study``): ``se=True`` adds squeeze-and-excitation (Hu et al. 2017,
arXiv:1709.01507, r = 16) to every residual branch, and ``width_mult`` scales every width (stem included), the
"width" axis of compound scaling (Tan & Le 2019, arXiv:1905.11946). With ``width_mult=0.5`` the ResNeXt-29 template
takes ResNeXt's Table 3 templates (1x64d, 2x40d, 4x24d, 8x14d, 32x4d) at matched multiply-adds, within 3%.

No library ships these models, so there is no reference implementation and no checkpoint naming to follow.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archlab.layers import ConvNormAct, DropPath, SqueezeExcite, init_weights, residual_add
from archlab.models.base import ArchNet, linear_or_identity
from archlab.models.resnet import Bottleneck
from archlab.registry import ModelCard, register

STAGE_STRIDES = (1, 2, 2)  # 32x32 -> 32x32, 16x16, 8x8: the maps the paper names


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: take every ``stride``-th pixel and append zero channels up to ``out_chs``; no parameter."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"a zero-padding shortcut cannot reduce channels ({in_chs} -> {out_chs})")
        self.extra_chs, self.stride = out_chs - in_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's 6-tuple pads (W, H, C) from the last dim backwards: only channels, at the end.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_chs)) if self.extra_chs else x


SE_RATIO = 16  # the SENet paper's reduction r (Sec. 6.1), kept for its CIFAR ResNets too


def squeeze_excite(channels: int) -> SqueezeExcite:
    """SE with C / r squeezed channels as the paper writes it (at least 1: the 16-channel stage squeezes to 1)."""
    return SqueezeExcite(channels, max(1, channels // SE_RATIO))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, (SE,) + shortcut, ReLU (He 2015, Fig. 2). ``residual=False`` drops the
    shortcut; ``se`` gates the branch before the addition (Hu et al. 2017, Fig. 3)."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int, residual: bool, drop_path: float,
                 se: bool = False, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        _no_groups(type(self).__name__, groups, base_width)
        self.conv1 = ConvNormAct(in_chs, width, 3, stride)
        self.conv2 = ConvNormAct(width, width, 3, act=None)
        self.se = squeeze_excite(width) if se else None
        self.shortcut = ZeroPadShortcut(in_chs, width, stride) if residual else None
        self.drop_path = DropPath(drop_path)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is not None:
            out = residual_add(out, self.shortcut(x), self.drop_path)
        return self.act(out)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4 channels), + identity (He 2016, Fig. 4e).

    Where the shape changes the shortcut is a 1x1 projection of the *pre-activated* input, as in the paper's
    appendix ("these projection shortcuts are also with pre-activation"); elsewhere the input passes untouched.
    """

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int, residual: bool, drop_path: float,
                 se: bool = False, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        _no_groups(type(self).__name__, groups, base_width)
        if not residual:
            raise ValueError("a pre-activation block without its shortcut has no final activation; not supported")
        out_chs = width * self.expansion
        self.norm1, self.act1 = nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.norm2, self.act2 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.norm3, self.act3 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.se = squeeze_excite(out_chs) if se else None
        projects = stride != 1 or in_chs != out_chs
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False) if projects else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.norm2(out)))
        out = self.conv3(self.act3(self.norm3(out)))
        if self.se is not None:
            out = self.se(out)
        return residual_add(out, shortcut, self.drop_path)


class ResNeXtBottleneck(Bottleneck):
    """ResNeXt's block (Xie et al. 2016, Fig. 3c): 1x1 to ``int(width * base_width / 64) * groups`` channels, grouped
    3x3 (stride), 1x1 to ``4 * width``, + shortcut (projection where the shape changes), ReLU: the ImageNet ResNeXt
    bottleneck itself, here in the CIFAR loop's signature."""

    def __init__(self, in_chs: int, width: int, stride: int, residual: bool, drop_path: float,
                 se: bool = False, groups: int = 1, base_width: int = 64) -> None:
        if not residual:
            raise ValueError("the ResNeXt block always has its shortcut")
        super().__init__(in_chs, width, stride, 1, 1, groups, base_width, se, drop_path)


def _no_groups(block: str, groups: int, base_width: int) -> None:
    if (groups, base_width) != (1, 64):
        raise ValueError(f"{block} has no grouped conv: groups and base_width apply to the ResNeXt models "
                         f"(cifar_resnext29_8x64d), got groups={groups}, base_width={base_width}")


class BlockKind(NamedTuple):
    block: type[nn.Module]
    residual: bool  # False: the plain twin, same layers without shortcuts
    layers_per_block: int  # weighted layers of one block counted in the depth (shortcut projections are not)
    widths: tuple[int, int, int]  # inner width of the blocks of each stage; stage output = width * expansion
    preact: bool  # pre-activation: bare stem conv, and a final BN-ReLU before pooling
    stem: int = 16  # channels of the 3x3 stem conv


BLOCK_KINDS: dict[str, BlockKind] = {
    "basic": BlockKind(BasicBlock, True, 2, (16, 32, 64), False),  # depth 6n + 2
    "plain": BlockKind(BasicBlock, False, 2, (16, 32, 64), False),
    "preact_bottleneck": BlockKind(PreActBottleneck, True, 3, (16, 32, 64), True),  # depth 9n + 2
    "resnext": BlockKind(ResNeXtBottleneck, True, 3, (64, 128, 256), False, stem=64),  # depth 9n + 2
}


def blocks_per_stage(kind: BlockKind, depth: int) -> int:
    """``n`` of the papers' depth formulas: depth = 3 stages * n blocks * layers per block + stem conv + FC."""
    per_stage = len(kind.widths) * kind.layers_per_block
    n, rest = divmod(depth - 2, per_stage)
    if n < 1 or rest:
        raise ValueError(f"depth must be {per_stage}n + 2 with n >= 1 for these blocks, got {depth}")
    return n


class CifarResNet(ArchNet):
    """A CIFAR ResNet from a block kind and a depth: 3x3 stem, three stages of n blocks, global pool, FC."""

    def __init__(
        self,
        kind: BlockKind,
        depth: int,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        se: bool = False,
        width_mult: float = 1.0,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if drop_path_rate and not kind.residual:
            raise ValueError("a plain network has no residual branches, so drop_path_rate must be 0")
        if not isinstance(se, bool):  # "false" would be truthy: an SE network built by mistake
            raise ValueError(f"se must be True or False, got {se!r}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
        for key, value in (("groups", groups), ("base_width", base_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        self.num_classes, self.in_chans, self.drop_rate, self.depth = num_classes, in_chans, drop_rate, depth
        n = blocks_per_stage(kind, depth)

        def scaled(chs: int) -> int:
            return max(1, int(round(chs * width_mult)))

        stem = scaled(kind.stem)
        # A pre-activation net's first block normalizes its own input, so its stem is a bare conv.
        if kind.preact:
            self.stem: nn.Module = nn.Conv2d(in_chans, stem, 3, padding=1, bias=False)
        else:
            self.stem = ConvNormAct(in_chans, stem, 3)
        chs, reduction, index, total = stem, 1, 0, 3 * n
        stages: list[nn.Module] = []
        self.feature_info = []
        for stage, (width, stride) in enumerate(zip(kind.widths, STAGE_STRIDES)):
            width = scaled(width)
            blocks = []
            for i in range(n):
                # Stochastic depth rises linearly to drop_path_rate at the last block (Huang et al. 2016).
                rate = drop_path_rate * (index + 1) / total
                blocks.append(kind.block(chs, width, stride if i == 0 else 1, kind.residual, rate, se=se,
                                         groups=groups, base_width=base_width))
                chs, index = width * kind.block.expansion, index + 1
            stages.append(nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append(dict(module=f"stages.{stage}", num_chs=chs, reduction=reduction))
        self.stages = nn.Sequential(*stages)
        # Pre-activation sums are never normalized inside the net: the paper adds one BN-ReLU after the last block.
        self.final_act = nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True)) if kind.preact else nn.Identity()
        if kind.preact:
            self.feature_info[-1] = dict(module="final_act", num_chs=chs, reduction=reduction)
        self.num_features = chs
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_or_identity(chs, num_classes)
        init_weights(self, linear="default")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def cifar_resnet(
    block: str,
    depth: int,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    se: bool = False,
    width_mult: float = 1.0,
    groups: int = 1,
    base_width: int = 64,
) -> CifarResNet:
    """Any depth of the 6n+2 / 9n+2 families, e.g. ``create_model("cifar_resnet110", depth=1202)``;
    ``cifar_resnet20:se=True`` (SE-ResNet-20), ``cifar_resnet20:width_mult=1.5``,
    ``cifar_resnext29_8x64d:groups=32,base_width=4,width_mult=0.5`` (the 32x4d template at half width)."""
    if block not in BLOCK_KINDS:
        raise ValueError(f"unknown block {block!r}; known: {', '.join(BLOCK_KINDS)}")
    return CifarResNet(BLOCK_KINDS[block], depth, num_classes, in_chans, drop_rate, drop_path_rate, se=se,
                       width_mult=width_mult, groups=groups, base_width=base_width)


_PAPERS = {
    "basic": (2015, "Deep Residual Learning for Image Recognition", "1512.03385"),
    "plain": (2015, "Deep Residual Learning for Image Recognition", "1512.03385"),
    "preact_bottleneck": (2016, "Identity Mappings in Deep Residual Networks", "1603.05027"),
    "resnext": (2016, "Aggregated Residual Transformations for Deep Neural Networks", "1611.05431"),
}
# Parameter counts as published (for 10 classes): ResNets from He 2015 Table 6 (0.27M ... 1.7M), pre-activation
# nets from He 2016 Table 3 (1.7M, 10.2M), ResNeXt-29 from Xie 2016 Table 7 (34.4M). A plain twin has the ResNet's layers and option A adds no parameter,
# so it has the same count. CIFAR-10 test error (%) as published; the paper gives no figure for plain-20..56
# (Fig. 6 plots them).
_VARIANTS = [
    # name, block, depth, params, what it shows
    ("cifar_resnet20", "basic", 20, 270_000, "CIFAR-10 error 8.75% (He 2015 Table 6)"),
    ("cifar_resnet32", "basic", 32, 460_000, "CIFAR-10 error 7.51% (He 2015 Table 6)"),
    ("cifar_resnet44", "basic", 44, 660_000, "CIFAR-10 error 7.17% (He 2015 Table 6)"),
    ("cifar_resnet56", "basic", 56, 850_000, "CIFAR-10 error 6.97% (He 2015 Table 6)"),
    ("cifar_resnet110", "basic", 110, 1_700_000, "CIFAR-10 error 6.43%, 6.61±0.16 over 5 runs (He 2015 Table 6)"),
    ("cifar_plain20", "plain", 20, 270_000, "deeper plain nets train worse (He 2015 Fig. 6)"),
    ("cifar_plain32", "plain", 32, 460_000, "deeper plain nets train worse (He 2015 Fig. 6)"),
    ("cifar_plain44", "plain", 44, 660_000, "deeper plain nets train worse (He 2015 Fig. 6)"),
    ("cifar_plain56", "plain", 56, 850_000, "deeper plain nets train worse (He 2015 Fig. 6)"),
    ("cifar_plain110", "plain", 110, 1_700_000, "CIFAR-10 error above 60% (He 2015 Fig. 6 caption)"),
    ("preact_resnet164", "preact_bottleneck", 164, 1_700_000, "CIFAR-10 error 5.46% (He 2016 Table 3)"),
    ("preact_resnet1001", "preact_bottleneck", 1001, 10_200_000, "CIFAR-10 error 4.92% (He 2016 Table 3)"),
    ("cifar_resnext29_8x64d", "resnext", 29, 34_400_000, "CIFAR-10 error 3.65% (Xie 2016 Table 7)"),
]
# Builder arguments beyond block and depth (ResNeXt's cardinality and group width).
_EXTRA_KWARGS = {"cifar_resnext29_8x64d": dict(groups=8, base_width=64)}
_INNOVATIONS = {
    "basic": "Residual learning on CIFAR: parameter-free identity shortcuts (option A)",
    "plain": "Plain baseline, the ResNet's layers without shortcuts: the degradation problem",
    "preact_bottleneck": "Pre-activation residual units (BN-ReLU before each conv) keep the shortcut a pure identity",
    "resnext": "Cardinality on CIFAR: 8 grouped paths of 64 channels in each bottleneck's 3x3",
}

for _name, _block, _depth, _params, _result in _VARIANTS:
    _year, _paper, _arxiv = _PAPERS[_block]
    register(
        cifar_resnet,
        ModelCard(
            name=_name,
            family="cifar_resnet",
            year=_year,
            paper=_paper,
            arxiv=_arxiv,
            innovation=f"{_INNOVATIONS[_block]}; {_result}",
            input_size=32,
            # Every stride-2 layer pads, so even a 1x1 input runs (each stage maps k pixels to ceil(k / 2)).
            min_input_size=1,
            params=_params,
            # CIFAR-10 training-set statistics; the papers subtract the per-pixel mean and use 32x32 uncropped.
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            crop_pct=1.0,
            default_kwargs=dict(block=_block, depth=_depth, **_EXTRA_KWARGS.get(_name, {})),
            # The published figures are for CIFAR-10; create_model still defaults to 1000 classes like every model.
            num_classes=10,
        ),
    )
