"""The inference form of a model: :func:`fuse`, the BatchNorm fold (:mod:`archlab.deploy.fold`) and, for CPU
inference, the oneDNN conv-epilogue fusion (:mod:`archlab.deploy.onednn`) after it."""

from __future__ import annotations

import copy

from torch import nn

from archlab.deploy.fold import FuseSummary, fold_batchnorms
from archlab.deploy.onednn import fuse_conv_epilogues


def fuse(model: nn.Module, onednn: bool = False) -> nn.Module:
    """An inference copy of ``model``: every BatchNorm that follows a conv folded into it, dropout and
    drop-path removed. Outputs equal ``model.eval()``'s up to float rounding; ``model`` is not modified.

    ``onednn=True`` goes further for CPU inference (:mod:`archlab.deploy.onednn`): each conv is also fused with the
    activation, or the residual add and activation, after it into one oneDNN primitive with a prepacked weight,
    used on float32 channels-last CPU input (elsewhere the same math runs unfused); its parameters no longer
    require grad.

    The copy is in eval mode and carries ``fuse_summary`` (a :class:`FuseSummary`). It is for inference only:
    training it would train the folded convs without their BatchNorms.
    """
    fused = copy.deepcopy(model).eval()
    summary = FuseSummary()
    fold_batchnorms(fused, summary)
    if onednn:
        fuse_conv_epilogues(fused, summary)
    fused.fuse_summary = summary
    return fused
