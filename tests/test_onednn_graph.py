"""The oneDNN Graph step of the inference form (archlab.deploy.onednn_graph via fuse(onednn=True)): a plain call runs
the model compiled by oneDNN Graph, with the eval model's outputs; every call it must not take (autograd, hooks,
dispatch modes, export, changed weights, a model that does not trace) gets the module-by-module form instead."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import archlab
from archlab.deploy import fuse as fuse_with_plans
from archlab.deploy import onednn_graph
from archlab.deploy.onednn_graph import available, graph_forward
from helpers import HEAVIEST
from tests.test_deploy import assert_close_to, randomize_norms_moderately

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN Graph fuser")

FAMILIES = ["resnet18", "resnext50_32x4d", "seresnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
            "densenet121", "vgg11_bn", "shufflenet_v2_x0_5", "regnet_y_400mf", "convnext_tiny"]


def fuse(model: nn.Module, **options) -> nn.Module:
    """This file tests the TorchScript graph, so primitive plans, tried first where oneDNN's package is installed,
    are off (tests/test_primitive_plan.py tests them)."""
    options.setdefault("plan", False)
    return fuse_with_plans(model, **options)


def eval_model(name: str, seed: int = 0) -> nn.Module:
    model = archlab.create_model(name)
    randomize_norms_moderately(model, seed=seed)
    return model.eval()


def fused_nodes(graph: torch.jit.ScriptModule, x: torch.Tensor) -> tuple[int, list[str]]:
    """How many oneDNN fusion groups the executed graph has, and the ATen ops left outside them."""
    graph(x)
    executed = torch.jit.last_executed_optimized_graph()
    groups, outside = 0, []

    def walk(block) -> None:
        nonlocal groups
        for node in block.nodes():
            if node.kind() == "prim::oneDNNFusionGroup":
                groups += 1
            elif node.kind() == "prim::If":  # oneDNN's guard: the first branch runs the fusion groups
                walk(next(iter(node.blocks())))
            elif node.kind().startswith("aten::"):
                outside.append(node.kind())
    walk(executed)
    return groups, outside


@pytest.mark.parametrize("name", [n for n in FAMILIES if n in archlab.list_models()])
def test_graph_form_matches_the_eval_model_and_runs_every_conv_in_onednn(name):
    model = eval_model(name)
    fast = fuse(model, onednn=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = fast(x)
        again = fast(x)
    assert_close_to(out, ref)
    assert torch.equal(out, again)
    forward = graph_forward(fast)
    assert forward.compiled == 1, forward.fallbacks
    assert list(forward.compile_seconds) == ["(2, 3, 64, 64) float32"] and forward.compile_seconds[
        "(2, 3, 64, 64) float32"] > 0  # bench --runtime reports it
    (compiled,) = forward._cache.values()
    groups, outside = fused_nodes(compiled.graph, x.contiguous(memory_format=torch.channels_last))
    assert groups > 0 and not [op for op in outside if "conv" in op]
    # Nothing of the module form's own between the partitions: a layout copy before every conv (a dense
    # channels-last tensor taken for a channel slice) had split MobileNetV2's partitions from 37 to 53. The model's
    # own copies (ShuffleNet V2's channel shuffle) are its own.
    xc = x.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = torch.jit.trace(fuse(model).to(memory_format=torch.channels_last), xc, check_trace=False)
    own = sum(node.kind() == "aten::contiguous" for node in plain.inlined_graph.nodes())
    assert outside.count("aten::contiguous") <= own


def _lighter(name: str) -> bool:
    """Models under 8 GMACs: the heavier ones (RegNet 16-128GF, ResNeXt-101, ...) are wider or deeper rows of
    builders tested here on their lighter rows, and each takes several seconds to trace and compile (the 1001-layer
    pre-activation ResNet 27 s: its 164-layer row stands for it)."""
    macs = archlab.model_card(name).macs
    return name not in HEAVIEST and name != "preact_resnet1001" and (macs is None or macs < 8e9)


@pytest.mark.parametrize("name", [n for n in archlab.list_models() if _lighter(n) and n not in FAMILIES])
def test_every_registered_model_compiles_to_the_same_function(name):
    card = archlab.model_card(name)
    model = eval_model(name)
    size = max(card.min_input_size, 64)  # oneDNN Graph fails to build a depthwise conv on a 1x1 map (32x32 input)
    x = torch.randn(2, model.in_chans, size, size)
    fast = fuse(model, onednn=True)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert_close_to(out, ref)
    assert graph_forward(fast).compiled == 1, graph_forward(fast).fallbacks


def test_each_input_signature_gets_its_own_graph_and_inference_mode_works():
    model = eval_model("resnet18")
    fast = fuse(model, onednn=True)
    forward = graph_forward(fast)
    cl = torch.channels_last
    inputs = [torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)]
    with torch.inference_mode():
        for i, x in enumerate(inputs, 1):
            assert_close_to(fast(x), model(x))
            assert forward.compiled == i
        # Every graph takes its input channels-last, so a caller's layout is not a new signature: the same graph
        # (compiled once, one copy of the weights) serves NCHW, channels-last and strided views alike.
        same_shape = [torch.randn(2, 3, 64, 64).contiguous(memory_format=cl), torch.randn(2, 3, 64, 128)[..., ::2]]
        for x in same_shape:
            assert_close_to(fast(x), model(x))
        assert forward.compiled == 2 and len(forward.compile_seconds) == 2
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            assert_close_to(fast(inputs[0]), model(inputs[0]))
        finally:
            torch.set_num_threads(threads)
        assert forward.compiled == 3  # the thread count is part of the signature: kernels are chosen for it


def test_calls_that_must_see_the_modules_take_the_module_form():
    model = eval_model("resnet18")
    fast = fuse(model, onednn=True)
    forward = graph_forward(fast)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    # Autograd: an input that requires grad gets an output that does.
    xg = x.clone().requires_grad_(True)
    out = fast(xg)
    assert out.requires_grad and forward.compiled == 0
    assert_close_to(out.detach(), ref)
    # A forward hook on a submodule fires (per-layer timers and feature extractors rely on it).
    seen = []
    handle = fast.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert_close_to(fast(x), ref)
    handle.remove()
    assert seen == [(2, 64, 16, 16)] and forward.compiled == 0
    # A dispatch mode counts the model's own ops.
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        fast(x)
    assert flops.get_total_flops() > 0 and forward.compiled == 0
    # Another dtype, keyword arguments, train mode.
    with torch.no_grad():
        assert_close_to(fast.double()(x.double()).float(), ref)
        fast.float()
        assert forward.compiled == 0
        fast.train()
        assert_close_to(fast(x), ref)  # folded: a fused model in train mode still computes the eval function
        fast.eval()
        assert forward.compiled == 0
        assert_close_to(fast(x), ref)
        assert forward.compiled == 1


def test_changed_weights_recompile_and_copies_work():
    a, b = eval_model("mobilenet_v2"), eval_model("mobilenet_v2", seed=1)
    fast_a, fast_b = fuse(a, onednn=True), fuse(b, onednn=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out_a, out_b = fast_a(x), fast_b(x)
        assert not torch.allclose(out_a, out_b)
        fast_a.load_state_dict(fast_b.state_dict())  # the same tensors, new values: the old graph is stale
        assert_close_to(fast_a(x), out_b)
        for twin in (copy.deepcopy(fast_a), pickle.loads(pickle.dumps(fast_a))):
            assert graph_forward(twin).model is twin and graph_forward(twin).compiled == 0
            assert_close_to(twin(x), out_b)
            assert graph_forward(twin).compiled == 1
        buffer = io.BytesIO()
        torch.save(fast_a, buffer)
        buffer.seek(0)
        assert_close_to(torch.load(buffer, weights_only=False)(x), out_b)
    assert set(fast_a.state_dict()) == set(fuse(a).state_dict())  # the graph is not part of the state


def test_an_edited_model_recompiles_and_an_unrelated_one_does_not():
    # After a few calls the graph watches the tensors it was traced with; a module or parameter assigned to the
    # model afterwards must not leave the old graph running (it did: 1000 logits from a 10-class head).
    model = eval_model("resnet18")
    fast = fuse(model, onednn=True)
    forward = graph_forward(fast)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast(x), fast(x)
        fast.fc = nn.Linear(512, 10)
        assert_close_to(fast(x), forward.module_forward(x))
        fast.fc.weight = nn.Parameter(torch.zeros_like(fast.fc.weight))
        assert_close_to(fast(x), fast.fc.bias.expand(1, 10))
        fast.relu = nn.GELU()  # a module without tensors
        assert_close_to(fast(x), forward.module_forward(x))
        assert forward.edits == 3 and len(forward._cache) == 1  # the stale graphs are dropped, not kept
        seconds = dict(forward.compile_seconds)
        eval_model("resnet18")  # another model's registrations are not edits of this one
        fast(x)
        assert forward.edits == 3 and forward.compile_seconds == seconds


def test_the_oldest_signature_makes_room(monkeypatch):
    monkeypatch.setattr(onednn_graph, "_CACHE_SIZE", 2)
    model = eval_model("resnet18")
    fast = fuse(model, onednn=True)
    forward = graph_forward(fast)
    inputs = [torch.randn(b, 3, 64, 64) for b in (1, 2, 3)]
    with torch.no_grad():
        for x in inputs:
            assert_close_to(fast(x), model(x))
        assert [k[0][0] for k in forward._cache] == [2, 3]  # batch 1 evicted, the others kept
        other = eval_model("resnet18", seed=1)
        fast.load_state_dict(fuse(other).state_dict())
        assert_close_to(fast(inputs[0]), other(inputs[0]))
        assert len(forward._cache) == 1  # new weights: the graphs of the old ones are gone


def test_ever_new_shapes_stop_compiling_after_a_budget(monkeypatch):
    monkeypatch.setattr(onednn_graph, "_CACHE_SIZE", 1)
    monkeypatch.setattr(onednn_graph, "_COMPILE_BUDGET", 2)
    model = eval_model("resnet18")
    fast = fuse(model, onednn=True)
    forward = graph_forward(fast)
    with torch.no_grad():
        for batch in (1, 2, 3):
            x = torch.randn(batch, 3, 64, 64)
            assert_close_to(fast(x), model(x))
        assert len(forward.compile_seconds) == 2 and "new input signatures" in forward.fallbacks
        other = eval_model("resnet18", seed=1)
        fast.load_state_dict(fuse(other).state_dict())  # new weights: a new budget
        assert_close_to(fast(x), other(x))
        assert len(forward.compile_seconds) == 3 and forward.compiled == 1


@pytest.mark.parametrize("graph", [True, False])
def test_a_model_fused_under_inference_mode_runs(graph):
    # fuse() inside torch.inference_mode makes inference tensors, which have no version counter to read.
    model = eval_model("resnet18")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)  # the module form's fused path
    with torch.inference_mode():
        fast = fuse(model, onednn=True, graph=graph)
        assert_close_to(fast(x), model(x))
    with torch.no_grad():
        assert_close_to(fast(x), model(x))
    assert graph_forward(fast) is None if not graph else graph_forward(fast).compiled == 1


def test_graph_false_keeps_the_module_form_and_export_traces_the_modules(tmp_path):
    model = eval_model("resnet18")
    assert graph_forward(fuse(model, onednn=True, graph=False)) is None
    fast = fuse(model, onednn=True)
    x = torch.randn(1, 3, 64, 64)
    traced = torch.jit.trace(fast, x, check_trace=False)
    with torch.no_grad():
        assert_close_to(traced(x), model(x))
    assert graph_forward(fast).compiled == 0


class _Untraceable(nn.Module):
    """Returns a Python string beside its tensor: torch.jit.trace refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)), "label"


def test_a_model_that_does_not_trace_keeps_the_module_form():
    model = _Untraceable().eval()
    fast = fuse(model, onednn=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out, label = fast(x)
        assert label == "label" and torch.allclose(out, model(x)[0], atol=1e-5)
    forward = graph_forward(fast)
    assert forward.compiled == 0 and "does not trace" in next(iter(forward.fallbacks.values()))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available() or not __import__(
    "archlab.deploy.precision", fromlist=["native_bf16"]).native_bf16(), reason="no native bf16 on this CPU")
def test_bf16_graph_form_agrees_with_the_bf16_module_form():
    model = eval_model("mobilenet_v2")
    x = torch.randn(2, 3, 64, 64)
    graph = fuse(model, onednn=True, precision="bf16")
    modules = fuse(model, onednn=True, precision="bf16", graph=False)
    with torch.no_grad():
        ref, out, expected = model(x), graph(x), modules(x.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and graph_forward(graph).compiled == 1
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 5e-2 * scale
    assert (out - expected).abs().max().item() <= 5e-2 * scale
