"""GoogLeNet (arXiv:1409.4842) and Inception-v3 (arXiv:1512.00567): the auxiliary classifiers in training mode,
transform_input, the pretrained configuration, the module tables, and receptive fields through parallel branches
and concatenation checked against the input-gradient footprint."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import archlab
from archlab.analysis import receptive_fields, stage_trace
from archlab.models.googlenet import GOOGLENET_LAYERS, GoogLeNetOutputs, InceptionWidths
from archlab.models.inception import INCEPTION_V3_MODULES, InceptionModule, InceptionOutputs
from helpers import count_params, randomize_norms


def reference_pair(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """torchvision's model (weights=None, its default configuration unless kwargs say otherwise) and ours with its
    weights."""
    ref = torchvision.models.get_model(name, weights=None, init_weights=False, **kwargs)
    randomize_norms(ref)
    ours = archlab.create_model(name, **kwargs)
    archlab.load_reference_weights(ours, ref.state_dict())
    return ref, ours


# --------------------------------------------------------------------------------- auxiliary heads, training mode


def test_googlenet_training_mode_returns_torchvisions_outputs() -> None:
    ref, ours = reference_pair("googlenet")
    ref.train(), ours.train()
    x = torch.randn(2, 3, 64, 72)
    torch.manual_seed(0)  # the same dropout draws, in the same order (aux1, aux2, main)
    expected = ref(x)
    torch.manual_seed(0)
    got = ours(x)
    assert isinstance(got, GoogLeNetOutputs) and got._fields == type(expected)._fields
    assert got._fields == ("logits", "aux_logits2", "aux_logits1")
    for a, b in zip(got, expected):
        assert a.shape == (2, 1000)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ours.eval()
    with torch.no_grad():
        assert isinstance(ours(x), torch.Tensor)  # eval: the logits, the auxiliary heads not run


def test_inception_v3_training_mode_returns_torchvisions_outputs() -> None:
    ref, ours = reference_pair("inception_v3")
    ref.train(), ours.train()
    x = torch.randn(2, 3, 299, 299)  # the auxiliary head needs the 17x17 grid of a 299 input
    with torch.no_grad():
        torch.manual_seed(0)
        expected = ref(x)
        torch.manual_seed(0)
        got = ours(x)
    assert isinstance(got, InceptionOutputs) and got._fields == type(expected)._fields == ("logits", "aux_logits")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_inception_v3_training_input_limits_are_named() -> None:
    model = archlab.create_model("inception_v3", num_classes=3).train()
    with pytest.raises(ValueError, match="at least 299x299.*aux_logits=False"):
        model(torch.randn(2, 3, 224, 224))
    with pytest.raises(ValueError, match="batches of 2 or more"):
        model(torch.randn(1, 3, 299, 299))
    plain = archlab.create_model("inception_v3", num_classes=3, aux_logits=False).train()
    assert not hasattr(plain, "AuxLogits") or plain.AuxLogits is None
    out = plain(torch.randn(2, 3, 96, 96))  # no auxiliary head: any size from 75 trains, the logits come back
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    y = torch.tensor([0, 2])
    torch.testing.assert_close(plain.training_loss(out, y), F.cross_entropy(out, y))
    assert model.aux_loss_weight == 0.4


def test_auxiliary_losses_reach_every_parameter() -> None:
    # The paper's training loss: main + 0.3 x each auxiliary classifier's (GoogLeNet, Section 5).
    model = archlab.create_model("googlenet", num_classes=5).train()
    y = torch.tensor([1, 3])
    out = model(torch.randn(2, 3, 48, 48))
    loss = model.training_loss(out, y)
    expected = F.cross_entropy(out.logits, y) + 0.3 * (F.cross_entropy(out.aux_logits1, y) +
                                                       F.cross_entropy(out.aux_logits2, y))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert model.aux1.fc2.weight.grad.abs().sum() > 0


def test_without_auxiliary_heads_googlenet_is_torchvisions_released_layout() -> None:
    model = archlab.create_model("googlenet", aux_logits=False)
    meta = torchvision.models.get_model_weights("googlenet").DEFAULT.meta
    assert count_params(model) == meta["num_params"] == 6_624_904
    assert count_params(archlab.create_model("googlenet")) == archlab.model_card("googlenet").params == 13_004_888
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_reset_classifier_resets_the_auxiliary_heads_too() -> None:
    model = archlab.create_model("googlenet", num_classes=10)
    model.reset_classifier(4)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert [t.shape for t in out] == [(2, 4)] * 3
    model.reset_classifier(0)  # no classifier: pooled features, and the heads' pre-logits
    assert [t.shape[1] for t in model(torch.randn(2, 3, 32, 32))] == [1024, 1024, 1024]
    inception = archlab.create_model("inception_v3", num_classes=0)
    assert isinstance(inception.AuxLogits.fc, nn.Identity) and inception.num_features == 2048


def test_gradient_checkpointing_with_auxiliary_heads_is_exact() -> None:
    torch.manual_seed(0)
    plain = archlab.create_model("googlenet", num_classes=5).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([0, 4])
    for model in (plain, ckpt):
        torch.manual_seed(1)
        out = model(x)
        sum(F.cross_entropy(o, y) for o in out).backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad), n


# ------------------------------------------------------------------------------ transform_input and pretrained


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 80)])
def test_transform_input_is_torchvisions(name: str, size: int) -> None:
    ref, ours = reference_pair(name, transform_input=True)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        # The same as feeding [-1, 1] pixels to the untransformed network.
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        pixels = x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
        ours.transform_input = False
        torch.testing.assert_close(ours((pixels - 0.5) / 0.5), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())
    with pytest.raises(ValueError, match="transform_input"):
        archlab.create_model(name, transform_input=True, in_chans=1)


@pytest.fixture
def released(tmp_path, monkeypatch):
    """Both downloads simulated with the same seeded torchvision weights: archlab's (torch.hub) and torchvision's own
    (``WeightsEnum.get_state_dict``), so that torchvision's pretrained builder is the oracle of the pretrained
    configuration."""
    from torchvision.models._api import WeightsEnum

    states: dict[str, dict] = {}

    def state(name: str) -> dict:
        if name not in states:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None, init_weights=False)
            randomize_norms(model)
            states[name] = model.state_dict()
        return states[name]

    def name_of(url: str) -> str:
        return "googlenet" if "googlenet" in url else "inception_v3"

    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, *a, **k: torch.save(state(name_of(url)), dst))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: state(name_of(self.url)))
    yield
    torch.hub.set_dir(old_dir)


@pytest.mark.parametrize("name, size, keeps_aux", [("googlenet", 64, False), ("inception_v3", 80, True)])
def test_pretrained_gives_torchvisions_pretrained_configuration(released, name, size, keeps_aux) -> None:
    ours = archlab.create_model(name, pretrained=True).eval()
    ref = torchvision.models.get_model(name, weights="DEFAULT").eval()
    assert ours.transform_input and ref.transform_input
    assert count_params(ours) == count_params(ref) == ref_meta_params(name)
    assert ours.aux_logits == ref.aux_logits == keeps_aux
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    if not keeps_aux:  # the released GoogLeNet trains as a plain classifier (fine-tuning: archlab train)
        assert isinstance(ours.train()(x), torch.Tensor)
    tuned = archlab.create_model(name, pretrained=True, num_classes=7)
    assert tuned.transform_input and tuned.fc.out_features == 7


def ref_meta_params(name: str) -> int:
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


# --------------------------------------------------------------------------------------------- the tables


def test_googlenet_module_widths_are_table_1() -> None:
    with torch.device("meta"):
        model = archlab.create_model("googlenet")
    # Table 1's output depth of each Inception module.
    depths = {"inception3a": 256, "inception3b": 480, "inception4a": 512, "inception4b": 512, "inception4c": 512,
              "inception4d": 528, "inception4e": 832, "inception5a": 832, "inception5b": 1024}
    assert {n: getattr(model, n).out_channels for n in depths} == depths
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    # The "5x5" branch: torchvision's 3x3, or the paper's 5x5 (no released weights for it).
    assert model.inception3a.branch3[1].conv.kernel_size == (3, 3)
    with torch.device("meta"):
        paper = archlab.create_model("googlenet", branch3_kernel=5, aux_logits=False)
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)
    # 3a's 5x5 filters: 16 -> 32 channels, 25 weights each, where torchvision's 3x3 has 9.
    assert count_params(paper) - 6_624_904 == sum(w.ch5x5red * w.ch5x5 * (25 - 9) for _, w in GOOGLENET_LAYERS
                                                  if isinstance(w, InceptionWidths))


def test_inception_v3_grid_and_widths_are_table_1() -> None:
    # Table 1: 35x35x288 into the Figure 5 modules' successor, 17x17x768, 8x8x1280, then 2048 pooled.
    t = stage_trace("inception_v3")
    assert t.resolution_pattern == "299→147→71→35→17→8→1"
    assert t.channel_pattern == "3→64→192→288→768→2048"
    # Inception modules between stage outputs: 5b-5d; 6a (grid reduction) + 6b-6e; 7a (reduction) + 7b, 7c.
    assert [s.blocks for s in t.stages[1:-1]] == [0, 0, 3, 5, 3]
    with torch.device("meta"):
        model = archlab.create_model("inception_v3")
    assert model.Mixed_7a.out_channels == 1280 and model.Mixed_6e.out_channels == 768
    # Figure 7's side-by-side 1x3 / 3x1 pair, named as torchvision names it.
    assert model.Mixed_7b.branch3x3_2a.conv.kernel_size == (1, 3)
    assert model.Mixed_7b.branch3x3_2b.conv.kernel_size == (3, 1)


def test_googlenet_stage_trace_counts_the_inception_modules() -> None:
    t = stage_trace("googlenet")
    assert t.resolution_pattern == "224→112→56→28→14→7→1"
    assert t.channel_pattern == "3→64→192→480→832→1024"
    assert [s.blocks for s in t.stages[1:-1]] == [0, 0, 2, 5, 2]  # (3a, 3b), (4a-4e), (5a, 5b)


# ----------------------------------------------------------------------------------------- receptive fields


def positive(model: nn.Module) -> nn.Module:
    """tests/helpers.positive, keeping each max-pool's ceil_mode: every path carries positive gradient, so one unit's
    input-gradient footprint is its receptive field."""
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                    ceil_mode=child.ceil_mode))
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model.eval()


def footprint(run, size: int, unit: int) -> tuple[tuple[int, float], tuple[int, float]]:
    """(extent, centre) per axis of the input pixels that reach unit (unit, unit) of ``run(x)``."""
    x = torch.ones(1, 3, size, size, requires_grad=True)
    run(x)[0, :, unit, unit].sum().backward()
    reached = x.grad[0].abs().sum(0) > 0
    out = []
    for axis in (1, 0):
        idx = reached.any(axis).nonzero().flatten()
        out.append((int(idx.max() - idx.min() + 1), (idx.max() + idx.min()).item() / 2))
    return tuple(out)


def output_of(model: nn.Module, module: str):
    def run(x: torch.Tensor) -> torch.Tensor:
        seen = {}
        handle = model.get_submodule(module).register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
        try:
            model.forward_features(x)
        finally:
            handle.remove()
        return seen["out"]
    return run


@pytest.mark.parametrize("name, size, module, rf, stride", [
    # GoogLeNet's ceil_mode max-pools (as average pools, ceil_mode kept) and four-branch concatenations.
    ("googlenet", 160, "maxpool1", 11, 4),
    ("googlenet", 160, "inception3b", 59, 8),
    ("googlenet", 160, "inception4a", 107, 16),
    # Inception-v3's unpadded stem and its 5x5 / double-3x3 / pool branches.
    ("inception_v3", 160, "Conv2d_4a_3x3", 23, 4),
    ("inception_v3", 160, "Mixed_5d", 127, 8),
])
def test_receptive_field_through_branches_equals_gradient_footprint(name, size, module, rf, stride) -> None:
    model = positive(archlab.create_model(name, aux_logits=False))
    geometry = receptive_fields(model, size)[module]
    unit = output_of(model, module)(torch.ones(1, 3, size, size)).shape[-1] // 2
    (rf_h, centre_h), (rf_w, centre_w) = footprint(output_of(model, module), size, unit)
    assert geometry.size == (rf_h, rf_w) == (rf, rf) and geometry.stride == (stride, stride)
    assert geometry.h.start + unit * geometry.h.jump == centre_h and centre_h == centre_w


@pytest.mark.parametrize("kind, rf, stride", [("A", 11, 2), ("B", 11, 4), ("C", 27, 2), ("D", 19, 4), ("E", 11, 2)])
def test_receptive_field_of_each_module_kind(kind: str, rf: int, stride: int) -> None:
    # After a 3x3/2 conv (jump 2): A's double 3x3 and 5x5 see 5x5, C's 7x1-1x7-7x1-1x7 13x13, D's 1x7-7x1 then 3x3/2
    # 9x9, B's 3x3 then 3x3/2 5x5, E's 3x3 then 1x3 | 3x1 side by side (concatenated: their union) 5x5.
    model = positive(nn.Sequential(nn.Conv2d(3, 8, 3, 2), InceptionModule(8, INCEPTION_V3_MODULES[kind], 8)))
    size = 44
    geometry = receptive_fields(model, size)[""]
    unit = model(torch.ones(1, 3, size, size)).shape[-1] // 2
    (rf_h, centre_h), (rf_w, _) = footprint(model, size, unit)
    assert geometry.size == (rf_h, rf_w) == (rf, rf) and geometry.stride == (stride, stride)
    assert geometry.h.start + unit * geometry.h.jump == centre_h


def test_inception_v3_receptive_fields_match_the_published_table() -> None:
    # google-research/receptive_field, RECEPTIVE_FIELD_TABLE.md (TF-slim's inception_v3, which torchvision ports):
    # receptive field, effective stride, effective padding of each end-point.
    published = {"Conv2d_2b_3x3": (11, 2, 2), "Conv2d_4a_3x3": (23, 4, 2), "Mixed_5b": (63, 8, 18),
                 "Mixed_5c": (95, 8, 34), "Mixed_5d": (127, 8, 50), "Mixed_6a": (159, 16, 58),
                 "Mixed_6b": (351, 16, 154), "Mixed_6e": (927, 16, 442), "Mixed_7a": (1055, 32, 490),
                 "Mixed_7b": (1183, 32, 554), "Mixed_7c": (1311, 32, 618)}
    fields = receptive_fields("inception_v3")
    assert {k: (fields[k].size[0], fields[k].stride[0], fields[k].padding[0]) for k in published} == published


# ------------------------------------------------------------------------------------------------- deploy


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 80)])
def test_fuse_folds_every_batchnorm_that_runs(name: str, size: int) -> None:
    from archlab.deploy import fuse

    model = archlab.create_model(name).eval()
    randomize_norms(model)
    fused = fuse(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        # Inception-v3's N(0, 0.1) init grows activations to ~1e9 through 94 BN-ReLU layers: compare relatively.
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    # What is kept: the auxiliary heads' norms, which eval mode never runs.
    assert all(n.startswith(("aux", "AuxLogits")) for n in fused.fuse_summary.kept_norms)
    assert not fused.fuse_summary.untraced
