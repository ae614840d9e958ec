"""Fold every BatchNorm that follows a convolution into it: the first step of the inference form
(:func:`archlab.deploy.fuse`).

Export to ONNX and torch.export programs is :mod:`archlab.deploy.export`.

How conv→BN pairs are found: **torch.fx**, on the model's dataflow graph, not on module order. A module-order walk
only sees that a BatchNorm is *registered* after a conv; the graph shows that the BatchNorm's input *is* that
conv's output, and (``node.users``) that nothing else reads the raw conv output — a residual that adds the
pre-norm tensor, a conv whose output feeds two norms, or a module shared by two call sites would all make a
fold wrong, and all three are visible in the graph. The fold itself is applied to the original module tree
(weights rewritten, BatchNorm replaced by ``nn.Identity``), so the fused model keeps its class and API
(``forward_features``, ``feature_info``, ``card``). Where a module cannot be traced (Python control flow on
tensor values), its children are traced one by one instead: pairs inside traceable sub-trees are still found,
and nothing is folded across an untraceable boundary, so the result stays exact.

``fuse(model, onednn=True)`` then hands the folded model to :mod:`archlab.deploy.onednn`, which runs each conv with
the activation or residual add after it as one oneDNN primitive on CPU (the same graphs,
:func:`archlab.deploy.graph.traced_subtrees`).

A BatchNorm with its activation inside (timm's ``BatchNormAct2d``, a ``BatchNorm2d`` subclass that runs
BN → dropout → activation in one module) is folded the same way and leaves its activation in its place.

Pre-activation BatchNorms (DenseNet: BN→ReLU→conv) have no conv *before* them and are kept. Folding a BN into
the conv *after* it is not done: with zero padding the border pixels see padded zeros, not the BN's shift,
so that fold is not exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from archlab.deploy.graph import CONVS, is_eval_identity, norm_act_tail, replace_module, traced_subtrees


@dataclass
class FuseSummary:
    """What :func:`fuse` did: folded ``(conv, norm)`` module names, norms kept, layers dropped, modules fx could
    not trace as a whole, and (``onednn=True``) the convs run with their activation / residual add fused."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    kept_norms: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    untraced: list[str] = field(default_factory=list)
    post_ops: list[str] = field(default_factory=list)
    precision: str = "fp32"  # 'bf16': weights cast to bfloat16 after folding


def _pairs_in_graph(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str]]:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(root.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        norm = modules[node.target]
        if norm_act_tail(norm) is None:
            continue
        if not norm.track_running_stats or norm.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue  # batch statistics at eval time: nothing fixed to fold
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), CONVS)):
            continue
        conv = modules[src.target]
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue  # the raw conv output is read elsewhere, or a module is called twice: folding would change it
        if conv.out_channels != norm.num_features:
            continue
        pairs.append((src.target, node.target))
    return pairs


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


def fold_batchnorms(model: nn.Module, summary: FuseSummary) -> None:
    """In place on an eval-mode ``model``: every BatchNorm that follows a conv folded into it (left as its tail,
    :func:`archlab.deploy.graph.norm_act_tail`), dropout and drop-path removed; what was done goes to ``summary``."""
    # A module registered under two names (shared weights) must not be rewritten for one of its uses.
    seen = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = [
        (c, b) for c, b in _find_pairs(model, summary)
        if seen[id(model.get_submodule(c))] == 1 and seen[id(model.get_submodule(b))] == 1
    ]
    for conv_name, norm_name in pairs:
        norm = model.get_submodule(norm_name)
        fold_bn_into_conv(model.get_submodule(conv_name), norm)
        replace_module(model, norm_name, norm_act_tail(norm))
        summary.folded.append((conv_name, norm_name))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            summary.kept_norms.append(name)
        elif is_eval_identity(m) and not isinstance(m, nn.Identity):
            replace_module(model, name, nn.Identity())
            summary.dropped.append(name)
