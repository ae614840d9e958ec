"""The whole forward pass compiled by oneDNN Graph: the last step of ``fuse(model, onednn=True)`` on CPU.

Why. The module-by-module form (:mod:`archlab.deploy.onednn`) fuses each conv with its epilogue, but every conv is
still one PyTorch op call: Python, the dispatcher, and oneDNN's primitive setup on each call (about 20 us, measured
with ``perf``), and every tensor between two convs is a strided PyTorch tensor. At batch 1 a MobileNet makes ~50 such
calls of well under 100 us of arithmetic each, so that fixed cost is a third of its time, and ONNX Runtime, which
has none of it, ran MobileNetV2 1.9x faster (benchmarks/results/runtimes.md). oneDNN Graph (the "LLGA" fuser of
PyTorch's TorchScript executor, ``torch.jit.enable_onednn_fusion``) takes the traced graph, partitions it into
fused conv / matmul / eltwise / binary groups (squeeze-excitation's pool-free half included), compiles each partition
once for the traced shapes (a ResNet stage becomes one partition: oneDNN's residual-block pattern), and passes
plain channels-last tensors between partitions (ONEDNN_VERBOSE shows no opaque layout in the five deployment models
at batch 1). Measured against the module form on the five deployment models, 2 threads, same run: 1.50-1.54x at
batch 1 (MobileNetV3-Large 1.87-2.40x, ResNets 1.14-1.20x) and 1.23-1.27x at batch 8, geometric means of two runs
(benchmarks/results/runtimes-graph.md).

How it is used. :func:`attach` sets the model's ``forward`` to a :class:`GraphForward`, which, for a plain call
``model(x)`` on a float32 or bfloat16 CPU tensor without autograd, runs the model traced and compiled for that input
signature (shape, dtype, thread count, the weights' identity and version, and the modules, parameters and buffers
assigned to the model since; not the input's memory layout, since every graph takes its input channels-last). The
first call for a signature traces, freezes and warms the graph up (1-2.5 s at 224x224), then compares its output
with the module form's on that input; a model that does not trace, or whose traced output disagrees, keeps the
module form for that signature (:attr:`GraphForward.fallbacks` says why). Every other call (autograd, tracing,
export, ``torch.compile``, fx, a model in train mode, a forward hook on any submodule, a dispatch or function mode
such as FlopCounterMode, keyword arguments, another device) runs the module form, so the model is never wrong, only
not faster. Per-layer tools that hook submodules see the module form.

Limits, said plainly: TorchScript is deprecated upstream (PyTorch 2.x prints FutureWarnings for ``torch.jit.trace``;
they are silenced here), and a trace bakes in Python control flow for the traced shape, so a model whose forward
branches on tensor *values* would be traced for the first input's branch; the check against the module form on
that input catches a disagreement only for that input. Likewise a plain attribute the forward branches on (a flag
set after the first calls) or a deleted submodule is not seen: neither goes through PyTorch's registration hooks.
"""

from __future__ import annotations

import copy
import functools
import operator
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

_version = operator.attrgetter("_version")
_requires_grad = operator.attrgetter("requires_grad")
# Every graph is traced channels-last (input and weights), whatever the caller's layout. Measured on the five
# deployment models against tracing in NCHW (same process, 2 threads, 10 alternated blocks): as fast on ResNet-50
# and MobileNetV2 (0.99-1.01x at batch 1), 1.10-1.27x faster on MobileNetV3-Large and EfficientNet-B0, whose
# squeeze-excitation mean and multiply run as ATen ops between partitions: a tensor handed to ATen stays
# channels-last there, where NCHW reordered it every time (EfficientNet-B0 at batch 1: 34 reorders, 1.5 ms).
TRACE_LAYOUT = torch.channels_last
_CACHE_SIZE = 8  # input signatures kept compiled per model (each holds frozen weights and compiled partitions)
# Compiles per model and weights before new input signatures run the module form: a stream of ever-new shapes (a
# detector's image sizes) would otherwise spend 1-2.5 s compiling on every call.
_COMPILE_BUDGET = 4 * _CACHE_SIZE
_WARMUP_CALLS = 3  # the profiling executor records shapes on the first call and fuses on the next
# Submodule -> the GraphForwards of the models it belongs to. A module, parameter or buffer assigned to one of
# them (``model.fc = nn.Linear(...)``, ``conv.weight = nn.Parameter(...)``) goes through PyTorch's global
# registration hooks, which count it as an edit of those models: their next call re-reads the model and compiles
# anew. Without this, a graph traced before the edit would keep running (the tensors it watched are unchanged).
_OWNERS: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet]" = weakref.WeakKeyDictionary()


def _edited(module: nn.Module, name: str, value: Any) -> None:
    for forward in _OWNERS.get(module, ()):
        forward.edits += 1


for _register in (torch.nn.modules.module.register_module_module_registration_hook,
                  torch.nn.modules.module.register_module_parameter_registration_hook,
                  torch.nn.modules.module.register_module_buffer_registration_hook):
    _register(_edited)


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has oneDNN and TorchScript's oneDNN Graph fuser."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.jit, "enable_onednn_fusion")
            and hasattr(torch._C, "_jit_llga_enabled"))


def _tolerance(dtype: torch.dtype, scale: float) -> float:
    """Largest max |diff| between the graph's and the module form's outputs that counts as the same function:
    fp32 differs in summation order only; bf16 rounds each partition's output (and may round at other points).
    Relative to the outputs' largest magnitude: a random-init network's logits can be of order 1e-9."""
    return (1e-3 if dtype == torch.float32 else 5e-2) * scale


class GraphForward:
    """A model's ``forward`` that runs it compiled by oneDNN Graph where that applies (see the module docstring),
    else the model class's own ``forward``. ``compiled`` and ``fallbacks`` say what happened per signature."""

    def __init__(self, model: nn.Module, plan: bool = True) -> None:
        self.model = model
        self.plan = plan  # try a primitive plan (archlab.deploy.primitive_plan) before the TorchScript graph
        self.plan_skipped: dict[str, str] = {}  # signature (readable) -> why it runs the graph instead of a plan
        self._cache: dict[tuple, Any] = {}  # signature -> frozen ScriptModule, or a reason string (module form)
        self.fallbacks: dict[str, str] = {}  # signature (readable) -> why it runs the module form
        self.compile_seconds: dict[str, float] = {}  # signature (readable) -> trace, freeze, warm-up and check
        self.edits = 0  # assignments of modules, parameters or buffers to the model since it was fused
        self._compiles = 0  # compiles since the weights (or the model's structure) last changed

    # The compiled graphs hold TorchScript objects, which neither copy nor pickle: a copy starts without them.
    def __getstate__(self) -> dict:
        return {"model": self.model, "plan": self.plan, "plan_skipped": {}, "_cache": {}, "fallbacks": {},
                "compile_seconds": {}, "edits": 0, "_compiles": 0}

    def __deepcopy__(self, memo: dict) -> "GraphForward":
        clone = GraphForward.__new__(GraphForward)
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def compiled(self) -> int:
        """How many input signatures run as a compiled graph."""
        return sum(isinstance(v, Compiled) for v in self._cache.values())

    def module_forward(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.model).forward(self.model, *args, **kwargs)

    def _applies(self, args: tuple, kwargs: dict) -> bool:
        if kwargs or len(args) != 1 or type(args[0]) is not torch.Tensor or self.model.training:
            return False
        x = args[0]
        if (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.is_autocast_enabled("cpu") or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() != 4 or x.numel() == 0):
            return False
        if torch.is_grad_enabled() and x.requires_grad:
            return False
        if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
            return False  # a dispatch or function mode (FlopCounterMode, op counters) wants to see the ops
        hooks = torch.nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        return True

    def _watch(self) -> tuple[list[dict], list[torch.Tensor], list[torch.Tensor]]:
        """The submodules' hook dicts, the model's tensors, and those of them with a version counter, gathered once
        (registering a hook adds to the same dict; a ``.to()`` or ``load_state_dict`` changes a tensor's storage or
        version, which the signature reads). Tensors made under ``torch.inference_mode`` (a model fused there) have
        no version counter: only inference mode may change them in place, and such a change is not seen."""
        watched = self.__dict__.get("_watched")
        if watched is None or watched[0] != self.edits:
            modules = [m for m in self.model.modules() if m is not self.model]
            for m in (self.model, *modules):
                _OWNERS.setdefault(m, weakref.WeakSet()).add(self)
            hooks = [d for m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]
            tensors = [*self.model.parameters(), *self.model.buffers()]
            watched = self.__dict__["_watched"] = (self.edits, hooks, tensors,
                                                   [t for t in tensors if not t.is_inference()])
        return watched[1:]

    def _signature(self, x: torch.Tensor) -> tuple | None:
        """The input's and the weights' identity; None where a submodule's hook or a weight that requires grad rules
        the graph out. Its cost counts at batch 1 (15-19 us for EfficientNet-B0's 164 tensors here, 0.4% of a forward),
        so it reads each tensor's attributes in C."""
        hooks, tensors, versioned = self._watch()
        if any(hooks) or (torch.is_grad_enabled() and any(map(_requires_grad, tensors))):
            return None
        # No layout: every graph is traced channels-last and given its input so (one graph, one weight copy, for
        # NCHW and channels-last callers alike).
        # Last, the model's own part: what makes every graph compiled before it stale when it changes.
        model_state = (self.edits, tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(_version, versioned)))
        return tuple(x.shape), x.dtype, torch.get_num_threads(), model_state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._applies(args, kwargs):
            return self.module_forward(*args, **kwargs)
        x = args[0]
        key = self._signature(x)
        if key is None:
            return self.module_forward(x)
        compiled = self._cache.get(key)
        if compiled is None:
            if any(old[-1] != key[-1] for old in self._cache):
                self._cache.clear()  # graphs of earlier weights or structure: stale, each holding a weight copy
                self._compiles = 0
            if self._compiles >= _COMPILE_BUDGET:
                self.fallbacks["new input signatures"] = (
                    f"{_COMPILE_BUDGET} input signatures compiled for these weights: new ones run the module form")
                return self.module_forward(x)
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]  # the oldest signature
            self.__dict__.pop("_watched", None)  # re-gathered: modules or parameters may have been replaced
            self._compiles += 1
            compiled = self._cache[key] = self._compile(x)
        if isinstance(compiled, str):
            return self.module_forward(x)
        with torch.no_grad():
            return compiled.graph(x.contiguous(memory_format=TRACE_LAYOUT))

    def _compile(self, x: torch.Tensor) -> "Compiled | str":
        """The model compiled for ``x``'s signature, traced in channels-last whatever ``x``'s layout (see
        :data:`TRACE_LAYOUT`), or a reason string where it does not trace or disagrees with the module form."""
        readable = f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
        start = time.perf_counter()
        with torch.no_grad():
            expected = self.module_forward(x)
        compiled = self._planned(x, expected) if self.plan else "not asked for"
        if isinstance(compiled, str):
            self.plan_skipped[readable] = compiled
            compiled = self._traced(x, expected)
        if isinstance(compiled, str):
            self.fallbacks[readable] = compiled
        self.compile_seconds[readable] = time.perf_counter() - start
        return compiled

    def _in_trace_layout(self) -> nn.Module:
        """The model with its 4-d weights in :data:`TRACE_LAYOUT`: itself when they are, else a converted copy (the
        layout a graph is traced in follows the weights' as well as the input's)."""
        if all(p.is_contiguous(memory_format=TRACE_LAYOUT) for p in self.model.parameters() if p.dim() == 4):
            return self.model
        return copy.deepcopy(self.model).to(memory_format=TRACE_LAYOUT)

    def _planned(self, x: torch.Tensor, expected: Any) -> "Compiled | str":
        """The model as a primitive plan for ``x``'s signature (:mod:`archlab.deploy.primitive_plan`), or why not:
        oneDNN's package missing, something in the model a plan does not run, or an output that disagrees."""
        import archlab.deploy.dnnl_capi as dnnl_capi
        import archlab.deploy.primitive_plan as primitive_plan

        if not dnnl_capi.available():
            return f"no primitive plan: {dnnl_capi.PACKAGE} is not installed"
        if any(p.dtype != x.dtype for p in self.model.parameters()):
            return f"no primitive plan: the weights are not all {str(x.dtype).removeprefix('torch.')}, as the input is"
        x = x.contiguous(memory_format=TRACE_LAYOUT)
        try:
            plan = primitive_plan.build_plan(self.model, x)
            got = plan(x)
        except primitive_plan.NotPlannable as error:
            return f"no primitive plan: {error}"
        except Exception as error:  # noqa: BLE001 - a plan that fails to build leaves the graph to run the model
            return f"no primitive plan: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        why = _disagreement(expected, got)
        version = ".".join(map(str, dnnl_capi.library().version[:2]))
        return f"no primitive plan: {why}" if why else Compiled(plan, f"a plan of {len(plan.steps)} oneDNN v{version} primitives")

    def _traced(self, x: torch.Tensor, expected: Any) -> "Compiled | str":
        x = x.contiguous(memory_format=TRACE_LAYOUT)
        was_enabled = torch._C._jit_llga_enabled()
        try:
            with torch.no_grad():
                torch.jit.enable_onednn_fusion(True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # deprecation and TracerWarnings: the check below decides
                    graph = torch.jit.freeze(torch.jit.trace(self._in_trace_layout(), x, check_trace=False))
                    for _ in range(_WARMUP_CALLS):
                        got = graph(x)
        except Exception as error:  # noqa: BLE001 - any model that does not trace keeps the module form
            return f"does not trace: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        finally:
            torch.jit.enable_onednn_fusion(was_enabled)
        why = _disagreement(expected, got)
        return f"traced {why}" if why else Compiled(graph)


def _disagreement(expected: Any, got: Any) -> str | None:
    """How a compiled form's outputs differ from the module form's, or None where they agree."""
    want, have = tree_leaves(expected), tree_leaves(got)
    if len(want) != len(have) or any(
            not isinstance(w, torch.Tensor) or not isinstance(h, torch.Tensor) or w.shape != h.shape
            for w, h in zip(want, have)):
        return "outputs differ in structure from the module form's"
    for w, h in zip(want, have):
        scale = w.abs().max().item() if w.numel() and w.is_floating_point() else 1.0
        diff = (w.float() - h.float()).abs().max().item() if w.numel() else 0.0
        if not diff <= _tolerance(w.dtype, scale):
            return f"output differs from the module form's by {diff:.3g} (scale {scale:.3g})"
    return None


@dataclass
class Compiled:
    """One input signature's compiled form, given its input in :data:`TRACE_LAYOUT`: a frozen TorchScript graph
    compiled by oneDNN Graph, or a primitive plan (:class:`archlab.deploy.primitive_plan.PrimitivePlan`)."""

    graph: Any
    kind: str = "oneDNN Graph"


def attach(model: nn.Module, plan: bool = True) -> nn.Module:
    """Give ``model`` (an inference form, eval mode) a :class:`GraphForward` as its ``forward``; returns it."""
    if available():
        model.forward = GraphForward(model, plan)
    return model


def graph_forward(model: nn.Module) -> GraphForward | None:
    """The model's :class:`GraphForward`, if it has one."""
    forward = model.__dict__.get("forward")
    return forward if isinstance(forward, GraphForward) else None


__all__ = ["Compiled", "GraphForward", "TRACE_LAYOUT", "attach", "available", "graph_forward"]
