"""The model registry: every architecture by name, with a model card that says where it comes from.

Family modules call :func:`register` once per variant (a row of their variant table). Users call
:func:`create_model`, :func:`list_models` and :func:`model_card`.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import inspect
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from archlab.cards import ModelCard


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    card: ModelCard


_REGISTRY: dict[str, _Entry] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists the closest names."""


def register(builder: Callable[..., nn.Module], card: ModelCard) -> None:
    """Register ``card.name``; ``builder(**card.default_kwargs, **user_kwargs)`` builds it."""
    if card.name in _REGISTRY:
        raise ValueError(f"model {card.name!r} is registered twice")
    _REGISTRY[card.name] = _Entry(builder, card)


def _ensure_loaded() -> None:
    # Families register themselves on import; importing the package is enough.
    import archlab.models  # noqa: F401


def _entry(name: str) -> _Entry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `archlab list`"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def _accepted_arguments(fn: Callable[..., Any]) -> set[str] | None:
    """Keyword arguments ``fn`` takes; through ``**kwargs`` into the class its return annotation names (a family
    builder passing the rest on to its model class). None where that cannot be told."""
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return names
    try:
        returned = typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: no check rather than a wrong one
        return None
    inner = _accepted_arguments(returned.__init__) if isinstance(returned, type) else None
    if inner is None:
        return None
    # The class's required arguments (a stage table ...) are the builder's to supply, not the user's.
    required = {n for n, p in inspect.signature(returned.__init__).parameters.items() if p.default is p.empty}
    return names | (inner - required)


def _numeric_arguments(fn: Callable[..., Any]) -> dict[str, type]:
    """Keyword arguments of ``fn`` (and, through ``**kwargs``, of the class its return annotation names) that take a
    number: ``int`` or ``float`` by their annotation (``float | None`` included) or, unannotated, by their default."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: judge by the defaults alone
        hints = {}
    found: dict[str, type] = {}
    params = inspect.signature(fn).parameters
    for n, p in params.items():
        kinds = set(typing.get_args(hints[n])) - {type(None)} if n in hints and typing.get_args(hints[n]) else \
            {hints[n]} if n in hints else {type(p.default)} if p.default is not p.empty else set()
        if kinds and kinds <= {int, float}:
            found[n] = float if float in kinds else int
    returned = hints.get("return")
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) and isinstance(returned, type) and returned is not fn:
        found = {**_numeric_arguments(returned.__init__), **found}
    return found


class _NotANumber(ValueError):
    """A builder argument that wants a number got something else; ``detail`` says which (without the model name,
    so that a spec can be named instead)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.detail = detail


def _check_numbers(name: str, builder: Callable[..., nn.Module], overrides: dict[str, Any]) -> None:
    """A spec value that is no number where the builder takes one (``width_mult=abc``, ``=nan``, ``=inf``, ``=True``)
    is named with what the key wants, before it reaches arithmetic deep inside a builder."""
    for key, kind in _numeric_arguments(builder).items():
        if key not in overrides or overrides[key] is None:
            continue
        value = overrides[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and not (number and float(value).is_integer() and math.isfinite(value)):
            raise _NotANumber(name, f"{key} wants an integer, got {value!r}")
        if kind is float and not (number and math.isfinite(value)):
            raise _NotANumber(name, f"{key} wants a finite number, got {value!r}")


def _check_overrides(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Reject an override the family does not take, naming it and the ones it does take."""
    accepted = _accepted_arguments(builder)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted - {"num_classes", "in_chans", "drop_path_rate", "variant"}))
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it takes: {known}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch ``pattern`` ('resnet*', '*_bn'; any case), sorted naturally."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string such as 'resnet*', got {pattern!r}")
    _ensure_loaded()
    pattern = pattern.lower()  # every registered name is lower case

    def natural(s: str) -> list[Any]:
        # A cost in the name sorts by its value: RegNet's 400mf, 800mf, 1_6gf (1.6 GF), ..., 128gf.
        s = re.sub(r"(\d+)(?:_(\d+))?gf$", lambda m: f"{int(m[1]) * 1000 + int(m[2] or 0) * 100}mf", s)
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    return sorted((n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)), key=natural)


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model."""
    return _entry(name).card


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float | None = None,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    pretrained: bool | str = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, with random weights or the reference implementation's released ones.

    ``num_classes=0`` builds it without a classifier, as timm does: the model returns its pre-logits features
    (``num_features`` wide).

    ``drop_rate`` is the classifier dropout (``None``: the published default of the family, e.g. 0.5 for VGG,
    0.2–0.5 for EfficientNet); ``drop_path_rate`` the stochastic-depth rate (rising linearly with depth where
    the family does so). ``features_only=True`` returns a module whose forward gives the per-stage feature
    maps (see :class:`archlab.models.base.FeatureExtractor`). Other ``overrides`` go to the family builder
    (``width_mult``, ``output_stride``, ``phi`` ...).

    ``pretrained=True`` loads the released ImageNet weights behind the card's top-1 (a tag such as
    ``"IMAGENET1K_V2"`` picks another release; see :func:`archlab.pretrained.pretrained_weights`), downloading
    them once. With another ``num_classes`` the classifier is replaced by a new one (fine-tuning); every other
    weight is the released one. The weights are in ``model.pretrained_weights`` (their preprocessing included).
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 1, or 0 for no classifier, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    if drop_rate is not None and not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if not isinstance(features_only, bool):
        raise ValueError(f"features_only must be True or False, got {features_only!r}")
    pretrained = False if pretrained is None else pretrained
    kwargs = dict(entry.card.default_kwargs)
    kwargs.update(overrides)
    kwargs.update(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    _check_overrides(name, entry.builder, kwargs)
    _check_numbers(name, entry.builder, overrides)
    if pretrained is not False:
        from archlab.pretrained import load_pretrained, resolve_pretrained

        weights = resolve_pretrained(entry.card, pretrained)
        if in_chans != 3:
            raise ValueError(f"pretrained weights take 3-channel (RGB) input, got in_chans={in_chans}")
        kwargs["num_classes"] = entry.card.num_classes
    model = entry.builder(**kwargs)
    model.card = entry.card
    model.min_input_size = entry.card.min_input_size
    if pretrained is not False:
        load_pretrained(model, weights)
        if num_classes != entry.card.num_classes:
            model.reset_classifier(num_classes)
    if features_only:
        from archlab.models.base import FeatureExtractor

        return FeatureExtractor(model)
    return model


_WORDS = {"true": True, "false": False, "none": None}  # spec values, in any case


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a model spec into its registered name and builder overrides: ``"resnet50"`` -> ``("resnet50", {})``,
    ``"resnet50:output_stride=8"`` -> ``("resnet50", {"output_stride": 8})``. Values are Python literals
    (``8``, ``0.5``, ``True``, ``(2, 2, 2, 2)``), anything else a string; several overrides are separated by
    commas."""
    name, colon, rest = spec.partition(":")
    _entry(name)  # an unknown name fails here, with suggestions
    overrides: dict[str, Any] = {}
    # Commas inside brackets belong to a value: resnet50:repeats=(2,2,2,2),groups=32
    for item in re.split(r",(?![^()\[\]]*[)\]])", rest) if colon else ():
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key.isidentifier():
            raise ValueError(f"model spec {spec!r}: expected NAME or NAME:key=value[,key=value...], got {item!r}")
        if key in overrides:
            raise ValueError(f"model spec {spec!r}: {key} given twice")
        if value.lower() in _WORDS:
            overrides[key] = _WORDS[value.lower()]
            continue
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def create_from_spec(spec: str, **kwargs: Any) -> nn.Module:
    """:func:`create_model` from a model spec (:func:`parse_model_spec`), e.g. ``"mobilenet_v2:width_mult=0.5"``;
    the spec's overrides win over ``kwargs``. A value of the wrong type is a ValueError naming the spec."""
    name, overrides = parse_model_spec(spec)
    try:
        return create_model(name, **{**kwargs, **overrides})
    except _NotANumber as exc:  # the spec is what the user can fix: name it
        raise ValueError(f"model spec {spec!r}: {exc.detail}") from None
    except TypeError as exc:  # a value of another wrong type reaching a builder
        raise ValueError(f"model spec {spec!r}: {exc}") from None

