"""Primitive plans (archlab.deploy.primitive_plan): a folded model run as a fixed list of oneDNN primitives through
oneDNN's C API gives the eval model's outputs, reuses its buffers, refuses what it does not run by name, and is
what fuse(onednn=True) runs where it applies (the TorchScript graph where it does not)."""

import pytest
import torch

import archlab
from archlab.deploy import dnnl_capi, fuse
from archlab.deploy.onednn_graph import graph_forward
from archlab.deploy.precision import native_bf16
from archlab.deploy.primitive_plan import NotPlannable, build_plan
from tests.test_deploy import assert_close_to, randomize_norms_moderately

pytestmark = pytest.mark.skipif(not dnnl_capi.available(), reason=f"{dnnl_capi.PACKAGE} is not installed")

# One of each kind of layer a plan runs: plain, grouped and depthwise convs, residual adds (as post-ops), squeeze-
# excitation (mean, gated multiply; SE-ResNet's multiply then add), hard and smooth activations, max pooling (with
# ceil_mode: GoogLeNet, SqueezeNet), concatenation (DenseNet, GoogLeNet, SqueezeNet), a BatchNorm after no conv
# (pre-activation blocks, DenseNet), average pooling (DenseNet's transitions), a model ending in a flatten, a
# channel split and shuffle (ShuffleNet V2: one piece read as a view by a concat, the other copied for a conv), the
# option-A shortcut (CIFAR ResNets: a subsampled view, zero channels padded after it).
FAMILIES = ["resnet18", "resnext50_32x4d", "seresnet50", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
            "efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5", "regnet_y_400mf", "regnet_x_400mf", "densenet121",
            "googlenet", "squeezenet1_1", "preact_resnet164", "shufflenet_v2_x0_5", "cifar_resnet20"]


def eval_model(name: str) -> torch.nn.Module:
    model = archlab.create_model(name)
    randomize_norms_moderately(model, seed=0)
    return model.eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_a_plan_gives_the_eval_models_outputs_for_either_input_layout(name):
    model = eval_model(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    plan = build_plan(fuse(model), x)
    out = plan(x)
    assert_close_to(out, ref)
    assert torch.equal(plan(x), out)  # the reused buffers hold nothing over from the last call
    assert torch.equal(plan(x.contiguous(memory_format=torch.channels_last)), out)
    assert not [name for name, impl in plan.describe() if impl.startswith("ref")]  # no reference (slow) kernels


def test_a_classifier_that_reads_a_whole_map_flattens_it_in_pytorchs_order():
    model = eval_model("vgg11_bn")  # its classifier reads the 7x7 map; the plan keeps maps channels-last
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    assert_close_to(build_plan(fuse(model), x)(x), ref)


def test_outputs_are_new_tensors_and_activations_share_one_arena():
    model = eval_model("resnet18")
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    plan = build_plan(fuse(model), x)
    first = plan(x)
    kept = first.clone()
    plan(y)
    assert torch.equal(first, kept)
    # Every activation of resnet18 at 64x64, batch 1, is at most 64x32x32 floats (256 KiB); without reuse its
    # ~40 of them would take several MiB.
    assert plan.arena_bytes < 1.5 * 2 ** 20


def small(act: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), act, torch.nn.Conv2d(8, 8, 1), act,
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


def unplannable() -> torch.nn.Module:
    """A small model with a layer no plan runs (ELU)."""
    return small(torch.nn.ELU())


@pytest.mark.parametrize("make, what", [(lambda: eval_model("vgg11"), "AdaptiveAvgPool2d"), (unplannable, "ELU")])
def test_a_layer_a_plan_does_not_run_is_refused_by_name(make, what):
    with pytest.raises(NotPlannable, match=what):
        build_plan(fuse(make()), torch.randn(1, 3, 32, 32))


def test_convnext_plans_its_layernorm_over_channels_and_its_layer_scale():
    model = eval_model("convnext_tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):  # 1e-6 at init would hide the blocks' branches
                p.uniform_(0.1, 1.0)
    model = fuse(model)
    x = torch.randn(1, 3, 64, 64)
    plan = build_plan(model, x)
    with torch.no_grad():
        assert_close_to(plan(x), model(x))
    modules = dict(model.named_modules())
    norms = [n for n, _ in plan.describe() if isinstance(modules.get(n.removeprefix("m.")), torch.nn.LayerNorm)]
    assert len(norms) == sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 23  # each one step


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_runs_as_onednns_gelu_of_the_same_form(approximate):
    model = fuse(small(torch.nn.GELU(approximate=approximate)))  # roadmap steps 8-10's activation
    x = 3 * torch.randn(1, 3, 16, 16)  # on both sides of the erf and tanh forms' differences
    with torch.no_grad():
        out, ref = build_plan(model, x)(x), model(x)
    # 1e-5 of the logits' scale: the other form of GELU is off by about 1.3e-4 here
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_a_plan_runs_only_the_input_it_was_built_for():
    plan = build_plan(fuse(eval_model("mobilenet_v2")), torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        plan(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="float32"):
        plan(torch.randn(1, 3, 64, 64, dtype=torch.float64))


def test_fuse_runs_a_plan_where_one_applies_and_the_graph_elsewhere():
    x = torch.randn(1, 3, 64, 64)
    model = eval_model("mobilenet_v2")
    planned, graph = fuse(model, onednn=True), fuse(model, onednn=True, plan=False)
    other = fuse(unplannable(), onednn=True)
    with torch.no_grad():
        assert_close_to(planned(x), graph(x))
        other(x)
    kinds = [[c.kind for c in graph_forward(m)._cache.values()] for m in (planned, graph, other)]
    assert kinds[0][0].startswith("a plan of ") and kinds[1] == kinds[2] == ["oneDNN Graph"]
    assert "ELU" in next(iter(graph_forward(other).plan_skipped.values()))


def test_without_onednns_package_fuse_says_so_and_runs_the_graph(monkeypatch):
    monkeypatch.setattr(dnnl_capi, "_candidates", lambda: [])
    dnnl_capi.library.cache_clear()
    try:
        with pytest.raises(dnnl_capi.Unavailable, match="pip install onednn-cpu-gomp==2023.2.0"):
            dnnl_capi.library()
        fast = fuse(eval_model("mobilenet_v2"), onednn=True)
        with torch.no_grad():
            fast(torch.randn(1, 3, 64, 64))
        forward = graph_forward(fast)
        assert [c.kind for c in forward._cache.values()] == ["oneDNN Graph"]
        assert "not installed" in next(iter(forward.plan_skipped.values()))
    finally:
        dnnl_capi.library.cache_clear()  # the next caller loads the real library again


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 arithmetic (AVX-512 BF16 or AMX)")
def test_the_bf16_form_runs_a_bf16_plan_close_to_fp32():
    model = eval_model("mobilenet_v2")
    x = torch.randn(2, 3, 64, 64)
    fast = fuse(model, onednn=True, precision="bf16")
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert out.dtype == torch.float32  # bf16 inside, fp32 in and out, as the bf16 form promises
    assert (out - ref).abs().max() <= 5e-2 * ref.abs().max()
    (compiled,) = graph_forward(fast)._cache.values()
    assert compiled.kind.startswith("a plan of ") and compiled.graph.dtype == torch.bfloat16


def test_threads_calling_one_plan_at_once_each_get_their_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    model = eval_model("mobilenet_v2")
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(8)]
    plan = build_plan(fuse(model), inputs[0])
    alone = [plan(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(plan, inputs * 4))
    assert all(torch.equal(got, alone[i % 8]) for i, got in enumerate(together))


def test_a_dropped_plan_gives_its_onednn_objects_back(monkeypatch):
    import gc

    import archlab.deploy.primitive_plan as primitive_plan

    released = []
    release = primitive_plan.release
    monkeypatch.setattr(primitive_plan, "release", lambda lib, keep: released.append(
        sum(kind == "primitive" for kind, _ in keep)) or release(lib, keep))
    model = fuse(archlab.create_model("resnet18", num_classes=10).eval())
    x = torch.randn(1, 3, 32, 32)
    plan = build_plan(model, x)
    steps, expected = len(plan.steps), plan(x)
    del plan
    gc.collect()
    assert released == [steps]  # every primitive it made, destroyed once
    with pytest.raises(NotPlannable):
        build_plan(fuse(unplannable()), x)  # refused halfway: released too
    gc.collect()
    assert len(released) == 2
    assert torch.equal(build_plan(model, x)(x), expected)  # the library is as it was
