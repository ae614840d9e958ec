"""MobileNet V2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381).

The block inverts the ResNet bottleneck: a 1x1 conv *expands* a thin input t times, a 3x3 depthwise conv filters
the wide tensor, and a 1x1 conv projects it back to a thin output with *no* activation (the linear bottleneck:
ReLU on a low-dimensional manifold destroys information). The residual joins the thin ends, when the block keeps
shape. Activations are ReLU6, robust in low-precision arithmetic.

``project_act="relu6"`` puts an activation after the projection, the non-linear bottleneck the paper's Fig. 6a
trains against the linear one (the ``linear-bottleneck`` design study); the default ``None`` is the paper's model.

The layer names follow torchvision (``features.N`` with ``conv.M`` inside a block, ``classifier.1``) so its
checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from archlab.layers import ConvNormAct, DropPath, get_act, init_weights, make_divisible, residual_add
from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.weights import KeyMap

# The paper's Table 2 between the stem (3x3 conv, stride 2, 32 channels) and the head (1x1 conv to 1280):
# t = expansion factor, c = output channels, n = repeats, s = stride of the first block of the row.
MOBILENET_V2_STAGES: list[tuple[int, int, int, int]] = [
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def timm_key_map(stages: list[tuple[int, int, int, int]]) -> KeyMap:
    """timm's mobilenetv2_100 in torchvision's names (rules apply in order, see archlab.weights.KeyMap).

    timm calls the stem conv_stem/bn1, the j-th block of table row i blocks.{i}.{j} (torchvision numbers blocks
    flat: features.{1 + blocks of earlier rows + j}), the head conv_head/bn2. Inside a block: conv_pw (expand),
    conv_dw, conv_pwl (project) with bn1..bn3, except in row 0 (t = 1, "depthwise separable") where the
    projection is conv_pw/bn2.
    """
    first_of_row = [1 + sum(n for _, _, n, _ in stages[:i]) for i in range(len(stages))]
    head = first_of_row[-1] + stages[-1][2]
    # Plain strings, not a function of the match: the map lives on the model, which must stay picklable.
    block_indices = [
        (rf"^blocks\.{i}\.{j}\.", f"features.{first_of_row[i] + j}.")
        for i, (_, _, n, _) in enumerate(stages)
        for j in range(n)
    ]
    return KeyMap(
        rules=[
            (r"^blocks\.0\.(\d+)\.conv_dw\.", r"blocks.0.\1.conv.0.0."),
            (r"^blocks\.0\.(\d+)\.bn1\.", r"blocks.0.\1.conv.0.1."),
            (r"^blocks\.0\.(\d+)\.conv_pw\.", r"blocks.0.\1.conv.1."),
            (r"^blocks\.0\.(\d+)\.bn2\.", r"blocks.0.\1.conv.2."),
            (r"\.conv_pw\.", ".conv.0.0."),
            (r"\.bn1\.", ".conv.0.1."),
            (r"\.conv_dw\.", ".conv.1.0."),
            (r"\.bn2\.", ".conv.1.1."),
            (r"\.conv_pwl\.", ".conv.2."),
            (r"\.bn3\.", ".conv.3."),
            *block_indices,
            (r"^conv_stem\.", "features.0.0."),
            (r"^bn1\.", "features.0.1."),
            (r"^conv_head\.", f"features.{head}.0."),
            (r"^bn2\.", f"features.{head}.1."),
            (r"^classifier\.", "classifier.1."),
        ]
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU6 (skipped when t == 1), 3x3 depthwise-BN-ReLU6, 1x1 linear projection-BN (+ residual).

    ``project_act`` (e.g. "relu6") makes the projection non-linear, before the residual addition (Fig. 6a's
    "ReLU6 in bottleneck"); its module is the last of ``conv``, so the default keeps torchvision's keys."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int, drop_path: float = 0.0,
                 project_act: str | None = None) -> None:
        super().__init__()
        hidden = int(round(in_chs * expansion))
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvNormAct(in_chs, hidden, 1, act="relu6"))
        layers.append(ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act="relu6"))
        # The linear bottleneck: conv and BN stay flat in ``conv`` (keys conv.N, conv.N+1, as torchvision).
        layers.extend(ConvNormAct(hidden, out_chs, 1, act=project_act))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path if self.use_residual else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return residual_add(self.conv(x), x, self.drop_path)
        return self.conv(x)


class MobileNetV2(PooledClassifierNet):
    """MobileNet V2 from the (t, c, n, s) table: stem, inverted residual blocks, 1x1 head conv, pool, FC."""

    def __init__(
        self,
        stages: list[tuple[int, int, int, int]] = MOBILENET_V2_STAGES,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        project_act: str | None = None,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if project_act is not None:
            get_act(project_act)  # an unknown name fails here, listing the known ones
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.timm_key_map = timm_key_map(stages)
        chs = make_divisible(STEM_CHANNELS * width_mult, 8)
        layers: list[nn.Module] = [ConvNormAct(in_chans, chs, 3, 2, act="relu6")]
        reduction = 2
        self.feature_info = []
        num_blocks = sum(n for _, _, n, _ in stages)
        for t, c, n, s in stages:
            out_chs = make_divisible(c * width_mult, 8)
            for i in range(n):
                stride = s if i == 0 else 1
                if stride > 1:
                    # A stage output is the last map before the resolution halves.
                    last = f"features.{len(layers) - 1}"
                    self.feature_info.append(dict(module=last, num_chs=chs, reduction=reduction))
                    reduction *= stride
                # Stochastic depth rises linearly with depth (as timm does); torchvision has none (rate 0).
                block_index = len(layers) - 1  # features.0 is the stem
                rate = drop_path_rate * block_index / num_blocks
                layers.append(InvertedResidual(chs, out_chs, stride, t, rate, project_act))
                chs = out_chs
        # The head is widened for width_mult > 1 but never thinned: thin heads cost accuracy for little gain.
        self.num_features = make_divisible(HEAD_CHANNELS * max(1.0, width_mult), 8)
        layers.append(ConvNormAct(chs, self.num_features, 1, act="relu6"))
        self.feature_info.append(
            dict(module=f"features.{len(layers) - 1}", num_chs=self.num_features, reduction=reduction)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), linear_or_identity(self.num_features, num_classes))
        init_weights(self)

def mobilenet_v2(width_mult: float = 1.0, **kwargs) -> MobileNetV2:
    return MobileNetV2(MOBILENET_V2_STAGES, width_mult=width_mult, **kwargs)


# Params: the exact count of the reference (checked by the parity test). Multiply-adds and top-1: torchvision's
# MobileNet_V2_Weights.IMAGENET1K_V1 metadata for 1.0 (its "GFLOPS" 0.301 counts multiply-adds); for the other width
# multipliers, the authors' released TF-slim checkpoints (research/slim/nets/mobilenet README: mobilenet_v2_1.4_224
# 582M MACs, 75.0%; mobilenet_v2_0.5_224 97M, 65.4%), whose widths timm's mobilenetv2_140 / _050 share.
_RELEASED = "the authors' TF-slim checkpoints (mobilenet README)"
_VARIANTS = [
    # name, width_mult, params, macs, macs source, top1, top1 source, reference
    ("mobilenet_v2", 1.0, 3_504_872, 301_000_000, "torchvision weights meta (_ops: multiply-adds)", 71.878,
     "torchvision IMAGENET1K_V1 weights", "torchvision:mobilenet_v2"),
    ("mobilenet_v2_140", 1.4, 6_108_776, 582_000_000, _RELEASED, 75.0, _RELEASED, "timm:mobilenetv2_140"),
    ("mobilenet_v2_050", 0.5, 1_968_680, 97_000_000, _RELEASED, 65.4, _RELEASED, "timm:mobilenetv2_050"),
]
# timm's preprocessing for its width variants' weights.
_PREPROCESSING = {name: dict(interpolation="bicubic", crop_pct=0.875)
                  for name in ("mobilenet_v2_140", "mobilenet_v2_050")}

for _name, _width, _params, _macs, _macs_source, _top1, _top1_source, _reference in _VARIANTS:
    register(
        mobilenet_v2,
        ModelCard(
            name=_name,
            family="mobilenet_v2",
            year=2018,
            paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
            arxiv="1801.04381",
            innovation="Inverted residual blocks with linear bottlenecks (expand, depthwise, linear project)",
            input_size=224,
            min_input_size=1,
            params=_params,
            macs=_macs,
            macs_source=_macs_source,
            top1=_top1,
            top1_source=_top1_source,
            reference=_reference,
            default_kwargs=dict(width_mult=_width),
            **_PREPROCESSING.get(_name, {}),
        ),
    )
