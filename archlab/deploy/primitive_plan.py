"""A model's whole forward pass as a fixed list of oneDNN primitives, built once per input shape and run back to back
through oneDNN's C API (:mod:`archlab.deploy.dnnl_capi`), with every buffer allocated once.

Why. The graph form (:mod:`archlab.deploy.onednn_graph`) runs oneDNN's kernels as fast as ONNX Runtime runs its own,
but at batch 1 it pays 0.7-1.4 ms per forward around them: TorchScript's interpreter, the oneDNN Graph bridge's
guards and run arguments (14-26 us per partition), a PyTorch tensor allocated for every partition's output, and the
squeeze-excitation mean and multiply run as ATen ops (docs/deployment.md section 2b). Here a forward is one ctypes
call per primitive into a plan that already holds every primitive, memory object and argument list.

What a plan is. The BatchNorm-folded model (:func:`archlab.deploy.fuse`) traced by torch.fx; each node in order
becomes a primitive: a convolution takes the activations, the residual add and the activation after it that follow
it (single readers only) as post-ops; a linear layer its activation; a spatial mean (``AdaptiveAvgPool2d(1)``,
``x.mean((2, 3))``) is a whole-map average pooling; squeeze-excitation's scaling multiply is a broadcast binary
primitive; max and average pooling, BatchNorm after no conv, and element-wise activations (GELU among them) are
primitives of their own. Weights are reordered once into the layout oneDNN picks for each convolution.
Activations are channels-last (``nhwc``) between primitives, as in the graph form. Anything else in the graph is
refused with :class:`NotPlannable`, naming it.

Where it lives. This module walks the graph and decides what each node becomes (:class:`_Builder`); the plan, the
oneDNN objects it owns and their buffers are :mod:`archlab.deploy.plan_objects`; the steps that only move bytes
(flatten, concat, ShuffleNet's shuffle and split, the option-A shortcut) are :mod:`archlab.deploy.plan_layout`.

Scope: CPU inference of a model traced for one input shape, in float32, or in bfloat16 where the model's weights and
its input are (``fuse(precision="bf16")``: oneDNN's bf16 kernels, AMX where the CPU has it; biases added in fp32);
the input may be NCHW (reordered into the plan's layout by a first primitive) or channels-last (read as it is); the
output is a new tensor on every call.
"""

from __future__ import annotations

import ctypes
import functools
import operator
import weakref

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import archlab.deploy.dnnl_capi as capi
import archlab.deploy.plan_layout as plan_layout
from archlab.deploy.graph import Tracer, _Trunk, is_eval_identity
# The activations written as calls and the adds the module form (archlab.deploy.onednn) fuses: the same ones here.
from archlab.deploy.onednn import _ADDS, _FUNCTIONAL, FusedConv2d
from archlab.deploy.plan_objects import (NotPlannable, Objects, PrimitivePlan, Value, place_buffers, ptr, release,
                                         shifted)
from archlab.models.shufflenet_v2 import channel_shuffle

__all__ = ["NotPlannable", "PrimitivePlan", "SUM_IN_PLACE", "build_plan"]


SUM_IN_PLACE = True  # residual adds as in-place sum post-ops (see _Builder.in_place_sum)


# Activation -> (oneDNN eltwise algorithm, alpha, beta), as PyTorch defines each.
_ELTWISE: dict[object, tuple[int, float, float]] = {
    nn.ReLU: (capi.ELTWISE_RELU, 0.0, 0.0),
    nn.ReLU6: (capi.ELTWISE_CLIP, 0.0, 6.0),
    nn.Hardswish: (capi.ELTWISE_HARDSWISH, 1 / 6, 0.5),
    nn.Hardsigmoid: (capi.ELTWISE_HARDSIGMOID, 1 / 6, 0.5),
    nn.SiLU: (capi.ELTWISE_SWISH, 1.0, 0.0),
    nn.Sigmoid: (capi.ELTWISE_LOGISTIC, 0.0, 0.0),
}

_MULS = (operator.mul, operator.imul, torch.mul)



class _Builder(Objects):
    """Walks the traced graph in order and makes each node's primitive (or absorbs the node into one)."""

    def __init__(self, root: nn.Module, graph: fx.Graph, plan: PrimitivePlan) -> None:
        super().__init__(plan)
        self.root, self.graph = root, graph
        self.modules = dict(root.named_modules())
        self.values: dict[fx.Node, Value] = {}
        self.done: set[fx.Node] = set()

    # -- the graph ------------------------------------------------------------------------------------------------
    def source(self, node) -> fx.Node:
        """The node whose value ``node`` is (through identities: a folded BatchNorm's Identity, eval dropout)."""
        while isinstance(node, fx.Node) and self.is_alias(node):
            node = node.args[0]
        return node

    def is_alias(self, node: fx.Node) -> bool:
        return node.op == "call_module" and is_eval_identity(self.modules[node.target])

    def readers(self, node: fx.Node) -> list[fx.Node]:
        found = []
        for user in node.users:
            found += self.readers(user) if self.is_alias(user) else [user]
        return found

    def activation(self, node: fx.Node):
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.GELU):  # exact or tanh form
            tanh = self.modules[node.target].approximate == "tanh"
            return (capi.ELTWISE_GELU_TANH if tanh else capi.ELTWISE_GELU_ERF, 0.0, 0.0)
        if node.op == "call_module":
            kind = type(self.modules[node.target])
        elif node.op in ("call_function", "call_method") and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
            kind = _FUNCTIONAL.get(node.target)
        else:
            return None
        return _ELTWISE.get(kind)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def epilogue(self, node: fx.Node) -> tuple[list[tuple], list[tuple[int, int]], fx.Node]:
        """The activations and residual adds after ``node`` that its primitive can take as post-ops: the list of
        post-ops, their execution arguments, and the node whose value the primitive's output is."""
        post_ops, args, last = [], [], node
        while True:
            readers = self.readers(last)
            if len(readers) != 1:
                break
            reader = readers[0]
            eltwise = self.activation(reader)
            if eltwise is not None:
                post_ops.append(("eltwise", *eltwise))
            elif (gain := self.channel_gain(reader, last)) is not None:  # ConvNeXt's layer scale
                post_ops.append(("binary", capi.BINARY_MUL, gain.md))
                args.append((capi.arg_post_op(len(post_ops) - 1) | capi.ARG_SRC_1, gain.memory))
            elif reader.op == "call_function" and reader.target in _ADDS and len(reader.args) == 2 \
                    and not reader.kwargs:
                other = [self.source(a) for a in reader.args if self.source(a) is not self.source(last)]
                if len(other) != 1 or other[0] not in self.values or self.shape(other[0]) != self.shape(reader):
                    break
                value = self.values[other[0]]
                post_ops.append(("binary", capi.BINARY_ADD, value.md))
                args.append((capi.arg_post_op(len(post_ops) - 1) | capi.ARG_SRC_1, value.memory))
            else:
                break
            last = reader
        return post_ops, args, last

    def channel_gain(self, node: fx.Node, of: fx.Node) -> Value | None:
        """Where ``node`` multiplies ``of``'s value by a parameter of one number per channel (``gamma * x``,
        gamma of shape (C, 1, 1): layer scale, arXiv:2103.17239), that parameter as a (1, C, 1, 1) constant."""
        if node.op != "call_function" or node.target not in _MULS or len(node.args) != 2 or node.kwargs:
            return None
        other = [a for a in node.args if self.source(a) is not self.source(of)]
        if len(other) != 1 or not isinstance(other[0], fx.Node) or other[0].op != "get_attr":
            return None
        tensor = functools.reduce(getattr, other[0].target.split("."), self.root)
        dims = self.shape(node)
        if len(dims) != 4 or tensor.numel() != dims[1] or tensor.shape[-2:] not in ((1, 1), (dims[1], 1)):
            return None
        shape = [1, dims[1], 1, 1]
        md = self.act_md(shape)
        return Value(tuple(shape), md, self.constant(tensor.reshape(shape), capi.TAG_ABCD, shape, md))

    def in_place_sum(self, node: fx.Node, last: fx.Node, post_ops: list[tuple], post_args: list[tuple[int, int]],
                     dims):
        """Where a conv's first post-op adds a shortcut that nothing else reads, the conv writes into the
        shortcut's buffer and adds it as a ``sum`` post-op (what oneDNN recommends for residual blocks) instead of
        reading it as a second input: edits ``post_ops`` / ``post_args`` and returns the output value, else None."""
        if not SUM_IN_PLACE or not post_ops or post_ops[0][0] != "binary" or post_ops[0][1] != capi.BINARY_ADD:
            return None
        slot = capi.arg_post_op(0) | capi.ARG_SRC_1
        memory = dict(post_args).get(slot)
        shortcut = next((n for n, v in self.values.items() if v.memory == memory), None)
        this_step = set(self._chain(node, last))
        if memory not in self.activations or shortcut is None or any(
                reader not in this_step and reader not in self.done for reader in self.readers(shortcut)) \
                or any(v.memory == memory for n, v in self.values.items() if n is not shortcut):
            return None  # the network's input, or a tensor a later step still reads (or under another name)
        post_ops[0] = ("sum",)
        post_args.remove((slot, memory))
        md = self.values[shortcut].md
        return Value(tuple(dims), md, self.activation_memory(md, alias_of=memory))

    def bind(self, node: fx.Node, value: Value, *absorbed: fx.Node) -> None:
        self.values[node] = value
        self.done.update(absorbed)

    def conv(self, node: fx.Node, conv: nn.Conv2d) -> None:
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise NotPlannable(f"{node.target}: padding {conv.padding!r} / {conv.padding_mode}")
        src = self.values[self.source(node.args[0])]
        out_dims = self.shape(node)
        o, i_per_group, kh, kw = conv.weight.shape
        g = conv.groups
        w_dims = [o, i_per_group, kh, kw] if g == 1 else [g, o // g, i_per_group, kh, kw]
        w_tag = capi.TAG_ABCD if g == 1 else capi.TAG_ABCDE
        w_any = self.md(w_dims, capi.TAG_ANY)
        b_md = self.md([o], capi.TAG_A, capi.F32)  # biases stay fp32 (oneDNN adds them in fp32)
        post_ops, post_args, last = self.epilogue(node)
        if isinstance(conv, FusedConv2d):  # the module form's fused conv: act(conv(x) [+ residual]) in one call
            own, own_args = [], []
            if conv.residual:
                residual = self.values[self.source(node.args[1])]
                own.append(("binary", capi.BINARY_ADD, residual.md))
                own_args.append((capi.arg_post_op(0) | capi.ARG_SRC_1, residual.memory))
            if conv.act is not None:
                own.append(("eltwise", *_ELTWISE[type(conv.act)]))
            shift = len(own)
            post_args = own_args + [(shifted(arg, shift), memory) for arg, memory in post_args]
            post_ops = own + post_ops
        dst = self.in_place_sum(node, last, post_ops, post_args, out_dims) or self.output_value(last, out_dims)
        pad_l = list(conv.padding)
        pad_r = [(out_dims[2 + d] - 1) * conv.stride[d] + (conv.weight.shape[2 + d] - 1) * conv.dilation[d] + 1
                 - src.dims[2 + d] - pad_l[d] for d in range(2)]
        pd = self.lib.new("dnnl_convolution_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, capi.CONVOLUTION_DIRECT, ctypes.c_void_p(src.md),
                          ctypes.c_void_p(w_any), ctypes.c_void_p(b_md), ctypes.c_void_p(dst.md),
                          capi.dims(conv.stride), capi.dims([d - 1 for d in conv.dilation]), capi.dims(pad_l),
                          capi.dims(pad_r), ptr(self.attr(post_ops)))
        weights = self.constant(conv.weight.reshape(w_dims), w_tag, w_dims, self.queried(pd, capi.QUERY_WEIGHTS_MD))
        bias = conv.bias if conv.bias is not None else torch.zeros(o)
        bias_memory = self.constant(bias, capi.TAG_A, [o], b_md)
        self.add_step(node.target, pd, [(capi.ARG_SRC, src.memory), (capi.ARG_WEIGHTS, weights),
                                        (capi.ARG_BIAS, bias_memory), (capi.ARG_DST, dst.memory), *post_args])
        self.bind(last, dst, *self._chain(node, last))

    def linear(self, node: fx.Node, linear: nn.Linear) -> None:
        src = self.values[self.source(node.args[0])]
        if len(src.dims) != 2:
            raise NotPlannable(f"{node.target}: a linear layer on a {len(src.dims)}-d input")
        o, i = linear.weight.shape
        post_ops, post_args, last = self.epilogue(node)
        post_ops = [p for p in post_ops if p[0] == "eltwise"]
        if post_args:  # a residual add after a classifier: not met in the zoo
            raise NotPlannable(f"{node.target}: an add after a linear layer")
        dst = self.output_value(last, (src.dims[0], o))
        w_any, b_md = self.md([o, i], capi.TAG_ANY), self.md([o], capi.TAG_A, capi.F32)
        pd = self.lib.new("dnnl_inner_product_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, ctypes.c_void_p(src.md), ctypes.c_void_p(w_any),
                          ctypes.c_void_p(b_md), ctypes.c_void_p(dst.md), ptr(self.attr(post_ops)))
        weights = self.constant(linear.weight, capi.TAG_AB, [o, i], self.queried(pd, capi.QUERY_WEIGHTS_MD))
        bias = linear.bias if linear.bias is not None else torch.zeros(o)
        bias_memory = self.constant(bias, capi.TAG_A, [o], b_md)
        self.add_step(node.target, pd, [(capi.ARG_SRC, src.memory), (capi.ARG_WEIGHTS, weights),
                                        (capi.ARG_BIAS, bias_memory), (capi.ARG_DST, dst.memory)])
        self.bind(last, dst, *self._chain(node, last))

    def _chain(self, first: fx.Node, last: fx.Node) -> list[fx.Node]:
        chain, node = [first], first
        while node is not last:
            node = self.readers(node)[0]
            chain.append(node)
        return chain

    def mean(self, node: fx.Node) -> None:
        # As average pooling over the whole map: oneDNN v3.2's reduction primitive has only its reference
        # implementation for a channels-last mean over H and W; its pooling primitive is JIT-compiled.
        src = self.values[self.source(node.args[0])]
        dims = self.shape(node)
        keep = dims if len(dims) == 4 else (*dims, 1, 1)
        dst_md = self.act_md(keep)
        dst = Value(tuple(keep), dst_md, self.activation_memory(dst_md))
        window = capi.dims(src.dims[2:])
        pd = self.lib.new("dnnl_pooling_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, capi.POOLING_AVG_EXCLUDE_PADDING, ctypes.c_void_p(src.md),
                          ctypes.c_void_p(dst_md), window, window, capi.dims([0, 0]), capi.dims([0, 0]),
                          capi.dims([0, 0]), None)
        self.add_step(str(node.target), pd, [(capi.ARG_SRC, src.memory), (capi.ARG_DST, dst.memory)])
        self.bind(node, dst if len(dims) == 4 else self.view(dst, dims), node)

    def binary(self, node: fx.Node, algorithm: int) -> None:
        a, b = (self.values[self.source(arg)] for arg in node.args)
        if a.dims != self.shape(node):
            a, b = b, a  # the full-size operand first: oneDNN broadcasts the second only
        post_ops, post_args, last = self.epilogue(node)  # SE-ResNet: the scaled branch's residual add
        dst = self.output_value(last, self.shape(node))
        pd = self.lib.new("dnnl_binary_primitive_desc_create", ctypes.c_void_p(self.lib.engine), algorithm,
                          ctypes.c_void_p(a.md), ctypes.c_void_p(b.md), ctypes.c_void_p(dst.md),
                          ptr(self.attr(post_ops)))
        self.add_step(node.name, pd, [(capi.ARG_SRC, a.memory), (capi.ARG_SRC_1, b.memory),
                                      (capi.ARG_DST, dst.memory), *post_args])
        self.bind(last, dst, *self._chain(node, last))

    def eltwise(self, node: fx.Node, algorithm: tuple[int, float, float]) -> None:
        src = self.values[self.source(node.args[0])]
        dst = self.output_value(node, src.dims)
        pd = self.lib.new("dnnl_eltwise_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, algorithm[0], ctypes.c_void_p(src.md), ctypes.c_void_p(dst.md),
                          ctypes.c_float(algorithm[1]), ctypes.c_float(algorithm[2]), None)
        self.add_step(node.name, pd, [(capi.ARG_SRC, src.memory), (capi.ARG_DST, dst.memory)])
        self.bind(node, dst, node)

    def pool(self, node: fx.Node, algorithm: int, kernel, stride, pad, dilation=1) -> None:
        """Max or average pooling; the right padding follows from the output's shape (``ceil_mode`` included)."""
        src = self.values[self.source(node.args[0])]
        out_dims = self.shape(node)
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        kernel, stride, pad, dilation = pair(kernel), pair(stride or kernel), pair(pad), pair(dilation)
        pad_r = [(out_dims[2 + d] - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1 - src.dims[2 + d] - pad[d]
                 for d in range(2)]
        dst = self.output_value(node, out_dims)
        pd = self.lib.new("dnnl_pooling_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, algorithm, ctypes.c_void_p(src.md), ctypes.c_void_p(dst.md),
                          capi.dims(stride), capi.dims(kernel), capi.dims([d - 1 for d in dilation]), capi.dims(pad),
                          capi.dims(pad_r), None)
        self.add_step(node.name, pd, [(capi.ARG_SRC, src.memory), (capi.ARG_DST, dst.memory)])
        self.bind(node, dst, node)

    def batch_norm(self, node: fx.Node, norm: nn.BatchNorm2d) -> None:
        """A BatchNorm that follows no conv (a pre-activation block's, DenseNet's): oneDNN's, with the running
        statistics."""
        if not (norm.track_running_stats and norm.running_mean is not None):
            raise NotPlannable(f"{node.target}: a BatchNorm without running statistics")
        src = self.values[self.source(node.args[0])]
        channels = src.dims[1]
        dst = self.output_value(node, src.dims)
        vector = self.md([channels], capi.TAG_A, capi.F32)
        tensors = [norm.running_mean, norm.running_var,
                   torch.ones(channels) if norm.weight is None else norm.weight,
                   torch.zeros(channels) if norm.bias is None else norm.bias]
        memories = [self.constant(t, capi.TAG_A, [channels], vector) for t in tensors]
        pd = self.lib.new("dnnl_batch_normalization_forward_primitive_desc_create",
                          ctypes.c_void_p(self.lib.engine), capi.FORWARD_INFERENCE, ctypes.c_void_p(src.md),
                          ctypes.c_void_p(dst.md), ctypes.c_float(norm.eps),
                          capi.USE_GLOBAL_STATS | capi.USE_SCALE | capi.USE_SHIFT, None)
        self.add_step(node.target, pd, [(capi.ARG_SRC, src.memory), (capi.ARG_DST, dst.memory),
                                        *zip((capi.ARG_MEAN, capi.ARG_VARIANCE, capi.ARG_SCALE, capi.ARG_SHIFT),
                                             memories)])
        self.bind(node, dst, node)

    def layer_norm(self, node: fx.Node, norm: nn.LayerNorm) -> None:
        """LayerNorm over the channels at each position (ConvNeXt's ``LayerNorm2d``, arXiv:2201.03545 Sec. 2.5):
        oneDNN's layer normalization, which normalises the last dim, on both channels-last buffers seen as dense
        (N, H, W, C) tensors: the same bytes."""
        src = self.values[self.source(node.args[0])]
        if len(src.dims) != 4 or tuple(norm.normalized_shape) != (src.dims[1],) or not norm.elementwise_affine \
                or norm.bias is None:
            raise NotPlannable(f"{node.target}: a LayerNorm other than over the channels of a 4-d map")
        n, c, h, w = src.dims
        dst = self.output_value(node, src.dims)
        rows = self.md([n, h, w, c], capi.TAG_ABCD)
        vector = self.md([c], capi.TAG_A, capi.F32)
        scale, shift = (self.constant(t, capi.TAG_A, [c], vector) for t in (norm.weight, norm.bias))
        pd = self.lib.new("dnnl_layer_normalization_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, ctypes.c_void_p(rows), ctypes.c_void_p(rows), None,
                          ctypes.c_float(norm.eps), capi.USE_SCALE | capi.USE_SHIFT, None)
        self.add_step(node.target, pd, [(capi.ARG_SRC, self.activation_memory(rows, alias_of=src.memory)),
                                        (capi.ARG_DST, self.activation_memory(rows, alias_of=dst.memory)),
                                        (capi.ARG_SCALE, scale), (capi.ARG_SHIFT, shift)])
        self.bind(node, dst, node)

    def node(self, node: fx.Node) -> None:
        if node in self.done or node.op == "get_attr" or (node.op == "call_module" and self.is_alias(node)):
            return
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            return self.conv(node, module)
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, module)
        if isinstance(module, nn.Linear):
            return self.linear(node, module)
        if isinstance(module, nn.MaxPool2d) and not module.return_indices:  # ceil_mode: in the output's shape
            return self.pool(node, capi.POOLING_MAX, module.kernel_size, module.stride, module.padding,
                             module.dilation)
        if isinstance(module, nn.AvgPool2d) and module.divisor_override is None:
            return self.pool(node, capi.POOLING_AVG_INCLUDE_PADDING if module.count_include_pad else
                             capi.POOLING_AVG_EXCLUDE_PADDING, module.kernel_size, module.stride, module.padding)
        if type(module) is nn.BatchNorm2d:
            return self.batch_norm(node, module)
        if node.op == "call_function" and node.target is torch.cat:
            return plan_layout.concat(self, node)
        if node.op == "call_function" and node.target is channel_shuffle:
            return plan_layout.shuffle(self, node)
        if plan_layout.is_chunk(node):
            return None  # each piece is taken by its getitem
        if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
                and plan_layout.is_chunk(node.args[0]):
            return plan_layout.chunk_piece(self, node)
        if node.op == "call_function" and node.target is operator.getitem \
                and plan_layout.spatial_step(node) is not None:
            return plan_layout.subsample(self, node)
        if node.op == "call_function" and node.target is F.pad:
            return plan_layout.channel_pad(self, node)
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return self.mean(node)
        if isinstance(module, nn.AdaptiveAvgPool2d) and self.shape(node) == self.shape(self.source(node.args[0])):
            return self.bind(node, self.values[self.source(node.args[0])], node)  # VGG's 7x7 pool of a 7x7 map
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return plan_layout.flatten(self, node)
        if node.op == "call_method" and node.target == "mean" and _spatial_mean(node):
            return self.mean(node)
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and node.args[1:] in ((1,), ((1, 1),)):
            return self.mean(node)
        if ((node.op == "call_function" and node.target is torch.flatten) or
                (node.op == "call_method" and node.target == "flatten")) and node.args[1:] == (1,) and not node.kwargs:
            return plan_layout.flatten(self, node)
        if node.op == "call_function" and node.target in _ADDS + _MULS and len(node.args) == 2 \
                and all(isinstance(a, fx.Node) for a in node.args):
            return self.binary(node, capi.BINARY_ADD if node.target in _ADDS else capi.BINARY_MUL)
        eltwise = self.activation(node)
        if eltwise is not None:
            return self.eltwise(node, eltwise)
        what = type(module).__name__ if module is not None else getattr(node.target, "__name__", node.target)
        raise NotPlannable(f"a primitive plan does not run {node.op} {what} ({node.name})")


def _spatial_mean(node: fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dims is not None and sorted(d % 4 for d in dims) == [2, 3]


def build_plan(model: nn.Module, example: torch.Tensor, threads: int | None = None) -> PrimitivePlan:
    """The primitive plan of ``model`` (BatchNorm already folded, :func:`archlab.deploy.fuse`) for inputs shaped
    and laid out like ``example``. :class:`NotPlannable` where the graph holds something a plan does not run,
    :class:`archlab.deploy.dnnl_capi.Unavailable` without the oneDNN package."""
    lib = capi.library()
    model = model.eval()
    is_archnet = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    root = _Trunk(model) if is_archnet else model
    try:
        graph = Tracer().trace(root)
    except Exception as error:  # noqa: BLE001 - any tracing failure: this model is not a fixed graph
        raise NotPlannable(f"the model does not trace with torch.fx: {error}") from error
    module = fx.GraphModule(root, graph)
    if example.dtype not in (torch.float32, torch.bfloat16):
        raise NotPlannable(f"a plan runs float32 or bfloat16, not {example.dtype}")
    with torch.no_grad():
        try:
            ShapeProp(module).propagate(example.detach())
        except Exception as error:  # noqa: BLE001 - the model itself fails on this input
            raise NotPlannable(f"the traced model does not run on {tuple(example.shape)}: {error}") from error
    channels_last = example.dim() == 4 and not example.is_contiguous() and \
        example.is_contiguous(memory_format=torch.channels_last)
    plan = PrimitivePlan(tuple(example.shape), channels_last, threads or torch.get_num_threads(),
                         dtype=example.dtype)
    lib.set_threads(plan.threads)
    builder = _Builder(module, module.graph, plan)
    # oneDNN's objects go with the plan (JIT code, descriptors; buffers are the plan's own tensors).
    weakref.finalize(plan, release, lib, plan._keep).atexit = False
    with torch.no_grad():
        for node in module.graph.nodes:
            if node.op == "placeholder":
                dims = tuple(example.shape)
                user_md = builder.md(dims, capi.TAG_ACDB if channels_last else capi.TAG_ABCD)
                plan._input_memory = builder.memory(user_md, None)
                if channels_last:  # already the plan's layout: the first layer reads the caller's tensor
                    builder.bind(node, Value(dims, user_md, plan._input_memory), node)
                    continue
                internal = builder.output_value(node, dims)
                builder.reorder_step("input", user_md, plan._input_memory, internal.md, internal.memory)
                builder.bind(node, internal, node)
            elif node.op == "output":
                result = builder.source(node.args[0])
                if not isinstance(result, fx.Node) or result not in builder.values:
                    raise NotPlannable("the model's output is not one tensor")
                value = builder.values[result]
                if len(value.dims) != 2:
                    raise NotPlannable(f"the model's output is {len(value.dims)}-d; a plan returns logits")
                plan.output_shape = value.dims
                # The primitive that wrote the output (the one whose memory a flatten views, if one does) writes
                # into the caller's tensor instead: the same bytes, seen with that primitive's descriptor.
                written = value.memory
                while builder.activations.get(written, (0, None))[1] is not None:
                    written = builder.activations[written][1]
                plan._output_memory = builder.memory(builder.descriptors[written], None)
                for step in plan.steps:
                    for arg in step.args:
                        if arg.memory == written:
                            arg.memory = plan._output_memory
            else:
                builder.node(node)
    plan.arena_bytes = place_buffers(plan, builder.activations)
    plan.weight_bytes = builder.place_constants()
    return plan

