"""DenseNet-BC against the paper (Huang et al. 2017, arXiv:1608.06993): dense connectivity, growth, compression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
from archlab.models.densenet import DenseLayer

# Channels after each dense block (before its transition halves them) = input + layers * growth rate; the last
# is the width of the classifier input (torchvision's densenet121/161/169/201 classifiers take 1024/2208/1664/1920).
BLOCK_OUTPUT_CHANNELS = {
    "densenet121": [256, 512, 1024, 1024],
    "densenet161": [384, 768, 2112, 2208],
    "densenet169": [256, 512, 1280, 1664],
    "densenet201": [256, 512, 1792, 1920],
}


@pytest.mark.parametrize("name", list(BLOCK_OUTPUT_CHANNELS))
def test_growth_and_compression(name: str) -> None:
    model = archlab.create_model(name)
    assert [f["num_chs"] for f in model.feature_info] == BLOCK_OUTPUT_CHANNELS[name]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert model.num_features == BLOCK_OUTPUT_CHANNELS[name][-1]
    for i in (1, 2, 3):
        transition = model.features.get_submodule(f"transition{i}")
        assert transition.conv.out_channels == transition.conv.in_channels // 2  # compression 0.5


def test_every_layer_sees_all_earlier_maps() -> None:
    model = archlab.create_model("densenet121").eval()
    block = model.features.denseblock1
    layers = list(block.values())
    assert all(isinstance(layer, DenseLayer) for layer in layers)
    # Layer i takes the block input (64) and the 32 channels of each of the i layers before it; its 1x1
    # bottleneck has 4 * 32 channels.
    assert [layer.conv1.in_channels for layer in layers] == [64 + 32 * i for i in range(6)]
    assert {layer.conv1.out_channels for layer in layers} == {128}
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        out = block(x)
        first = layers[0]([x])
    # The block output is a concatenation: its input unchanged, then each layer's new maps in order.
    assert out.shape == (1, 256, 9, 9)
    assert torch.equal(out[:, :64], x) and torch.equal(out[:, 64:96], first)


def test_dropout_is_only_in_the_classifier() -> None:
    with pytest.raises(ValueError, match="drop_path_rate"):
        archlab.create_model("densenet121", drop_path_rate=0.1)
    default = archlab.create_model("densenet121")
    assert [m.p for m in default.modules() if isinstance(m, nn.Dropout)] == [0.0]
    model = archlab.create_model("densenet121", drop_rate=0.3)
    assert [(n, m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)] == [("head_drop", 0.3)]


def test_head_does_not_modify_the_feature_map() -> None:
    model = archlab.create_model("densenet121", num_classes=5).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
        kept = feats.clone()
        model.forward_head(feats)
    assert (kept < 0).any() and torch.equal(feats, kept)
