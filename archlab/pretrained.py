"""Published ImageNet weights: the reference implementation's released checkpoints, fetched once, loaded key for key.

Every model whose reference is torchvision has torchvision's released weights. Their address, parameter count,
ImageNet-1K accuracy and evaluation preprocessing are read from torchvision's weights registry, which is
installed with archlab: listing them needs no network. SE-ResNet-50, SE-ResNeXt-50 and MobileNet V1 (reference:
timm) have timm's default weights on the Hugging Face hub, listed in :data:`TIMM_WEIGHTS` (timm itself is not a
runtime dependency; a test checks the table against timm's own configuration).

A file is downloaded once into torch.hub's checkpoint directory (``$TORCH_HOME/hub/checkpoints``, the one
torchvision uses, so a file torchvision already fetched is reused), checked against the hash in its name where
the name carries one (torchvision's do), and read without executing code (:func:`archlab.weights.read_state_dict`).
With no network, put the file at the path the error message names.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archlab.cards import ModelCard
from archlab.preprocessing import Preprocessing
from archlab.weights import WeightsError, load_reference_weights


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint of a model: where it is, how it was evaluated, what it scored."""

    model: str  # archlab name
    tag: str  # torchvision's enum member ("IMAGENET1K_V2") or timm's pretrained tag ("a1_in1k")
    source: str  # naming convention of the file's keys: "torchvision" or "timm"
    url: str
    preprocessing: Preprocessing  # the evaluation transform the published accuracy was measured with
    top1: float | None = None  # published ImageNet-1K accuracy (%), where the registry gives it
    top5: float | None = None
    num_params: int | None = None
    default: bool = False  # what ``pretrained=True`` loads: the weights behind the model card's top-1

    @property
    def filename(self) -> str:
        if self.source == "timm":  # every hub file is called model.safetensors: name it after the repository
            return self.url.split("/")[3] + "--" + self.url.split("/")[4] + ".safetensors"
        return self.url.rsplit("/", 1)[-1]

    @property
    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d


# timm's default pretrained weights of our timm-referenced models (timm.models.get_pretrained_cfg):
# archlab name -> (hub repository, crop_pct, interpolation, mean, std); all evaluated at 224.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIMM_WEIGHTS: dict[str, tuple[str, float, str, tuple[float, ...], tuple[float, ...]]] = {
    "seresnet50": ("timm/seresnet50.a1_in1k", 0.95, "bicubic", *_IMAGENET),
    "seresnext50_32x4d": ("timm/seresnext50_32x4d.racm_in1k", 0.875, "bicubic", *_IMAGENET),
    "seresnext101_32x4d": ("timm/seresnext101_32x4d.gluon_in1k", 0.875, "bicubic", *_IMAGENET),
    "mobilenet_v3_small_075": ("timm/mobilenetv3_small_075.lamb_in1k", 0.875, "bicubic", *_IMAGENET),
    "mobilenet_v2_140": ("timm/mobilenetv2_140.ra_in1k", 0.875, "bicubic", *_IMAGENET),
    "mobilenet_v2_050": ("timm/mobilenetv2_050.lamb_in1k", 0.875, "bicubic", *_IMAGENET),
    "mobilenet_v1": ("timm/mobilenetv1_100.ra4_e3600_r224_in1k", 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3),
}


def _torchvision_weights(card: ModelCard) -> list[PretrainedWeights]:
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(card.reference_name)
    except ValueError:
        return []
    name = card.name
    out = []
    for w in enum:
        meta = w.meta
        metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
        if metrics.get("acc@1") is None or math.isnan(metrics["acc@1"]):
            continue  # VGG-16's IMAGENET1K_FEATURES: feature-extraction weights, untrained classifier
        t = w.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        prep = Preprocessing(crop, tuple(t.mean), tuple(t.std), t.interpolation.value, crop / resize)
        out.append(PretrainedWeights(name, w.name, "torchvision", w.url, prep, metrics.get("acc@1"),
                                     metrics.get("acc@5"), meta.get("num_params")))
    # pretrained=True: the weights whose accuracy the card quotes, else the first (original) release.
    named = [w for w in out if w.tag in (card.top1_source or "")]
    chosen = (named or out or [None])[0]
    return [replace(w, default=True) if w is chosen else w for w in out]


def pretrained_weights(card: ModelCard) -> list[PretrainedWeights]:
    """The released ImageNet checkpoints of a registered model, by its card (``archlab.model_card(name)``; empty
    where none was released), default first."""
    name = card.name
    if name in TIMM_WEIGHTS:
        repo, crop_pct, interpolation, mean, std = TIMM_WEIGHTS[name]
        url = f"https://huggingface.co/{repo}/resolve/main/model.safetensors"
        prep = Preprocessing(card.input_size, mean, std, interpolation, crop_pct)
        return [PretrainedWeights(name, repo.split(".", 1)[1], "timm", url, prep, default=True)]
    if card.reference_source != "torchvision":
        return []
    found = _torchvision_weights(card)
    return sorted(found, key=lambda w: not w.default)


def resolve_pretrained(card: ModelCard, tag: bool | str = True) -> PretrainedWeights:
    """The checkpoint ``pretrained=tag`` asks for of the model of ``card``: ``True`` for the default, or a tag
    (case-insensitive)."""
    name = card.name
    available = pretrained_weights(card)
    if not available:
        raise ValueError(f"{name} has no released pretrained weights")
    if tag is True:
        return available[0]
    if isinstance(tag, str):
        for w in available:
            if w.tag.lower() == tag.lower():
                return w
    tags = ", ".join(w.tag for w in available)
    raise ValueError(f"unknown pretrained weights {tag!r} for {name}; available: {tags}")


def fetch(weights: PretrainedWeights, progress: bool = True) -> Path:
    """The local file of ``weights``, downloaded into the torch.hub cache the first time."""
    path = weights.cache_path
    match = re.search(r"-([a-f0-9]{6,})\.", weights.filename)  # torchvision's names end in a SHA-256 prefix
    expected = match.group(1) if match else None
    if path.is_file():
        _check_hash(path, expected)  # also a file the user put there by hand
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, os.fspath(path), expected, progress=progress)
    except Exception as exc:  # noqa: BLE001 - no network, HTTP error, hash mismatch: say which, and the way out
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot download the {weights.model} {weights.tag} weights from {weights.url} ({reason}); "
            f"with no network, put that file at {path}"
        ) from None
    _VERIFIED.add((os.fspath(path), path.stat().st_mtime))  # torch.hub checked the hash while downloading
    return path


_VERIFIED: set[tuple[str, float]] = set()  # (path, mtime) already hashed in this process


def _check_hash(path: Path, expected: str | None) -> None:
    key = (os.fspath(path), path.stat().st_mtime)
    if expected is None or key in _VERIFIED:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(expected):
        raise WeightsError(f"{path} is not the released file: its SHA-256 starts {digest.hexdigest()[:len(expected)]}, "
                           f"the release's {expected}; delete it to download it again")
    _VERIFIED.add(key)


def load_pretrained(model: nn.Module, weights: PretrainedWeights, progress: bool = True) -> nn.Module:
    """Load ``weights`` into ``model`` (built as published: 1000 classes, 3 input channels), strictly."""
    path = fetch(weights, progress)
    try:
        load_reference_weights(model, path, source=weights.source)
    except WeightsError as exc:
        raise WeightsError(f"pretrained {weights.tag} weights: {exc}") from None
    model.pretrained_weights = weights
    return model
