"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep Convolutional Neural Networks"):
the network that started the deep-learning era on ImageNet — ReLUs, overlapping max-pooling, dropout in the
classifier, trained on GPUs.

The 2012 NeurIPS paper has no arXiv id. torchvision (our reference) implements the single-tower variant of
Krizhevsky's "One weird trick for parallelizing convolutional neural networks" (arXiv:1404.5997): 64-192-384-256-256
channels and no local response normalization; the card cites that arXiv id. Layer names follow torchvision
(``features.N``, ``classifier.N``) so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from archlab.models.base import PooledClassifierNet, linear_or_identity
from archlab.registry import ModelCard, register


class AlexConv(NamedTuple):
    out_chs: int
    kernel: int
    stride: int
    padding: int
    pool_after: bool  # 3x3 max-pool with stride 2: the paper's "overlapping pooling"


# The five conv layers of the one-tower AlexNet (arXiv:1404.5997). The large stride-4 11x11 first conv shrinks
# a 224 image to 55x55 at once; three overlapping pools bring it to 6x6 for the classifier.
ALEXNET_CONVS: list[AlexConv] = [
    AlexConv(64, 11, 4, 2, True),
    AlexConv(192, 5, 1, 2, True),
    AlexConv(384, 3, 1, 1, False),
    AlexConv(256, 3, 1, 1, False),
    AlexConv(256, 3, 1, 1, True),
]


class AlexNet(PooledClassifierNet):
    """AlexNet from a conv table: conv-ReLU (+ max-pool), 6x6 adaptive pool, three FC layers with dropout."""

    def __init__(
        self,
        convs: list[AlexConv] = ALEXNET_CONVS,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("AlexNet has no residual branches, so drop_path_rate must be 0")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers: list[nn.Module] = []
        self.feature_info = []
        chs, reduction = in_chans, 1
        for conv in convs:
            layers += [nn.Conv2d(chs, conv.out_chs, conv.kernel, conv.stride, conv.padding), nn.ReLU(inplace=True)]
            chs, reduction = conv.out_chs, reduction * conv.stride
            if conv.pool_after:
                # The stage output is the ReLU before the pool, the highest-resolution map at this depth.
                self.feature_info.append(dict(module=f"features.{len(layers) - 1}", num_chs=chs, reduction=reduction))
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
                reduction *= 2
        self.features = nn.Sequential(*layers)
        # The last pooled map (6x6 at 224) is what the classifier reads: the network's final resolution.
        self.feature_info.append(dict(module="features", num_chs=chs, reduction=reduction))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = 4096
        # Dropout comes before each of the first two FC layers, as in torchvision (the paper: "in the first two
        # fully-connected layers").
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(chs * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            linear_or_identity(4096, num_classes),
        )


def alexnet(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, drop_path_rate: float = 0.0
) -> AlexNet:
    return AlexNet(ALEXNET_CONVS, num_classes, in_chans, drop_rate, drop_path_rate)


register(
    alexnet,
    ModelCard(
        name="alexnet",
        family="alexnet",
        year=2012,
        paper="ImageNet Classification with Deep Convolutional Neural Networks",
        arxiv="1404.5997",  # "One weird trick..." — the variant torchvision implements; the 2012 paper has no id
        innovation="Deep CNN trained on GPUs: ReLU, overlapping max-pooling, dropout, data augmentation",
        # 63 = the smallest input leaving a 3x3 map for the last 3x3/2 max-pool (torchvision's meta "min_size").
        min_input_size=63,
        params=61_100_840,  # torchvision AlexNet_Weights.IMAGENET1K_V1.meta["num_params"]
        macs=714_000_000,  # torchvision meta "_ops" 0.714 (multiply-adds at 224)
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        top1=56.522,
        top1_source="torchvision IMAGENET1K_V1 weights",
        reference="torchvision:alexnet",
    ),
)
