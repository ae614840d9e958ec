"""Checks shared by the public functions that take a model: a wrong argument is told what to pass, in the
function's own name, before it fails deep inside with an error that says nothing."""

from __future__ import annotations

from typing import Any

from torch import nn


def require_module(value: Any, function: str) -> nn.Module:
    """``value`` if it is a model; else a TypeError that says what ``function`` takes and, for a name, how to build
    the model it names (a name deep inside would fail with an AttributeError that says nothing)."""
    if isinstance(value, nn.Module):
        return value
    hint = f"; pass archlab.create_model({value!r}) for the model that name builds" if isinstance(value, str) else ""
    raise TypeError(f"{function}() takes a model (a torch.nn.Module), got {type(value).__name__} {value!r:.80}{hint}")
