"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
arXiv:1409.1556): depth from stacks of 3x3 convolutions, spatial size halved by 2x2 max-pooling after each stack,
channels doubled from 64 to 512.

The layer names follow torchvision (``features.N``, ``classifier.N``) so its checkpoints load unchanged.
"""

from __future__ import annotations

from torch import nn

from archlab.layers import init_weights
from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.registry import ModelCard, register
from archlab.weights import KeyMap

# The paper's Table 1, configurations A, B, D, E: channels of each 3x3 conv per stage; every stage ends in a
# 2x2 max-pool. Two 3x3 convs see a 5x5 window with fewer weights (2*9 vs 25) and one more non-linearity.
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}

# timm's vgg11..vgg19(_bn): the same features.N; its classifier is pre_logits (a ConvMlp: fc1 a 7x7 conv, fc2 a
# 1x1 conv, both holding our Linear weights in conv shape) and head.fc. See archlab.weights.KeyMap.
TIMM_KEY_MAP = KeyMap(
    rules=[
        (r"^pre_logits\.fc1\.", "classifier.0."),
        (r"^pre_logits\.fc2\.", "classifier.3."),
        (r"^head\.fc\.", "classifier.6."),
    ],
    reshaped=("classifier.0.weight", "classifier.3.weight"),
)


class VGG(PooledClassifierNet):
    """VGG from a stage table: conv3x3(-BN)-ReLU stacks and max-pools, 7x7 adaptive pool, three FC layers."""

    timm_key_map = TIMM_KEY_MAP

    def __init__(
        self,
        stages: list[list[int]],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("VGG has no residual branches, so drop_path_rate must be 0")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers: list[nn.Module] = []
        self.feature_info = []
        chs = in_chans
        for stage, widths in enumerate(stages):
            for width in widths:
                layers.append(nn.Conv2d(chs, width, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                chs = width
            # The stage output is the last ReLU before the pool (the highest-resolution map of the stage).
            self.feature_info.append(dict(module=f"features.{len(layers) - 1}", num_chs=chs, reduction=2**stage))
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        # The last stage's pooled map (7x7 at 224) is what the classifier reads: the network's final resolution.
        self.feature_info.append(dict(module="features", num_chs=chs, reduction=2 ** len(stages)))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.num_features = 4096
        self.classifier = nn.Sequential(
            nn.Linear(chs * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            linear_or_identity(4096, num_classes),
        )
        init_weights(self)

def vgg(depth: int, batch_norm: bool = False, **kwargs) -> VGG:
    return VGG(VGG_STAGES[f"vgg{depth}"], batch_norm=batch_norm, **kwargs)


# Published figures: params from the torchvision weights; multiply-adds at 224 (torchvision's "GFLOPS" column,
# which counts multiply-adds); top-1 of torchvision's IMAGENET1K_V1 weights.
_VARIANTS = [
    # name, depth, bn, params, macs, top1
    ("vgg11", 11, False, 132_863_336, 7_609_000_000, 69.020),
    ("vgg13", 13, False, 133_047_848, 11_308_000_000, 69.928),
    ("vgg16", 16, False, 138_357_544, 15_470_000_000, 71.592),
    ("vgg19", 19, False, 143_667_240, 19_632_000_000, 72.376),
    ("vgg11_bn", 11, True, 132_868_840, 7_609_000_000, 70.370),
    ("vgg13_bn", 13, True, 133_053_736, 11_308_000_000, 71.586),
    ("vgg16_bn", 16, True, 138_365_992, 15_470_000_000, 73.360),
    ("vgg19_bn", 19, True, 143_678_248, 19_632_000_000, 74.218),
]

for _name, _depth, _bn, _params, _macs, _top1 in _VARIANTS:
    register(
        vgg,
        ModelCard(
            name=_name,
            family="vgg",
            year=2014,
            paper="Very Deep Convolutional Networks for Large-Scale Image Recognition",
            arxiv="1409.1556",
            innovation="Deep + small filters: stacks of 3x3 convolutions" + (", batch norm" if _bn else ""),
            min_input_size=32,
            params=_params,
            macs=_macs,
            macs_source="torchvision weights meta (_ops: multiply-adds)",
            top1=_top1,
            top1_source="torchvision IMAGENET1K_V1 weights",
            reference=f"torchvision:{_name}",
            default_kwargs=dict(depth=_depth, batch_norm=_bn),
        ),
    )
