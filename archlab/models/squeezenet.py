"""SqueezeNet (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model
size", arXiv:1602.07360): AlexNet's accuracy from 1.2 M parameters by three strategies — most 3x3 filters replaced
by 1x1, the input channels of the remaining 3x3 cut by a 1x1 *squeeze* layer, and downsampling late so that the
convolutions see large maps. The Fire module is that squeeze (s1x1 channels) followed by an *expand* layer of
e1x1 1x1 and e3x3 3x3 filters side by side, concatenated. There are no fully connected layers: a 1x1 conv to the
classes and a global average pool classify.

1.0 is the paper's Table 1; 1.1 (the SqueezeNet repository's v1.1) starts with a 3x3/2 conv of 64 and pools
earlier, for 2.4x fewer multiply-adds at the same accuracy. Layer names follow torchvision (``features.N``,
``features.N.squeeze`` / ``expand1x1`` / ``expand3x3``, ``classifier.1``), so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from archlab.models.base import ArchNet, check_num_classes
from archlab.registry import ModelCard, register


class Conv(NamedTuple):
    """A table row: conv (with bias, unpadded) → ReLU."""

    out: int
    kernel: int
    stride: int


class MaxPool(NamedTuple):
    """A table row: 3x3/2 max-pool, output size rounded up (Caffe's rule)."""


class Fire(NamedTuple):
    """A table row: Fire module widths, the paper's s1x1, e1x1, e3x3."""

    squeeze: int
    expand1x1: int
    expand3x3: int


SQUEEZENET_LAYERS: dict[str, list[Conv | MaxPool | Fire]] = {
    # The paper's Table 1: conv1, maxpool1, fire2-4, maxpool4, fire5-8, maxpool8, fire9 (then conv10, avgpool10).
    "1_0": [Conv(96, 7, 2), MaxPool(),
            Fire(16, 64, 64), Fire(16, 64, 64), Fire(32, 128, 128), MaxPool(),
            Fire(32, 128, 128), Fire(48, 192, 192), Fire(48, 192, 192), Fire(64, 256, 256), MaxPool(),
            Fire(64, 256, 256)],
    # v1.1: the same Fire modules, a 3x3 first conv, pools after conv1, fire3 and fire5.
    "1_1": [Conv(64, 3, 2), MaxPool(),
            Fire(16, 64, 64), Fire(16, 64, 64), MaxPool(),
            Fire(32, 128, 128), Fire(32, 128, 128), MaxPool(),
            Fire(48, 192, 192), Fire(48, 192, 192), Fire(64, 256, 256), Fire(64, 256, 256)],
}


class FireModule(nn.Module):
    """squeeze 1x1 → ReLU, then expand 1x1 → ReLU and expand 3x3 → ReLU on the squeezed map, concatenated."""

    def __init__(self, in_chs: int, widths: Fire) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_chs, widths.squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(widths.squeeze, widths.expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(widths.squeeze, widths.expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.out_channels = widths.expand1x1 + widths.expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _class_conv(in_chs: int, num_classes: int) -> nn.Module:
    """conv10: a 1x1 conv to the classes (initialised N(0, 0.01), as torchvision); identity for num_classes=0."""
    check_num_classes(num_classes, allow_zero=True)
    if num_classes == 0:
        return nn.Identity()
    conv = nn.Conv2d(in_chs, num_classes, 1)
    nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)
    return conv


class SqueezeNet(ArchNet):
    """SqueezeNet from a layer table: ``features`` (convs, pools, Fire modules), then ``classifier``: dropout →
    1x1 conv to the classes → ReLU → global average pool."""

    def __init__(
        self,
        layers: list[Conv | MaxPool | Fire],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("SqueezeNet has no residual branches (this is the paper's model without bypass), so "
                             "drop_path_rate must be 0")
        check_num_classes(num_classes, allow_zero=True)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        modules: list[nn.Module] = []
        self.feature_info = []
        chs, reduction = in_chans, 1
        for row in layers:
            if isinstance(row, Conv):
                modules += [nn.Conv2d(chs, row.out, row.kernel, row.stride), nn.ReLU(inplace=True)]
                chs, reduction = row.out, reduction * row.stride
            elif isinstance(row, MaxPool):
                # A stage output is the last map before the resolution halves.
                self.feature_info.append(dict(module=f"features.{len(modules) - 1}", num_chs=chs, reduction=reduction))
                modules.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                reduction *= 2
            else:
                modules.append(FireModule(chs, row))
                chs = modules[-1].out_channels
        self.feature_info.append(dict(module=f"features.{len(modules) - 1}", num_chs=chs, reduction=reduction))
        self.features = nn.Sequential(*modules)
        self.num_features = chs
        # torchvision's init: He uniform (fan-in) for every conv but the class conv, zero biases.
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), _class_conv(chs, num_classes), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # pre-logits: the pooled 512-channel map (the class conv is a linear layer applied at every position).
        if pre_logits:
            return torch.flatten(self.classifier[3](self.classifier[0](x)), 1)
        return torch.flatten(self.classifier(x), 1)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[1] = _class_conv(self.num_features, num_classes)
        self.num_classes = num_classes


def squeezenet(version: str = "1_0", **kwargs) -> SqueezeNet:
    if version not in SQUEEZENET_LAYERS:
        raise ValueError(f"unknown SqueezeNet version {version!r}; one of {', '.join(SQUEEZENET_LAYERS)}")
    return SqueezeNet(SQUEEZENET_LAYERS[version], **kwargs)


# Published figures from torchvision's SqueezeNet1_0/1_1_Weights.IMAGENET1K_V1 metadata: num_params, _ops (GMACs
# at 224; 1.0 counts its 1x1 class conv on the 13x13 map, 86.5 M of the 819 M) and acc@1.
_VARIANTS = [
    # name, version, params, macs, top1, min input (torchvision's min_size: the last max-pool needs a 2x2 map)
    ("squeezenet1_0", "1_0", 1_248_424, 819_000_000, 58.092, 21),
    ("squeezenet1_1", "1_1", 1_235_496, 349_000_000, 58.178, 17),
]

for _name, _version, _params, _macs, _top1, _min in _VARIANTS:
    register(
        squeezenet,
        ModelCard(
            name=_name,
            family="squeezenet",
            year=2016,
            paper="SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
            arxiv="1602.07360",
            innovation="Fire modules: a 1x1 squeeze layer feeding side-by-side 1x1 and 3x3 expand filters; "
                       "late downsampling, no fully connected layers",
            min_input_size=_min,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            default_kwargs=dict(version=_version),
        ),
    )
