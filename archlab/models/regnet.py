"""RegNet (Radosavovic, Kosaraju, Girshick, He & Dollár 2020, "Designing Network Design Spaces", arXiv:2003.13678):
a *design space* rather than a network. Every RegNet is a stem (3x3/2 conv, 32 channels), stages of residual
bottleneck blocks with grouped 3x3 convs (the "X block"; RegNetY adds squeeze-excitation) and a pooled FC head.
Which widths and depths the stages get follows from six numbers by the quantized linear rule of Sec. 3.3
(:func:`regnet_widths`): a linear ramp of block widths ``u_j = w0 + wa * j`` over the ``depth`` blocks, snapped to
the nearest power of ``wm`` times ``w0`` and to a multiple of 8; blocks of equal width form a stage.

``create_model("regnet", w0=..., wa=..., wm=..., depth=..., group_width=...)`` builds any point of the space; each
released model is one row of :data:`REGNET_ROWS`. ``widths=(...)`` with ``depths=(...)`` builds a point of the wider
AnyNetX space instead (Sec. 3.1: free per-stage widths and depths; one group width and bottleneck ratio shared by
the stages, as AnyNetX_C), the quantized linear rule's parameters then unused (:func:`anynet_stages`). Layer
names follow torchvision (``stem``, ``trunk_output.blockI.blockI-J.{proj,f.a,f.b,f.se,f.c}``, ``fc``) so its
checkpoints load unchanged.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archlab.layers import ConvNormAct, DropPath, SqueezeExcite, init_weights, make_divisible, residual_add
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register

STEM_WIDTH = 32  # the paper's fixed stem: 3x3 conv, stride 2, 32 channels (Sec. 3, Fig. 3)
WIDTH_QUANTUM = 8  # block widths are multiples of 8 (Sec. 3.3)
STAGE_STRIDE = 2  # every stage starts with a stride-2 block


class RegNetStage(NamedTuple):
    """One stage of a RegNet: ``depth`` blocks of output ``width`` whose 3x3 convs have groups of ``group_width``
    channels (the first block strides by 2)."""

    width: int
    depth: int
    group_width: int


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object, what: str) -> int:
    # 20.0 is 20 (a sampler may hand out floats); 2.5 is refused, not truncated.
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        raise ValueError(f"{name} ({what}) must be an integer >= 1, got {value!r}")
    return int(value)


def regnet_widths(
    w0: float,
    wa: float,
    wm: float,
    depth: int,
    group_width: int,
    bottleneck_ratio: float = 1.0,
) -> list[RegNetStage]:
    """The stages of the RegNet with these design-space parameters: the quantized linear rule (paper Sec. 3.3).

    1. A linear ramp of widths over the ``depth`` blocks: ``u_j = w0 + wa * j`` (Eq. 2).
    2. Each ``u_j`` written as ``w0 * wm ** s_j``; ``s_j`` rounded to an integer, so widths take only the values
       ``w0 * wm ** k`` (Eq. 3-4), then rounded to a multiple of 8. Consecutive blocks of one width are a stage.
    3. Group/bottleneck compatibility (the X block): a group is never wider than the bottleneck (``group_width``
       becomes ``min(group_width, width * bottleneck_ratio)``), and the bottleneck width is rounded to a multiple
       of the group width (to the nearest multiple, never more than 10% down: torchvision's rule), which can move
       a stage width off the multiple of 8 (RegNetX-400MF: 24 -> 32 with groups of 16).

    Pure and cheap (no model is built): a design-space search can sample from it. Returns one
    :class:`RegNetStage` (width, depth, group width) per stage. Raises a ValueError naming the parameter that
    puts the point outside the space.
    """
    w0 = _number("w0", w0)
    if w0 <= 0 or w0 % WIDTH_QUANTUM:
        raise ValueError(f"w0 (initial width) must be a positive multiple of {WIDTH_QUANTUM}, got {w0:g}")
    wa = _number("wa", wa)
    if wa < 0:
        raise ValueError(f"wa (width slope) must be >= 0, got {wa:g}")
    wm = _number("wm", wm)
    if wm <= 1:
        raise ValueError(f"wm (width multiplier) must be > 1, got {wm:g}")
    depth = _positive_int("depth", depth, "number of blocks")
    group_width = _positive_int("group_width", group_width, "channels per group")
    bottleneck_ratio = _number("bottleneck_ratio", bottleneck_ratio)
    if bottleneck_ratio <= 0:
        raise ValueError(f"bottleneck_ratio must be > 0, got {bottleneck_ratio:g}")

    # In float32 tensor arithmetic, as torchvision computes it: the rule has exact ties (w0=200, wm=2.3: 460 / 8 =
    # 57.5) that float64 misses by an ulp (459.99999999999994), which would give 456 where torchvision builds 464.
    # Explicitly on the CPU, so that building under `torch.device("meta")` (archlab.analysis) still gets numbers.
    j = torch.arange(depth, device="cpu")
    ramp = j * wa + w0  # u_j (Eq. 2)
    exponent = torch.round(torch.log(ramp / w0) / math.log(wm))  # s_j rounded (Eq. 3-4)
    quantized = torch.round(w0 * torch.pow(torch.tensor(wm, device="cpu"), exponent) / WIDTH_QUANTUM)
    block_widths = (quantized * WIDTH_QUANTUM).int().tolist()
    # The widths never decrease along the ramp, so runs of equal width are the stages.
    runs: list[list[int]] = []
    for w in block_widths:
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return _compatible_stages(runs, group_width, bottleneck_ratio)


def anynet_stages(widths: tuple[int, ...], depths: tuple[int, ...], group_width: int,
                  bottleneck_ratio: float = 1.0) -> list[RegNetStage]:
    """The stages of a point of AnyNetX (paper Sec. 3.1): stage ``i`` has ``depths[i]`` blocks of width
    ``widths[i]`` (free, not from the linear rule), one group width and bottleneck ratio for every stage (AnyNetX_C),
    made compatible as in :func:`regnet_widths`. A ValueError names what is out of the space."""
    if not isinstance(widths, (tuple, list)) or not isinstance(depths, (tuple, list)) or not widths or \
            len(widths) != len(depths):
        raise ValueError(f"widths and depths must be two sequences of the same length (one entry per stage), got "
                         f"widths={widths!r}, depths={depths!r}")
    runs = []
    for i, (w, d) in enumerate(zip(widths, depths), start=1):
        w = _positive_int(f"widths[{i - 1}]", w, f"width of stage {i}")
        if w % WIDTH_QUANTUM:
            raise ValueError(f"widths[{i - 1}] (width of stage {i}) must be a multiple of {WIDTH_QUANTUM}, got {w}")
        runs.append([w, _positive_int(f"depths[{i - 1}]", d, f"blocks of stage {i}")])
    group_width = _positive_int("group_width", group_width, "channels per group")
    bottleneck_ratio = _number("bottleneck_ratio", bottleneck_ratio)
    if bottleneck_ratio <= 0:
        raise ValueError(f"bottleneck_ratio must be > 0, got {bottleneck_ratio:g}")
    return _compatible_stages(runs, group_width, bottleneck_ratio)


def _compatible_stages(runs: list[list[int]], group_width: int, bottleneck_ratio: float) -> list[RegNetStage]:
    """(width, blocks) runs as stages whose groups fit their bottlenecks (step 3 of :func:`regnet_widths`)."""
    stages = []
    for width, n in runs:
        bottleneck = int(width * bottleneck_ratio)
        if bottleneck < 1:
            raise ValueError(
                f"bottleneck_ratio {bottleneck_ratio:g} leaves a stage of width {width} without a bottleneck channel"
            )
        g = min(group_width, bottleneck)
        width = int(make_divisible(bottleneck, g) / bottleneck_ratio)
        # What the block will build: its bottleneck is round(width * ratio) wide and must split into whole groups.
        if int(round(width * bottleneck_ratio)) % g:
            raise ValueError(
                f"group_width {group_width} does not divide the bottleneck width {round(width * bottleneck_ratio)} "
                f"of a stage of width {width} (bottleneck_ratio {bottleneck_ratio:g}); choose a group_width and "
                "bottleneck_ratio whose product with the quantized widths is whole groups"
            )
        stages.append(RegNetStage(width, n, g))
    return stages


class ResBottleneckBlock(nn.Module):
    """The X block (Fig. 4): 1x1 conv to the bottleneck width, 3x3 grouped conv (carrying the stride), [SE,] 1x1
    conv back to ``out_chs``; a projection shortcut (1x1 conv + BN) where the shape changes; ReLU after the add.

    RegNetY's SE sits after the 3x3 conv and squeezes to ``se_ratio`` of the block's *input* width (Sec. 4, "RegNetY").
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, group_width: int, bottleneck_ratio: float,
        se_ratio: float | None, drop_path: float,
    ) -> None:
        super().__init__()
        inner = int(round(out_chs * bottleneck_ratio))
        self.proj = (
            ConvNormAct(in_chs, out_chs, 1, stride, act=None) if stride != 1 or in_chs != out_chs else None
        )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = ConvNormAct(in_chs, inner, 1)
        layers["b"] = ConvNormAct(inner, inner, 3, stride, groups=inner // group_width)
        if se_ratio:
            layers["se"] = SqueezeExcite(inner, int(round(se_ratio * in_chs)), act="relu")
        layers["c"] = ConvNormAct(inner, out_chs, 1, act=None)
        self.f = nn.Sequential(layers)
        self.drop_path = DropPath(drop_path)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(residual_add(self.f(x), shortcut, self.drop_path))


class RegNet(ArchNet):
    """Any RegNet of the design space: stem, one stage per :func:`regnet_widths` entry, global pool, FC.

    ``se_ratio`` 0 or None gives RegNetX, 0.25 the paper's RegNetY. ``widths`` and ``depths`` (one entry per stage)
    give an AnyNetX network instead of the rule's (:func:`anynet_stages`).
    """

    def __init__(
        self,
        w0: float,
        wa: float,
        wm: float,
        depth: int,
        group_width: int,
        bottleneck_ratio: float = 1.0,
        se_ratio: float | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        widths: tuple[int, ...] | None = None,
        depths: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if widths is None and depths is None:
            stages = regnet_widths(w0, wa, wm, depth, group_width, bottleneck_ratio)
        else:  # a point of AnyNetX: w0, wa, wm and depth are not used
            stages = anynet_stages(widths, depths, group_width, bottleneck_ratio)
        if se_ratio is not None and not 0.0 <= _number("se_ratio", se_ratio) <= 1.0:
            raise ValueError(f"se_ratio must be in [0, 1] (0 or None: no SE, RegNetX), got {se_ratio:g}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.stages = stages
        self.stem = ConvNormAct(in_chans, STEM_WIDTH, 3, 2)
        self.feature_info = [dict(module="stem", num_chs=STEM_WIDTH, reduction=2)]

        chs, reduction = STEM_WIDTH, 2
        total, index = sum(s.depth for s in stages), 0
        trunk: OrderedDict[str, nn.Module] = OrderedDict()
        for i, stage in enumerate(stages, start=1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(stage.depth):
                # Stochastic depth rising linearly from 0 at the first block to drop_path_rate at the last (timm's
                # RegNet); torchvision's has none (rate 0).
                rate = drop_path_rate * index / max(total - 1, 1)
                blocks[f"block{i}-{j}"] = ResBottleneckBlock(
                    chs, stage.width, STAGE_STRIDE if j == 0 else 1, stage.group_width, bottleneck_ratio, se_ratio,
                    rate,
                )
                chs, index = stage.width, index + 1
            reduction *= STAGE_STRIDE
            trunk[f"block{i}"] = nn.Sequential(blocks)
            self.feature_info.append(dict(module=f"trunk_output.block{i}", num_chs=chs, reduction=reduction))
        self.trunk_output = nn.Sequential(trunk)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs
        self.fc = linear_or_identity(chs, num_classes)
        # He normal on fan_out for convs, N(0, 0.01) for the FC: the paper's (pycls) and torchvision's init.
        init_weights(self, linear="normal")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_output(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes


class RegNetRow(NamedTuple):
    """One released model: its design-space parameters (the pycls model zoo's, which torchvision uses) and the
    figures of torchvision's default weights."""

    name: str
    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int
    se_ratio: float | None
    params: int
    macs: int
    top1: float


# Parameters: torchvision's builders (the pycls configs of the paper's models; RegNetY-128GF is SWAG's,
# arXiv:2201.08371). Figures: torchvision's DEFAULT weights meta (num_params; _ops, its "GFLOPS", counts
# multiply-adds, at the weights' evaluation crop; acc@1): IMAGENET1K_V2 (torchvision's newer recipe, evaluated at
# 224 after resizing to 232), except RegNetY-128GF, whose only ImageNet-1K weights are fine-tuned from SWAG's
# weakly supervised pre-training (IMAGENET1K_SWAG_E2E_V1, evaluated at 384, bicubic).
REGNET_ROWS: list[RegNetRow] = [
    # name, depth, w0, wa, wm, group_width, se_ratio, params, macs, top1
    RegNetRow("regnet_x_400mf", 22, 24, 24.48, 2.54, 16, None, 5_495_976, 414_000_000, 74.864),
    RegNetRow("regnet_x_800mf", 16, 56, 35.73, 2.28, 16, None, 7_259_656, 800_000_000, 77.522),
    RegNetRow("regnet_x_1_6gf", 18, 80, 34.01, 2.25, 24, None, 9_190_136, 1_603_000_000, 79.668),
    RegNetRow("regnet_x_3_2gf", 25, 88, 26.31, 2.25, 48, None, 15_296_552, 3_177_000_000, 81.196),
    RegNetRow("regnet_x_8gf", 23, 80, 49.56, 2.88, 120, None, 39_572_648, 7_995_000_000, 81.682),
    RegNetRow("regnet_x_16gf", 22, 216, 55.59, 2.1, 128, None, 54_278_536, 15_941_000_000, 82.716),
    RegNetRow("regnet_x_32gf", 23, 320, 69.86, 2.0, 168, None, 107_811_560, 31_736_000_000, 83.014),
    RegNetRow("regnet_y_400mf", 16, 48, 27.89, 2.09, 8, 0.25, 4_344_144, 402_000_000, 75.804),
    RegNetRow("regnet_y_800mf", 14, 56, 38.84, 2.4, 16, 0.25, 6_432_512, 834_000_000, 78.828),
    RegNetRow("regnet_y_1_6gf", 27, 48, 20.71, 2.65, 24, 0.25, 11_202_430, 1_612_000_000, 80.876),
    RegNetRow("regnet_y_3_2gf", 21, 80, 42.63, 2.66, 24, 0.25, 19_436_338, 3_176_000_000, 81.982),
    RegNetRow("regnet_y_8gf", 17, 192, 76.82, 2.19, 56, 0.25, 39_381_472, 8_473_000_000, 82.828),
    RegNetRow("regnet_y_16gf", 18, 200, 106.23, 2.48, 112, 0.25, 83_590_140, 15_912_000_000, 82.886),
    RegNetRow("regnet_y_32gf", 20, 232, 115.89, 2.53, 232, 0.25, 145_046_770, 32_280_000_000, 83.368),
    RegNetRow("regnet_y_128gf", 27, 456, 160.83, 2.52, 264, 0.25, 644_812_894, 374_570_000_000, 88.228),
]

_PAPER = "Designing Network Design Spaces"
_INNOVATION = {
    "x": "A design space, not a network: stage widths and depths from a quantized linear rule (w0, wa, wm, depth)",
    "y": "RegNetX's quantized linear widths plus squeeze-excitation in every block",
}
_SWAG_NOTE = (
    "Not one of the paper's models: RegNetY-128GF is the RegNet of SWAG (Singh et al. 2022, 'Revisiting Weakly "
    "Supervised Pre-Training of Visual Perception Models', arXiv:2201.08371). Its published figures are those of "
    "the IMAGENET1K_SWAG_E2E_V1 weights (pre-trained on Instagram hashtags, fine-tuned end to end on ImageNet-1K), "
    "evaluated at 384x384 (bicubic, no crop); torchvision publishes no weights trained on ImageNet-1K alone."
)
_V2_NOTE = (
    "Published figures: torchvision's IMAGENET1K_V2 weights (its newer training recipe, evaluated at 224 after "
    "resizing to 232), torchvision's default; its earlier IMAGENET1K_V1 weights are released too."
)

for _row in REGNET_ROWS:
    _swag = _row.name == "regnet_y_128gf"
    register(
        RegNet,
        ModelCard(
            name=_row.name,
            family="regnet",
            year=2020,
            paper=_PAPER,
            arxiv="2003.13678",
            innovation=_INNOVATION["y" if _row.se_ratio else "x"],
            input_size=384 if _swag else 224,
            # A 1x1 input survives: every strided conv (3x3 pad 1, 1x1 shortcut) maps 1 pixel to 1 pixel.
            min_input_size=1,
            params=_row.params,
            macs=_row.macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_row.top1,
            top1_source="torchvision IMAGENET1K_SWAG_E2E_V1 weights" if _swag else "torchvision IMAGENET1K_V2 weights",
            reference=f"torchvision:{_row.name}",
            interpolation="bicubic" if _swag else "bilinear",
            crop_pct=1.0 if _swag else 224 / 232,
            notes=_SWAG_NOTE if _swag else _V2_NOTE,
            default_kwargs=dict(
                w0=_row.w0, wa=_row.wa, wm=_row.wm, depth=_row.depth, group_width=_row.group_width,
                se_ratio=_row.se_ratio,
            ),
        ),
    )

# The design space itself: any (w0, wa, wm, depth, group_width, bottleneck_ratio, se_ratio); the defaults are
# RegNetX-400MF's, whose figures the card gives.
_X400 = REGNET_ROWS[0]
register(
    RegNet,
    ModelCard(
        name="regnet",
        family="regnet",
        year=2020,
        paper=_PAPER,
        arxiv="2003.13678",
        innovation="The RegNet design space: any w0, wa, wm, depth, group_width, bottleneck_ratio, se_ratio "
        "(defaults: RegNetX-400MF)",
        min_input_size=1,
        params=_X400.params,
        macs=_X400.macs,
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        top1=_X400.top1,
        top1_source="torchvision IMAGENET1K_V2 weights (of the default point, RegNetX-400MF)",
        reference=f"torchvision:{_X400.name}",
        crop_pct=224 / 232,
        notes="The design space, not one network: the figures and weights are those of the default point, "
        "RegNetX-400MF "
        "(create_model('regnet', w0=..., wa=..., wm=..., depth=..., group_width=...) builds any other; "
        "archlab.models.regnet.regnet_widths gives its stages without building it).",
        default_kwargs=dict(
            w0=_X400.w0, wa=_X400.wa, wm=_X400.wm, depth=_X400.depth, group_width=_X400.group_width, se_ratio=None
        ),
    ),
)
