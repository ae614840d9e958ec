"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision",
arXiv:1512.00567): Inception modules with their large filters *factorized* — a 5x5 into two 3x3 (Figure 5), an
n x n into 1 x n then n x 1 (Figure 6, n = 7 on the 17x17 grid), and on the 8x8 grid 1x3 and 3x1 side by side
(Figure 7, "expanded filter banks") — and the grid shrunk by modules whose stride-2 conv and pool branches run in
parallel (Figure 10), so that no representational bottleneck is made by pooling first. Input 299x299; one
auxiliary classifier on the 17x17 grid (Section 4: a regulariser rather than a help to convergence).

The model is torchvision's Inception3 (a port of TF-slim's inception_v3, whose checkpoint it loads): its module
kinds A-E (:data:`INCEPTION_V3_MODULES`) are the paper's Figures 5, 10, 6, 10 and 7, with TF-slim's widths; module A
keeps a 5x5 branch beside the double 3x3; every conv has BatchNorm (eps 1e-3). Layer names follow torchvision
(``Mixed_6b.branch7x7dbl_3.conv``), so its state dicts load key for key.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, NamedTuple, Union

import torch
from torch import nn

from archlab.models.base import linear_or_identity
from archlab.models.googlenet import BasicConv, Conv, InceptionNet, Pool
from archlab.registry import ModelCard, register

# What torchvision's Inception3 returns in training mode with its auxiliary head (same fields, same order).
InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


class C(NamedTuple):
    """A conv inside a module: ``out`` channels (``"c"``: the module row's width parameter), kernel (h, w), stride.
    Stride-1 convs are padded to keep the grid ('same'); the stride-2 convs of grid reductions are not."""

    out: int | str
    kernel: int | tuple[int, int] = 1
    stride: int = 1


# A branch: its name, the pool its input goes through first (None; "avg": 3x3/1 padded; "max": 3x3/2 unpadded, the
# grid reduction), then its convs in order. A pair of convs as the last entry run side by side on the same input
# and are concatenated (Figure 7). Branches are concatenated in the order listed.
Branch = tuple[str, Union[str, None], list[Union[C, tuple[C, C]]]]

INCEPTION_V3_MODULES: dict[str, list[Branch]] = {
    "A": [  # Figure 5, 35x35: the 5x5 factorized into two 3x3 (3x3dbl); "c" = the pool projection
        ("branch1x1", None, [C(64)]),
        ("branch5x5", None, [C(48), C(64, 5)]),
        ("branch3x3dbl", None, [C(64), C(96, 3), C(96, 3)]),
        ("branch_pool", "avg", [C("c")]),
    ],
    "B": [  # Figure 10, 35 -> 17: stride-2 convs beside a stride-2 pool
        ("branch3x3", None, [C(384, 3, 2)]),
        ("branch3x3dbl", None, [C(64), C(96, 3), C(96, 3, 2)]),
        ("branch_pool", "max", []),
    ],
    "C": [  # Figure 6, 17x17: 7x7 factorized into 1x7 and 7x1; "c" = their width
        ("branch1x1", None, [C(192)]),
        ("branch7x7", None, [C("c"), C("c", (1, 7)), C(192, (7, 1))]),
        ("branch7x7dbl", None, [C("c"), C("c", (7, 1)), C("c", (1, 7)), C("c", (7, 1)), C(192, (1, 7))]),
        ("branch_pool", "avg", [C(192)]),
    ],
    "D": [  # Figure 10, 17 -> 8
        ("branch3x3", None, [C(192), C(320, 3, 2)]),
        ("branch7x7x3", None, [C(192), C(192, (1, 7)), C(192, (7, 1)), C(192, 3, 2)]),
        ("branch_pool", "max", []),
    ],
    "E": [  # Figure 7, 8x8: the last 3x3 of two branches expanded into 1x3 and 3x1 side by side
        ("branch1x1", None, [C(320)]),
        ("branch3x3", None, [C(384), (C(384, (1, 3)), C(384, (3, 1)))]),
        ("branch3x3dbl", None, [C(448), C(384, 3), (C(384, (1, 3)), C(384, (3, 1)))]),
        ("branch_pool", "avg", [C(192)]),
    ],
}


class Mixed(NamedTuple):
    """A table row: an Inception module of ``kind`` (a key of :data:`INCEPTION_V3_MODULES`) with width ``c``."""

    kind: str
    c: int | None = None


# The network (the paper's Table 1, in torchvision's / TF-slim's layers): grid 299 -> 149 -> 147 -> 73 -> 71 ->
# 35 -> 17 -> 8.
INCEPTION_V3_LAYERS: list[tuple[str, Conv | Pool | Mixed]] = [
    ("Conv2d_1a_3x3", Conv(32, 3, 2)),
    ("Conv2d_2a_3x3", Conv(32, 3)),
    ("Conv2d_2b_3x3", Conv(64, 3, padding=1)),
    ("maxpool1", Pool(3, 2)),
    ("Conv2d_3b_1x1", Conv(80, 1)),
    ("Conv2d_4a_3x3", Conv(192, 3)),
    ("maxpool2", Pool(3, 2)),
    ("Mixed_5b", Mixed("A", 32)),
    ("Mixed_5c", Mixed("A", 64)),
    ("Mixed_5d", Mixed("A", 64)),
    ("Mixed_6a", Mixed("B")),
    ("Mixed_6b", Mixed("C", 128)),
    ("Mixed_6c", Mixed("C", 160)),
    ("Mixed_6d", Mixed("C", 160)),
    ("Mixed_6e", Mixed("C", 192)),
    ("Mixed_7a", Mixed("D")),
    ("Mixed_7b", Mixed("E")),
    ("Mixed_7c", Mixed("E")),
]
INCEPTION_V3_AUX = {"Mixed_6e": "AuxLogits"}
# The auxiliary head's 5x5/3 pool and 5x5 conv need the 17x17 grid of Mixed_6e: inputs of at least 299x299.
AUX_MIN_INPUT_SIZE = 299


class InceptionModule(nn.Module):
    """An Inception-v3 module from a branch table; conv ``j`` of branch ``b`` is named ``b_j`` (``b`` alone when the
    branch has one conv, ``b_ja`` / ``b_jb`` for a side-by-side pair), as in torchvision."""

    def __init__(self, in_chs: int, branches: list[Branch], c: int | None = None) -> None:
        super().__init__()
        self.plan: list[tuple[str | None, list[str | tuple[str, str]]]] = []
        self.out_channels = 0
        self.stride = 1
        for branch, pool, convs in branches:
            if pool == "avg":
                self.avg_pool = nn.AvgPool2d(3, 1, 1)
            elif pool == "max":
                self.max_pool = nn.MaxPool2d(3, 2)
                self.stride = 2
            chs, names = in_chs, []
            for j, conv in enumerate(convs, start=1):
                stem = branch if len(convs) == 1 else f"{branch}_{j}"
                if isinstance(conv, C):
                    chs = self._add(stem, conv, chs, c)
                    names.append(stem)
                else:
                    outs = [self._add(f"{stem}{s}", half, chs, c) for s, half in zip("ab", conv)]
                    chs = sum(outs)
                    names.append((f"{stem}a", f"{stem}b"))
            self.plan.append((f"{pool}_pool" if pool else None, names))
            self.out_channels += chs

    def _add(self, name: str, conv: C, in_chs: int, c: int | None) -> int:
        out = c if conv.out == "c" else conv.out
        kernel = (conv.kernel, conv.kernel) if isinstance(conv.kernel, int) else conv.kernel
        padding = (0, 0) if conv.stride > 1 else (kernel[0] // 2, kernel[1] // 2)
        self.add_module(name, BasicConv(in_chs, out, kernel, conv.stride, padding))
        if conv.stride > 1:
            self.stride = conv.stride
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for pool, names in self.plan:
            y = getattr(self, pool)(x) if pool else x
            for name in names:
                if isinstance(name, tuple):
                    y = torch.cat([getattr(self, n)(y) for n in name], 1)
                else:
                    y = getattr(self, name)(y)
            outputs.append(y)
        return torch.cat(outputs, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 average pool → 1x1 conv to 128 → 5x5 conv to 768 → global
    average → FC (Figure 8, with BatchNorm)."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv0 = BasicConv(in_chs, 128, 1)
        self.conv1 = BasicConv(128, 768, 5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = linear_or_identity(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(768, num_classes)


class Inception3(InceptionNet):
    """Inception-v3 from :data:`INCEPTION_V3_LAYERS` (torchvision's layer names, so its checkpoints load key for key).

    ``aux_logits``: build the auxiliary classifier; in training mode ``forward`` then returns
    ``InceptionOutputs(logits, aux_logits)`` as torchvision's does, and needs inputs of at least 299x299 and
    batches of 2 or more (the head's BatchNorm sees a 1x1 map). ``transform_input``: as GoogLeNet's
    (``pretrained=True`` turns it on).
    """

    aux_loss_weight = 0.4  # TF-slim's train_image_classifier.py (the paper gives none), whose weights these are

    def __init__(
        self,
        layers: list[tuple[str, Conv | Pool | Mixed]],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
        aux_logits: bool = True,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        self._init_layout(num_classes, in_chans, drop_rate, drop_path_rate, aux_logits, transform_input)

        def make(row: Any, chs: int) -> tuple[nn.Module, int, int]:
            if isinstance(row, Pool):
                return nn.MaxPool2d(row.kernel, row.stride, ceil_mode=row.ceil_mode), chs, row.stride
            if isinstance(row, Conv):
                return BasicConv(chs, row.out, row.kernel, row.stride, row.padding), row.out, row.stride
            if row.kind not in INCEPTION_V3_MODULES:
                kinds = ", ".join(INCEPTION_V3_MODULES)
                raise ValueError(f"unknown Inception module kind {row.kind!r}; one of {kinds}")
            block = InceptionModule(chs, INCEPTION_V3_MODULES[row.kind], row.c)
            return block, block.out_channels, block.stride

        self.num_features = self._build_body(layers, make, in_chans)
        if aux_logits:
            for tap, head in INCEPTION_V3_AUX.items():
                self.add_module(head, InceptionAux(getattr(self, tap).out_channels, num_classes))
        self.aux_taps = dict(INCEPTION_V3_AUX)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = linear_or_identity(self.num_features, num_classes)
        # torchvision's init: N(0, 0.1) weights (bounds +-2), N(0, 0.01) for the auxiliary 5x5 conv and N(0, 0.001)
        # for its FC (TF-slim's); BatchNorm weight 1, bias 0.
        special = {}
        if aux_logits:
            special = {self.AuxLogits.conv1.conv: 0.01, self.AuxLogits.fc: 0.001}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=special.get(m, 0.1), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if self.training and self.aux_logits and getattr(self, "AuxLogits", None) is not None:
            h, w = x.shape[-2:]
            if min(h, w) < AUX_MIN_INPUT_SIZE:
                raise ValueError(
                    f"Inception3 in training mode runs its auxiliary classifier, which needs inputs of at least "
                    f"{AUX_MIN_INPUT_SIZE}x{AUX_MIN_INPUT_SIZE}, got {h}x{w}; build it with aux_logits=False to train "
                    "on smaller inputs")
            if x.shape[0] < 2:
                raise ValueError("Inception3 in training mode runs its auxiliary classifier, whose BatchNorm sees a "
                                 "1x1 map: it needs batches of 2 or more, got 1 (or build it with aux_logits=False)")

    def _outputs(self, logits: torch.Tensor, aux: list[torch.Tensor]) -> InceptionOutputs:
        return InceptionOutputs(logits, aux[0])


def inception_v3(**kwargs: Any) -> Inception3:
    return Inception3(INCEPTION_V3_LAYERS, **kwargs)


# Figures from torchvision's Inception_V3_Weights.IMAGENET1K_V1 metadata: num_params 27,161,264 (with the auxiliary
# head, which torchvision's pretrained builder keeps), _ops 5.713 (GMACs at 299), acc@1 77.294, evaluated with a
# 299 crop of a 342 resize.
register(
    inception_v3,
    ModelCard(
        name="inception_v3",
        family="inception_v3",
        year=2015,
        paper="Rethinking the Inception Architecture for Computer Vision",
        arxiv="1512.00567",
        innovation="Factorized Inception modules (5x5 as two 3x3, 7x7 as 1x7 + 7x1), parallel stride-2 grid "
                   "reduction, auxiliary classifier as regulariser",
        input_size=299,
        # 75: torchvision's min_size; at 74 Mixed_7a has a 2x2 map for its unpadded 3x3/2 conv and pool.
        min_input_size=75,
        params=27_161_264,
        macs=5_713_000_000,
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        top1=77.294,
        top1_source="torchvision IMAGENET1K_V1 weights",
        reference="torchvision:inception_v3",
        crop_pct=299 / 342,
        default_kwargs=dict(aux_logits=True, transform_input=False),
        notes="Built as torchvision's inception_v3() without weights: with the auxiliary classifier (it runs in "
              "training mode only, and forward then returns InceptionOutputs(logits, aux_logits) as torchvision "
              "does; that needs inputs of at least 299x299 and batches of 2 or more) and transform_input=False. "
              "pretrained=True gives torchvision's pretrained configuration: transform_input=True (the weights "
              "expect [-1, 1] pixels; feed ImageNet-normalised images), the auxiliary head kept.",
    ),
)
