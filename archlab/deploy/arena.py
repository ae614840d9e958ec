"""Buffers placed in one arena by lifetime: what a primitive plan (:mod:`archlab.deploy.primitive_plan`) keeps its
activations in.

Each buffer is live from the first step that touches it to the last; a buffer takes the smallest free block that
holds it (best fit, in order of first use) and gives its bytes back after its last step, so a forward pass writes
into memory a few layers old, still in cache, instead of a fresh buffer per layer (ONNX Runtime plans its memory
the same way). Returns offsets, never pointers: the caller owns the arena.
"""

from __future__ import annotations

import mmap
from typing import Hashable

import torch

ALIGN = 64  # bytes: a cache line, and AVX-512's vector width
HUGE_PAGE = 2 << 20  # bytes: x86-64's transparent huge page
HUGE_PAGES = True  # buffers() asks for huge pages (a switch for benchmarks/plan_steps.py's with/without)


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def place(sizes: dict[Hashable, int], lifetimes: dict[Hashable, tuple[int, int]]) -> tuple[dict[Hashable, int], int]:
    """Offsets (multiples of :data:`ALIGN`) for the buffers of ``lifetimes`` (buffer -> (first step, last step)),
    each ``sizes[buffer]`` bytes, such that no two buffers live at the same step share a byte; and the arena's size.
    A buffer's bytes are reused only after its last step: a step's output never overlaps its inputs."""
    starting: dict[int, list[Hashable]] = {}
    ending: dict[int, list[Hashable]] = {}
    for buffer, (first, last) in lifetimes.items():
        starting.setdefault(first, []).append(buffer)
        ending.setdefault(last, []).append(buffer)
    offsets: dict[Hashable, int] = {}
    free: list[tuple[int, int]] = []  # (offset, size) blocks not in use
    top = 0
    for step in sorted(set(starting) | set(ending)):
        for buffer in starting.get(step, []):
            size = aligned(sizes[buffer])
            fits = [block for block in free if block[1] >= size]
            if fits:
                block = min(fits, key=lambda b: b[1])
                free.remove(block)
                offsets[buffer] = block[0]
                if block[1] > size:
                    free.append((block[0] + size, block[1] - size))
            else:
                offsets[buffer], top = top, top + size
        for buffer in ending.get(step, []):
            free = _merged([*free, (offsets[buffer], aligned(sizes[buffer]))])
    return offsets, top


def _merged(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for offset, size in sorted(blocks):
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((offset, size))
    return merged


def buffer(size: int) -> tuple[torch.Tensor, int]:
    """A buffer of at least ``size`` bytes: (the tensor that owns it, its start address, aligned to :data:`ALIGN`).

    Where the OS has transparent huge pages (Linux in its ``madvise`` or ``always`` mode) a buffer of a megabyte
    or more is a fresh anonymous mapping, 2 MiB-aligned and advised ``MADV_HUGEPAGE`` before any page is touched,
    so the kernel backs it with 2 MiB pages: a forward pass streams every weight once, and with 4 KiB pages
    ResNet-50's 100 MB of them are 25,000 TLB misses per image (docs/deployment.md section 2c measures what it is
    worth). Elsewhere, and for small buffers, an ordinary tensor.
    """
    if HUGE_PAGES and size >= HUGE_PAGE // 2 and hasattr(mmap, "MADV_HUGEPAGE"):
        length = -(-size // HUGE_PAGE) * HUGE_PAGE
        mapping = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        owner = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps the mapping alive
        start = -(-owner.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE, start - owner.data_ptr(), length)
        except OSError:  # a kernel without transparent huge pages: ordinary pages, the same buffer
            pass
        return owner, start
    owner = torch.empty(size + ALIGN, dtype=torch.uint8)
    return owner, aligned(owner.data_ptr())
