"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s", arXiv:2201.03545), and the paper's roadmap from ResNet-50 to
ConvNeXt-T (Sec. 2, Fig. 2, appendix Table 10) as registered, measurable models.

One network class builds every point of that road from a :class:`Design`: a stage table (blocks and widths per
stage, Sec. 3's ``B`` and ``C``) plus the switches Sec. 2 flips one at a time. Every block is three convolutions
with norms and activations placed by the switches, a shortcut, optional layer scale and stochastic depth:

* ResNet-50's bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand x4, BN after each, ReLU after the first two and
  after the residual addition; a 7x7/2 conv + 3x3/2 max-pool stem; a strided 1x1 conv + BN on a changed shortcut.
* ConvNeXt's block (Fig. 4): 7x7 depthwise conv, LayerNorm over channels, 1x1 expand x4, GELU, 1x1 project, layer
  scale (CaiT's per-channel gain, initialised at 1e-6), stochastic depth, the addition; a 4x4/4 "patchify" conv +
  LayerNorm stem; a LayerNorm + 2x2/2 conv between stages; the pooled features layer-normed before the classifier.

A conv has a bias unless a BatchNorm follows it (BN removes any per-channel constant; LayerNorm, which normalises
across channels at each position, does not), which is how both ends come out with their published parameters.

The 1x1 convolutions are ``nn.Conv2d`` and LayerNorm is computed over dim 1 of the NCHW tensor (:class:`LayerNorm2d`),
where the authors' code and torchvision permute to channels-last and use ``nn.Linear``: the same arithmetic (a 1x1
conv is a linear layer at every position) but every tensor keeps the (N, C, H, W) layout the analysis tools follow
(receptive fields, stage traces count blocks by their convs) and every pointwise layer stays a conv that BN folding
and oneDNN fusion know. torchvision's checkpoints load through :meth:`ConvNeXt.torchvision_key_map` (its
``block.{2,3,5}`` are our ``block.{1,2,4}``; its Linear weights get the 1x1 conv's two trailing unit dimensions).
Other names follow torchvision (``features.N``, ``layer_scale``, ``classifier.{0,2}``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archlab.layers import DropPath, make_act, residual_add
from archlab.models.base import ArchNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.weights import KeyMap

EXPANSION = 4  # ResNet's bottleneck expands its output x4; the inverted bottleneck its hidden layer x4 (Sec. 2.4)
LN_EPS = 1e-6  # the authors' and torchvision's LayerNorm epsilon
NORMS = ("batch", "layer")
STEMS = ("resnet", "patchify")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, at every position separately (``nn.LayerNorm(C)``'s
    parameters and arithmetic).

    On an NCHW-contiguous tensor (the default layout, and what every archlab analysis runs) it is computed along
    dim 1 with plain reductions and elementwise ops, so the receptive-field tracker, which follows (N, C, H, W)
    tensors, sees a per-position op. On a channels-last tensor the (N, H, W, C) view is contiguous for free and
    PyTorch's fused ``layer_norm`` runs on it (what torchvision does after a permute): the same function, faster
    (ConvNeXt-T, 1 thread, batch 1: 106 ms NCHW against torchvision's 96; 95 ms channels-last).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            channels_last = x.permute(0, 2, 3, 1)
            return F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps).permute(
                0, 3, 1, 2)
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(1, keepdim=True)  # two passes: no cancellation when |mean| >> std
        return centred * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


@dataclass(frozen=True)
class Design:
    """A point of the ResNet-50 -> ConvNeXt road: the stage table and Sec. 2's switches, in the paper's order.

    The defaults are ConvNeXt's; :data:`RESNET50` is the road's start.
    """

    depths: tuple[int, ...] = (3, 3, 9, 3)  # blocks per stage: ResNet-50's (3, 4, 6, 3), Swin-T's 1:1:3:1
    dims: tuple[int, ...] = (96, 192, 384, 768)  # per stage: the bottleneck's 3x3 width or the inverted block's width
    stem: str = "patchify"  # "resnet": 7x7/2 conv + 3x3/2 max-pool; "patchify": a 4x4/4 conv (ViT's patches)
    groups: int | str = "depthwise"  # groups of the spatial conv: 1 (ResNet), 32 (ResNeXt) ... or "depthwise"
    inverted: bool = True  # hidden layer 4x wider than the block (Transformer MLP) instead of 4x narrower
    dw_first: bool = True  # the spatial conv moved up, before the 1x1s (as attention precedes the MLP)
    kernel: int = 7  # the spatial conv's kernel
    act: str = "gelu"
    fewer_acts: bool = True  # one activation, between the 1x1s; none after the addition or the stem
    fewer_norms: bool = True  # one norm, after the spatial conv
    norm: str = "layer"  # "batch" or "layer" (over channels)
    separate_downsample: bool = True  # norm + 2x2/2 conv between stages, a norm after the pool; no strided blocks
    layer_scale: float | None = 1e-6  # initial per-channel gain on the residual branch; None: no layer scale

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims) or not all(isinstance(n, int) and n >= 1 for n in self.depths):
            raise ValueError(f"depths must be integers >= 1, one per entry of dims, got {self.depths!r}")
        if not all(isinstance(c, int) and c >= 1 for c in self.dims):
            raise ValueError(f"dims must be integers >= 1, got {self.dims!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.groups != "depthwise" and (isinstance(self.groups, bool) or not isinstance(self.groups, int)
                                           or self.groups < 1):
            raise ValueError(f"groups must be an integer >= 1 or 'depthwise', got {self.groups!r}")
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {self.kernel!r}")
        for name in ("inverted", "dw_first", "fewer_acts", "fewer_norms", "separate_downsample"):
            if not isinstance(getattr(self, name), bool):  # "false" would be truthy
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.layer_scale is not None and (isinstance(self.layer_scale, bool)
                                             or not isinstance(self.layer_scale, (int, float))):
            raise ValueError(f"layer_scale must be a number or None, got {self.layer_scale!r}")

    @property
    def min_input_size(self) -> int:
        """The smallest square input this design runs on: padded convs and pools keep 1 pixel, the unpadded 4x4/4
        stem needs 4, and each unpadded 2x2/2 downsampling layer doubles what its stage needs."""
        last = 2 ** (len(self.dims) - 1) if self.separate_downsample else 1  # pixels stage 1 must have
        if self.stem == "patchify":
            return 4 * last
        return max(1, 4 * (last - 1) + 1)  # the ResNet stem maps n pixels to ceil(n / 4)


# The road's start: torchvision's ResNet-50 (stride on the 3x3 conv, "v1.5") in this class's terms.
RESNET50 = Design(depths=(3, 4, 6, 3), dims=(64, 128, 256, 512), stem="resnet", groups=1, inverted=False,
                  dw_first=False, kernel=3, act="relu", fewer_acts=False, fewer_norms=False, norm="batch",
                  separate_downsample=False, layer_scale=None)


def _norm(kind: str, chs: int) -> nn.Module:
    return nn.BatchNorm2d(chs) if kind == "batch" else LayerNorm2d(chs, eps=LN_EPS)


def _conv(d: Design, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
          normed: bool = False, padding: int | None = None) -> nn.Conv2d:
    bias = not (normed and d.norm == "batch")
    padding = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=bias)


class Block(nn.Module):
    """Three convs in ``block`` (the design's order, norms and activations), a projection ``downsample`` where the
    shape changes, optional ``layer_scale``, stochastic depth, the addition and (ResNet) an activation after it."""

    def __init__(self, d: Design, in_chs: int, dim: int, stride: int, drop_path: float) -> None:
        super().__init__()
        hidden, out_chs = (EXPANSION * dim, dim) if d.inverted else (dim, EXPANSION * dim)
        groups = (lambda c: c) if d.groups == "depthwise" else (lambda c: d.groups)
        if d.dw_first:  # spatial conv on the block's input, then the two 1x1s (Fig. 3c)
            convs = [(in_chs, in_chs, d.kernel, stride, groups(in_chs)), (in_chs, hidden, 1, 1, 1),
                     (hidden, out_chs, 1, 1, 1)]
        else:  # 1x1, spatial conv (carrying the stride, as in torchvision's ResNet), 1x1
            convs = [(in_chs, hidden, 1, 1, 1), (hidden, hidden, d.kernel, stride, groups(hidden)),
                     (hidden, out_chs, 1, 1, 1)]
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, g) in enumerate(convs):
            normed = i == 0 or not d.fewer_norms  # "fewer norms" keeps the one after the first conv
            layers.append(_conv(d, cin, cout, k, s, g, normed))
            if normed:
                layers.append(_norm(d.norm, cout))
            if i == 1 or (i == 0 and not d.fewer_acts):  # "fewer activations" keeps the one after the middle conv
                layers.append(make_act(d.act))
        self.block = nn.Sequential(*layers)
        self.layer_scale = (nn.Parameter(torch.full((out_chs, 1, 1), float(d.layer_scale)))
                            if d.layer_scale is not None else None)
        self.drop_path = DropPath(drop_path)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:  # ResNet's option B: a strided 1x1 conv and a norm
            self.downsample = nn.Sequential(_conv(d, in_chs, out_chs, 1, stride, normed=True), _norm(d.norm, out_chs))
        self.act = None if d.fewer_acts else make_act(d.act)
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.layer_scale is not None:
            out = self.layer_scale * out
        shortcut = x if self.downsample is None else self.downsample(x)
        out = residual_add(out, shortcut, self.drop_path)
        return out if self.act is None else self.act(out)


def _stem(d: Design, in_chans: int) -> nn.Sequential:
    width = d.dims[0]
    if d.stem == "resnet":
        layers = [_conv(d, in_chans, width, 7, 2, normed=True), _norm(d.norm, width)]
        if not d.fewer_acts:
            layers.append(make_act(d.act))
        return nn.Sequential(*layers, nn.MaxPool2d(3, 2, 1))
    layers = [_conv(d, in_chans, width, 4, 4, normed=True, padding=0), _norm(d.norm, width)]
    if not d.fewer_acts:  # a ViT patch embedding is linear; until then the ResNet stem's activation stays
        layers.append(make_act(d.act))
    return nn.Sequential(*layers)


class ConvNeXt(ArchNet):
    """Any :class:`Design`: ``features`` (stem, stages, downsampling layers between them where the design has
    them), global average pool, ``classifier`` (a norm where the design has one, flatten, linear)."""

    def __init__(self, design: Design | None = None, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d = Design() if design is None else design
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.design, self.num_classes, self.in_chans, self.drop_rate = d, num_classes, in_chans, drop_rate
        layers: list[nn.Module] = [_stem(d, in_chans)]
        self.feature_info = []
        chs, reduction, total, block_idx = d.dims[0], 4, sum(d.depths), 0
        for i, (depth, dim) in enumerate(zip(d.depths, d.dims)):
            stride = 1 if i == 0 else 2
            out_chs = dim if d.inverted else EXPANSION * dim
            if d.separate_downsample and stride == 2:
                layers.append(nn.Sequential(_norm(d.norm, chs), _conv(d, chs, out_chs, 2, 2, padding=0)))
                chs, stride = out_chs, 1
            blocks = []
            for j in range(depth):
                # Stochastic depth rising linearly from 0 at the first block to drop_path_rate at the last.
                p = drop_path_rate * block_idx / max(total - 1, 1)
                blocks.append(Block(d, chs, dim, stride if j == 0 else 1, p))
                chs, block_idx = blocks[-1].out_channels, block_idx + 1
            reduction *= 2 if i else 1
            layers.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(module=f"features.{len(layers) - 1}", num_chs=chs, reduction=reduction))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs
        head = [_norm(d.norm, chs)] if d.separate_downsample else []  # "one after the final global pooling"
        self.classifier = nn.Sequential(*head, nn.Flatten(1), linear_or_identity(chs, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal, std 0.02, zero biases (the paper's Table 5 and torchvision), for every step alike.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)
        for layer in self.classifier[:-1]:
            x = layer(x)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier[-1](x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes

    @property
    def torchvision_key_map(self) -> KeyMap | None:
        """torchvision's ConvNeXt names for this model, where its blocks are ConvNeXt's (dw conv, norm, 1x1, act,
        1x1): torchvision's ``block`` Sequential has a Permute at 1 and 6 (channels-last), so its LayerNorm and
        Linears are ``block.{2,3,5}``, ours ``block.{1,2,4}``, and its Linear weights (out, in) are our 1x1
        convs' (out, in, 1, 1)."""
        d = self.design
        if not (d.dw_first and d.fewer_acts and d.fewer_norms):
            return None
        pointwise = tuple(f"{name}.weight" for name, m in self.named_modules()
                          if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and ".block." in name)
        return KeyMap(rules=[(r"\.block\.2\.", ".block.1."), (r"\.block\.3\.", ".block.2."),
                             (r"\.block\.5\.", ".block.4.")], reshaped=pointwise)


def convnext(
    depths: tuple[int, ...] = Design.depths,
    dims: tuple[int, ...] = Design.dims,
    stem: str = Design.stem,
    groups: int | str = Design.groups,
    inverted: bool = Design.inverted,
    dw_first: bool = Design.dw_first,
    kernel: int = Design.kernel,
    act: str = Design.act,
    fewer_acts: bool = Design.fewer_acts,
    fewer_norms: bool = Design.fewer_norms,
    norm: str = Design.norm,
    separate_downsample: bool = Design.separate_downsample,
    layer_scale: float | None = Design.layer_scale,
    **kwargs: Any,
) -> ConvNeXt:
    """Builder of every registered ConvNeXt and roadmap step: the :class:`Design` switches (each a model-spec key,
    ``roadmap_7_kernel7:kernel=5``) and the usual ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``."""
    design = Design(tuple(depths), tuple(dims), stem, groups, inverted, dw_first, kernel, act, fewer_acts,
                    fewer_norms, norm, separate_downsample, layer_scale)
    return ConvNeXt(design, **kwargs)


_PAPER = "A ConvNet for the 2020s"
_ARXIV = "2201.03545"

# Sec. 3: ConvNeXt-T/S/B/L, C = channels per stage, B = blocks per stage. Published figures of torchvision's
# IMAGENET1K_V1 weights (torchvision.models.ConvNeXt_*_Weights meta): num_params; _ops ("GFLOPS", in fact
# multiply-adds) at 224; acc@1; the eval transform's resize before the 224 centre crop (bilinear).
CONVNEXT_VARIANTS = [
    # name, C, B, params, macs, top1, resize
    ("convnext_tiny", (96, 192, 384, 768), (3, 3, 9, 3), 28_589_128, 4_456_000_000, 82.520, 236),
    ("convnext_small", (96, 192, 384, 768), (3, 3, 27, 3), 50_223_688, 8_684_000_000, 83.616, 230),
    ("convnext_base", (128, 256, 512, 1024), (3, 3, 27, 3), 88_591_464, 15_355_000_000, 84.062, 232),
    ("convnext_large", (192, 384, 768, 1536), (3, 3, 27, 3), 197_767_336, 34_361_000_000, 84.414, 232),
]
# The stochastic-depth rates the paper trains T/S/B/L with (Table 5: 0.1/0.4/0.5/0.5); drop_path_rate defaults to
# 0 here as for every archlab model.
_DROP_PATH = {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5, "convnext_large": 0.5}

for _name, _dims, _depths, _params, _macs, _top1, _resize in CONVNEXT_VARIANTS:
    register(
        convnext,
        ModelCard(
            name=_name,
            family="convnext",
            year=2022,
            paper=_PAPER,
            arxiv=_ARXIV,
            innovation="A ResNet modernised step by step toward Swin: patchify stem, 7x7 depthwise convs in "
            "inverted bottlenecks, one GELU and one LayerNorm per block, separate downsampling layers",
            min_input_size=replace(Design(), depths=_depths, dims=_dims).min_input_size,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            crop_pct=224 / _resize,
            notes=f"Trained with drop_path_rate={_DROP_PATH[_name]} (paper Table 5); the default here is 0.",
            default_kwargs=dict(depths=_depths, dims=_dims),
        ),
    )

# Sec. 2 / Fig. 2 / appendix Table 10: ResNet-50 -> ConvNeXt-T one change at a time, each trained with the same
# modern recipe (Sec. 2.1; Appendix A.1: Table 5's ImageNet-1K setting without EMA). Top-1 is Table 10's mean of
# three seeds; GFLOPs are the paper's (fvcore's count, i.e. multiply-adds). No weights were released for them.
ROADMAP = [
    # short name, switches changed by this step, paper GFLOPs, top-1, what the step does
    ("resnet50", {}, 4.09, 78.82,
     "The road's start: ResNet-50 (torchvision's layout) trained with the modern recipe (76.13% with its own)"),
    ("stage_ratio", dict(depths=(3, 3, 9, 3)), 4.53, 79.36,
     "Stage compute ratio: blocks per stage (3, 4, 6, 3) -> (3, 3, 9, 3), Swin-T's 1:1:3:1"),
    ("patchify_stem", dict(stem="patchify"), 4.42, 79.51,
     "Patchify stem: the 7x7/2 conv and 3x3/2 max-pool become one 4x4/4 conv, non-overlapping as ViT's patches"),
    ("depthwise", dict(groups="depthwise"), 2.35, 78.28,
     "ResNeXt-ify: the 3x3 conv depthwise (groups = channels), spatial mixing apart from channel mixing"),
    ("width96", dict(dims=(96, 192, 384, 768)), 5.27, 80.50,
     "Width 64 -> 96 (Swin-T's), spending what the depthwise conv saved"),
    ("inverted", dict(inverted=True), 4.64, 80.64,
     "Inverted bottleneck: the hidden layer 4x wider than the block (96 -> 384 -> 96), as a Transformer's MLP"),
    ("dw_first", dict(dw_first=True), 4.07, 79.92,
     "Depthwise conv moved up, before the 1x1s (attention before the MLP): it runs on the narrow tensor"),
    ("kernel7", dict(kernel=7), 4.15, 80.57,
     "7x7 depthwise kernels (Swin's 7x7 windows), cheap on the narrow tensor; gains saturate at 7"),
    ("gelu", dict(act="gelu"), 4.15, 80.62,
     "GELU instead of ReLU, as in Transformers: accuracy unchanged"),
    ("fewer_acts", dict(fewer_acts=True), 4.15, 81.27,
     "Fewer activations: one GELU per block, between the two 1x1s; none after the addition"),
    ("fewer_norms", dict(fewer_norms=True), 4.15, 81.41,
     "Fewer norms: one BatchNorm per block, after the depthwise conv"),
    ("layer_norm", dict(norm="layer"), 4.46, 81.47,
     "LayerNorm over channels instead of BatchNorm"),
    ("convnext_t", dict(separate_downsample=True, layer_scale=1e-6), 4.49, 81.97,
     "Separate downsampling layers (LayerNorm + 2x2/2 conv), LayerNorm after the stem and the pool: ConvNeXt-T"),
]


def roadmap_designs() -> list[tuple[str, Design]]:
    """The registered name and :class:`Design` of every step, in the paper's order: each step is the previous
    one with that step's switches changed."""
    out, design = [], RESNET50
    for i, (short, changes, *_) in enumerate(ROADMAP):
        design = replace(design, **changes)
        out.append((f"roadmap_{i}_{short}", design))
    return out


_ROADMAP_NOTES = {
    0: "Exactly torchvision's ResNet-50 (25,557,032 parameters; its checkpoints map onto this one tensor for "
       "tensor). Table 10's first row, 76.13%, is this network with torchvision's original recipe.",
    11: "Paper Table 10: 4.46 GFLOPs, 0.31G above the previous step, but replacing BatchNorm by LayerNorm changes no "
        "convolution or linear layer (ours stays at the previous step's count); the ResNet-200 table (Table 11) "
        "keeps the same step's FLOPs unchanged (14.81 -> 14.81).",
    12: "Exactly ConvNeXt-T (convnext_tiny; torchvision's checkpoints load). Layer scale (1e-6) joins here: "
        "Appendix A.1 trains every step with Table 5's recipe, which lists layer scale, but does not say how the "
        "ResNet-like steps used it; off before this step, so that step 0 is exactly ResNet-50.",
}

for _i, ((_name, _design), (_short, _changes, _gflops, _top1, _what)) in enumerate(zip(roadmap_designs(), ROADMAP)):
    register(
        convnext,
        ModelCard(
            name=_name,
            family="convnext_roadmap",
            year=2022,
            paper=_PAPER,
            arxiv=_ARXIV,
            innovation=_what,
            min_input_size=_design.min_input_size,
            params={0: 25_557_032, 12: 28_589_128}.get(_i),
            # Step 11's figure stays off its card (its notes say why): a card's figure is what `archlab compare`
            # and the registry-wide count test check our count against.
            macs=None if _i == 11 else round(_gflops * 1e9),
            macs_source=None if _i == 11 else "paper Table 10 (GFLOPs, which count multiply-adds)",
            top1=_top1,
            top1_source="paper Table 10 (mean of 3 seeds; no weights released)",
            interpolation="bicubic",  # the authors' evaluation (datasets.py): bicubic resize to 256, 224 crop
            notes=_ROADMAP_NOTES.get(_i, ""),
            default_kwargs=asdict(_design),
        ),
    )
