"""Export a model for deployment, each file checked by running it next to the PyTorch model it came from.

Three formats, each with a dynamic batch axis (``archlab export NAME --onnx FILE | --pt2 FILE | --openvino DIR``):

- **ONNX**, through the TorchScript-based exporter, checked in onnxruntime (the CPU provider).
- **a torch.export program** (``.pt2``, :func:`torch.export.save`): the whole forward as an ATen graph with the
  weights inside, the input of PyTorch 2's ahead-of-time tools (AOTInductor, ExecuTorch). It loads in plain PyTorch
  without archlab installed (``torch.export.load(FILE).module()(x)``); checked by loading it back.
- **OpenVINO IR** (``DIR/NAME.xml`` + ``.bin``): ``openvino.convert_model`` of the PyTorch model, saved with its
  float32 weights as they are (``save_model`` would halve them to fp16 by default); checked in OpenVINO's CPU
  plugin with ``INFERENCE_PRECISION_HINT`` f32 (its default on a CPU with AVX-512 BF16 or AMX is bf16).

Precision: a bf16 model (``precision="bf16"``) is held by the torch.export program only: its weights and graph
are in bfloat16 (casts of the input and output included). ONNX Runtime's CPU provider, which checks the ONNX file,
has no bf16 convolutions, and an OpenVINO IR keeps float32 weights: bf16 is a compile-time choice of OpenVINO's
(``INFERENCE_PRECISION_HINT``), not a property of the file.

The check reports the largest difference from the PyTorch model on a batch other than the one the export saw (so
the batch axis is really dynamic), against a tolerance of 1e-4 relative to the outputs, and both latencies.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn


LATENCY_BATCH = 2  # the batch the check runs and times; the export itself sees another one
MAX_BATCH = 65536  # upper bound of the .pt2 program's dynamic batch (torch.export wants one)


def _example(model: nn.Module, batch: int, input_size: int) -> torch.Tensor:
    return torch.randn(batch, getattr(model, "in_chans", 3), input_size, input_size)


def export_onnx(model: nn.Module, path: str, input_size: int, opset: int = 17) -> None:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis, via the TorchScript-based exporter.

    ``dynamo=False``: the torch.export-based exporter needs ``onnxscript``, which is optional here; the legacy
    exporter handles every archlab model.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings (shape checks are constants)
        torch.onnx.export(
            model, (_example(model, 1, input_size),), path, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


def export_program(model: nn.Module, input_size: int, path: str | None = None) -> torch.export.ExportedProgram:
    """Export ``model`` (eval mode) with :func:`torch.export.export`, batch axis dynamic (1 to ``MAX_BATCH``),
    and save it to ``path`` if given. The example batch is 3: torch.export specialises sizes 0 and 1, and the
    check runs batch 2."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (_example(model, 3, input_size),), dynamic_shapes=({0: batch},))
    if path is not None:
        torch.export.save(program, path)
    return program


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _compare(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], input_size: int, repeats: int,
             warmup: int) -> tuple[float, float, float, float]:
    x = _example(model, LATENCY_BATCH, input_size)
    with torch.inference_mode():
        expected = model(x)
        got = run(x)
        diff = (got - expected).abs().max().item()
        exported_ms = _median_ms(lambda: run(x), repeats, warmup)
        torch_ms = _median_ms(lambda: model(x), repeats, warmup)
    return diff, expected.abs().max().item(), exported_ms, torch_ms


def check_onnx(model: nn.Module, path: str, input_size: int, repeats: int = 10,
               warmup: int = 2) -> tuple[float, float, float, float]:
    """Run the ONNX file in onnxruntime next to PyTorch: (max |difference|, max |PyTorch output|, onnxruntime
    median ms, PyTorch median ms)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # same threads as PyTorch, for a fair latency
    opts.log_severity_level = 3  # errors only: failures reach the caller as exceptions
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _compare(model, lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]), input_size,
                    repeats, warmup)


def export_openvino(model: nn.Module, directory: str, input_size: int, name: str = "model") -> str:
    """Convert ``model`` (eval mode) with ``openvino.convert_model`` (batch axis dynamic) and save it as OpenVINO IR
    in ``directory`` (made if missing): the path of ``NAME.xml`` (its weights in ``NAME.bin``, float32)."""
    from archlab.deploy.runtimes import import_runtime

    ov = import_runtime("openvino")
    x = _example(model, 3, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings (shape checks are constants)
        converted = ov.convert_model(model, example_input=x, input=[ov.PartialShape([-1, *x.shape[1:]])])
    Path(directory).mkdir(exist_ok=True)
    path = Path(directory) / f"{name}.xml"
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return str(path)


def check_openvino(model: nn.Module, path: str, input_size: int, repeats: int = 10,
                   warmup: int = 2) -> tuple[float, float, float, float]:
    """Run the saved IR in OpenVINO's CPU plugin (float32 inference, PyTorch's thread count) next to the model:
    (max |difference|, max |PyTorch output|, OpenVINO median ms, PyTorch median ms)."""
    from archlab.deploy.runtimes import openvino_compiled

    compiled = openvino_compiled(path, torch.get_num_threads(), "fp32")
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return _compare(model, run, input_size, repeats, warmup)


def check_program(model: nn.Module, path: str, input_size: int, repeats: int = 10,
                  warmup: int = 2) -> tuple[float, float, float, float]:
    """Load the saved torch.export program back and run it next to the model: (max |difference|, max |PyTorch
    output|, program median ms, PyTorch median ms)."""
    loaded = torch.export.load(path).module()
    return _compare(model, loaded, input_size, repeats, warmup)


def export_tolerance(scale: float, precision: str = "fp32") -> float:
    """1e-4, and relative to the outputs where they are small: random-init logits of some families (MobileNetV3:
    ~1e-9) are so small that an absolute 1e-4 would pass any export. A bf16 file is checked against the float32
    model: 5e-2 of the outputs' scale (bfloat16 keeps 8 bits of mantissa, ~0.4% per rounding)."""
    return 5e-2 * scale if precision == "bf16" else 1e-4 * min(1.0, scale)


def build_with_weights(name: str, weights: str | None = None, pretrained: bool | str | None = None,
                       source: str = "archlab", num_classes: int | None = None) -> tuple[nn.Module, str, int | None]:
    """The registered model ``name`` in eval mode with the weights to export, a word on where they come from, and
    the input size they were trained at where a training run recorded it (else None).

    The weights: a checkpoint file (read without executing code; its class count from ``num_classes``, else the one
    ``archlab train`` recorded, else the card's), the released weights, or (neither given) a random initialisation.
    """
    import archlab
    from archlab.train.evaluate import read_weights
    from archlab.weights import load_reference_weights

    if pretrained:
        model = archlab.create_model(name, pretrained=pretrained)
        return model.eval(), f"released weights {model.pretrained_weights.tag}", None
    if weights is None:
        return archlab.create_model(name, **({"num_classes": num_classes} if num_classes else {})).eval(), \
            "random initialisation", None
    path = Path(weights).expanduser()
    state_dict, config = read_weights(path, name)
    classes = num_classes or (config or {}).get("num_classes") or archlab.model_card(name).num_classes
    model = archlab.create_model(name, num_classes=int(classes))
    load_reference_weights(model, state_dict, source=source)
    trained_size = ((config or {}).get("preprocessing") or {}).get("input_size")
    return model.eval(), str(path), int(trained_size) if trained_size else None
