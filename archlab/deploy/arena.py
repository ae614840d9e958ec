"""Buffers placed in one arena by lifetime: what a primitive plan (:mod:`archlab.deploy.primitive_plan`) keeps its
activations in.

Each buffer is live from the first step that touches it to the last; a buffer takes the smallest free block that
holds it (best fit, in order of first use) and gives its bytes back after its last step, so a forward pass writes
into memory a few layers old, still in cache, instead of a fresh buffer per layer (ONNX Runtime plans its memory
the same way). Returns offsets, never pointers: the caller owns the arena.
"""

from __future__ import annotations

from typing import Hashable

ALIGN = 64  # bytes: a cache line, and AVX-512's vector width


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
