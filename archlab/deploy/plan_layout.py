"""The steps of a primitive plan (:mod:`archlab.deploy.primitive_plan`) that move bytes and compute nothing:
flatten, concatenation, ShuffleNet's channel shuffle and split, the CIFAR ResNets' option-A shortcut. Each is a view
of a buffer where its readers can take one (a strided or offset descriptor over the same bytes), else a reorder.
"""

from __future__ import annotations

import ctypes
import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx

import archlab.deploy.dnnl_capi as capi
from archlab.deploy.plan_objects import NotPlannable, Value

if TYPE_CHECKING:
    from archlab.deploy.primitive_plan import _Builder


def flatten(b: _Builder, node: fx.Node) -> None:
    """``flatten(x, 1)``: a view of a 1x1 map; a larger map is first reordered to NCHW, PyTorch's flattening
    order (VGG's classifier reads a 7x7 map)."""
    src = b.values[b.source(node.args[0])]
    if len(src.dims) != 4:
        raise NotPlannable(f"{node.name}: flatten of a {len(src.dims)}-d tensor")
    n, c, h, w = src.dims
    if (h, w) != (1, 1):
        md = b.md(src.dims, capi.TAG_ABCD)
        plain = Value(src.dims, md, b.activation_memory(md))
        b.reorder_step(node.name, src.md, src.memory, md, plain.memory)
        src = plain
    b.bind(node, b.view(src, (n, c * h * w)), node)


def concat(b: _Builder, node: fx.Node) -> None:
    """``torch.cat`` along channels (DenseNet's growing input, the Inception and Fire modules' branches)."""
    parts = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts) or dim % 4 != 1:
        raise NotPlannable(f"{node.name}: torch.cat other than of tensors along channels")
    sources = [b.values[b.source(p)] for p in parts]
    dst = b.output_value(node, b.shape(node))
    mds = (ctypes.c_void_p * len(sources))(*[v.md for v in sources])
    b.plan._keep.append(("array", mds))
    pd = b.lib.new("dnnl_concat_primitive_desc_create", ctypes.c_void_p(b.lib.engine), ctypes.c_void_p(dst.md),
                   len(sources), 1, mds, None)
    b.add_step(node.name, pd, [*[(capi.ARG_MULTIPLE_SRC + i, v.memory) for i, v in enumerate(sources)],
                               (capi.ARG_DST, dst.memory)])
    b.bind(node, dst, node)


def shuffle(b: _Builder, node: fx.Node) -> None:
    """ShuffleNet's channel shuffle (arXiv:1707.01083, Figure 1c): one reorder between two 5-d views of the
    channels-last buffers, (N, groups, C / groups, H, W), the channel index read as g * C/groups + j and
    written as j * groups + g."""
    src = b.values[b.source(node.args[0])]
    groups = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
    if len(src.dims) != 4 or src.dims[1] % groups:
        raise NotPlannable(f"{node.name}: channel shuffle of {src.dims} in {groups} groups")
    n, c, h, w = src.dims
    dims = [n, groups, c // groups, h, w]
    read = b.strided_md(dims, [h * w * c, c // groups, 1, w * c, c])
    written = b.strided_md(dims, [h * w * c, 1, groups, w * c, c])
    dst = b.output_value(node, src.dims)
    b.reorder_step(node.name, read, b.activation_memory(read, alias_of=src.memory), written,
                   b.activation_memory(written, alias_of=dst.memory))
    b.bind(node, dst, node)


def chunk_piece(b: _Builder, node: fx.Node) -> None:
    """A piece of ``x.chunk(k, dim=1)`` (ShuffleNet V2's channel split): a view of its channels where only
    concatenations read it (oneDNN's concat reads strided sources), else a copy into a buffer of its own."""
    chunk, index = node.args
    src = b.values[b.source(chunk.args[0])]
    dims = b.shape(node)
    if len(src.dims) != 4 or tuple(dims[2:]) != tuple(src.dims[2:]):
        raise NotPlannable(f"{node.name}: a chunk other than along the channels of a 4-d tensor")
    offsets = [0, index * -(-src.dims[1] // _chunks(chunk)), 0, 0]
    view = b.submemory_md(src.md, dims, offsets)
    _view_or_copy(b, node, view, src.memory, all(r.op == "call_function" and r.target is torch.cat
                                                 for r in b.readers(node)))


def subsample(b: _Builder, node: fx.Node) -> None:
    """``x[:, :, ::s, ::s]`` (the CIFAR ResNets' option-A shortcut, arXiv:1512.03385 Sec. 4.2): a strided view
    of the map where only a channel pad reads it (the pad copies it), else a copy into a buffer of its own."""
    src = b.values[b.source(node.args[0])]
    step = spatial_step(node)
    n, c, h, w = src.dims
    dims = b.shape(node)
    view = b.strided_md(dims, [h * w * c, 1, step * w * c, step * c])
    _view_or_copy(b, node, view, src.memory, all(r.op == "call_function" and r.target is F.pad
                                                 for r in b.readers(node)))


def _view_or_copy(b: _Builder, node: fx.Node, view_md: int, of: int, readers_take_views: bool) -> None:
    """``node``'s value: ``view_md`` over the bytes of memory ``of``, or, where a reader needs a dense buffer (a
    convolution: v3.2's kernels for a strided source are the reference ones), a copy of it."""
    piece = Value(tuple(b.shape(node)), view_md, b.activation_memory(view_md, alias_of=of))
    if not readers_take_views:
        dense = b.output_value(node, piece.dims)
        b.reorder_step(node.name, piece.md, piece.memory, dense.md, dense.memory)
        piece = dense
    b.bind(node, piece, node)


def channel_pad(b: _Builder, node: fx.Node) -> None:
    """``F.pad(x, (0, 0, 0, 0, 0, k))``: ``k`` zero channels after ``x``'s (the option-A shortcut): ``x`` and
    a buffer of zeros each reordered into their channels of the output."""
    src = b.values[b.source(node.args[0])]
    pads = tuple(node.args[1]) if len(node.args) > 1 else tuple(node.kwargs["pad"])
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if len(src.dims) != 4 or mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 6 \
            or any(pads[:5]):
        raise NotPlannable(f"{node.name}: a pad other than zero channels after a 4-d map's")
    dims = b.shape(node)
    dst = b.output_value(node, dims)
    extra = [dims[0], pads[5], *dims[2:]]
    parts = [(src.md, src.memory, src.dims, 0)]
    if pads[5]:
        zeros_md = b.act_md(extra)
        zeros = b.constant(torch.zeros(extra), capi.TAG_ABCD, extra, zeros_md)
        parts.append((zeros_md, zeros, extra, src.dims[1]))
    for md, memory, part_dims, offset in parts:
        view = b.submemory_md(dst.md, part_dims, [0, offset, 0, 0])
        b.reorder_step(node.name, md, memory, view, b.activation_memory(view, alias_of=dst.memory))
    b.bind(node, dst, node)


def is_chunk(node: fx.Node) -> bool:
    """``x.chunk(k, dim=1)`` / ``torch.chunk(x, k, 1)``."""
    if not ((node.op == "call_method" and node.target == "chunk") or
            (node.op == "call_function" and node.target is torch.chunk)):
        return False
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return dim % 4 == 1 and all(u.op == "call_function" and u.target is operator.getitem for u in node.users)


def spatial_step(node: fx.Node) -> int | None:
    """``s`` where ``node`` is ``x[:, :, ::s, ::s]`` of a 4-d ``x``, else None."""
    index = node.args[1]
    if not isinstance(index, tuple) or len(index) != 4 or not all(isinstance(i, slice) for i in index):
        return None
    if any(i != slice(None) for i in index[:2]) or any(i.start not in (None, 0) or i.stop is not None
                                                        for i in index[2:]):
        return None
    steps = {i.step or 1 for i in index[2:]}
    return steps.pop() if len(steps) == 1 else None


def _chunks(node: fx.Node) -> int:
    return node.args[1] if len(node.args) > 1 else node.kwargs["chunks"]
