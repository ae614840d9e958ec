"""The model's dataflow graph, as torch.fx sees it: shared by the BatchNorm fold and the oneDNN rewrite.

How patterns are found: on the model's dataflow graph, not on module order. A module-order walk only sees that a
layer is *registered* after a conv; the graph shows that its input *is* that conv's output, and (``node.users``)
that nothing else reads the raw conv output. Where a module cannot be traced (Python control flow on tensor
values), its children are traced one by one instead (:func:`traced_subtrees`): patterns inside traceable sub-trees
are still found, and nothing is rewritten across an untraceable boundary, so the result stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers that are an identity in eval mode whatever their probability.
_EVAL_IDENTITY_NAMES = {"DropPath", "StochasticDepth", "DropBlock2d"}


def is_eval_identity(m: nn.Module) -> bool:
    return isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)) or type(m).__name__ in _EVAL_IDENTITY_NAMES


def norm_act_tail(m: nn.Module) -> nn.Module | None:
    """What is left in place of a BatchNorm once folded: ``nn.Identity()`` for torch's own BatchNorms, the
    activation for a BN-with-activation module (timm's ``BatchNormAct2d``: BN, then ``.drop``, then ``.act``;
    its dropout is an identity at eval), ``None`` for any other BatchNorm subclass (its forward may do more than
    normalise: it is not folded, and fx traces through it)."""
    if type(m).__module__.startswith("torch.nn."):  # BatchNorm1d/2d/3d, SyncBatchNorm
        return nn.Identity()
    act, drop = getattr(m, "act", None), getattr(m, "drop", None)
    if (type(m).__name__ == "BatchNormAct2d" and isinstance(m, nn.BatchNorm2d) and isinstance(act, nn.Module)
            and isinstance(drop, nn.Module) and is_eval_identity(drop)):
        return act
    return None


class _Trunk(nn.Module):
    """Trace target for an ArchNet: features then head, skipping ``check_input`` (control flow on shapes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.forward_head(self.m.forward_features(x))


class Tracer(fx.Tracer):
    """fx tracer that tolerates container modules built on the fly (``self.classifier[:-1](x)`` slices a
    Sequential into a new, unregistered one): their children are registered and traced as usual."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Kept as one call: modules that declare themselves leaves (archlab.deploy.onednn.FusedConv2d: control flow on
        # the input's device, dtype and layout), and BN-with-activation modules, so they fold like a BatchNorm.
        # LayerNorm's subclasses (ConvNeXt's LayerNorm2d branches on the input's layout) too: one node.
        if getattr(m, "fx_leaf", False) or (isinstance(m, nn.BatchNorm2d) and norm_act_tail(m) is not None) \
                or isinstance(m, nn.LayerNorm):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def path_of_module(self, mod: nn.Module) -> str:
        try:
            return super().path_of_module(mod)
        except NameError:
            return "<unregistered>"


@dataclass
class TracedSubtree:
    """A sub-tree of a model traced by torch.fx: ``graph`` of ``root``, whose module targets are the model's
    names once ``strip`` is removed from their front and ``prefix`` put there instead."""

    graph: fx.Graph
    root: nn.Module
    prefix: str
    strip: str

    def name(self, target: str) -> str:
        """The model's dotted name of a module target of this graph."""
        return self.prefix + target[len(self.strip):]


def traced_subtrees(module: nn.Module, prefix: str = "", untraced: list[str] | None = None) -> list[TracedSubtree]:
    """The largest sub-trees of ``module`` that torch.fx can trace, with their graphs: the whole model when it
    traces (an ArchNet as features then head), else its children one by one, recursively. The names of modules
    that could not be traced are appended to ``untraced``."""
    if isinstance(module, (*CONVS, nn.modules.batchnorm._BatchNorm)) or not any(module.children()):
        return []
    is_archnet = hasattr(module, "forward_features") and hasattr(module, "forward_head")
    target, strip = (_Trunk(module), "m.") if is_archnet else (module, "")
    try:
        graph = Tracer().trace(target)
    except Exception:  # noqa: BLE001 - any tracing failure means: look one level down
        if untraced is not None:
            untraced.append(prefix.rstrip(".") or "<root>")
        found = []
        for name, child in module.named_children():
            found += traced_subtrees(child, f"{prefix}{name}.", untraced)
        return found
    return [TracedSubtree(graph, target, prefix, strip)]


def replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Put ``new`` where the module named ``dotted`` is in ``root``."""
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
