"""Properties every registered model must have, parametrized over the whole registry."""

from __future__ import annotations

import math

import pytest
import torch

import archlab
from archlab.models.base import ArchNet, FeatureExtractor, training_logits
from helpers import HEAVIEST, count_params

NAMES = archlab.list_models()
# The deepest networks are costly to run backward at every size; they get the same checks on fewer inputs. So does
# the largest: RegNetY-128GF (644M parameters) takes ~8 s to build on one core, and is RegNetY-32GF's builder and
# blocks with another row of parameters.
VERY_DEEP = {"preact_resnet1001", "regnet_y_128gf"}
# ConvNeXt-L (198M parameters) is convnext_small/base's builder and blocks, wider: it keeps the forward/backward
# and parameter checks, not every input-handling one again.
VERY_DEEP |= {"convnext_large"}


def small_size(name: str) -> int:
    """A cheap input size the model accepts: its minimum, rounded up to a multiple of 32, at least 32."""
    m = archlab.model_card(name).min_input_size
    return max(32, int(math.ceil(m / 32) * 32))


def test_registry_is_populated() -> None:
    families = {archlab.model_card(n).family for n in NAMES}
    assert len(NAMES) >= 40
    assert {"alexnet", "vgg", "resnet", "densenet"} <= families


@pytest.mark.parametrize("name", NAMES)
def test_card_is_complete(name: str) -> None:
    card = archlab.model_card(name)
    assert card.name == name
    assert card.year >= 2012 and card.paper and card.arxiv and card.innovation
    assert card.input_size >= card.min_input_size >= 1
    assert card.params is None or card.params > 0
    if card.top1 is not None:
        assert 0 < card.top1 < 100 and card.top1_source


@pytest.mark.parametrize("name", NAMES)
def test_published_params_match(name: str) -> None:
    # Built on the meta device: no memory, no init cost. Published counts of reference weights are exact.
    card = archlab.model_card(name)
    if card.params is None:
        pytest.skip("no published parameter count")
    with torch.device("meta"):
        count = count_params(archlab.create_model(name, num_classes=card.num_classes))
    tolerance = 0 if card.reference else 0.05 * card.params
    assert abs(count - card.params) <= tolerance, (count, card.params)


# Inception-v3's auxiliary classifier needs 299x299 inputs in training mode (as torchvision's): at small inputs the
# network trains without it (its aux head is tested at 299 in tests/test_inception.py).
SMALL_INPUT_KWARGS = {"inception_v3": dict(aux_logits=False)}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in HEAVIEST])
def test_forward_backward_and_api(name: str) -> None:
    size = small_size(name)
    model = archlab.create_model(name, num_classes=7, **SMALL_INPUT_KWARGS.get(name, {}))
    assert isinstance(model, ArchNet)
    assert model.num_classes == 7 and model.in_chans == 3
    model.train()
    x = torch.randn(2, 3, size, size + 8)
    out = model(x)  # logits, or (GoogLeNet) logits with the auxiliary classifiers' logits
    assert training_logits(out).shape == (2, 7)
    model.training_loss(out, torch.tensor([1, 5])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        one = model(x[:1])
        assert one.shape == (1, 7) and torch.isfinite(one).all()
        feats = model.forward_features(x[:1])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.num_features)
        assert torch.allclose(model.forward_head(feats), one, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in VERY_DEEP])
def test_odd_and_non_square_inputs(name: str) -> None:
    m = archlab.model_card(name).min_input_size
    model = archlab.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        for h, w in ((max(m, 33), max(m, 33) + 14), (max(m, 57), max(m, 41))):
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in NAMES if n not in VERY_DEEP])
def test_classifier_reset_and_in_chans(name: str) -> None:
    size = small_size(name)
    model = archlab.create_model(name, in_chans=1, num_classes=4).eval()
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        assert model(x).shape == (1, 4)
        model.reset_classifier(9)
        assert model(x).shape == (1, 9) and model.num_classes == 9
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)


ONE_PER_FAMILY = list({archlab.model_card(n).family: n for n in reversed(NAMES) if n not in VERY_DEEP}.values())


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_num_classes_zero_builds_without_a_classifier(name: str) -> None:
    # As in timm: no classifier, the model returns its pre-logits features (each family's builder, once).
    size = small_size(name)
    model = archlab.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, model.num_features)
    assert model.num_classes == 0


@pytest.mark.parametrize("name", [n for n in NAMES if n not in VERY_DEEP])
def test_features_only(name: str) -> None:
    size = max(64, small_size(name))
    extractor = archlab.create_model(name, features_only=True).eval()
    assert isinstance(extractor, FeatureExtractor)
    with torch.no_grad():
        feats = extractor(torch.randn(1, 3, size, size))
    assert len(feats) == len(extractor.feature_info) >= 3
    m = archlab.model_card(name).min_input_size
    for f, chs, red in zip(feats, extractor.channels, extractor.reductions):
        assert f.shape[1] == chs
        # Padding makes the map ceil(size / reduction) or floor; unpadded convs (Inception-v3, SqueezeNet) take
        # what the smallest input loses, never more.
        assert (size - m) / red - 1 <= f.shape[-1] <= size / red + 1, (f.shape, red)
    assert extractor.reductions == sorted(extractor.reductions)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in VERY_DEEP])
def test_bad_inputs_are_named(name: str) -> None:
    model = archlab.create_model(name, num_classes=2).eval()
    m = model.min_input_size
    assert m == archlab.model_card(name).min_input_size
    size = max(m, 32)
    with pytest.raises(ValueError, match="expects 3 input channels, got 4"):
        model(torch.randn(1, 4, size, size))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, size, size))
    with torch.no_grad():
        assert model(torch.randn(1, 3, m, m)).shape == (1, 2)
    if m > 1:
        with pytest.raises(ValueError, match=f"at least {m}x{m}"):
            model(torch.randn(1, 3, m - 1, m))
        # The minimum is tight: one pixel less really breaks the network itself.
        with pytest.raises(RuntimeError), torch.no_grad():
            model.forward_head(model.forward_features(torch.randn(1, 3, m - 1, m - 1)))


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(archlab.UnknownModelError, match="resnet50"):
        archlab.create_model("resnet05")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=-3), "num_classes"),
        (dict(in_chans=0), "in_chans"),
        (dict(drop_rate=1.5), "drop_rate"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(no_such_option=1), "no_such_option"),
        (dict(num_classes=True), "num_classes"),
        (dict(se="false"), "se must be True or False"),  # a truthy string would build an SE network
        (dict(features_only="yes"), "features_only"),
    ],
)
def test_bad_overrides(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        archlab.create_model("resnet18", **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [  # families whose builder passes its arguments on to the model class: checked all the same
        ("vgg11", dict(bogus=1), "vgg11 does not take bogus; it takes: batch_norm, depth, drop_rate"),
        ("mobilenet_v3_large", dict(output_stride=16), "does not take output_stride"),
        ("efficientnet_b0", dict(phi=1), "does not take phi"),
        ("densenet121", dict(variant="x"), "unknown DenseNet variant 'x'"),
        ("mobilenet_v3_small", dict(variant="tiny"), "unknown MobileNetV3 variant 'tiny'"),
    ],
)
def test_bad_overrides_of_every_family_are_value_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        archlab.create_model(name, **kwargs)


def test_features_only_model_loads_the_reference_checkpoint() -> None:
    import torchvision

    ref = torchvision.models.resnet18().eval()
    feats = archlab.load_reference_weights(archlab.create_model("resnet18", features_only=True), ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(feats.eval()(x)[-1], ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))))


def test_list_models_pattern() -> None:
    assert archlab.list_models("vgg1[16]") == ["vgg11", "vgg16"]
    assert archlab.list_models("no-such-*") == []
    assert "vgg16_bn" in archlab.list_models("*_bn")
    # Natural order: resnet18 before resnet101, and RegNet's sizes by value (400MF before 1.6GF before 128GF).
    assert archlab.list_models("resnet1*") == ["resnet18", "resnet101", "resnet152"]
    assert archlab.list_models("regnet_y_*") == ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf",
                                                 "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf"]


def test_list_models_ignores_case_and_refuses_a_non_string() -> None:
    assert archlab.list_models("RESNET50") == ["resnet50"]
    with pytest.raises(TypeError, match="pattern must be a string"):
        archlab.list_models(5)
