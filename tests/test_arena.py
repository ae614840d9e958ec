"""archlab.deploy.arena: buffers placed by lifetime never share a byte while both are live, and reuse what is free."""

import ctypes
import mmap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archlab.deploy.arena as arena
from archlab.deploy.arena import ALIGN, aligned, place

buffers = st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(buffers)
def test_live_buffers_never_overlap_and_the_arena_is_no_larger_than_all_of_them(specs):
    sizes = {i: size for i, (size, _, _) in enumerate(specs)}
    lifetimes = {i: (first, first + length) for i, (_, first, length) in enumerate(specs)}
    offsets, total = place(sizes, lifetimes)
    assert set(offsets) == set(sizes) and all(offset % ALIGN == 0 for offset in offsets.values())
    for a in sizes:
        assert offsets[a] + sizes[a] <= total
        for b in sizes:
            live_together = a < b and lifetimes[a][0] <= lifetimes[b][1] and lifetimes[b][0] <= lifetimes[a][1]
            if live_together:
                assert offsets[a] + sizes[a] <= offsets[b] or offsets[b] + sizes[b] <= offsets[a], (a, b)
    assert total <= sum(aligned(size) for size in sizes.values())


def test_a_chain_of_layers_needs_two_buffers_not_one_per_layer():
    # Each layer reads the last one's output and writes its own: two live at a time, whatever the depth.
    sizes = {layer: 1 << 20 for layer in range(50)}
    lifetimes = {layer: (layer, layer + 1) for layer in range(50)}
    assert place(sizes, lifetimes)[1] == 2 << 20


@pytest.mark.parametrize("size", [100, 3 << 20])
def test_a_buffer_is_aligned_and_all_of_it_can_be_written(size):
    owner, start = arena.buffer(size)
    assert start % ALIGN == 0 and owner.data_ptr() <= start
    assert start + size <= owner.data_ptr() + owner.numel()
    if size >= arena.HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        assert start % arena.HUGE_PAGE == 0  # whole huge pages, advised before the first touch
    ctypes.memset(start, 7, size)
    view = owner[start - owner.data_ptr():start - owner.data_ptr() + size]
    assert int(view.min()) == int(view.max()) == 7


def test_a_plan_computes_the_same_with_and_without_huge_pages(monkeypatch):
    primitive_plan = pytest.importorskip("archlab.deploy.primitive_plan")
    capi = pytest.importorskip("archlab.deploy.dnnl_capi")
    if not capi.available():
        pytest.skip("oneDNN's library is not installed")
    import archlab
    from archlab.deploy import fuse

    torch.manual_seed(0)
    model = fuse(archlab.create_model("resnet18", num_classes=10).eval())  # 45 MB of weights: the huge-page path
    x = torch.randn(1, 3, 64, 64)
    with_huge = primitive_plan.build_plan(model, x)
    monkeypatch.setattr(arena, "HUGE_PAGES", False)
    without = primitive_plan.build_plan(model, x)
    assert with_huge.weight_bytes == without.weight_bytes > 40e6
    assert torch.equal(with_huge(x), without(x))
