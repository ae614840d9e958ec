"""Inference forms: fold BatchNorm into convolutions (and, with ``onednn=True``, fuse their epilogues on CPU).

Export to ONNX and torch.export programs is :mod:`archlab.export`.

How conv→BN pairs are found: **torch.fx**, on the model's dataflow graph, not on module order. A module-order walk
only sees that a BatchNorm is *registered* after a conv; the graph shows that the BatchNorm's input *is* that
conv's output, and (``node.users``) that nothing else reads the raw conv output — a residual that adds the
pre-norm tensor, a conv whose output feeds two norms, or a module shared by two call sites would all make a
fold wrong, and all three are visible in the graph. The fold itself is applied to the original module tree
(weights rewritten, BatchNorm replaced by ``nn.Identity``), so the fused model keeps its class and API
(``forward_features``, ``feature_info``, ``card``). Where a module cannot be traced (Python control flow on
tensor values), its children are traced one by one instead: pairs inside traceable sub-trees are still found,
and nothing is folded across an untraceable boundary, so the result stays exact.

``fuse(model, onednn=True)`` then hands the folded model to :mod:`archlab.onednn`, which runs each conv with the
activation or residual add after it as one oneDNN primitive on CPU (the same graphs, :func:`traced_subtrees`).

A BatchNorm with its activation inside (timm's ``BatchNormAct2d``, a ``BatchNorm2d`` subclass that runs
BN → dropout → activation in one module) is folded the same way and leaves its activation in its place.

Pre-activation BatchNorms (DenseNet: BN→ReLU→conv) have no conv *before* them and are kept. Folding a BN into
the conv *after* it is not done: with zero padding the border pixels see padded zeros, not the BN's shift,
so that fold is not exact.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers that are an identity in eval mode whatever their probability.
_EVAL_IDENTITY_NAMES = {"DropPath", "StochasticDepth", "DropBlock2d"}


def _is_eval_identity(m: nn.Module) -> bool:
    return isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)) or type(m).__name__ in _EVAL_IDENTITY_NAMES


def _norm_act_tail(m: nn.Module) -> nn.Module | None:
    """What is left in place of a BatchNorm once folded: ``nn.Identity()`` for torch's own BatchNorms, the
    activation for a BN-with-activation module (timm's ``BatchNormAct2d``: BN, then ``.drop``, then ``.act``;
    its dropout is an identity at eval), ``None`` for any other BatchNorm subclass (its forward may do more than
    normalise: it is not folded, and fx traces through it)."""
    if type(m).__module__.startswith("torch.nn."):  # BatchNorm1d/2d/3d, SyncBatchNorm
        return nn.Identity()
    act, drop = getattr(m, "act", None), getattr(m, "drop", None)
    if (type(m).__name__ == "BatchNormAct2d" and isinstance(m, nn.BatchNorm2d) and isinstance(act, nn.Module)
            and isinstance(drop, nn.Module) and _is_eval_identity(drop)):
        return act
    return None


@dataclass
class FuseSummary:
    """What :func:`fuse` did: folded ``(conv, norm)`` module names, norms kept, layers dropped, modules fx could
    not trace as a whole, and (``onednn=True``) the convs run with their activation / residual add fused."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    kept_norms: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    untraced: list[str] = field(default_factory=list)
    post_ops: list[str] = field(default_factory=list)


class _Trunk(nn.Module):
    """Trace target for an ArchNet: features then head, skipping ``check_input`` (control flow on shapes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.forward_head(self.m.forward_features(x))


class _Tracer(fx.Tracer):
    """fx tracer that tolerates container modules built on the fly (``self.classifier[:-1](x)`` slices a
    Sequential into a new, unregistered one): their children are registered and traced as usual."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Kept as one call: modules that declare themselves leaves (archlab.onednn.FusedConv2d: control flow on the
        # input's device, dtype and layout), and BN-with-activation modules, so they fold like a BatchNorm.
        if getattr(m, "fx_leaf", False) or (isinstance(m, nn.BatchNorm2d) and _norm_act_tail(m) is not None):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def path_of_module(self, mod: nn.Module) -> str:
        try:
            return super().path_of_module(mod)
        except NameError:
            return "<unregistered>"


def _pairs_in_graph(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str]]:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(root.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        norm = modules[node.target]
        if _norm_act_tail(norm) is None:
            continue
        if not norm.track_running_stats or norm.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue  # batch statistics at eval time: nothing fixed to fold
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), _CONVS)):
            continue
        conv = modules[src.target]
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue  # the raw conv output is read elsewhere, or a module is called twice: folding would change it
        if conv.out_channels != norm.num_features:
            continue
        pairs.append((src.target, node.target))
    return pairs


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
    if isinstance(module, (*_CONVS, nn.modules.batchnorm._BatchNorm)) or not any(module.children()):
        return []
    is_archnet = hasattr(module, "forward_features") and hasattr(module, "forward_head")
    target, strip = (_Trunk(module), "m.") if is_archnet else (module, "")
    try:
        graph = _Tracer().trace(target)
    except Exception:  # noqa: BLE001 - any tracing failure means: look one level down
        if untraced is not None:
            untraced.append(prefix.rstrip(".") or "<root>")
        found = []
        for name, child in module.named_children():
            found += traced_subtrees(child, f"{prefix}{name}.", untraced)
        return found
    return [TracedSubtree(graph, target, prefix, strip)]


def _find_pairs(module: nn.Module, summary: FuseSummary) -> list[tuple[str, str]]:
    """Conv→BN pairs of ``module`` by tracing the largest sub-trees that torch.fx can trace."""
    return [
        (t.name(c), t.name(b))
        for t in traced_subtrees(module, "", summary.untraced)
        for c, b in _pairs_in_graph(t.graph, t.root)
    ]


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Rewrite ``conv`` in place so that ``conv(x) == norm(conv_before(x))`` in eval mode (in float64, then cast)."""
    w = conv.weight.double()
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale = scale * norm.weight.double()
        shift = shift * norm.weight.double() + norm.bias.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    conv.weight.copy_((w * scale.view(-1, *([1] * (w.ndim - 1)))).to(conv.weight.dtype))
    new_bias = (bias * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def fuse(model: nn.Module, onednn: bool = False) -> nn.Module:
    """An inference copy of ``model``: every BatchNorm that follows a conv folded into it, dropout and
    drop-path removed. Outputs equal ``model.eval()``'s up to float rounding; ``model`` is not modified.

    ``onednn=True`` goes further for CPU inference (:mod:`archlab.onednn`): each conv is also fused with the
    activation, or the residual add and activation, after it into one oneDNN primitive with a prepacked weight,
    used on float32 channels-last CPU input (elsewhere the same math runs unfused); its parameters no longer
    require grad.

    The copy is in eval mode and carries ``fuse_summary`` (a :class:`FuseSummary`). It is for inference only:
    training it would train the folded convs without their BatchNorms.
    """
    fused = copy.deepcopy(model).eval()
    summary = FuseSummary()
    # A module registered under two names (shared weights) must not be rewritten for one of its uses.
    seen = Counter(id(m) for _, m in fused.named_modules(remove_duplicate=False))
    pairs = [
        (c, b) for c, b in _find_pairs(fused, summary)
        if seen[id(fused.get_submodule(c))] == 1 and seen[id(fused.get_submodule(b))] == 1
    ]
    for conv_name, norm_name in pairs:
        norm = fused.get_submodule(norm_name)
        fold_bn_into_conv(fused.get_submodule(conv_name), norm)
        _replace(fused, norm_name, _norm_act_tail(norm))
        summary.folded.append((conv_name, norm_name))
    for name, m in list(fused.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            summary.kept_norms.append(name)
        elif _is_eval_identity(m) and not isinstance(m, nn.Identity):
            _replace(fused, name, nn.Identity())
            summary.dropped.append(name)
    if onednn:
        from archlab.onednn import fuse_conv_epilogues  # imports this module: loaded on demand

        fuse_conv_epilogues(fused, summary)
    fused.fuse_summary = summary
    return fused
