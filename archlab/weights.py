"""Loading reference checkpoints (torchvision, timm) and archlab's own, without ever executing code.

archlab models name their parameters as their reference implementation does (see each model card's
``reference``), so a torchvision ResNet-50 checkpoint loads into ``create_model("resnet50")`` key for key, and so
does timm's (timm's ResNets use torchvision's names). A checkpoint named another way is refused with the list of
keys that do not fit.

timm also has the torchvision architectures (EfficientNet, MobileNet V2/V3, DenseNet, VGG) under its own names.
A model class whose reference is torchvision may declare ``timm_key_map``, a :class:`KeyMap` next to its stage
table, and ``source="timm"`` then translates a timm checkpoint before the strict check:

* ``rules``: ``(regex, replacement)`` pairs applied *in order* to every key (``re.sub``; each rule sees the result
  of the previous ones). A replacement may be a function of the match, for index arithmetic such as timm
  ``blocks.{i}.{j}`` -> ``features.{i + 1}.{j}``.
* ``reshaped``: our keys whose tensor timm stores in another shape holding the same numbers (a 1x1 or 7x7 conv
  where torchvision has a Linear); only these are reshaped, and only when the element counts are equal.
* ``bn_eps``: timm's BatchNorm epsilon where it differs from ours; after loading, the model's BatchNorms take
  it, so the model computes exactly what timm's does with those weights (folding the difference into
  ``running_var`` instead could make a small variance negative).

Whatever still does not fit after this is reported as for any other checkpoint, key by key.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from archlab.api import require_module

SOURCES = ("torchvision", "timm", "archlab")


class WeightsError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model; the message says exactly why."""


@dataclass(frozen=True)
class KeyMap:
    """How the checkpoint of another implementation of the same architecture maps onto ours (module docstring)."""

    rules: Sequence[tuple[str, str | Callable[[re.Match[str]], str]]]
    reshaped: tuple[str, ...] = ()
    bn_eps: float | None = None

    def translate(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` with our keys and reshaped tensors."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            theirs = key
            for pattern, replacement in self.rules:
                key = re.sub(pattern, replacement, key)
            if key in out:
                raise WeightsError(f"checkpoint keys map to {key} twice (the second from {theirs})")
            out[key] = value
        own = model.state_dict()
        for key in self.reshaped:
            if key in out and key in own and out[key].numel() == own[key].numel():
                out[key] = out[key].reshape(own[key].shape)
        return out

    def adopt_norm_settings(self, model: nn.Module) -> None:
        """Give the model's BatchNorms timm's epsilon (after its weights are loaded)."""
        if self.bn_eps is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eps = self.bn_eps


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a torch checkpoint, never executing pickled code.

    Torch files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
    A checkpoint dict holding the weights under ``state_dict``, ``model``, ``model_state`` or ``ema`` is unwrapped.
    """
    return unwrap_state_dict(read_checkpoint(path), str(path))


_NOT_A_CHECKPOINT = "not a checkpoint, or truncated or corrupt (expected a torch .pt/.pth file or .safetensors)"


def _pickle_globals(path: Path) -> list[str]:
    """The classes and functions a plain pickle file would import, read from its opcodes without running any
    (:mod:`pickletools`); empty for a file that is not a pickle."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # protocol 2+ marker: anything else is no pickle torch or we would write
                return []
            f.seek(0)
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a well-formed pickle: no globals to name
        return names
    return list(dict.fromkeys(names))


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The whole object in a ``.safetensors`` file (a dict of tensors) or a torch checkpoint, read as
    :func:`read_state_dict` reads it (never executing pickled code), for callers that want more than the weights."""
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
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing: we say why
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's message advises re-running with weights_only=False: the unsafe thing. Say what the file is.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        names = [found.group(1)] if found else _pickle_globals(path)
        if names:
            raise WeightsError(
                f"{path}: refused: a pickle holding objects that are not tensors ({', '.join(names[:3])}); "
                f"archlab reads checkpoints without executing code, so it loads only tensors and plain containers"
            ) from None
        raise WeightsError(f"{path}: {_NOT_A_CHECKPOINT}") from None
    except RuntimeError as exc:  # a zip archive that does not open: truncated or damaged in transfer
        reason = _first_line(exc).split(". ")[0]
        raise WeightsError(f"{path}: not a checkpoint, or truncated or corrupt ({reason})") from None
    except Exception:  # noqa: BLE001 - text, JSON, random bytes make the unpickler fail in arbitrary ways
        raise WeightsError(f"{path}: {_NOT_A_CHECKPOINT}") from None
    return obj


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


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | None = None,
                     skip: tuple[str, ...] = ()) -> None:
    """Raise one :class:`WeightsError` naming every missing, unexpected and wrongly shaped key (keys starting with
    a prefix in ``skip`` are left out on both sides)."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
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
    skip_classifier: bool = False,
) -> nn.Module:
    """Load a torchvision, timm or archlab checkpoint into an archlab model, strictly.

    ``skip_classifier=True`` loads everything but the classifier, which is re-initialized as
    ``reset_classifier`` does: an ImageNet checkpoint into a model built with another ``num_classes``, for
    fine-tuning.

    ``state_dict_or_path`` is a state dict or a file (``.safetensors`` or a torch checkpoint, read with
    ``weights_only=True``); ``source`` says where it comes from ('torchvision', 'timm' or 'archlab'). The
    checkpoint is first translated by the model's ``{source}_key_map`` where it has one (``timm_key_map``: timm's
    names for a torchvision architecture; ``torchvision_key_map``: the legacy names in torchvision's released
    DenseNet files). Any missing, unexpected or wrongly shaped key is then reported by name in one
    :class:`WeightsError`. Returns the model.
    """
    from archlab.models.base import FeatureExtractor

    require_module(model, "load_reference_weights")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")

    if isinstance(model, FeatureExtractor):  # features_only=True: the weights are the wrapped model's
        load_reference_weights(model.model, state_dict_or_path, source, skip_classifier)
        return model
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict_or_path)
    else:
        state_dict = unwrap_state_dict(state_dict_or_path)
    key_map = getattr(model, f"{source}_key_map", None)
    if key_map is not None:
        state_dict = key_map.translate(model, state_dict)
    skip: tuple[str, ...] = ()
    if skip_classifier:
        skip = _reset_classifier(model)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
    check_state_dict(model, state_dict, source, skip)
    model.load_state_dict(state_dict, strict=False)
    if key_map is not None:
        key_map.adopt_norm_settings(model)
    return model


def _reset_classifier(model: nn.Module) -> tuple[str, ...]:
    """Re-initialize ``model``'s classifier (``reset_classifier`` at its own class count) and return the
    state-dict prefixes of the modules that replaced: wherever a family keeps its classifier ('fc',
    'classifier.6', ...), those are its keys."""
    if not hasattr(model, "reset_classifier"):
        raise ValueError(f"skip_classifier: {type(model).__name__} has no reset_classifier()")
    before = dict(model.named_modules())
    model.reset_classifier(model.num_classes)
    return tuple(f"{name}." for name, m in model.named_modules() if name and before.get(name) is not m)
