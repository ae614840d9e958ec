"""Running a model on PyTorch's META device: tensors with shapes and dtypes but no data, so a forward pass costs
only Python and shape arithmetic. Used by every analysis: a meta copy of the model (:func:`on_meta`), a checked meta
input (:func:`resolve_input_size`, :func:`meta_input`), a dispatch mode that answers slow-to-compute meta outputs
directly (:class:`MetaFastPath`) and module hooks that say which module is running (:class:`ModuleScopes`).
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

MAX_INPUT_SIZE = 4096  # larger inputs are almost certainly a typo (and would take minutes on a real device)

# Elementwise op families (names of aten ops, the in-place variants end in '_').
UNARY_OPS = ["relu", "hardtanh", "clamp", "clamp_min", "clamp_max", "leaky_relu", "threshold", "sigmoid", "tanh",
             "hardsigmoid", "elu", "rsqrt", "sqrt"]
GATED_OPS = ["silu", "hardswish", "gelu", "mish"]
BINARY_OPS = ["add", "sub", "rsub", "mul", "div"]


def packets(names: list[str], inplace: bool = True) -> list[Any]:
    """The aten op packets of these names (and of their in-place variants), skipping names this torch lacks."""
    found = [getattr(aten, n) for n in names if hasattr(aten, n)]
    if inplace:
        found += [getattr(aten, n + "_") for n in names if hasattr(aten, n + "_")]
    return found


def bind_args(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of an aten op call by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def pair(v: Any) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1]))


def tensors_in(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


_INPLACE_PACKETS = {getattr(aten, n + "_") for n in UNARY_OPS + GATED_OPS + BINARY_OPS if hasattr(aten, n + "_")}


# In-place initialisers: on meta there is nothing to fill (PyTorch runs them as slow Python references).
_INIT_PACKETS = {getattr(aten, n) for n in ("normal_", "uniform_", "zero_", "fill_", "bernoulli_", "exponential_",
                                            "random_", "erfinv_") if hasattr(aten, n)}


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    if a == b:
        return tuple(a)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b)):
        raise RuntimeError(f"shapes {a} and {b} do not broadcast")
    return tuple(max(x, y) if min(x, y) != 0 else 0 for x, y in zip(a, b))


class MetaFastPath(TorchDispatchMode):
    """Answer shape-preserving ops on meta tensors directly.

    PyTorch computes the meta output of batch norm and of elementwise ops through Python decompositions that cost
    about a millisecond each; their output is simply a tensor shaped like the input (or the broadcast of the inputs).
    Enter this mode FIRST (outermost ``with``) so that it sits next to the kernels and the counting modes above it
    still see every op.
    """

    _UNARY_OUT = set(packets(UNARY_OPS + GATED_OPS, inplace=False))
    _BINARY_OUT = set(packets(BINARY_OPS, inplace=False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.is_meta:
            if packet in _INPLACE_PACKETS or packet in _INIT_PACKETS:
                return first  # in-place elementwise op: the output is the input
            # torch.empty rather than empty_like: empty_like's meta kernel is itself a slow Python reference.
            if packet in self._UNARY_OUT:
                return torch.empty(first.shape, dtype=first.dtype, device="meta")
            if packet in self._BINARY_OUT and len(args) >= 2:
                other = args[1]
                shape = _broadcast(first.shape, other.shape) if isinstance(other, torch.Tensor) else first.shape
                dtype = torch.result_type(first, other)
                return torch.empty(shape, dtype=dtype, device="meta")
            if func in (aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default):
                out = torch.empty(first.shape, dtype=first.dtype, device="meta")
                mean, invstd = (torch.empty(first.shape[1], dtype=first.dtype, device="meta") for _ in range(2))
                return out, mean, invstd
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------ meta model and input


@contextmanager
def on_meta(model_or_name: nn.Module | str) -> Iterator[tuple[nn.Module, str]]:
    """Yield the model on the meta device and its name; the caller's model is left as it was.

    A name, or a model spec with overrides (``"resnet50:output_stride=8"``, see
    :func:`archlab.registry.parse_model_spec`), is built straight on the meta device. A module already on meta is used as is (its train/eval flags are
    restored afterwards). Any other module is deep-copied with its parameters and buffers replaced by meta tensors
    first, so the weights themselves are never copied.
    """
    if isinstance(model_or_name, str):
        from archlab.registry import create_from_spec, model_card, parse_model_spec

        # Built with the class count its published figures refer to (10 for the CIFAR networks).
        num_classes = model_card(parse_model_spec(model_or_name)[0]).num_classes
        with torch.device("meta"), MetaFastPath():  # MetaFastPath skips the (meaningless) weight init
            model = create_from_spec(model_or_name, num_classes=num_classes)
        yield model, model_or_name
        return
    if not isinstance(model_or_name, nn.Module):
        raise TypeError(f"expected a model name or an nn.Module, got {type(model_or_name).__name__}")
    card = getattr(model_or_name, "card", None)
    name = card.name if card is not None else type(model_or_name).__name__
    tensors = list(itertools.chain(model_or_name.parameters(), model_or_name.buffers()))
    if all(t.is_meta for t in tensors):
        flags = {m: m.training for m in model_or_name.modules()}
        try:
            yield model_or_name, name
        finally:
            for m, training in flags.items():
                m.training = training
        return
    memo: dict[int, Any] = {}
    for t in tensors:
        # torch.empty, not empty_like: empty_like's meta kernel is a slow Python reference.
        meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    yield copy.deepcopy(model_or_name, memo), name


def input_chans(model: nn.Module) -> int:
    """Input channels: ``model.in_chans`` or the first convolution's / linear layer's input width."""
    if isinstance(getattr(model, "in_chans", None), int):
        return model.in_chans
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"cannot tell the input channels of {type(model).__name__}; give it an in_chans attribute")


def resolve_input_size(model: nn.Module, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) from an int, a pair or None (the model card's ``input_size``); checked against the network's limits."""
    if input_size is None:
        card = getattr(model, "card", None)
        if card is None:
            raise ValueError(f"{type(model).__name__} has no model card; give input_size")
        input_size = card.input_size
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"input_size must be an int or an (H, W) pair of ints, got {input_size!r}")
    lowest = int(getattr(model, "min_input_size", 1) or 1)
    if min(size) < lowest:
        raise ValueError(f"input {size[0]}x{size[1]} is smaller than the network minimum {lowest}x{lowest}")
    if max(size) > MAX_INPUT_SIZE:
        raise ValueError(f"input {size[0]}x{size[1]} is larger than {MAX_INPUT_SIZE}; is that a typo?")
    return size  # type: ignore[return-value]


def meta_input(model: nn.Module, size: tuple[int, int], batch_size: int = 1) -> torch.Tensor:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return torch.empty(batch_size, input_chans(model), *size, device="meta")


def run_forward(model: nn.Module, x: torch.Tensor, label: str) -> Any:
    """Run the meta model; a shape error becomes a ValueError that names the model and the input."""
    try:
        return model(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{label} cannot run on a {tuple(x.shape)} input: {first}") from exc


# ------------------------------------------------------------------------------------------- module scopes


class ModuleScopes:
    """Which module is running, via forward hooks: ``current`` is the innermost module's dotted name ('' = root).

    Also remembers each module's last output and the order in which modules first start and first finish, and
    calls each of ``observers`` with (name, output) when a module finishes (a tensor's state at that moment,
    before later in-place ops change it).
    """

    def __init__(self, model: nn.Module, observers: tuple = ()) -> None:
        self.observers = list(observers)
        self.stack: list[str] = []
        self.outputs: dict[str, Any] = {}
        self.started: list[str] = []
        self._started_set: set[str] = set()
        self.finished: list[str] = []
        self._names = {id(m): n for n, m in model.named_modules()}
        # Two global hooks rather than two per module: registering 4000 module hooks costs half a second.
        self._handles = [register_module_forward_pre_hook(self._enter),
                         register_module_forward_hook(self._leave)]

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def _enter(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        if name not in self._started_set:
            self._started_set.add(name)
            self.started.append(name)
        self.stack.append(name)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        self.stack.pop()
        if name not in self.outputs:
            self.finished.append(name)
        self.outputs[name] = output
        for observe in self.observers:
            observe(name, output)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self) -> "ModuleScopes":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
