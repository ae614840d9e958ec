"""What every archlab model shares: the timm/torchvision-style API, input checks and per-stage features."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from archlab.models.blocks import block_names  # noqa: F401 - the blocks of a model, named from here too


class ArchNet(nn.Module):
    """Base class of every archlab model.

    A family subclass builds its layers from a stage table and implements :meth:`forward_features`,
    :meth:`forward_head` and :meth:`reset_classifier`; it sets ``num_classes``, ``in_chans``,
    ``num_features`` (channels entering the classifier) and ``feature_info`` (one dict per stage:
    ``module`` — the dotted name of the module whose output is the stage output, ``num_chs``, ``reduction``).
    ``min_input_size`` is the smallest square input the network can take (the registry sets it from the
    model card); :meth:`forward` checks every input against it before any layer runs.
    """

    num_classes: int
    in_chans: int
    num_features: int
    feature_info: list[dict[str, Any]]
    min_input_size: int = 1

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what was expected, before a cryptic shape error deep inside."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} expects {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
                f"build it with in_chans={x.shape[1]} to change that"
            )
        h, w = x.shape[-2:]
        if h < self.min_input_size or w < self.min_input_size:
            raise ValueError(
                f"{name} needs inputs of at least {self.min_input_size}x{self.min_input_size}, got {h}x{w}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def training_loss(self, output: Any, target: torch.Tensor,
                      criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The loss to train on, from what ``forward`` returned in training mode: ``criterion`` (cross-entropy by
        default) on the logits. Families whose training output holds more (GoogLeNet's and Inception-v3's
        auxiliary classifiers) add their terms."""
        return (criterion or nn.functional.cross_entropy)(output, target)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of every block (see :mod:`archlab.checkpointing`): less activation memory in
        training for about one more forward pass of compute; results unchanged."""
        from archlab.checkpointing import set_grad_checkpointing

        set_grad_checkpointing(self, enable)


def training_logits(output: Any) -> torch.Tensor:
    """The main logits of a training-mode output: the tensor itself, or the first field of an output that carries
    auxiliary logits too (torchvision's ``GoogLeNetOutputs`` / ``InceptionOutputs``)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def check_num_classes(num_classes: int, allow_zero: bool = False) -> None:
    lowest = 0 if allow_zero else 1
    if not isinstance(num_classes, int) or num_classes < lowest:
        raise ValueError(f"num_classes must be an integer >= {lowest}, got {num_classes!r}")


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """The classifier layer; ``num_classes == 0`` gives an identity (the model then returns pooled features)."""
    check_num_classes(num_classes, allow_zero=True)
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


class FeatureExtractor(nn.Module):
    """Per-stage feature maps of a model: ``forward(x)`` returns one tensor per entry of ``feature_info``.

    Built by ``create_model(name, features_only=True)``. The wrapped model keeps its weights (``self.model``)
    and runs only its ``forward_features``; the classifier is not run.
    """

    def __init__(self, model: ArchNet) -> None:
        super().__init__()
        self.model = model
        self.feature_info = list(model.feature_info)
        modules = dict(model.named_modules())
        missing = [f["module"] for f in self.feature_info if f["module"] not in modules]
        if missing:
            raise ValueError(f"{type(model).__name__}: feature modules not found: {missing}")
        self._outputs: list[torch.Tensor] = []
        for info in self.feature_info:
            modules[info["module"]].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._outputs.append(output)

    @property
    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.model.check_input(x)
        self._outputs = []
        try:
            self.model.forward_features(x)
            return self._outputs
        finally:
            self._outputs = []


class PooledClassifierNet(ArchNet):
    """The torchvision layout shared by AlexNet, VGG, MobileNet V2/V3 and EfficientNet: ``features`` (the
    convolutional body) → ``avgpool`` → flatten → ``classifier``, a Sequential whose last layer is the class
    projection. ``pre_logits`` is the output of everything in ``classifier`` before that projection (its dropout
    and hidden layers), as in timm."""

    features: nn.Module
    avgpool: nn.Module
    classifier: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        for layer in self.classifier[:-1]:
            x = layer(x)
        return x if pre_logits else self.classifier[-1](x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = linear_or_identity(self.num_features, num_classes)
        self.num_classes = num_classes
