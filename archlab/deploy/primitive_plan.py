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
``x.mean((2, 3))``) is a reduction; squeeze-excitation's scaling multiply is a broadcast binary primitive; max
pooling a pooling primitive; ``flatten`` of a 1x1 map a view. Weights are reordered once into the layout oneDNN
picks for each convolution. Activations are channels-last (``nhwc``) between primitives, as in the graph form.
Anything else in the graph (another op, a flatten of a larger map) is refused with :class:`NotPlannable`, naming it.

Scope: CPU inference of a model traced for one input shape, in float32, or in bfloat16 where the model's weights and
its input are (``fuse(precision="bf16")``: oneDNN's bf16 kernels, AMX where the CPU has it; biases added in fp32);
the input may be NCHW (reordered into the plan's layout by a first primitive) or channels-last (read as it is); the
output is a new tensor on every call.
"""

from __future__ import annotations

import ctypes
import operator
import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import archlab.deploy.arena as arena
import archlab.deploy.dnnl_capi as capi
from archlab.deploy.graph import Tracer, _Trunk, is_eval_identity
# The activations written as calls and the adds the module form (archlab.deploy.onednn) fuses: the same ones here.
from archlab.deploy.onednn import _ADDS, _FUNCTIONAL, FusedConv2d
from archlab.models.shufflenet_v2 import channel_shuffle


SUM_IN_PLACE = True  # residual adds as in-place sum post-ops (see _Builder.in_place_sum)


class NotPlannable(ValueError):
    """The model holds something a primitive plan does not run (the message names the node)."""


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


@dataclass
class _Value:
    """A tensor of the plan: its dims (PyTorch's order), oneDNN memory descriptor and memory object."""
    dims: tuple[int, ...]
    md: int
    memory: int


@dataclass
class _Step:
    name: str
    primitive: int
    args: ctypes.Array
    impl: str = ""


@dataclass
class PrimitivePlan:
    """The compiled plan for one input shape and layout; call it with such an input."""
    input_shape: tuple[int, ...]
    channels_last_input: bool
    threads: int
    output_shape: tuple[int, ...] = ()
    steps: list[_Step] = field(default_factory=list)
    _keep: list = field(default_factory=list)  # weights, descriptors and arrays the primitives point at
    _input_memory: int = 0
    _output_memory: int = 0
    _calls: list = field(default_factory=list)
    arena_bytes: int = 0  # the activations' memory, reused across layers
    weight_bytes: int = 0  # every weight and bias, in the layouts their primitives read, in one buffer
    dtype: torch.dtype = torch.float32  # of the input, the output and every activation (weights too; biases fp32)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.input_shape or x.dtype != self.dtype or x.device.type != "cpu":
            raise ValueError(f"this plan runs {str(self.dtype).removeprefix('torch.')} CPU input of shape "
                             f"{self.input_shape}, got {x.dtype} {x.device.type} {tuple(x.shape)}")
        layout = torch.channels_last if self.channels_last_input else torch.contiguous_format
        if not x.is_contiguous(memory_format=layout):
            x = x.contiguous(memory_format=layout)
        lib = capi.library()
        out = torch.empty(self.output_shape, dtype=self.dtype)
        with self._lock:  # one arena per plan: two threads calling it at once take turns
            lib.dnnl_memory_set_data_handle(ctypes.c_void_p(self._input_memory), ctypes.c_void_p(x.data_ptr()))
            lib.dnnl_memory_set_data_handle(ctypes.c_void_p(self._output_memory), ctypes.c_void_p(out.data_ptr()))
            lib.set_threads(self.threads)
            execute, stream = lib.execute, lib.stream
            for primitive, count, args in self._calls:
                if execute(primitive, stream, count, args):
                    raise capi.DnnlError("dnnl_primitive_execute failed")
            lib.dnnl_stream_wait(ctypes.c_void_p(stream))
        return out

    def describe(self) -> list[tuple[str, str]]:
        """(step, oneDNN implementation) for each primitive, in order."""
        return [(s.name, s.impl) for s in self.steps]


class _Builder:
    def __init__(self, root: nn.Module, graph: fx.Graph, plan: PrimitivePlan) -> None:
        self.lib = capi.library()
        self.root, self.graph, self.plan = root, graph, plan
        self.modules = dict(root.named_modules())
        self.values: dict[fx.Node, _Value] = {}
        self.done: set[fx.Node] = set()
        self.activations: dict[int, tuple[int, int | None]] = {}  # memory -> (bytes, the memory it aliases)
        self.dt = capi.BF16 if plan.dtype == torch.bfloat16 else capi.F32
        self.descriptors: dict[int, int] = {}  # activation memory -> its descriptor
        self.constants: list[tuple] = []  # weights waiting for their place (see place_constants)

    # -- oneDNN objects -------------------------------------------------------------------------------------------
    def md(self, dims, tag: int, data_type: int | None = None) -> int:
        """A memory descriptor, in the plan's data type unless another is given."""
        data_type = self.dt if data_type is None else data_type
        handle = self.lib.new("dnnl_memory_desc_create_with_tag", len(dims), capi.dims(dims), data_type, tag)
        self.plan._keep.append(("md", handle))
        return handle

    def act_md(self, dims) -> int:
        return self.md(dims, capi.TAG_ACDB if len(dims) == 4 else capi.TAG_AB if len(dims) == 2 else capi.TAG_A)

    def memory(self, md: int, handle=capi.MEMORY_ALLOCATE) -> int:
        memory = self.lib.new("dnnl_memory_create", ctypes.c_void_p(md), ctypes.c_void_p(self.lib.engine), handle)
        self.plan._keep.append(("memory", memory))
        return memory

    def queried(self, pd: int, what: int) -> int:
        return self.lib.dnnl_primitive_desc_query_md(ctypes.c_void_p(pd), what, 0)

    def add_step(self, name: str, pd: int, args: list[tuple[int, int]]) -> None:
        primitive = self.lib.new("dnnl_primitive_create", ctypes.c_void_p(pd))
        array = (capi.ExecArg * len(args))(*[capi.ExecArg(a, m) for a, m in args])
        step = _Step(name, primitive, array, self.lib.impl_name(pd))
        self.plan.steps.append(step)
        self.plan._calls.append((primitive, len(args), ctypes.addressof(array)))
        self.plan._keep += [("pd", pd), ("primitive", primitive)]

    def run_once(self, pd: int, args: list[tuple[int, int]]) -> None:
        primitive = self.lib.new("dnnl_primitive_create", ctypes.c_void_p(pd))
        array = (capi.ExecArg * len(args))(*[capi.ExecArg(a, m) for a, m in args])
        self.lib.dnnl_primitive_execute(ctypes.c_void_p(primitive), ctypes.c_void_p(self.lib.stream), len(args), array)
        self.lib.dnnl_stream_wait(ctypes.c_void_p(self.lib.stream))
        self.lib.dnnl_primitive_destroy(ctypes.c_void_p(primitive))
        self.lib.dnnl_primitive_desc_destroy(ctypes.c_void_p(pd))

    def constant(self, tensor: torch.Tensor, user_tag: int, dims, wanted_md: int) -> int:
        """A weight, to be copied into the layout and data type of ``wanted_md`` once every weight has its place
        (:meth:`place_constants`): its memory object, without a buffer yet."""
        tensor = tensor.detach().to(torch.float32).contiguous()
        user_md = self.md(dims, user_tag, capi.F32)
        user = self.memory(user_md, ctypes.c_void_p(tensor.data_ptr()))
        memory = self.memory(wanted_md, None)
        self.constants.append((tensor, user_md, user, wanted_md, memory))
        return memory

    def place_constants(self) -> int:
        """Every weight in one buffer (:func:`archlab.deploy.arena.buffer`: huge pages where the OS has them),
        each reordered into its place; returns the buffer's size in bytes."""
        sizes = [arena.aligned(self.lib.dnnl_memory_desc_get_size(ctypes.c_void_p(c[3]))) for c in self.constants]
        owner, base = arena.buffer(sum(sizes))
        self.plan._keep.append(("weights", owner))
        offset = 0
        for (tensor, user_md, user, wanted_md, memory), size in zip(self.constants, sizes):
            self.lib.dnnl_memory_set_data_handle(ctypes.c_void_p(memory), ctypes.c_void_p(base + offset))
            offset += size
            pd = self.lib.new("dnnl_reorder_primitive_desc_create", ctypes.c_void_p(user_md),
                              ctypes.c_void_p(self.lib.engine), ctypes.c_void_p(wanted_md),
                              ctypes.c_void_p(self.lib.engine), None)
            self.run_once(pd, [(capi.ARG_FROM, user), (capi.ARG_TO, memory)])
        self.lib.dnnl_stream_wait(ctypes.c_void_p(self.lib.stream))
        self.constants.clear()  # the model's own tensors: no longer needed
        return offset

    def attr(self, post_ops: list[tuple]) -> int | None:
        if not post_ops:
            return None
        ops = self.lib.new("dnnl_post_ops_create")
        for op in post_ops:
            if op[0] == "eltwise":
                self.lib.dnnl_post_ops_append_eltwise(ctypes.c_void_p(ops), op[1], ctypes.c_float(op[2]),
                                                      ctypes.c_float(op[3]))
            elif op[0] == "sum":
                self.lib.dnnl_post_ops_append_sum(ctypes.c_void_p(ops), ctypes.c_float(1.0), 0, self.dt)
            else:
                self.lib.dnnl_post_ops_append_binary(ctypes.c_void_p(ops), op[1], ctypes.c_void_p(op[2]))
        attr = self.lib.new("dnnl_primitive_attr_create")
        self.lib.dnnl_primitive_attr_set_post_ops(ctypes.c_void_p(attr), ctypes.c_void_p(ops))
        self.lib.dnnl_post_ops_destroy(ctypes.c_void_p(ops))
        self.plan._keep.append(("attr", attr))
        return attr

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
        return _Value(tuple(dims), md, self.activation_memory(md, alias_of=memory))

    def output_value(self, node: fx.Node, dims) -> _Value:
        md = self.act_md(dims)
        return _Value(tuple(dims), md, self.activation_memory(md))

    def activation_memory(self, md: int, alias_of: int | None = None) -> int:
        """A memory object for an activation, its buffer placed later by :func:`_place_buffers` (``alias_of``:
        the same bytes as that memory)."""
        memory = self.memory(md, None)
        self.activations[memory] = (self.lib.dnnl_memory_desc_get_size(ctypes.c_void_p(md)), alias_of)
        self.descriptors[memory] = md
        return memory

    def bind(self, node: fx.Node, value: _Value, *absorbed: fx.Node) -> None:
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
            post_args = own_args + [(_shifted(arg, shift), memory) for arg, memory in post_args]
            post_ops = own + post_ops
        dst = self.in_place_sum(node, last, post_ops, post_args, out_dims) or self.output_value(last, out_dims)
        pad_l = list(conv.padding)
        pad_r = [(out_dims[2 + d] - 1) * conv.stride[d] + (conv.weight.shape[2 + d] - 1) * conv.dilation[d] + 1
                 - src.dims[2 + d] - pad_l[d] for d in range(2)]
        pd = self.lib.new("dnnl_convolution_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, capi.CONVOLUTION_DIRECT, ctypes.c_void_p(src.md),
                          ctypes.c_void_p(w_any), ctypes.c_void_p(b_md), ctypes.c_void_p(dst.md),
                          capi.dims(conv.stride), capi.dims([d - 1 for d in conv.dilation]), capi.dims(pad_l),
                          capi.dims(pad_r), _ptr(self.attr(post_ops)))
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
                          ctypes.c_void_p(b_md), ctypes.c_void_p(dst.md), _ptr(self.attr(post_ops)))
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
        dst = _Value(tuple(keep), dst_md, self.activation_memory(dst_md))
        window = capi.dims(src.dims[2:])
        pd = self.lib.new("dnnl_pooling_forward_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          capi.FORWARD_INFERENCE, capi.POOLING_AVG_EXCLUDE_PADDING, ctypes.c_void_p(src.md),
                          ctypes.c_void_p(dst_md), window, window, capi.dims([0, 0]), capi.dims([0, 0]),
                          capi.dims([0, 0]), None)
        self.add_step(str(node.target), pd, [(capi.ARG_SRC, src.memory), (capi.ARG_DST, dst.memory)])
        self.bind(node, dst if len(dims) == 4 else self.view(dst, dims), node)

    def view(self, value: _Value, dims) -> _Value:
        """The same buffer seen with other dims (a 1x1 map as a matrix: both layouts are the same bytes)."""
        md = self.act_md(dims)
        return _Value(tuple(dims), md, self.activation_memory(md, alias_of=value.memory))

    def flatten(self, node: fx.Node) -> None:
        """``flatten(x, 1)``: a view of a 1x1 map; a larger map is first reordered to NCHW, PyTorch's flattening
        order (VGG's classifier reads a 7x7 map)."""
        src = self.values[self.source(node.args[0])]
        if len(src.dims) != 4:
            raise NotPlannable(f"{node.name}: flatten of a {len(src.dims)}-d tensor")
        n, c, h, w = src.dims
        if (h, w) != (1, 1):
            md = self.md(src.dims, capi.TAG_ABCD)
            plain = _Value(src.dims, md, self.activation_memory(md))
            pd = self.lib.new("dnnl_reorder_primitive_desc_create", ctypes.c_void_p(src.md),
                              ctypes.c_void_p(self.lib.engine), ctypes.c_void_p(md), ctypes.c_void_p(self.lib.engine),
                              None)
            self.add_step(node.name, pd, [(capi.ARG_FROM, src.memory), (capi.ARG_TO, plain.memory)])
            src = plain
        self.bind(node, self.view(src, (n, c * h * w)), node)

    def binary(self, node: fx.Node, algorithm: int) -> None:
        a, b = (self.values[self.source(arg)] for arg in node.args)
        if a.dims != self.shape(node):
            a, b = b, a  # the full-size operand first: oneDNN broadcasts the second only
        post_ops, post_args, last = self.epilogue(node)  # SE-ResNet: the scaled branch's residual add
        dst = self.output_value(last, self.shape(node))
        pd = self.lib.new("dnnl_binary_primitive_desc_create", ctypes.c_void_p(self.lib.engine), algorithm,
                          ctypes.c_void_p(a.md), ctypes.c_void_p(b.md), ctypes.c_void_p(dst.md),
                          _ptr(self.attr(post_ops)))
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

    def concat(self, node: fx.Node) -> None:
        """``torch.cat`` along channels (DenseNet's growing input, the Inception and Fire modules' branches)."""
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts) or dim % 4 != 1:
            raise NotPlannable(f"{node.name}: torch.cat other than of tensors along channels")
        sources = [self.values[self.source(p)] for p in parts]
        dst = self.output_value(node, self.shape(node))
        mds = (ctypes.c_void_p * len(sources))(*[v.md for v in sources])
        self.plan._keep.append(("array", mds))
        pd = self.lib.new("dnnl_concat_primitive_desc_create", ctypes.c_void_p(self.lib.engine),
                          ctypes.c_void_p(dst.md), len(sources), 1, mds, None)
        self.add_step(node.name, pd, [*[(capi.ARG_MULTIPLE_SRC + i, v.memory) for i, v in enumerate(sources)],
                                      (capi.ARG_DST, dst.memory)])
        self.bind(node, dst, node)

    def strided_md(self, dims, strides) -> int:
        handle = self.lib.new("dnnl_memory_desc_create_with_strides", len(dims), capi.dims(dims), self.dt,
                              capi.dims(strides))
        self.plan._keep.append(("md", handle))
        return handle

    def reorder_step(self, name: str, src_md: int, src_memory: int, dst_md: int, dst_memory: int) -> None:
        pd = self.lib.new("dnnl_reorder_primitive_desc_create", ctypes.c_void_p(src_md),
                          ctypes.c_void_p(self.lib.engine), ctypes.c_void_p(dst_md), ctypes.c_void_p(self.lib.engine),
                          None)
        self.add_step(name, pd, [(capi.ARG_FROM, src_memory), (capi.ARG_TO, dst_memory)])

    def shuffle(self, node: fx.Node) -> None:
        """ShuffleNet's channel shuffle (arXiv:1707.01083, Figure 1c): one reorder between two 5-d views of the
        channels-last buffers, (N, groups, C / groups, H, W), the channel index read as g * C/groups + j and
        written as j * groups + g."""
        src = self.values[self.source(node.args[0])]
        groups = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
        if len(src.dims) != 4 or src.dims[1] % groups:
            raise NotPlannable(f"{node.name}: channel shuffle of {src.dims} in {groups} groups")
        n, c, h, w = src.dims
        dims = [n, groups, c // groups, h, w]
        read = self.strided_md(dims, [h * w * c, c // groups, 1, w * c, c])
        written = self.strided_md(dims, [h * w * c, 1, groups, w * c, c])
        dst = self.output_value(node, src.dims)
        self.reorder_step(node.name, read, self.activation_memory(read, alias_of=src.memory), written,
                          self.activation_memory(written, alias_of=dst.memory))
        self.bind(node, dst, node)

    def chunk_piece(self, node: fx.Node) -> None:
        """A piece of ``x.chunk(k, dim=1)`` (ShuffleNet V2's channel split): a view of its channels where only
        concatenations read it (oneDNN's concat reads strided sources), else a copy into a buffer of its own."""
        chunk, index = node.args
        src = self.values[self.source(chunk.args[0])]
        dims = self.shape(node)
        if len(src.dims) != 4 or tuple(dims[2:]) != tuple(src.dims[2:]):
            raise NotPlannable(f"{node.name}: a chunk other than along the channels of a 4-d tensor")
        offsets = [0, index * -(-src.dims[1] // _chunks(chunk)), 0, 0]
        view = self.lib.new("dnnl_memory_desc_create_submemory", ctypes.c_void_p(src.md), capi.dims(dims),
                            capi.dims(offsets))
        self.plan._keep.append(("md", view))
        piece = _Value(tuple(dims), view, self.activation_memory(view, alias_of=src.memory))
        if not all(r.op == "call_function" and r.target is torch.cat for r in self.readers(node)):
            dense = self.output_value(node, dims)
            self.reorder_step(node.name, piece.md, piece.memory, dense.md, dense.memory)
            piece = dense
        self.bind(node, piece, node)

    def subsample(self, node: fx.Node) -> None:
        """``x[:, :, ::s, ::s]`` (the CIFAR ResNets' option-A shortcut, arXiv:1512.03385 Sec. 4.2): a strided view
        of the map where only a channel pad reads it (the pad copies it), else a copy into a buffer of its own."""
        src = self.values[self.source(node.args[0])]
        step = _spatial_step(node)
        n, c, h, w = src.dims
        dims = self.shape(node)
        view = self.strided_md(dims, [h * w * c, 1, step * w * c, step * c])
        piece = _Value(tuple(dims), view, self.activation_memory(view, alias_of=src.memory))
        if not all(r.op == "call_function" and r.target is F.pad for r in self.readers(node)):
            dense = self.output_value(node, dims)
            self.reorder_step(node.name, piece.md, piece.memory, dense.md, dense.memory)
            piece = dense
        self.bind(node, piece, node)

    def channel_pad(self, node: fx.Node) -> None:
        """``F.pad(x, (0, 0, 0, 0, 0, k))``: ``k`` zero channels after ``x``'s (the option-A shortcut): ``x`` and
        a buffer of zeros each reordered into their channels of the output."""
        src = self.values[self.source(node.args[0])]
        pads = tuple(node.args[1]) if len(node.args) > 1 else tuple(node.kwargs["pad"])
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        if len(src.dims) != 4 or mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 6 \
                or any(pads[:5]):
            raise NotPlannable(f"{node.name}: a pad other than zero channels after a 4-d map's")
        dims = self.shape(node)
        dst = self.output_value(node, dims)
        extra = [dims[0], pads[5], *dims[2:]]
        parts = [(src.md, src.memory, src.dims, 0)]
        if pads[5]:
            zeros_md = self.act_md(extra)
            zeros = self.constant(torch.zeros(extra), capi.TAG_ABCD, extra, zeros_md)
            parts.append((zeros_md, zeros, extra, src.dims[1]))
        for md, memory, part_dims, offset in parts:
            view = self.lib.new("dnnl_memory_desc_create_submemory", ctypes.c_void_p(dst.md), capi.dims(part_dims),
                                capi.dims([0, offset, 0, 0]))
            self.plan._keep.append(("md", view))
            self.reorder_step(node.name, md, memory, view, self.activation_memory(view, alias_of=dst.memory))
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

    def node(self, node: fx.Node) -> None:
        if node in self.done or node.op == "get_attr" or (node.op == "call_module" and self.is_alias(node)):
            return
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            return self.conv(node, module)
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
            return self.concat(node)
        if node.op == "call_function" and node.target is channel_shuffle:
            return self.shuffle(node)
        if _is_chunk(node):
            return None  # each piece is taken by its getitem
        if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
                and _is_chunk(node.args[0]):
            return self.chunk_piece(node)
        if node.op == "call_function" and node.target is operator.getitem and _spatial_step(node) is not None:
            return self.subsample(node)
        if node.op == "call_function" and node.target is F.pad:
            return self.channel_pad(node)
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return self.mean(node)
        if isinstance(module, nn.AdaptiveAvgPool2d) and self.shape(node) == self.shape(self.source(node.args[0])):
            return self.bind(node, self.values[self.source(node.args[0])], node)  # VGG's 7x7 pool of a 7x7 map
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return self.flatten(node)
        if node.op == "call_method" and node.target == "mean" and _spatial_mean(node):
            return self.mean(node)
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and node.args[1:] in ((1,), ((1, 1),)):
            return self.mean(node)
        if ((node.op == "call_function" and node.target is torch.flatten) or
                (node.op == "call_method" and node.target == "flatten")) and node.args[1:] == (1,) and not node.kwargs:
            return self.flatten(node)
        if node.op == "call_function" and node.target in _ADDS + _MULS and len(node.args) == 2 \
                and all(isinstance(a, fx.Node) for a in node.args):
            return self.binary(node, capi.BINARY_ADD if node.target in _ADDS else capi.BINARY_MUL)
        eltwise = self.activation(node)
        if eltwise is not None:
            return self.eltwise(node, eltwise)
        what = type(module).__name__ if module is not None else getattr(node.target, "__name__", node.target)
        raise NotPlannable(f"a primitive plan does not run {node.op} {what} ({node.name})")


def _place_buffers(plan: PrimitivePlan, activations: dict[int, tuple[int, int | None]]) -> int:
    """Every activation given its place in one arena (:func:`archlab.deploy.arena.place`: bytes reused once no
    later step reads them); a view shares the bytes of the memory it views. Returns the arena's size in bytes."""
    root = {}
    for memory in activations:
        root[memory] = memory
        while activations[root[memory]][1] is not None:
            root[memory] = activations[root[memory]][1]
    lifetimes: dict[int, tuple[int, int]] = {}
    for index, step in enumerate(plan.steps):
        for arg in step.args:
            if arg.memory in root:
                r = root[arg.memory]
                lifetimes[r] = (lifetimes.get(r, (index, index))[0], index)
    offsets, size = arena.place({r: activations[r][0] for r in lifetimes}, lifetimes)
    buffer, base = arena.buffer(size)
    plan._keep.append(("arena", buffer))
    lib = capi.library()
    for memory, r in root.items():
        if r in offsets:
            lib.dnnl_memory_set_data_handle(ctypes.c_void_p(memory), ctypes.c_void_p(base + offsets[r]))
    return size


_DESTROY = {"primitive": "dnnl_primitive_destroy", "pd": "dnnl_primitive_desc_destroy",
            "attr": "dnnl_primitive_attr_destroy", "memory": "dnnl_memory_destroy", "md": "dnnl_memory_desc_destroy"}


def _release(lib: capi.Library, keep: list) -> None:
    """Destroy a dropped plan's oneDNN objects (made by ``lib``), those that use others first."""
    for kind in _DESTROY:
        for what, handle in keep:
            if what == kind:
                getattr(lib, _DESTROY[kind])(ctypes.c_void_p(handle))
    keep.clear()


def _shifted(arg: int, by: int) -> int:
    """A post-op's argument slot moved ``by`` places down the post-op list."""
    index = arg // 32768 - 1
    return capi.arg_post_op(index + by) | (arg % 32768)


def _is_chunk(node: fx.Node) -> bool:
    """``x.chunk(k, dim=1)`` / ``torch.chunk(x, k, 1)``."""
    if not ((node.op == "call_method" and node.target == "chunk") or
            (node.op == "call_function" and node.target is torch.chunk)):
        return False
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return dim % 4 == 1 and all(u.op == "call_function" and u.target is operator.getitem for u in node.users)


def _spatial_step(node: fx.Node) -> int | None:
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


def _spatial_mean(node: fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dims is not None and sorted(d % 4 for d in dims) == [2, 3]


def _ptr(handle: int | None) -> ctypes.c_void_p | None:
    return ctypes.c_void_p(handle) if handle is not None else None


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
    weakref.finalize(plan, _release, lib, plan._keep).atexit = False
    with torch.no_grad():
        for node in module.graph.nodes:
            if node.op == "placeholder":
                dims = tuple(example.shape)
                user_md = builder.md(dims, capi.TAG_ACDB if channels_last else capi.TAG_ABCD)
                plan._input_memory = builder.memory(user_md, None)
                if channels_last:  # already the plan's layout: the first layer reads the caller's tensor
                    builder.bind(node, _Value(dims, user_md, plan._input_memory), node)
                    continue
                internal = builder.output_value(node, dims)
                pd = lib.new("dnnl_reorder_primitive_desc_create", ctypes.c_void_p(user_md),
                             ctypes.c_void_p(lib.engine), ctypes.c_void_p(internal.md), ctypes.c_void_p(lib.engine),
                             None)
                builder.add_step("input", pd, [(capi.ARG_FROM, plan._input_memory), (capi.ARG_TO, internal.memory)])
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
    plan.arena_bytes = _place_buffers(plan, builder.activations)
    plan.weight_bytes = builder.place_constants()
    return plan
