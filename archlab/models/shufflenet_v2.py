"""ShuffleNet V2 (Ma, Zhang, Zheng & Sun 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", arXiv:1807.11164): a network designed for measured speed, not multiply-adds, by four guidelines — equal
input and output widths minimise memory access (G1), group convolutions cost memory access (G2), fragmented
branches hurt parallelism (G3), element-wise ops are not free (G4).

Its unit (Figure 3c) *splits* the channels in two: one half passes untouched (feature reuse, no add: G4), the
other goes through 1x1 conv → 3x3 depthwise → 1x1 conv at constant width (G1, plain 1x1s: G2); the halves are
concatenated and *shuffled* (:func:`channel_shuffle`) so that information crosses between them in the next unit.
The downsampling unit (Figure 3d) has no split: both branches see the whole input, at stride 2, doubling the width.

Layer names follow torchvision (``stage2.0.branch1.0``, ``conv5.0``, ``fc``), so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from archlab.layers import ConvNormAct
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register

# Table 5: the stages and their repeats; the first unit of each stage has stride 2 (Figure 3d), the others 1 (3c).
SHUFFLENET_V2_STAGES: list[tuple[str, int]] = [
    # name, repeat
    ("stage2", 4),
    ("stage3", 8),
    ("stage4", 4),
]
# Table 5's output channels per width multiplier: Conv1, Stage2, Stage3, Stage4, Conv5.
SHUFFLENET_V2_WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "0.5x": (24, 48, 96, 192, 1024),
    "1.0x": (24, 116, 232, 464, 1024),
    "1.5x": (24, 176, 352, 704, 1024),
    "2.0x": (24, 244, 488, 976, 2048),
}


@torch.fx.wrap  # one node in an fx graph: its body reads the memory layout, which a traced Proxy cannot
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet, arXiv:1707.01083, Figure 1c): channels in the order
    g0[0], g1[0], ..., g0[1], g1[1], ... — a reshape to (groups, C / groups), a transpose, a flatten.

    The result keeps the input's memory layout: a channels-last input is shuffled as (N, H, W, C), so that the
    copy comes out channels-last and the convolutions after it stay on their channels-last kernels (the NCHW form
    of the same shuffle would hand every following conv an NCHW tensor)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).unflatten(3, (groups, -1)).transpose(3, 4).flatten(3, 4).permute(0, 3, 1, 2)
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """The ShuffleNet V2 unit: stride 1 splits the channels and transforms one half (Figure 3c); stride 2 runs a
    3x3/2 depthwise → 1x1 branch beside the main one on the whole input (Figure 3d); then concat and shuffle."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs % 2:
            raise ValueError(f"a ShuffleNet V2 unit needs an even output width, got {out_chs}")
        half = out_chs // 2
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"a stride-1 unit keeps its width (G1): in {in_chs} != out {out_chs}")
        self.stride = stride
        if stride > 1:
            # BN, no ReLU, after the depthwise conv (as in the main branch): the keys branch1.0 ... branch1.3.
            self.branch1 = nn.Sequential(*ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs, act=None),
                                         *ConvNormAct(in_chs, half, 1))
        branch_in = in_chs if stride > 1 else half
        self.branch2 = nn.Sequential(*ConvNormAct(branch_in, half, 1),
                                     *ConvNormAct(half, half, 3, stride, groups=half, act=None),
                                     *ConvNormAct(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            halves = x.chunk(2, dim=1)  # indexed, not unpacked: torch.fx cannot unpack a traced value
            out = torch.cat((halves[0], self.branch2(halves[1])), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ArchNet):
    """ShuffleNet V2 from Table 5: 3x3/2 conv, 3x3/2 max-pool, three stages of units, 1x1 conv, global pool, FC."""

    def __init__(
        self,
        widths: tuple[int, int, int, int, int],
        stages: list[tuple[str, int]] = SHUFFLENET_V2_STAGES,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("ShuffleNet V2 has no residual additions (the kept half is concatenated, not added), "
                             "so drop_path_rate must be 0")
        if len(widths) != len(stages) + 2:
            raise ValueError(f"ShuffleNet V2 needs {len(stages) + 2} widths (conv1, each stage, conv5), got {widths}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.conv1 = ConvNormAct(in_chans, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = [dict(module="conv1", num_chs=widths[0], reduction=2),
                             dict(module="maxpool", num_chs=widths[0], reduction=4)]
        chs, reduction = widths[0], 4
        self.stage_names = []
        for (name, repeat), out_chs in zip(stages, widths[1:-1]):
            units = [ShuffleUnit(chs, out_chs, 2)] + [ShuffleUnit(out_chs, out_chs, 1) for _ in range(repeat - 1)]
            self.add_module(name, nn.Sequential(*units))
            self.stage_names.append(name)
            chs, reduction = out_chs, reduction * 2
            # The last stage's output is followed by conv5 at the same resolution: conv5 is the stage output.
            if len(self.stage_names) < len(stages):
                self.feature_info.append(dict(module=name, num_chs=chs, reduction=reduction))
        self.num_features = widths[-1]
        self.conv5 = ConvNormAct(chs, self.num_features, 1)
        self.feature_info.append(dict(module="conv5", num_chs=self.num_features, reduction=reduction))
        self.dropout = nn.Dropout(drop_rate)  # torchvision has none (rate 0)
        self.fc = linear_or_identity(self.num_features, num_classes)
        # torchvision initialises nothing itself: PyTorch's default init.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.conv5(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


def shufflenet_v2(width: str = "1.0x", **kwargs) -> ShuffleNetV2:
    if width not in SHUFFLENET_V2_WIDTHS:
        raise ValueError(f"unknown ShuffleNet V2 width {width!r}; one of {', '.join(SHUFFLENET_V2_WIDTHS)}")
    return ShuffleNetV2(SHUFFLENET_V2_WIDTHS[width], **kwargs)


# Published figures from torchvision's ShuffleNet_V2_*_Weights.IMAGENET1K_V1 metadata: num_params, _ops (GMACs at
# 224) and acc@1. torchvision gives 0.5x's multiply-adds as 0.04 G, one significant digit: our count, 40.48 M, rounds
# to it but is 1.2% above 40 M. (The paper's Table 5 "FLOPs", multiply-adds of the authors' models, are 41M, 146M,
# 299M and 591M: 0.7-1.3% above these counts.)
_VARIANTS = [
    # name, width, params, macs, top1, resize (torchvision's evaluation: a 224 crop of a 256 or 232 resize)
    ("shufflenet_v2_x0_5", "0.5x", 1_366_792, 40_000_000, 60.552, 256),
    ("shufflenet_v2_x1_0", "1.0x", 2_278_604, 145_000_000, 69.362, 256),
    ("shufflenet_v2_x1_5", "1.5x", 3_503_624, 296_000_000, 72.996, 232),
    ("shufflenet_v2_x2_0", "2.0x", 7_393_996, 583_000_000, 76.230, 232),
]

for _name, _width, _params, _macs, _top1, _resize in _VARIANTS:
    register(
        shufflenet_v2,
        ModelCard(
            name=_name,
            family="shufflenet_v2",
            year=2018,
            paper="ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
            arxiv="1807.11164",
            innovation="Channel split and channel shuffle: half the channels pass through, equal-width 1x1 convs, "
                       "designed for measured speed (memory access), not FLOPs",
            # torchvision's min_size 1: every conv and pool is padded.
            min_input_size=1,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            crop_pct=224 / _resize,
            default_kwargs=dict(width=_width),
        ),
    )
