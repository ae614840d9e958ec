"""How a network walks the image down to a vector: resolution, channels, blocks, stride and receptive field per stage.

Stage boundaries are the model's ``feature_info`` (the modules whose outputs are the stage outputs); the trace adds
the input and the pre-logits vector, e.g. ResNet-50: 224→112→56→28→14→7→1 and 3→64→256→512→1024→2048 (the last
row is named 'pool' where the head only pools, 'pre-logits' where layers come between pool and classifier).

A stage's ``blocks`` counts the blocks that finish between the previous stage output and this one, as the papers'
tables count them. A unit is a module that contains a convolution, found by descending from the model through plain
containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``); a block is a unit with more than one conv (a
residual block of ResNet, an inverted residual of MobileNet, a dense layer of DenseNet), so single-conv stems,
DenseNet transitions and head 1x1 convs are not counted; in a network of single convs (AlexNet, VGG) the blocks are
its conv layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from archlab.analysis.meta import MetaFastPath, ModuleScopes, meta_input, on_meta, resolve_input_size
from archlab.analysis.receptive_field import Geometry, ReceptiveFieldTracker
from archlab.models.base import block_names


@dataclass(frozen=True)
class Stage:
    name: str  # 'input', 'stage0'..., then 'pool' or 'pre-logits'
    module: str  # the module whose output this is ('' for the input and the pooled vector)
    resolution: tuple[int, int]
    channels: int
    blocks: int
    stride: float  # cumulative (effective) stride in input pixels
    receptive_field: float  # along the height, in input pixels (theoretical, not clipped to the image)
    global_context: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageTrace:
    name: str
    input_size: tuple[int, int]
    stages: list[Stage]

    @property
    def resolution_pattern(self) -> str:
        return _pattern(s.resolution[0] for s in self.stages)

    @property
    def channel_pattern(self) -> str:
        return _pattern(s.channels for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolution_pattern": self.resolution_pattern,
                "channel_pattern": self.channel_pattern}


def _pattern(values) -> str:
    """'224→112→56', with consecutive repeats merged (a stage that keeps the resolution adds nothing)."""
    out: list[int] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return "→".join(str(v) for v in out)


def stage_trace(model_or_name: nn.Module | str, input_size: int | tuple[int, int] | None = None) -> StageTrace:
    """Trace a model with ``feature_info`` (every archlab model) at ``input_size`` (None: its card's)."""
    with on_meta(model_or_name) as (model, name):
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
            raise ValueError(f"{name} has no feature_info/forward_features/forward_head; stage_trace needs an "
                             "archlab model")
        size = resolve_input_size(model, input_size)
        x = meta_input(model, size)
        model.eval()
        tracker = ReceptiveFieldTracker(x)
        outputs: dict[str, tuple[torch.Tensor, Geometry | None]] = {}
        finish_order: dict[str, int] = {}

        def observe(module_name: str, output: Any) -> None:
            finish_order.setdefault(module_name, len(finish_order))
            if isinstance(output, torch.Tensor) and module_name not in outputs:
                outputs[module_name] = (output, tracker.geometry_of(output))

        with ModuleScopes(model, [observe]), torch.no_grad(), MetaFastPath(), tracker:
            if hasattr(model, "check_input"):
                model.check_input(x)
            try:
                pooled = model.forward_head(model.forward_features(x), pre_logits=True)
            except RuntimeError as exc:
                raise ValueError(f"{name} cannot run on a {tuple(x.shape)} input: {exc}") from exc
            pooled_geometry = tracker.geometry_of(pooled)

        units = _blocks(model, [u for u in block_names(model) if u in finish_order])
        stages = [Stage("input", "", size, x.shape[1], 0, 1, 1)]
        previous = -1
        for i, f in enumerate(info):
            if f["module"] not in outputs:
                raise ValueError(f"{name}: feature_info module {f['module']!r} produced no tensor")
            out, geometry = outputs[f["module"]]
            end = finish_order[f["module"]]
            blocks = sum(1 for u in units if previous < finish_order[u] <= end)
            previous = end
            stages.append(Stage(f"stage{i}", f["module"], tuple(out.shape[-2:]), int(out.shape[1]), blocks,
                                _num(geometry.h.jump) if geometry else float("nan"),
                                _num(geometry.h.size) if geometry else float("nan"),
                                geometry.global_context if geometry else False))
        g = pooled_geometry
        # 'pool' where the head only pools the last stage (ResNet: 2048 -> 2048); 'pre-logits' where layers come
        # between the pool and the classifier (AlexNet/VGG: two 4096-wide FC layers; MobileNetV3: a 1280 layer).
        last = "pool" if int(pooled.shape[1]) == stages[-1].channels else "pre-logits"
        stages.append(Stage(last, "", (1, 1), int(pooled.shape[1]), 0,
                            _num(g.h.jump) if g else float("nan"), _num(g.h.size) if g else float("nan"),
                            g.global_context if g else False))
        return StageTrace(name, size, stages)


def _blocks(model: nn.Module, units: list[str]) -> list[str]:
    """The units that are blocks in the papers' sense: those with more than one conv (a residual, dense or
    inverted-residual block) or with a residual branch of one conv (EfficientNetV2's Fused-MBConv1, which carries
    stochastic depth), leaving out single-conv stems, transitions and head convs. In a network made of single convs
    only (AlexNet, VGG), its "blocks" are those conv layers."""
    def is_block(unit: str) -> bool:
        modules = list(model.get_submodule(unit).modules())
        convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in modules)
        return convs > 1 or any(type(m).__name__ in ("DropPath", "StochasticDepth") for m in modules)

    multi = [u for u in units if is_block(u)]
    return multi or units


def _num(v: float) -> float:
    return int(v) if float(v).is_integer() else v
