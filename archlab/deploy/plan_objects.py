"""A primitive plan (:mod:`archlab.deploy.primitive_plan`) and the oneDNN objects it owns: descriptors, memory
objects, primitives and their argument lists, the weights' buffer and the activations' arena.

:class:`Objects` is the part of a plan's builder that makes oneDNN objects and keeps each in the plan it belongs
to, so that the plan can run them (:meth:`PrimitivePlan.__call__`) and give them back when it is dropped
(:func:`release`); the builder in :mod:`archlab.deploy.primitive_plan` decides what to make from the model's graph.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

import torch

import archlab.deploy.arena as arena
import archlab.deploy.dnnl_capi as capi


class NotPlannable(ValueError):
    """The model holds something a primitive plan does not run (the message names the node)."""


@dataclass
class Value:
    """A tensor of the plan: its dims (PyTorch's order), oneDNN memory descriptor and memory object."""
    dims: tuple[int, ...]
    md: int
    memory: int


@dataclass
class Step:
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
    steps: list[Step] = field(default_factory=list)
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


class Objects:
    """Makes the oneDNN objects of ``plan`` and keeps them in it (``plan._keep``: what :func:`release` destroys)."""

    def __init__(self, plan: PrimitivePlan) -> None:
        self.lib = capi.library()
        self.plan = plan
        self.dt = capi.BF16 if plan.dtype == torch.bfloat16 else capi.F32
        self.activations: dict[int, tuple[int, int | None]] = {}  # memory -> (bytes, the memory it aliases)
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

    def strided_md(self, dims, strides) -> int:
        handle = self.lib.new("dnnl_memory_desc_create_with_strides", len(dims), capi.dims(dims), self.dt,
                              capi.dims(strides))
        self.plan._keep.append(("md", handle))
        return handle

    def submemory_md(self, md: int, dims, offsets) -> int:
        """A descriptor of the part ``dims`` at ``offsets`` of memory described by ``md`` (the same bytes)."""
        handle = self.lib.new("dnnl_memory_desc_create_submemory", ctypes.c_void_p(md), capi.dims(dims),
                              capi.dims(offsets))
        self.plan._keep.append(("md", handle))
        return handle

    def memory(self, md: int, handle=capi.MEMORY_ALLOCATE) -> int:
        memory = self.lib.new("dnnl_memory_create", ctypes.c_void_p(md), ctypes.c_void_p(self.lib.engine), handle)
        self.plan._keep.append(("memory", memory))
        return memory

    def queried(self, pd: int, what: int) -> int:
        return self.lib.dnnl_primitive_desc_query_md(ctypes.c_void_p(pd), what, 0)

    def add_step(self, name: str, pd: int, args: list[tuple[int, int]]) -> None:
        primitive = self.lib.new("dnnl_primitive_create", ctypes.c_void_p(pd))
        array = (capi.ExecArg * len(args))(*[capi.ExecArg(a, m) for a, m in args])
        step = Step(name, primitive, array, self.lib.impl_name(pd))
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

    def reorder_step(self, name: str, src_md: int, src_memory: int, dst_md: int, dst_memory: int) -> None:
        pd = self.lib.new("dnnl_reorder_primitive_desc_create", ctypes.c_void_p(src_md),
                          ctypes.c_void_p(self.lib.engine), ctypes.c_void_p(dst_md), ctypes.c_void_p(self.lib.engine),
                          None)
        self.add_step(name, pd, [(capi.ARG_FROM, src_memory), (capi.ARG_TO, dst_memory)])

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

    def output_value(self, node, dims) -> Value:
        """A new channels-last activation of ``dims`` (``node``: the graph node whose value it is)."""
        md = self.act_md(dims)
        return Value(tuple(dims), md, self.activation_memory(md))

    def activation_memory(self, md: int, alias_of: int | None = None) -> int:
        """A memory object for an activation, its buffer placed later by :func:`place_buffers` (``alias_of``:
        the same bytes as that memory)."""
        memory = self.memory(md, None)
        self.activations[memory] = (self.lib.dnnl_memory_desc_get_size(ctypes.c_void_p(md)), alias_of)
        self.descriptors[memory] = md
        return memory

    def view(self, value: Value, dims) -> Value:
        """The same buffer seen with other dims (a 1x1 map as a matrix: both layouts are the same bytes)."""
        md = self.act_md(dims)
        return Value(tuple(dims), md, self.activation_memory(md, alias_of=value.memory))


def place_buffers(plan: PrimitivePlan, activations: dict[int, tuple[int, int | None]]) -> int:
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


def release(lib: capi.Library, keep: list) -> None:
    """Destroy a dropped plan's oneDNN objects (made by ``lib``), those that use others first."""
    for kind in _DESTROY:
        for what, handle in keep:
            if what == kind:
                getattr(lib, _DESTROY[kind])(ctypes.c_void_p(handle))
    keep.clear()


def shifted(arg: int, by: int) -> int:
    """A post-op's argument slot moved ``by`` places down the post-op list."""
    index = arg // 32768 - 1
    return capi.arg_post_op(index + by) | (arg % 32768)


def ptr(handle: int | None) -> ctypes.c_void_p | None:
    return ctypes.c_void_p(handle) if handle is not None else None

