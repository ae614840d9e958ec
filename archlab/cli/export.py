"""``archlab export``: a model with its weights as ONNX, a torch.export program or OpenVINO IR, the file checked by
running it next to the PyTorch model (:mod:`archlab.deploy.export`)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from archlab.cli.args import CLIError, positive_int, writable_file
from archlab.cli.output import console, print_json
from archlab.deploy import fuse
from archlab.deploy.export import (
    LATENCY_BATCH,
    MAX_BATCH,
    build_with_weights,
    check_onnx,
    check_openvino,
    check_program,
    export_onnx,
    export_openvino,
    export_program,
    export_tolerance,
)
from archlab.deploy.precision import PRECISIONS, require_bf16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model name (see `archlab list`)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--onnx", metavar="FILE", help="write ONNX, checked in onnxruntime")
    fmt.add_argument("--pt2", metavar="FILE", help="write a torch.export program (torch.export.load reads it)")
    fmt.add_argument("--openvino", metavar="DIR",
                     help="write OpenVINO IR (DIR/NAME.xml + .bin, fp32 weights), checked in OpenVINO's CPU plugin "
                          "(pip install -e \".[deploy]\")")
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
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: weights and graph in bfloat16, --pt2 only (ONNX Runtime has no bf16 convolutions to "
                        "check an ONNX file with; an OpenVINO IR keeps fp32 weights and OpenVINO picks bf16 when it "
                        "compiles); checked against the fp32 model")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs of each (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def _remove_export(path: str, fmt: str, created_folder: bool) -> None:
    if fmt != "openvino":
        os.remove(path)
        return
    for suffix in (".xml", ".bin"):
        Path(path).with_suffix(suffix).unlink(missing_ok=True)
    if created_folder:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import archlab

    card = archlab.model_card(args.name)  # UnknownModelError is a ValueError: one line, exit 2
    if args.input is not None and args.input < card.min_input_size:
        raise CLIError(f"{args.name} needs --input >= {card.min_input_size}, got {args.input}")
    fmt, path = ("onnx", args.onnx) if args.onnx else ("pt2", args.pt2) if args.pt2 else ("openvino", args.openvino)
    if fmt == "pt2" and args.opset is not None:
        raise CLIError("--opset applies to --onnx only")
    opset = 17 if args.opset is None else args.opset
    if fmt == "onnx" and opset < 7:
        raise CLIError(f"--opset {opset}: onnxruntime, which checks the export, runs opset 7 and above")
    if args.precision == "bf16" and fmt != "pt2":
        raise CLIError("--precision bf16 applies to --pt2 only: " + (
            "onnxruntime, which checks an ONNX file, has no bf16 convolutions" if fmt == "onnx" else
            "an OpenVINO IR keeps fp32 weights; OpenVINO runs it in bf16 itself (INFERENCE_PRECISION_HINT, its "
            "default on a CPU with AVX-512 BF16 or AMX)"))
    if args.precision == "bf16":
        require_bf16()
    if fmt == "openvino":
        from archlab.deploy.runtimes import import_runtime

        import_runtime("openvino")  # a missing package: one line naming the extra
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise CLIError(f"--openvino {path}: is a file; give a folder (the IR is NAME.xml + NAME.bin in it)")
        if not folder.parent.is_dir():
            raise CLIError(f"--openvino: folder {str(folder.parent)!r} does not exist")
    else:
        writable_file(path, f"--{fmt}")
    if args.pretrained and args.num_classes:
        raise CLIError("--num-classes applies to --weights: the released weights classify the card's classes")
    if args.source and args.weights is None:
        raise CLIError("--source applies to --weights: it names the key convention of that file")
    model, origin, trained_size = build_with_weights(args.name, args.weights, args.pretrained,
                                                     args.source or "archlab", args.num_classes)
    # The input size: asked for, else the one the training run used (a digits model is 32x32), else the card's.
    size = args.input or trained_size or card.input_size
    from archlab.analysis.profile import check_fits

    check_fits(model, size, LATENCY_BATCH + 1, all_activations=True)  # refused now if it cannot fit, not killed later
    if args.fused:
        model = fuse(model)
    # bf16: the file holds the bf16 model; the check compares it with the fp32 one (the cost of bf16).
    exported = fuse(model, precision="bf16") if args.precision == "bf16" else model
    what, runner = {"onnx": ("ONNX", "onnxruntime"), "pt2": ("torch.export", "exported program"),
                    "openvino": ("OpenVINO IR", "openvino")}[fmt]
    created = fmt == "openvino" and not Path(path).exists()
    try:
        if fmt == "onnx":
            export_onnx(model, path, size, opset=opset)
        elif fmt == "openvino":
            path = export_openvino(model, path, size, name=re.sub(r"[^\w.-]", "_", args.name))
        else:
            export_program(exported, size, path)
    except Exception as exc:  # noqa: BLE001 - an unsupported op, an opset too old ...: say which, exit 2
        raise CLIError(f"cannot export {args.name} to {what}: {_first_line(exc)}") from exc
    try:
        check = {"onnx": check_onnx, "pt2": check_program, "openvino": check_openvino}[fmt]
        diff, scale, exported_ms, torch_ms = check(model, path, size, repeats=args.repeats)
    except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the graph (an opset it cannot run ...)
        _remove_export(path, fmt, created)  # an export that does not run is no export
        failure = {"onnx": f"onnxruntime cannot run {args.name} exported at opset {opset}",
                   "pt2": f"the saved torch.export program of {args.name} does not load and run",
                   "openvino": f"OpenVINO cannot compile and run the IR of {args.name}"}[fmt]
        raise CLIError(f"{failure} (file removed): {_first_line(exc)}") from None
    tolerance = export_tolerance(scale, args.precision)
    ok = diff <= tolerance
    result = dict(model=args.name, weights=origin, format=fmt, input=size, fused=args.fused,
                  precision=args.precision, max_abs_diff=diff,
                  output_scale=scale, tolerance=tolerance, matches=ok, torch_latency_ms=torch_ms,
                  latency_batch=LATENCY_BATCH, threads=torch.get_num_threads())
    if fmt == "onnx":
        result.update(onnx=path, opset=opset, ort_latency_ms=exported_ms)
    elif fmt == "openvino":
        result.update(openvino=path, openvino_latency_ms=exported_ms)
    else:
        result.update(pt2=path, max_batch=MAX_BATCH, program_latency_ms=exported_ms)
    if args.json:
        print_json(result)
    else:
        c = console()
        verdict = "[green]ok[/]" if ok else "[red]MISMATCH[/]"
        detail = {"onnx": f"opset {opset}", "pt2": "torch.export program",
                  "openvino": "OpenVINO IR, fp32 weights"}[fmt] + (", bf16" if args.precision == "bf16" else "")
        c.print(f"exported {args.name}{' (fused)' if args.fused else ''} -> {path} ({detail}, "
                f"input {size}x{size}, dynamic batch)")
        c.print(f"weights: {origin}" + (" (give --weights FILE or --pretrained for trained ones)"
                                        if origin == "random initialisation" else ""))
        c.print(f"{runner} vs PyTorch{' fp32' if args.precision == 'bf16' else ''}: max |diff| = {diff:.2e} "
                f"on outputs up to {scale:.2e} "
                f"(tolerance {tolerance:.0e}) {verdict}")
        c.print(f"latency, batch {LATENCY_BATCH}, {torch.get_num_threads()} thread(s): {runner} "
                f"{exported_ms:.2f} ms, PyTorch {torch_ms:.2f} ms (median of {args.repeats})")
    if not ok:
        print(f"archlab: error: {runner} output differs from PyTorch by {diff:.2e} > {tolerance:.0e}",
              file=sys.stderr)
        return 1
    return 0
