"""Inference precision: float32, or bfloat16 on a CPU that computes it natively.

bfloat16 keeps float32's 8-bit exponent and cuts the mantissa to 7 bits (Kalamkar et al. 2019, "A Study of
BFLOAT16 for Deep Learning Training", arXiv:1905.12322), so weights and activations cast to it keep their range and
lose precision (about 3 significant digits). x86 CPUs compute it natively with AVX-512 BF16 (``vdpbf16ps``: a dot
product of bf16 pairs accumulated in fp32) or AMX (tile matrix multiply); oneDNN's bf16 convolutions use those. On
a CPU without either, PyTorch's oneDNN may still run bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` asks
only for AVX-512 core) by emulating it: conversions around fp32 arithmetic, no faster than fp32. That path is
refused here (:func:`require_bf16`) instead of taken silently.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# CPU feature flags (Linux /proc/cpuinfo names) of native bf16 arithmetic: x86 AVX-512 BF16 and AMX, Arm BF16.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class PrecisionUnsupported(ValueError):
    """A precision this machine cannot run natively (a ValueError: the CLI answers it in one line, exit 2)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions here with native bf16 instructions: PyTorch's oneDNN says it can,
    and the CPU's flags name AVX-512 BF16, AMX or Arm BF16 (where the flags cannot be read, PyTorch's answer)."""
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    flags = cpu_flags()
    return bool(flags & BF16_FLAGS) if flags else True


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return precision


def require_bf16() -> None:
    """Refuse bf16 inference on a CPU without native bf16 arithmetic (it would run, slower than fp32)."""
    if not native_bf16():
        raise PrecisionUnsupported(
            "bf16 on this CPU: it has no native bf16 arithmetic (AVX-512 BF16 or AMX); oneDNN would emulate it, "
            "slower than fp32: use fp32")


def cast_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a bf16 inference form: floating inputs cast to bf16 (callers pass fp32 images)."""
    return tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _to_float(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def cast_output(module: torch.nn.Module, args: tuple, output: object) -> object:
    """Forward hook of a bf16 inference form: bf16 outputs (tensors, lists, dicts of them) back to fp32."""
    return _to_float(output)


__all__ = ["DTYPES", "PRECISIONS", "PrecisionUnsupported", "check_precision", "native_bf16", "require_bf16"]
