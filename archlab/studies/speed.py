"""Speed studies: blocks timed on this machine, not trained. ShuffleNet V2's guidelines (Ma, Zhang, Zheng & Sun
2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", arXiv:1807.11164, Sec. 2,
Tables 1-4): at equal multiply-adds, speed still depends on the shape of the computation.

Each table of the paper is one :class:`SpeedTable`: its rows are configurations of one block (stacked ten times
on a 56x56 input, as in the paper), built by the block functions below; the paper's figures are columns of
throughputs. archlab times every row interleaved with the others (:func:`archlab.bench.bench_row`), and the
report divides each row's throughput by the first row's, so that this machine and the paper's compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from archlab.studies.study import Expect, Source, Study

INPUT_SIZE = 56  # the paper's feature map for every table
REPEAT = 10  # every block is stacked ten times


class Stack(nn.Module):
    """``REPEAT`` copies of a block, with ``in_chans`` for the timing harness (it makes the input from it)."""

    def __init__(self, make: Callable[[], nn.Module], in_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.blocks = nn.Sequential(*(make() for _ in range(REPEAT)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def conv1x1(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False)


def g1_block(c1: int, c2: int) -> Stack:
    """G1 (Table 1): a 1x1 conv from c1 to c2 channels and one back; c1 * c2 fixed, so the multiply-adds are."""
    return Stack(lambda: nn.Sequential(conv1x1(c1, c2), conv1x1(c2, c1)), c1)


def g2_block(c: int, groups: int) -> Stack:
    """G2 (Table 2): one 1x1 group conv, c to c channels in ``groups`` groups; c^2 / g fixed."""
    return Stack(lambda: conv1x1(c, c, groups), c)


def series_width(c: int, n: int) -> int:
    """Width of each of ``n`` convs in series with the multiply-adds of one c-to-c conv: c / sqrt(n)."""
    return int(round(c / math.sqrt(n)))


class Fragments(nn.Module):
    """G3 (Table 3): ``n`` 1x1 convs in series, each ``c / sqrt(n)`` to ``c / sqrt(n)`` channels (the multiply-adds
    of one c-to-c conv), or in parallel: ``n`` convs of c to c/n channels on the same input, concatenated (one
    conv's multiply-adds, fragmented). Our reading of the paper's appendix figure, which gives no widths."""

    def __init__(self, c: int, n: int, parallel: bool) -> None:
        super().__init__()
        self.parallel = parallel
        if parallel:
            self.convs = nn.ModuleList(conv1x1(c, c // n) for _ in range(n))
        else:
            width = series_width(c, n)
            self.convs = nn.ModuleList(conv1x1(width, width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return torch.cat([conv(x) for conv in self.convs], 1)
        for conv in self.convs:
            x = conv(x)
        return x


def g3_block(c: int, n: int, parallel: bool = False) -> Stack:
    return Stack(lambda: Fragments(c, n, parallel), c if parallel else series_width(c, n))


class Bottleneck(nn.Module):
    """G4 (Table 4): ResNet's bottleneck (1x1 from 4c to c, 3x3, 1x1 back to 4c) with its ReLUs and its shortcut
    each optional; no BatchNorm (an inference form folds it into the convs)."""

    def __init__(self, c: int, relu: bool, shortcut: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList([conv1x1(4 * c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), conv1x1(c, 4 * c)])
        self.relu, self.shortcut = relu, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if self.relu and i < 2:
                out = torch.relu(out)
        if self.shortcut:
            out = out + x
        return torch.relu(out) if self.relu else out


def g4_block(c: int, relu: bool, shortcut: bool) -> Stack:
    return Stack(lambda: Bottleneck(c, relu, shortcut), 4 * c)


BLOCKS: dict[str, Callable[..., nn.Module]] = {"g1": g1_block, "g2": g2_block, "g3": g3_block, "g4": g4_block}


@dataclass(frozen=True)
class SpeedRow:
    label: str
    block: str  # a key of BLOCKS
    kwargs: Mapping[str, Any]

    def build(self) -> nn.Module:
        return BLOCKS[self.block](**self.kwargs)


@dataclass(frozen=True)
class SpeedTable:
    """One table of the paper: rows timed here; ``paper`` maps a column name to its throughputs (one per row);
    ``cpu_column`` / ``gpu_column`` name the column that matches the widths timed, on each kind of device."""

    name: str
    claim: str
    where: str
    rows: tuple[SpeedRow, ...]
    paper: Mapping[str, tuple[float, ...]]
    cpu_column: str
    gpu_column: str
    expect: tuple[Expect, ...] = field(default_factory=tuple)


def _faster(first: str, others: list[str]) -> tuple[Expect, ...]:
    return tuple(Expect(first, other, "time", f"{first} runs faster than {other}") for other in others)


_G1 = [("1:1", 128, 128), ("1:2", 90, 180), ("1:6", 52, 312), ("1:12", 36, 432)]
_G2 = [(1, 128), (2, 180), (4, 256), (8, 360)]
_G3 = [("1-fragment", 1, False), ("2-fragment-series", 2, False), ("4-fragment-series", 4, False),
       ("2-fragment-parallel", 2, True), ("4-fragment-parallel", 4, True)]
_G4 = [("ReLU + shortcut", True, True), ("ReLU, no shortcut", True, False), ("shortcut, no ReLU", False, True),
       ("neither", False, False)]

# The paper's figures (arXiv:1807.11164 v1): GPU in batches/s (a GTX 1080Ti, batch 8), "ARM"/"CPU" in images/s
# (a Snapdragon 810, batch 1). Each table's widths scale by x1, x2, x4 across columns; the widths timed here are
# the GPU x1 widths, which are the ARM x4 widths of Table 1 (to rounding) and the CPU x2 widths of Table 2.
TABLES = (
    SpeedTable(
        "G1", "Equal channel widths are fastest at fixed multiply-adds.", "Table 1",
        tuple(SpeedRow(label, "g1", dict(c1=c1, c2=c2)) for label, c1, c2 in _G1),
        {"GPU x1 (batches/s)": (1480, 1296, 876, 748), "ARM x4 (images/s)": (5.3, 5.1, 4.6, 4.4)},
        cpu_column="ARM x4 (images/s)", gpu_column="GPU x1 (batches/s)",
        expect=_faster("1:1", ["1:2", "1:6", "1:12"])),
    SpeedTable(
        "G2", "More groups are slower at fixed multiply-adds.", "Table 2",
        tuple(SpeedRow(f"g={g}", "g2", dict(c=c, groups=g)) for g, c in _G2),
        {"GPU x1 (batches/s)": (2451, 1725, 1026, 634), "CPU x2 (images/s)": (10.2, 9.5, 8.7, 7.5)},
        cpu_column="CPU x2 (images/s)", gpu_column="GPU x1 (batches/s)",
        expect=_faster("g=1", ["g=2", "g=4", "g=8"])),
    SpeedTable(
        "G3", "Fragmented blocks (convs in series or in parallel) are slower at fixed multiply-adds.", "Table 3",
        tuple(SpeedRow(label, "g3", dict(c=128, n=n, parallel=par)) for label, n, par in _G3),
        {"GPU c=128 (batches/s)": (2446, 1790, 752, 1537, 691), "CPU c=128 (images/s)": (10.1, 10.1, 10.1, 9.1, 8.4)},
        cpu_column="CPU c=128 (images/s)", gpu_column="GPU c=128 (batches/s)",
        expect=_faster("1-fragment", [label for label, _, _ in _G3[1:]])),
    SpeedTable(
        "G4", "Element-wise operations (ReLU, shortcut) are not negligible.", "Table 4",
        tuple(SpeedRow(label, "g4", dict(c=32, relu=relu, shortcut=sc)) for label, relu, sc in _G4),
        {"GPU c=32 (batches/s)": (2427, 2647, 2672, 2842), "CPU c=32 (images/s)": (56.7, 61.9, 57.3, 66.3)},
        cpu_column="CPU c=32 (images/s)", gpu_column="GPU c=32 (batches/s)",
        expect=tuple(Expect(label, "ReLU + shortcut", "time", f"{label} runs faster than ReLU + shortcut")
                     for label, _, _ in _G4[1:])),
)

SHUFFLENET_GUIDELINES = Study(
    name="shufflenet-guidelines",
    claim="Multiply-adds are not speed: at equal multiply-adds, equal widths, few groups, unfragmented blocks and "
          "fewer element-wise operations run faster (ShuffleNet V2's guidelines G1-G4).",
    source=Source(
        paper="Ma, Zhang, Zheng & Sun 2018, ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture "
              "Design", arxiv="1807.11164", where="Tables 1-4",
        figures="throughput of each configuration on a GPU (GTX 1080Ti, batches/s) and an ARM CPU (Snapdragon "
                "810, images/s), 10 stacked blocks on a 56x56 input",
        metric="throughput"),
    kind="speed",
    seeds=(0,),
    metric="time",
    tables=TABLES,
    budgets={"quick": dict(repeats=20, warmup=3), "paper": dict(repeats=100, warmup=10)},
    notes="Timed at batch 1 on CPU (the paper's ARM figures are at batch 1) and batch 8 on CUDA, interleaved row "
          "by row; without BatchNorm, which an inference form folds away.",
)
