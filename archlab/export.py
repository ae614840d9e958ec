"""Export a model for deployment, each file checked by running it next to the PyTorch model it came from.

Two formats, both with a dynamic batch axis (``archlab export NAME --onnx FILE | --pt2 FILE``):

- **ONNX**, through the TorchScript-based exporter, checked in onnxruntime (the CPU provider).
- **a torch.export program** (``.pt2``, :func:`torch.export.save`): the whole forward as an ATen graph with the
  weights inside, the input of PyTorch 2's ahead-of-time tools (AOTInductor, ExecuTorch). It loads in plain PyTorch
  without archlab installed (``torch.export.load(FILE).module()(x)``); checked by loading it back.

The check reports the largest difference from the PyTorch model on a batch other than the one the export saw (so
the batch axis is really dynamic), against a tolerance of 1e-4 relative to the outputs, and both latencies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from archlab.cli import CLIError, console, positive_int, print_json
from archlab.deploy import fuse

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


def check_program(model: nn.Module, path: str, input_size: int, repeats: int = 10,
                  warmup: int = 2) -> tuple[float, float, float, float]:
    """Load the saved torch.export program back and run it next to the model: (max |difference|, max |PyTorch
    output|, program median ms, PyTorch median ms)."""
    loaded = torch.export.load(path).module()
    return _compare(model, loaded, input_size, repeats, warmup)


def export_tolerance(scale: float) -> float:
    """1e-4, and relative to the outputs where they are small: random-init logits of some families (MobileNetV3:
    ~1e-9) are so small that an absolute 1e-4 would pass any export."""
    return 1e-4 * min(1.0, scale)


# ---------------------------------------------------------------------------------------------- archlab export


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name (see `archlab list`)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--onnx", metavar="FILE", help="write ONNX, checked in onnxruntime")
    fmt.add_argument("--pt2", metavar="FILE", help="write a torch.export program (torch.export.load reads it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", metavar="FILE",
                       help="the weights to export: an `archlab train` checkpoint, .safetensors, or a torchvision/timm "
                            "state-dict file (default: random initialisation)")
    which.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                       help="the released ImageNet weights (a TAG from `archlab card` picks another release)")
    p.add_argument("--source", choices=("archlab", "torchvision", "timm"), default=None,
                   help="naming convention of the --weights file's keys (default archlab)")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help="classifier size of the --weights file (default: recorded by archlab train, else the card's)")
    p.add_argument("--input", type=positive_int, default=None, metavar="N",
                   help="input size N x N (default: the size an archlab train checkpoint was trained at, "
                        "else the card's)")
    p.add_argument("--fused", action="store_true", help="export the fused model (BatchNorm folded, dropout removed)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs of each (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


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


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def run_export(args: argparse.Namespace) -> int:
    import archlab

    card = archlab.model_card(args.name)  # UnknownModelError is a ValueError: one line, exit 2
    if args.input is not None and args.input < card.min_input_size:
        raise CLIError(f"{args.name} needs --input >= {card.min_input_size}, got {args.input}")
    fmt, path = ("onnx", args.onnx) if args.onnx else ("pt2", args.pt2)
    if fmt == "pt2" and args.opset is not None:
        raise CLIError("--opset applies to --onnx only")
    opset = 17 if args.opset is None else args.opset
    if fmt == "onnx" and opset < 7:
        raise CLIError(f"--opset {opset}: onnxruntime, which checks the export, runs opset 7 and above")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot write {path}: directory {parent} does not exist")
    if args.pretrained and args.num_classes:
        raise CLIError("--num-classes applies to --weights: the released weights classify the card's classes")
    if args.source and args.weights is None:
        raise CLIError("--source applies to --weights: it names the key convention of that file")
    model, origin, trained_size = build_with_weights(args.name, args.weights, args.pretrained,
                                                     args.source or "archlab", args.num_classes)
    # The input size: asked for, else the one the training run used (a digits model is 32x32), else the card's.
    size = args.input or trained_size or card.input_size
    if args.fused:
        model = fuse(model)
    what, runner = ("ONNX", "onnxruntime") if fmt == "onnx" else ("torch.export", "exported program")
    try:
        if fmt == "onnx":
            export_onnx(model, path, size, opset=opset)
        else:
            export_program(model, size, path)
    except Exception as exc:  # noqa: BLE001 - an unsupported op, an opset too old ...: say which, exit 2
        raise CLIError(f"cannot export {args.name} to {what}: {_first_line(exc)}") from exc
    try:
        check = check_onnx if fmt == "onnx" else check_program
        diff, scale, exported_ms, torch_ms = check(model, path, size, repeats=args.repeats)
    except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the graph (an opset it cannot run ...)
        os.remove(path)  # an export that does not run is no export
        failure = f"onnxruntime cannot run {args.name} exported at opset {opset}" if fmt == "onnx" else \
            f"the saved torch.export program of {args.name} does not load and run"
        raise CLIError(f"{failure} (file removed): {_first_line(exc)}") from None
    tolerance = export_tolerance(scale)
    ok = diff <= tolerance
    result = dict(model=args.name, weights=origin, format=fmt, input=size, fused=args.fused, max_abs_diff=diff,
                  output_scale=scale, tolerance=tolerance, matches=ok, torch_latency_ms=torch_ms,
                  latency_batch=LATENCY_BATCH, threads=torch.get_num_threads())
    if fmt == "onnx":
        result.update(onnx=path, opset=opset, ort_latency_ms=exported_ms)
    else:
        result.update(pt2=path, max_batch=MAX_BATCH, program_latency_ms=exported_ms)
    if args.json:
        print_json(result)
    else:
        c = console()
        verdict = "[green]ok[/]" if ok else "[red]MISMATCH[/]"
        detail = f"opset {opset}" if fmt == "onnx" else "torch.export program"
        c.print(f"exported {args.name}{' (fused)' if args.fused else ''} -> {path} ({detail}, "
                f"input {size}x{size}, dynamic batch)")
        c.print(f"weights: {origin}" + (" (give --weights FILE or --pretrained for trained ones)"
                                        if origin == "random initialisation" else ""))
        c.print(f"{runner} vs PyTorch: max |diff| = {diff:.2e} on outputs up to {scale:.2e} "
                f"(tolerance {tolerance:.0e}) {verdict}")
        c.print(f"latency, batch {LATENCY_BATCH}, {torch.get_num_threads()} thread(s): {runner} "
                f"{exported_ms:.2f} ms, PyTorch {torch_ms:.2f} ms (median of {args.repeats})")
    if not ok:
        print(f"archlab: error: {runner} output differs from PyTorch by {diff:.2e} > {tolerance:.0e}",
              file=sys.stderr)
        return 1
    return 0
