"""What bf16 inference costs on a trained model: top-1 agreement with fp32 on real images.

A model is trained on scikit-learn's digits through ``archlab train`` (real data: 1,437 training and 360 validation
images, 8x8 upsampled to 32x32), then the validation split runs through fp32 eager PyTorch, archlab's fp32 and bf16
inference forms (``fuse(model, onednn=True[, precision="bf16"])``, channels-last) and OpenVINO at f32 and bf16
(``INFERENCE_PRECISION_HINT``, from the BatchNorm-folded ONNX file). Reported per form: top-1 accuracy, top-1
agreement with fp32 eager (the share of images given the same class), and the max |diff| of the logits from fp32
eager's.

    python benchmarks/bf16_digits.py --epochs 3 --out benchmarks/results/bf16_digits.md
    python benchmarks/bf16_digits.py --run RUN_DIR      # an existing `archlab train ... --data digits` run
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from archlab.bench import write_report
from archlab.deploy import fuse
from archlab.deploy.export import build_with_weights, export_onnx
from archlab.deploy.precision import native_bf16
from archlab.deploy.runtimes import openvino_compiled


def val_split(config_path: Path, batch_size: int = 128) -> torch.utils.data.DataLoader:
    """The digits validation split with the preprocessing the training run recorded."""
    import json

    from archlab.preprocessing import Preprocessing
    from archlab.train.data import build_data, make_eval_loader

    prep = Preprocessing.from_dict(json.loads(config_path.read_text())["preprocessing"])
    return make_eval_loader(build_data("digits", lambda kind: prep, with_train=False).val, batch_size)


def forms(model: nn.Module, size: int, tmp: str, bf16: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each inference form of ``model`` as a function of a float32 NCHW batch giving float32 logits."""
    cl = torch.channels_last
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"fp32 eager": model}
    fused = fuse(model, onednn=True).to(memory_format=cl)
    out["fp32 fused (ours)"] = lambda x: fused(x.contiguous(memory_format=cl))
    onnx = os.path.join(tmp, "m.onnx")
    export_onnx(fuse(model), onnx, size)
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        if precision == "bf16":
            fused16 = fuse(model, onednn=True, precision="bf16").to(memory_format=cl)
            out["bf16 fused (ours)"] = lambda x: fused16(x.contiguous(memory_format=cl))
        compiled = openvino_compiled(onnx, torch.get_num_threads(), precision)
        out[f"{precision} OpenVINO"] = lambda x, c=compiled: torch.from_numpy(c(x.numpy())[0])
    return out


def compare(runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], loader) -> list[dict]:
    """Per form: top-1 accuracy, top-1 agreement with the first form, max |diff| of logits from the first's."""
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in runs}
    labels = []
    with torch.inference_mode():
        for x, y in loader:
            labels.append(y)
            for name, run in runs.items():
                logits[name].append(run(x).float())
    y = torch.cat(labels)
    ref_name = next(iter(runs))
    ref = torch.cat(logits[ref_name])
    rows = []
    for name in runs:
        z = torch.cat(logits[name])
        rows.append(dict(form=name, images=len(y), top1=(z.argmax(1) == y).float().mean().item(),
                         agreement=(z.argmax(1) == ref.argmax(1)).float().mean().item(),
                         disagreeing=int((z.argmax(1) != ref.argmax(1)).sum()),
                         max_abs_diff=(z - ref).abs().max().item(), logit_scale=ref.abs().max().item()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--run", type=Path, default=None, help="an existing digits run folder (skips training)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bf16_digits.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            from archlab.cli import main as archlab_main

            run = Path(tmp) / "run"
            code = archlab_main(["train", args.model, "--data", "digits", "--epochs", str(args.epochs),
                                 "--out", str(run)])
            if code:
                return code
        model, origin, size = build_with_weights(args.model, str(run / "checkpoint.pt"))
        bf16 = native_bf16()
        rows = compare(forms(model, size or 32, tmp, bf16), val_split(run / "config.json"))
    cmd = "python benchmarks/bf16_digits.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    lines = [f"## run: bf16 on a model trained on digits ({datetime.now():%Y-%m-%d %H:%M})", "", f"    {cmd}", "",
             f"{args.model} trained by `archlab train {args.model} --data digits --epochs {args.epochs}`"
             + (f" (the run in {args.run})" if args.run else "") + f"; the {rows[0]['images']} validation images "
             f"at {size}x{size}; {torch.get_num_threads()} thread(s); native bf16 on this CPU: {bf16}.", "",
             "| form | top-1 | top-1 agreement with fp32 eager | images classified differently | max abs diff of "
             "logits from fp32 eager |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['form']} | {r['top1']:.2%} | {r['agreement']:.2%} | {r['disagreeing']} | "
                     f"{r['max_abs_diff']:.2e} (logits up to {r['logit_scale']:.1f}) |")
    write_report(lines + [""], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
