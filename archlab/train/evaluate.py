"""Top-1 / top-5 accuracy of a model on a labelled dataset, and of saved weights with the model card's
preprocessing (``archlab eval``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from archlab.train.distributed import DistContext, all_reduce_sum, resolve_device

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp: str | None = None,
    channels_last: bool = False,
    ctx: DistContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy (%) over ``batches``, summed over all ranks.

    Top-5 is top-min(5, classes) for datasets with fewer than 5 classes.
    """
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in batches:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == targets[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        count += len(targets)
        if on_batch:
            on_batch(len(targets))
    model.train(was_training)
    if ctx is not None:
        loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], ctx)
    n = max(count, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(count)}


def evaluate_weights(
    model_name: str,
    weights: str | None,
    data: str,
    batch_size: int = 128,
    source: str = "archlab",
    workers: int = 0,
    device: str | None = None,
    num_classes: int | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    pretrained: bool | str | None = None,
    bad_images: str = "refuse",
) -> dict[str, Any]:
    """Evaluate ``weights`` (an archlab checkpoint, safetensors, or a torchvision/timm file) on ``data``;
    or, with ``pretrained`` (True or a tag) instead of ``weights``, the released ImageNet weights
    (:mod:`archlab.pretrained`) with the preprocessing they were published with.

    Preprocessing is the model card's (resize to input_size/crop_pct, centre crop, card mean/std); for a
    checkpoint written by ``archlab train`` it is the preprocessing the run validated with, which it records.
    Weights are read without executing code (``weights_only=True``); a file that does not fit the architecture
    is reported key by key.
    """
    from archlab.registry import create_model, model_card
    from archlab.preprocessing import Preprocessing
    from archlab.train.data import DataError, build_data, make_eval_loader
    from archlab.weights import load_reference_weights, read_state_dict

    card = model_card(model_name)
    dev = torch.device(resolve_device(device))  # before any work: no CUDA is one line, not a crash in model.to
    run_config = None
    if pretrained:
        from archlab.pretrained import fetch, resolve_pretrained

        released = resolve_pretrained(card, pretrained)
        prep, source = released.preprocessing, released.source
    else:
        path = Path(weights).expanduser()
        state_dict, run_config = read_weights(path, model_name)
        recorded = run_config.get("preprocessing") if run_config else None
        prep = Preprocessing.from_dict(recorded) if recorded else Preprocessing.from_card(card)
    bundle = build_data(data, lambda kind: prep, with_train=False, bad_images=bad_images)
    classes = num_classes or (run_config or {}).get("num_classes") or bundle.num_classes
    if pretrained:
        if classes != card.num_classes:  # checked before any download
            raise DataError(f"the released {model_name} weights classify {card.num_classes} classes; "
                            f"{data} has {classes}")
        path = fetch(released)
        state_dict = read_state_dict(path)
    model = create_model(model_name, num_classes=int(classes))
    load_reference_weights(model, state_dict, source=source)
    model.to(dev)
    loader = make_eval_loader(bundle.val, batch_size, workers=workers, pin_memory=dev.type == "cuda")
    on_batch = progress(len(bundle.val)) if progress else None
    metrics = evaluate(model, loader, dev, on_batch=on_batch)
    return {"model": model_name, "weights": str(path), "source": source, "data": data,
            "pretrained": released.tag if pretrained else None,
            "preprocessing": prep.to_dict(), "skipped_images": bundle.skipped, **metrics}


def read_weights(path: Path, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A weights file's state dict and, when the file is an ``archlab train`` checkpoint of ``model_name``, the
    run's config (num_classes, preprocessing ...), else None; the file is read once, never executing code."""
    from archlab.train.checkpoint import FORMAT
    from archlab.weights import read_checkpoint, unwrap_state_dict

    obj = read_checkpoint(path)
    config = obj.get("config") if isinstance(obj, dict) and obj.get("format") == FORMAT else None
    if not isinstance(config, dict) or config.get("model") != model_name:
        config = None  # not a run of this model: the key check names what does not fit
    return unwrap_state_dict(obj, str(path)), config
