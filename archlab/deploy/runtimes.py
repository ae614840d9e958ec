"""Deployment runtimes of one model, each given the same weights: PyTorch eager, archlab's inference form,
torch.compile, ONNX Runtime and OpenVINO. :func:`prepare` turns a float32 eval model into a callable that runs it
in one of them (``Prepared``); :func:`archlab.deploy.timing.bench_runtimes` times them side by side.

- ``eager``: the model as it is (NCHW), in float32 or cast to bfloat16.
- ``fused``: :func:`archlab.deploy.fuse` (BatchNorm folded; on CPU ``onednn=True``: in float32 with oneDNN's
  package installed, a primitive plan, :mod:`archlab.deploy.primitive_plan`; else the whole model compiled by
  oneDNN Graph for the input's shape, :mod:`archlab.deploy.onednn_graph`), channels-last, in float32 or bfloat16
  (``precision="bf16"``).
- ``fused-graph``: the same with ``plan=False``: always the oneDNN Graph form.
- ``fused-modules``: the same without the graph step (``graph=False``): each conv with its activation / residual add
  as one oneDNN primitive, module by module (:mod:`archlab.deploy.onednn`).
- ``compile``: ``torch.compile`` (inductor) with freezing, channels-last: weights become constants that inductor
  folds and prepacks. Needs a C++ compiler on CPU.
- ``onnxruntime``: the BatchNorm-folded model exported to ONNX (:func:`archlab.deploy.export.export_onnx`), run by
  ONNX Runtime's CPU provider with all graph optimisations (its NCHWc layout transform, conv + activation fusion).
  float32 only: its CPU provider has no bf16 convolutions.
- ``openvino``: the same ONNX file converted by ``openvino.convert_model``, its batch made static, compiled for
  the CPU (``INFERENCE_PRECISION_HINT`` f32 or bf16: OpenVINO's default on a CPU with AVX-512 BF16 or AMX is bf16,
  so float32 is asked for explicitly).

Thread pools that spin: ONNX Runtime's and OpenVINO's worker threads keep spinning for a while after each call,
taking the cores from whatever runs next in the same process (issue #16 measured our form falling from 146 to 90
images/s when interleaved call by call with a spinning ONNX Runtime session). ``spinning=False``
turns ONNX Runtime's spinning off (session option ``session.intra_op.allow_spinning = 0``); OpenVINO has no such
switch, so :func:`archlab.deploy.timing.bench_runtimes` runs each runtime in its own process by default.

ONNX Runtime and OpenVINO come from their own packages, the ``deploy`` extra (``pip install -e ".[deploy]"``):
without them, asking for those runtimes raises :class:`RuntimeUnavailable` (a one-line error on the command line).
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from archlab.deploy.onednn_graph import graph_forward
from archlab.deploy.precision import DTYPES, check_precision, require_bf16

RUNTIMES = ("eager", "fused", "fused-graph", "fused-modules", "compile", "onnxruntime", "openvino")
FUSED = ("fused", "fused-graph", "fused-modules")  # archlab's inference forms
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # runtime -> the package it needs
EXTRA = 'pip install -e ".[deploy]"'
CPU_ONLY = ("onnxruntime", "openvino")  # as installed here: ONNX Runtime's and OpenVINO's CPU plugins
FP32_ONLY = ("onnxruntime",)  # ONNX Runtime's CPU provider has no bf16 convolutions


class RuntimeUnavailable(ValueError):
    """A runtime whose package is not installed (a ValueError: one line and exit 2 on the command line)."""


def import_runtime(runtime: str):
    """The package that runs ``runtime`` ('onnxruntime' -> the onnxruntime module); RuntimeUnavailable naming the
    extra that installs it when it is missing."""
    package = PACKAGES[runtime]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise RuntimeUnavailable(f"runtime {runtime} needs the {package} package, which is not installed: "
                                 f"{EXTRA}") from None


def unsupported(runtime: str, precision: str, device: str) -> str | None:
    """Why ``runtime`` cannot run at ``precision`` on ``device`` (None when it can)."""
    if device != "cpu" and runtime in CPU_ONLY:
        return f"runtime {runtime} runs on CPU only here (its CPU plugin), not --device {device}"
    if precision != "fp32" and runtime in FP32_ONLY:
        return f"runtime {runtime} runs fp32 only (its CPU provider has no bf16 convolutions)"
    return None


def check_runtimes(runtimes: Sequence[str], precisions: Sequence[str], device: str = "cpu") -> list[tuple[str, str]]:
    """The (runtime, precision) pairs to time, in order, each checked: an unknown runtime or precision, a runtime
    that cannot run on ``device`` or at any of ``precisions``, a missing package, bf16 on a CPU without native
    bf16, compile on a CPU without a C++ compiler: each a one-line ValueError. A runtime that runs at some of the
    precisions but not others is timed at those it runs."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ValueError(f"unknown runtime {unknown[0] if unknown else ''!r}; known: {', '.join(RUNTIMES)}")
    for p in precisions:
        check_precision(p)
    pairs = []
    for runtime in dict.fromkeys(runtimes):
        reasons = [unsupported(runtime, p, device) for p in precisions]
        if all(reasons):
            raise ValueError(reasons[0])
        if runtime in PACKAGES:
            import_runtime(runtime)
        pairs += [(runtime, p) for p, why in zip(precisions, reasons) if why is None]
    if device == "cpu" and "bf16" in precisions:
        require_bf16()
    if device == "cpu" and "compile" in runtimes and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ValueError("runtime compile on CPU needs a C++ compiler (inductor compiles C++); none on PATH")
    return pairs


@dataclass
class Prepared:
    """A runtime ready to run: ``run(x)`` takes a float32 CPU / device batch and gives float32 outputs on the CPU
    as a torch tensor; ``detail`` says how it runs."""

    runtime: str
    precision: str
    run: Callable[[torch.Tensor], torch.Tensor]
    detail: str


def ort_session(path: str, threads: int, spinning: bool = True):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, all graph optimisations. ``spinning=False``:
    its worker threads block instead of spinning between calls (for timing next to other runtimes in one
    process)."""
    ort = import_runtime("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: failures reach the caller as exceptions
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def openvino_compiled(model_or_path, threads: int, precision: str = "fp32", shape: Sequence[int] | None = None):
    """An OpenVINO model (an ``openvino.Model``, an IR ``.xml`` file or an ONNX file) compiled for the
    CPU on ``threads`` threads at ``precision`` (``INFERENCE_PRECISION_HINT``), for latency (one stream), threads
    not pinned to cores (PyTorch and ONNX Runtime do not pin either); ``shape``: the input shape made static."""
    ov = import_runtime("openvino")
    core = ov.Core()
    if isinstance(model_or_path, ov.Model):
        model = model_or_path
    elif str(model_or_path).endswith(".xml"):
        model = core.read_model(str(model_or_path))  # IR is read, not converted
    else:
        model = ov.convert_model(str(model_or_path))
    if shape is not None:
        model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
    return core.compile_model(model, "CPU", config)


def _ov_runner(compiled) -> Callable[[torch.Tensor], torch.Tensor]:
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def prepare(runtime: str, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: str = "cpu",
            threads: int | None = None, onnx_path: str | None = None, spinning: bool = True) -> Prepared:
    """``model`` (float32, eval mode) made ready to run in ``runtime`` at ``precision`` on ``device``, for inputs
    shaped like ``example``. ``onnx_path``: the model's BatchNorm-folded ONNX file (ONNX Runtime and OpenVINO both
    read it, so they run the same graph). ``threads`` defaults to PyTorch's. ``model`` is not modified."""
    from archlab.deploy.form import fuse

    why = unsupported(runtime, precision, device)
    if runtime not in RUNTIMES or why:
        raise ValueError(why or f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    threads = threads or torch.get_num_threads()
    dev, dtype = torch.device(device), DTYPES[precision]
    if runtime in ("onnxruntime", "openvino"):
        if onnx_path is None:
            raise ValueError(f"runtime {runtime} needs the model's ONNX file")
        if runtime == "onnxruntime":
            session = ort_session(onnx_path, threads, spinning)
            name = session.get_inputs()[0].name
            return Prepared(runtime, precision, lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]),
                            f"onnxruntime {import_runtime(runtime).__version__} CPU provider, all graph "
                            f"optimisations, spinning {'on' if spinning else 'off'}")
        compiled = openvino_compiled(onnx_path, threads, precision, tuple(example.shape))
        return Prepared(runtime, precision, _ov_runner(compiled),
                        f"openvino {import_runtime(runtime).get_version().split('-')[0]} CPU, static shape, "
                        f"INFERENCE_PRECISION_HINT {'bf16' if precision == 'bf16' else 'f32'}")
    fmt = torch.contiguous_format if runtime == "eager" else torch.channels_last
    if runtime in FUSED:
        graph, plan = runtime != "fused-modules", runtime == "fused"
        net = fuse(model, onednn=dev.type == "cpu", precision=precision, graph=graph, plan=plan)  # bf16: casts
        flag = {"fused": "", "fused-graph": ", plan=False", "fused-modules": ", graph=False"}[runtime]
        detail = f"fuse(onednn=True{flag})" if dev.type == "cpu" else "fuse()"
        detail += ", channels-last"
    else:
        import copy

        net = copy.deepcopy(model).eval().to(dtype)
        detail = "eager, NCHW" if runtime == "eager" else "torch.compile, inductor freezing, channels-last"
    net = net.to(dev, memory_format=fmt)
    cast = torch.float32 if runtime in FUSED else dtype  # the fused bf16 form casts inside (a pre-hook)
    if runtime == "compile":
        import torch._inductor.config as inductor_config

        compiled = torch.compile(net)

        def call(x: torch.Tensor) -> torch.Tensor:
            # Freezing is read when inductor compiles (the first call), not by torch.compile().
            with inductor_config.patch(freezing=True), torch.no_grad():
                return compiled(x)
    else:
        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return net(x)

    def run(x: torch.Tensor) -> torch.Tensor:
        y = call(x.to(dev, dtype=cast).contiguous(memory_format=fmt))
        return y.float().cpu()
    forward = graph_forward(net) if runtime in ("fused", "fused-graph") else None
    if forward is not None:  # compiled now (1-2 s), not in the first timed step, and the row says whether it did
        run(example)
        seconds = sum(forward.compile_seconds.values())
        kinds = sorted({c.kind for c in forward._cache.values() if not isinstance(c, str)})
        skipped = "".join(f", {why}" for why in dict.fromkeys(forward.plan_skipped.values()) if plan)
        detail += (f", compiled as {' / '.join(kinds)} ({seconds:.1f} s){skipped}" if forward.compiled else
                   f", module by module (oneDNN Graph: {'; '.join(forward.fallbacks.values()) or 'not applied'})")
    return Prepared(runtime, precision, run, detail + (", bf16" if precision == "bf16" else ""))


def agreement_tolerance(precision: str, scale: float) -> float:
    """Largest max |diff| from float32 eager logits that counts as agreeing: 1e-4 of the logits' scale in fp32
    (kernel and summation-order differences), 5e-2 in bf16 (8 bits of mantissa: ~0.4% per rounding, compounded
    over tens of layers)."""
    return (1e-4 if precision == "fp32" else 5e-2) * scale


__all__ = ["CPU_ONLY", "EXTRA", "FUSED", "PACKAGES", "RUNTIMES", "Prepared", "RuntimeUnavailable",
           "agreement_tolerance", "check_runtimes", "import_runtime", "openvino_compiled", "ort_session", "prepare",
           "unsupported"]
