"""Freed memory kept for reuse: the CPU allocator setting of archlab's inference runtime.

Why. PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block above its mmap threshold
(128 KiB at first, raised as blocks are freed, 32 MiB at most) with a fresh ``mmap`` and gives it back on
``free``, and it trims the top of its heap once more than twice that threshold is free there. An eager forward
pass allocates every activation anew and frees it a layer later, so at batch 8 the big activations (a ResNet-50
stem output is 25.7 MB, MobileNetV2's first expansion 38.5 MB) go back to the kernel every forward and come back
as fresh pages, each zeroed by the kernel at its first touch: measured here, 12,000-30,000 page faults per
forward at batch 8 for ResNet-50, ResNeXt-50, MobileNetV2 and EfficientNet-B0 (benchmarks/kept_memory.py;
tests/test_deploy_memory.py counts them on ResNet-18). ONNX Runtime and OpenVINO keep an arena;
torch.compile's generated code reuses its buffers (about 300 faults per forward). :func:`keep_freed_memory` makes
glibc keep what is freed (no trimming, no per-block mmap), so the next forward reuses the same pages.

What it costs. The process keeps its peak heap: memory freed after a large batch is not returned to the system
until the process ends, as with the runtimes' arenas. It is a setting of the whole process, so archlab never makes
it behind the caller's back: ``archlab bench --runtime fused`` calls it in the fused runtime's own process (and
says so), and a deployment calls it once at start-up. The same effect without code: the environment variable
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904`` (or jemalloc / tcmalloc
preloaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes an int: the largest trim threshold it can set (2 GiB free at the heap's top)


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, or None elsewhere (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Make this process's ``malloc`` keep freed memory for reuse (glibc: never trim the heap, no block of its own
    ``mmap``). True when the setting took effect, False where the C library is not glibc (nothing changed)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def page_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped, and zeroed, at first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


__all__ = ["keep_freed_memory", "page_faults"]
