"""The inference form of a model: :func:`fuse`, the BatchNorm fold (:mod:`archlab.deploy.fold`) and, for CPU
inference, the oneDNN conv-epilogue fusion (:mod:`archlab.deploy.onednn`) after it, in float32 or bfloat16
(:mod:`archlab.deploy.precision`)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from archlab.deploy.fold import FuseSummary, fold_batchnorms
from archlab.deploy.onednn import fuse_conv_epilogues
from archlab.deploy.onednn_graph import attach as attach_graph
from archlab.api import require_module
from archlab.deploy.precision import cast_input, cast_output, check_precision, require_bf16


def fuse(model: nn.Module, onednn: bool = False, precision: str = "fp32", graph: bool = True,
         plan: bool = True) -> nn.Module:
    """An inference copy of ``model``: every BatchNorm that follows a conv folded into it, dropout and
    drop-path removed. Outputs equal ``model.eval()``'s up to float rounding; ``model`` is not modified.

    ``onednn=True`` goes further for CPU inference (:mod:`archlab.deploy.onednn`): each conv is also fused with the
    activation, or the residual add and activation, after it into one oneDNN primitive with a prepacked weight,
    used on channels-last CPU input (elsewhere the same math runs unfused); its parameters no longer require grad.
    And (``graph=True``, the default) a plain call ``model(x)`` on a CPU tensor without autograd runs the whole
    model traced and compiled by oneDNN Graph for that input's shape (:mod:`archlab.deploy.onednn_graph`; the first
    call per shape compiles, 1-2.5 s for the deployment models at 224x224), falling back to the module-by-module
    form wherever that does not apply. With ``plan=True`` (the default) and oneDNN's own library installed
    (``onednn-cpu-gomp``, in the ``deploy`` extra), a model made of the layers a primitive plan runs (most of the
    zoo), in fp32 or bf16, runs instead as a fixed list of oneDNN primitives called through oneDNN's C
    API (:mod:`archlab.deploy.primitive_plan`): the same kernels without TorchScript or the bridge between them,
    the form that is fastest at batch 1 (docs/deployment.md section 2c); the graph is the fallback.

    ``precision="bf16"``: the folded weights (folded in float64 from the float32 model) are cast to bfloat16 once,
    and the model computes in bfloat16 (with ``onednn=True``, oneDNN's bf16 convolutions with the same fusions); it
    still takes float32 input and returns float32 outputs (a forward pre-hook and hook cast them). With
    ``onednn=True`` a CPU without native bf16 arithmetic is refused (:func:`archlab.deploy.precision.require_bf16`):
    there it would be slower than float32.

    The copy is in eval mode and carries ``fuse_summary`` (a :class:`FuseSummary`). It is for inference only:
    training it would train the folded convs without their BatchNorms.
    """
    check_precision(precision)
    if precision == "bf16" and onednn:
        require_bf16()
    fused = copy.deepcopy(require_module(model, "fuse")).eval()
    summary = FuseSummary(precision=precision)
    fold_batchnorms(fused, summary)
    if onednn:
        fuse_conv_epilogues(fused, summary)
        if graph:
            attach_graph(fused, plan=plan)
    if precision == "bf16":
        fused.to(torch.bfloat16)  # once: the weights (and prepacked copies, built on first call) stay bf16
        fused.register_forward_pre_hook(cast_input)
        fused.register_forward_hook(cast_output)
    fused.fuse_summary = summary
    return fused
