"""The oneDNN inference form (archlab.deploy.onednn via deploy.fuse(onednn=True)): same outputs as the eval model on every
family, the fused primitive really runs where it should and never where it must not, and the form behaves like a
model (copies, state dicts, changed weights)."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import archlab
from archlab.deploy import fuse
from archlab.deploy.export import export_onnx
from archlab.deploy.onednn import FusedConv2d, available
from helpers import HEAVIEST
from tests.test_deploy import assert_close_to, randomize_norms_moderately

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")

CL = torch.channels_last


class OpCounter(TorchDispatchMode):
    """Counts the aten / mkldnn ops a forward pass dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


def run_counting(model: nn.Module, x: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, OpCounter]:
    with torch.set_grad_enabled(grad), OpCounter() as ops:
        out = model(x)
    return out, ops


FUSED_OP = "mkldnn._convolution_pointwise"


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", [n for n in archlab.list_models() if n not in HEAVIEST])
def test_onednn_form_matches_eval_model_on_every_family(name):
    card = archlab.model_card(name)
    model = archlab.create_model(name)
    randomize_norms_moderately(model)
    model.eval()
    x = torch.randn(2, model.in_chans, max(card.min_input_size, 32), max(card.min_input_size, 32))
    fast = fuse(model, onednn=True).to(memory_format=CL)
    ref, ref_ops = run_counting(model, x)
    out, ops = run_counting(fast, x.contiguous(memory_format=CL))
    assert_close_to(out, ref)
    assert out.shape == ref.shape
    # Every 2-d conv the model runs at eval now runs as the fused oneDNN primitive, none as a plain conv (counted
    # as run: GoogLeNet's and Inception-v3's auxiliary heads hold convs that only training runs).
    n_convs = ref_ops["aten.convolution"]
    # (ShuffleNet V2's channel shuffle included: it keeps the channels-last layout for the convs after it.) A 1x1
    # conv on a 1x1 map (squeeze-excitation) runs as a matrix product instead: one addmm more than the model's own.
    as_matrix = sum(ops[op] - ref_ops[op] for op in ("aten.addmm", "aten.mm"))
    assert ops[FUSED_OP] + as_matrix == n_convs and ops["aten.convolution"] == 0
    assert all(isinstance(m, FusedConv2d) for m in convs(fast))
    assert not any(p.requires_grad for p in fast.parameters())


def test_resnet_bottlenecks_fuse_activations_and_residual_adds():
    fast = fuse(archlab.create_model("resnet50").eval(), onednn=True)
    post = fast.fuse_summary.post_ops
    # Stem conv + two conv->ReLU per bottleneck + one conv3 + shortcut -> ReLU per bottleneck (16 of them).
    assert len(post) == 1 + 16 * 2 + 16
    assert "layer1.0.conv1 -> layer1.0.act1" in post
    assert "layer1.1.conv3 + shortcut -> act3" in post
    block = fast.layer1[1]
    assert type(block).__name__ == "Bottleneck" and isinstance(block, torch.fx.GraphModule)
    assert block.conv3.residual and block.conv3.post_op == "relu"
    # The model keeps its class, API and parameter names.
    assert type(fast) is type(archlab.create_model("resnet18"))
    assert set(fast.state_dict()) == set(fuse(archlab.create_model("resnet50").eval()).state_dict())
    assert fast.forward_features(torch.randn(1, 3, 64, 64).contiguous(memory_format=CL)).shape == (1, 2048, 2, 2)


@pytest.mark.parametrize("name, post_op", [("mobilenet_v2", "hardtanh"), ("mobilenet_v3_large", "hardswish"),
                                           ("efficientnet_b0", "swish")])
def test_mobile_activations_become_post_ops(name, post_op):
    fast = fuse(archlab.create_model(name).eval(), onednn=True)
    assert any(m.post_op == post_op for m in fast.modules() if isinstance(m, FusedConv2d))
    # Inverted residuals add without an activation after: the add itself is fused into the projection conv.
    assert any(p.endswith("+ shortcut") for p in fast.fuse_summary.post_ops)


@pytest.mark.parametrize("spec", [dict(output_stride=8), dict(output_stride=16)])
def test_dilated_networks(spec):
    # The seed's third way of keeping resolution: dilated convs (DeepLab's output stride) fuse and match too.
    model = archlab.create_model("resnet50", **spec)
    randomize_norms_moderately(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    fast = fuse(model, onednn=True).to(memory_format=CL)
    with torch.no_grad():
        ref = model(x)
    out, ops = run_counting(fast, x.contiguous(memory_format=CL))
    assert_close_to(out, ref)
    assert ops[FUSED_OP] == len(convs(model)) and any(m.dilation != (1, 1) for m in convs(fast))


def test_plain_path_where_onednn_does_not_apply():
    model = archlab.create_model("resnet18")
    randomize_norms_moderately(model)
    model.eval()
    fast = fuse(model, onednn=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    # NCHW input (oneDNN would answer in channels-last), float64, autograd: the same function, unfused.
    out, ops = run_counting(fast, x)
    assert ops[FUSED_OP] == 0 and ops["aten.convolution"] == 20
    assert_close_to(out, ref)
    out64, ops = run_counting(fast.double(), x.double().contiguous(memory_format=CL))
    assert ops[FUSED_OP] == 0
    assert_close_to(out64.float(), ref)
    fast = fuse(model, onednn=True)
    for p in fast.parameters():
        p.requires_grad_(True)
    xg = x.contiguous(memory_format=CL).requires_grad_(True)
    out, ops = run_counting(fast, xg, grad=True)
    assert ops[FUSED_OP] == 0
    out.sum().backward()
    assert xg.grad is not None and fast.conv1.weight.grad is not None


def test_changed_weights_are_repacked_and_copies_work():
    a, b = archlab.create_model("resnet18").eval(), archlab.create_model("resnet18").eval()
    randomize_norms_moderately(b, seed=1)
    fast_a, fast_b = fuse(a, onednn=True), fuse(b, onednn=True)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=CL)
    with torch.no_grad():
        out_a, out_b = fast_a(x), fast_b(x)  # packs a's weights
        fast_a.load_state_dict(fast_b.state_dict())  # copies into the same tensors: must repack
        assert_close_to(fast_a(x), out_b)
        twin = copy.deepcopy(fast_a)
        assert_close_to(twin(x), out_b)
        buffer = io.BytesIO()
        torch.save(fast_a, buffer)
        buffer.seek(0)
        assert_close_to(torch.load(buffer, weights_only=False)(x), out_b)
        assert_close_to(pickle.loads(pickle.dumps(fast_b))(x), out_b)
        assert not torch.allclose(out_a, out_b)
        # Another batch size gets its own packing.
        assert fast_a(torch.randn(3, 3, 64, 64).contiguous(memory_format=CL)).shape == (3, 1000)


class _ShortcutReadAfterAdd(nn.Module):
    """`s += bn(conv(x))` in eager writes into s; a later reader of s sees the sum. fx records it as `s + conv`,
    so fusing the add into the conv would hand that reader the old s: must not be fused."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        s = self.stem(x)
        y = s + self.conv(s)
        return self.act(y) * s


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) + x)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.odd = _ShortcutReadAfterAdd()
        self.block = _Residual()

    def forward(self, x):
        return self.block(self.odd(x))


def test_only_safe_residual_adds_are_fused():
    net = _Net().eval()
    fast = fuse(net, onednn=True)
    post = fast.fuse_summary.post_ops
    assert post == ["block.conv + shortcut -> act"]
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        out, ops = run_counting(fast, x)
        assert_close_to(out, net(x))
    assert ops[FUSED_OP] == 3


class _FunctionalBlock(nn.Module):
    """Activations written as calls (F.relu, x.sigmoid()) rather than modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.nn.functional.relu(self.conv1(x), inplace=True)
        y = self.conv2(y).sigmoid()
        return torch.nn.functional.relu(self.conv3(y) + y)


def test_shared_and_functional_activations_are_fused_by_rewriting_the_block():
    import torchvision

    # torchvision's ResNet calls one `self.relu` module three times per block: it cannot be swapped for an
    # identity, so each block's graph is rewritten instead.
    ref = torchvision.models.resnet18()
    randomize_norms_moderately(ref)
    ref.eval()
    fast = fuse(ref, onednn=True).to(memory_format=CL)
    assert "layer1.0.conv1 -> relu" in fast.fuse_summary.post_ops
    assert "layer1.0.conv2 + shortcut -> relu" in fast.fuse_summary.post_ops
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
    out, ops = run_counting(fast, x.contiguous(memory_format=CL))
    assert_close_to(out, expected)
    assert ops[FUSED_OP] == 20 and ops["aten.relu"] + ops["aten.relu_"] == 0  # every ReLU is a post-op now

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = _FunctionalBlock()

        def forward(self, x):
            return self.block(x)

    net = Net().eval()
    fast = fuse(net, onednn=True)
    assert fast.fuse_summary.post_ops == ["block.conv1 -> relu", "block.conv2 -> sigmoid",
                                          "block.conv3 + shortcut -> relu"]
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        out, ops = run_counting(fast, x)
        assert_close_to(out, net(x))
    assert ops[FUSED_OP] == 3 and ops["aten.sigmoid"] == 0 and ops["aten.relu"] == 0


def test_onnx_export_of_the_onednn_form_uses_plain_ops(tmp_path):
    fast = fuse(archlab.create_model("resnet18").eval(), onednn=True)
    path = tmp_path / "r18.onnx"
    export_onnx(fast, str(path), 64)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not any("mkldnn" in op.lower() for op in ops)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_timm_batchnorm_act_is_folded_and_its_activation_fused(name):
    """timm builds these with BatchNormAct2d (a BatchNorm2d subclass that applies its activation itself): the BN
    folds into the conv before it and its activation becomes that conv's post-op, as with separate modules."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(name)
    randomize_norms_moderately(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    folded = fuse(model)
    assert not folded.fuse_summary.kept_norms
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    fast = fuse(model, onednn=True).to(memory_format=CL)
    with torch.no_grad():
        ref = model(x)
        assert_close_to(folded(x), ref)
    out, ops = run_counting(fast, x.contiguous(memory_format=CL))
    _, ref_ops = run_counting(model, x)
    assert_close_to(out, ref)
    # The 1x1 convs on a pooled 1x1 map (the SE blocks' two, timm MobileNetV3's conv_head) run as matrix products
    # (FusedConv2d._is_matrix_product), applying their activation after.
    as_matrix = sum(ops[op] - ref_ops[op] for op in ("aten.addmm", "aten.mm"))
    assert ops[FUSED_OP] + as_matrix == len(convs(model)) and ops["aten.convolution"] == 0
    assert ops["aten.native_batch_norm"] == ops["aten._native_batch_norm_legit_no_training"] == 0
    # Activations left unfused: besides the SE gates' sigmoid / h-sigmoid, only those of the matrix products.
    unfused = ops["aten.silu_"] + ops["aten.silu"] + ops["aten.hardswish_"] + ops["aten.hardswish"] + \
        ops["aten.relu_"] + ops["aten.relu"]
    assert 0 < as_matrix and unfused <= as_matrix


class ShiftedNorm(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward does more than normalise: it must not be folded."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_unknown_batchnorm_subclass_is_not_folded():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ShiftedNorm(8), nn.ReLU())
    randomize_norms_moderately(net)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    fused = fuse(net)
    assert not fused.fuse_summary.folded
    with torch.no_grad():
        assert_close_to(fused(x), net(x))
