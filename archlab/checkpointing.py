"""Gradient checkpointing of every block: trade compute for activation memory in training.

Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (arXiv:1604.06174); for DenseNet, Pleiss et al.
2017, "Memory-Efficient Implementation of DenseNets" (arXiv:1707.06990). A checkpointed block keeps only its input
during the forward pass and runs again during the backward pass to rebuild what its backward needs, so training
holds one tensor per block instead of every intermediate one, for roughly one more forward pass of compute.
Measured with ``benchmarks/grad_checkpointing.py`` (one training step, batch 8, 224x224, peak rise of the process
RSS, two runs on a shared CPU): ResNet-50 796-812 -> 526-544 MiB, EfficientNet-B0 771-801 -> 572-666 MiB, for a
step 1.2-1.7x as long.

The blocks are the units :func:`archlab.models.blocks.block_names` finds (a residual block of ResNet, an inverted
residual of MobileNet, a dense layer of DenseNet, a conv layer of VGG). Training is unchanged, not approximately but
exactly: the rerun replays the same random numbers (dropout, drop-path), and BatchNorm's running statistics are
frozen while a block reruns, so that they see each batch once — a plain ``torch.utils.checkpoint`` would update them
twice.

Enable with ``model.set_grad_checkpointing()`` on any archlab model or ``archlab train --grad-checkpointing``. It
acts only in training mode with gradients enabled; evaluation and inference run the blocks as usual.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from archlab.api import require_module
from archlab.models.blocks import block_names

_CHECKPOINTED: dict[type, type] = {}  # block class -> its checkpointing subclass


@contextlib.contextmanager
def _frozen_norm_statistics(block: nn.Module) -> Iterator[None]:
    """While a block reruns for its backward pass: its BatchNorms normalise as before but leave their running
    statistics (and batch counters) as the first run left them."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def _contexts(block: nn.Module) -> tuple[Any, Any]:
    return contextlib.nullcontext(), _frozen_norm_statistics(block)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    base_forward = self._archlab_block_class.forward
    if self.training and torch.is_grad_enabled():
        # The rerun happens during backward: a list argument (DenseNet's list of earlier feature maps) may have
        # grown since, so the block reruns on a copy of the list as it was.
        args = tuple(list(a) if isinstance(a, list) else a for a in args)
        return checkpoint(base_forward, self, *args, use_reentrant=False, context_fn=partial(_contexts, self),
                          **kwargs)
    return base_forward(self, *args, **kwargs)


def _checkpointed_class(cls: type) -> type:
    # A subclass rather than a wrapper module (the state-dict keys stay the same) or an instance attribute (a
    # deep copy, e.g. the EMA model, would call the original's bound forward).
    if cls not in _CHECKPOINTED:
        _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (cls,),
                                  {"forward": _checkpointed_forward, "_archlab_block_class": cls,
                                   "__module__": cls.__module__})
    return _CHECKPOINTED[cls]


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> list[str]:
    """Checkpoint (or stop checkpointing) every block of ``model`` in place; returns the block names."""
    names = block_names(require_module(model, "set_grad_checkpointing"))
    for name in names:
        block = model.get_submodule(name)
        base = getattr(type(block), "_archlab_block_class", type(block))
        block.__class__ = _checkpointed_class(base) if enable else base
    return names


def is_checkpointed(module: nn.Module) -> bool:
    return hasattr(type(module), "_archlab_block_class")
