"""timm checkpoints of the torchvision architectures load with source="timm" (each family's ``timm_key_map``).

timm names EfficientNet, MobileNet V2/V3, DenseNet and VGG its own way; after the key map a timm model and ours
with its weights give the same logits. A checkpoint that still does not fit is refused key by key.
"""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.weights import WeightsError
from helpers import randomize_norms

# archlab name -> the timm model of the same architecture (same parameter count; timm's tf_ variants pad like
# TensorFlow, a different architecture). VGG is big: two of its eight variants cover both layouts.
TIMM_TWINS = {
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(5)},
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    **{f"densenet{d}": f"densenet{d}" for d in (121, 161, 169, 201)},
    "vgg11": "vgg11",
    "vgg16_bn": "vgg16_bn",
}


def timm_model(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    randomize_norms(model)  # non-trivial BN statistics, so a mis-mapped or mis-scaled norm shows in the logits
    return model


@pytest.mark.parametrize("name", sorted(TIMM_TWINS))
def test_timm_checkpoint_gives_the_same_logits(name: str) -> None:
    ref = timm_model(TIMM_TWINS[name])
    ours = archlab.load_reference_weights(archlab.create_model(name), ref.state_dict(), source="timm").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, scale)


def test_timm_checkpoint_for_a_model_without_timm_map_is_refused() -> None:
    with pytest.raises(WeightsError, match=r"timm checkpoint does not fit alexnet .*unexpected keys"):
        archlab.load_reference_weights(
            archlab.create_model("alexnet"), timm_model("mobilenetv2_100").state_dict(), source="timm"
        )


def test_timm_checkpoint_of_another_variant_is_refused_in_our_names() -> None:
    # The key map renames B1's keys, but B1 has more blocks and wider layers than B0: named, not loaded.
    with pytest.raises(WeightsError, match=r"does not fit efficientnet_b0 .*unexpected keys .*features\.1\.1\."):
        archlab.load_reference_weights(
            archlab.create_model("efficientnet_b0"), timm_model("efficientnet_b1").state_dict(), source="timm"
        )


def test_norms_take_timms_epsilon_and_keep_its_statistics() -> None:
    # Our MobileNetV3 follows torchvision (BN eps 1e-3); timm's uses 1e-5. The loaded model takes timm's epsilon
    # rather than shifting running_var, which could turn a small variance negative.
    ref = timm_model("mobilenetv3_small_100")
    ours = archlab.load_reference_weights(archlab.create_model("mobilenet_v3_small"), ref.state_dict(), source="timm")
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert torch.equal(ours.state_dict()["features.0.1.running_var"], ref.state_dict()["bn1.running_var"])
