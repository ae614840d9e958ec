"""Measure networks without running them for real: cost, per-layer summary, receptive fields and stage traces.

Everything runs on PyTorch's meta device under ``TorchDispatchMode``s, so even EfficientNet-B7 at 600x600 takes
about a second and no memory.
"""

from archlab.analysis.cost import conv_cost, separable_reduction
from archlab.analysis.profile import Profile, profile
from archlab.analysis.receptive_field import AxisRF, Geometry, ReceptiveFieldTracker, receptive_fields
from archlab.analysis.summary import LayerRow, Summary, summarize
from archlab.analysis.trace import Stage, StageTrace, stage_trace

__all__ = [
    "AxisRF",
    "Geometry",
    "LayerRow",
    "Profile",
    "ReceptiveFieldTracker",
    "Stage",
    "StageTrace",
    "Summary",
    "conv_cost",
    "profile",
    "receptive_fields",
    "separable_reduction",
    "stage_trace",
    "summarize",
]
