"""Loading reference checkpoints (torchvision, timm) and archlab's own, without ever executing code.

archlab models name their parameters as their reference implementation does (see each model card's
``reference``), so a torchvision ResNet-50 checkpoint loads into ``create_model("resnet50")`` key for key, and so
does timm's (timm's ResNets use torchvision's names). A checkpoint named another way is refused with the list of
keys that do not fit.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

SOURCES = ("torchvision", "timm", "archlab")


class WeightsError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model; the message says exactly why."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a torch checkpoint, never executing pickled code.

    Torch files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
    A checkpoint dict holding the weights under ``state_dict``, ``model``, ``model_state`` or ``ema`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused: the file holds objects other than tensors, and loading it could execute code "
            f"({_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from None
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint object (a plain state dict, or one nested under a known key)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state", "state_dict_ema", "ema"):
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key], where)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise WeightsError(f"{where}: no state dict of tensors found")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | None = None) -> None:
    """Raise one :class:`WeightsError` naming every missing, unexpected and wrongly shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        card = getattr(model, "card", None)
        name = card.name if card is not None else type(model).__name__
        if card is not None and card.reference:
            name += f" (parameters named as {card.reference})"
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{title} ({len(keys)}): {shown}")
        what = f"{source} checkpoint" if source else "checkpoint"
        raise WeightsError(f"{what} does not fit {name}: " + "; ".join(parts))


def load_reference_weights(
    model: nn.Module,
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    source: str = "torchvision",
) -> nn.Module:
    """Load a torchvision, timm or archlab checkpoint into an archlab model, strictly.

    ``state_dict_or_path`` is a state dict or a file (``.safetensors`` or a torch checkpoint, read with
    ``weights_only=True``); ``source`` says where it comes from ('torchvision', 'timm' or 'archlab'). Any missing,
    unexpected or wrongly shaped key is reported by name in one :class:`WeightsError`. Returns the model.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict_or_path)
    else:
        state_dict = unwrap_state_dict(state_dict_or_path)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=False)
    return model
