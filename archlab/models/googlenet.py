"""GoogLeNet (Szegedy et al. 2014, "Going Deeper with Convolutions", arXiv:1409.4842): the Inception module runs
1x1, 3x3 and 5x5 convolutions and a max-pool side by side on the same input and concatenates them, with 1x1
convolutions *reducing* the channels before the expensive filters, so depth and width grow at a constant budget
(1.5 G multiply-adds for 22 layers). Two auxiliary classifiers on intermediate layers add their loss in training
(weight 0.3 in the paper) to push gradient into the middle of the network.

The model is torchvision's GoogLeNet, which differs from the paper's Table 1 in ways its checkpoint fixes:
BatchNorm (eps 1e-3) after every convolution and no local response normalisation (the TF-slim Inception-v1 the
weights were ported from); a 3x3, not 5x5, conv in the "5x5" branch (pytorch/vision#906; ``branch3_kernel=5``
builds the paper's); the last max-pool 2x2/2 instead of 3x3/2 (the same 7x7 map at 224); every max-pool rounds
its output size up (``ceil_mode``, Caffe's rule); the auxiliary heads pool adaptively to 4x4 and have BatchNorm.

Also here, shared with Inception-v3 (:mod:`archlab.models.inception`): :class:`BasicConv`, the table row types and
:class:`InceptionNet`, the torchvision layout of both (named top-level layers, auxiliary heads that run only in
training mode, ``transform_input``).
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archlab.models.base import ArchNet, check_num_classes, linear_or_identity
from archlab.registry import ModelCard, register

# What torchvision's GoogLeNet returns in training mode with its auxiliary heads (same fields, same order).
GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# transform_input: the released weights of both networks were trained (in TensorFlow) on pixels scaled to [-1, 1];
# given an image normalised with ImageNet's mean and std, x * std / 0.5 + (mean - 0.5) / 0.5 is that image.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Conv(NamedTuple):
    """A table row: conv-BN-ReLU to ``out`` channels."""

    out: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0


class Pool(NamedTuple):
    """A table row: max-pool; ``ceil_mode`` rounds the output size up (GoogLeNet) instead of down (Inception-v3)."""

    kernel: int
    stride: int
    ceil_mode: bool = False


class BasicConv(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d (eps 1e-3, TensorFlow's) → ReLU; children named ``conv``, ``bn``, ``relu`` as in
    torchvision's BasicConv2d, so its checkpoints load (:class:`archlab.layers.ConvNormAct` numbers them 0, 1, 2)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_chs, out_chs, kernel, stride, padding, bias=False),
            bn=nn.BatchNorm2d(out_chs, eps=1e-3),
            relu=nn.ReLU(inplace=True),
        ))
        self.out_channels = out_chs


class InceptionNet(ArchNet):
    """GoogLeNet's and Inception-v3's shared layout: top-level layers named as in torchvision, run in table order
    (``body``); auxiliary classifiers (``aux_taps``: body layer → head name) that run on that layer's output in
    training mode only; then global average pool → dropout → ``fc``.

    ``forward`` in training mode with ``aux_logits`` returns what torchvision's does (:meth:`_outputs`); in eval mode,
    or without auxiliary heads, the logits. ``forward_features`` never runs the auxiliary heads.
    """

    body: list[str]
    aux_taps: dict[str, str]
    # Whether torchvision's pretrained builder keeps the auxiliary heads (their released weights are trained).
    release_keeps_aux: bool = True
    # The weight of each auxiliary classifier's loss in :meth:`training_loss`.
    aux_loss_weight: float

    def training_loss(self, output: Any, target: torch.Tensor,
                      criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """The training loss of ``forward``'s output: ``criterion`` on the logits plus ``aux_loss_weight`` times
        ``criterion`` on each auxiliary classifier's logits (when the output has them)."""
        criterion = criterion or F.cross_entropy
        if isinstance(output, torch.Tensor):
            return criterion(output, target)
        logits, *aux = output
        return criterion(logits, target) + self.aux_loss_weight * sum(criterion(a, target) for a in aux)

    def _init_layout(self, num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float,
                     aux_logits: bool, transform_input: bool) -> None:
        check_num_classes(num_classes, allow_zero=True)
        if drop_path_rate:
            raise ValueError(f"{type(self).__name__} has no residual branches (Inception branches are concatenated, "
                             "not added), so drop_path_rate must be 0")
        if transform_input and in_chans != 3:
            raise ValueError(f"transform_input rescales 3 ImageNet-normalised channels, got in_chans={in_chans}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.aux_logits, self.transform_input = aux_logits, transform_input
        self.body, self.aux_taps, self.feature_info = [], {}, []

    def _build_body(self, layers: list[tuple[str, Any]], make: Callable[[Any, int], tuple[nn.Module, int, int]],
                    chs: int) -> int:
        """Add each (name, row) of ``layers`` as ``make(row, in_chs) -> (module, out_chs, stride)``; a stage output
        (``feature_info``) is the last layer before the resolution drops, and the last layer. Returns the width."""
        reduction = 1
        for name, row in layers:
            module, out_chs, stride = make(row, chs)
            if stride > 1 and self.body:
                self.feature_info.append(dict(module=self.body[-1], num_chs=chs, reduction=reduction))
            self.add_module(name, module)
            self.body.append(name)
            chs, reduction = out_chs, reduction * stride
        self.feature_info.append(dict(module=self.body[-1], num_chs=chs, reduction=reduction))
        return chs

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        scale = x.new_tensor([s / 0.5 for s in _IMAGENET_STD]).view(1, 3, 1, 1)
        shift = x.new_tensor([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN]).view(1, 3, 1, 1)
        return x * scale + shift

    def _run(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._transform(x)
        aux = []
        for name in self.body:
            x = getattr(self, name)(x)
            if with_aux and name in self.aux_taps:
                aux.append(getattr(self, self.aux_taps[name])(x))
        return x, aux

    def _outputs(self, logits: torch.Tensor, aux: list[torch.Tensor]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> Any:
        self.check_input(x)
        with_aux = self.training and self.aux_logits
        features, aux = self._run(x, with_aux)
        logits = self.forward_head(features)
        return self._outputs(logits, aux) if with_aux else logits

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
        for head in self.aux_taps.values():
            if getattr(self, head, None) is not None:
                getattr(self, head).reset_classifier(num_classes)
        self.num_classes = num_classes

    def drop_aux_heads(self) -> None:
        """Remove the auxiliary classifiers (what torchvision's pretrained GoogLeNet does after loading)."""
        for head in self.aux_taps.values():
            setattr(self, head, None)
        self.aux_logits = False

    # ``archlab.pretrained.load_pretrained`` announces the released weights it loaded by setting this attribute.
    # torchvision's builder gives those weights their configuration: transform_input on (they expect [-1, 1]
    # pixels) and, for GoogLeNet, no auxiliary heads (its released ones are untrained); so does this setter, so
    # that ``create_model(name, pretrained=True)`` computes what torchvision's pretrained model computes.
    @property
    def pretrained_weights(self) -> Any:
        return self.__dict__.get("_pretrained_weights")

    @pretrained_weights.setter
    def pretrained_weights(self, weights: Any) -> None:
        self.__dict__["_pretrained_weights"] = weights
        if weights is not None and getattr(weights, "source", None) == "torchvision":
            self.transform_input = True
            if not self.release_keeps_aux:
                self.drop_aux_heads()


class Inception(nn.Module):
    """The Inception module (Figure 2b): 1x1 | 1x1 reduce → 3x3 | 1x1 reduce → "5x5" | 3x3 max-pool → 1x1 projection,
    side by side on one input, concatenated along channels."""

    def __init__(self, in_chs: int, widths: InceptionWidths, branch3_kernel: int = 3) -> None:
        super().__init__()
        w = widths
        self.branch1 = BasicConv(in_chs, w.ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv(in_chs, w.ch3x3red, 1), BasicConv(w.ch3x3red, w.ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv(in_chs, w.ch5x5red, 1),
                                     BasicConv(w.ch5x5red, w.ch5x5, branch3_kernel, padding=branch3_kernel // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(in_chs, w.pool_proj, 1))
        self.out_channels = w.ch1x1 + w.ch3x3 + w.ch5x5 + w.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionWidths(NamedTuple):
    """A row of Table 1: the output channels of each branch ("#3x3 reduce": the 1x1 before the 3x3)."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int


# The paper's Table 1 as torchvision builds it (see the module docstring for where the two differ).
GOOGLENET_LAYERS: list[tuple[str, Conv | Pool | InceptionWidths]] = [
    ("conv1", Conv(64, 7, 2, 3)),
    ("maxpool1", Pool(3, 2, ceil_mode=True)),
    ("conv2", Conv(64, 1)),  # Table 1's "convolution 3x3/1" row: its "#3x3 reduce" 64 ...
    ("conv3", Conv(192, 3, 1, 1)),  # ... and its 3x3, 192
    ("maxpool2", Pool(3, 2, ceil_mode=True)),
    #             #1x1 #3x3red #3x3 #5x5red #5x5 pool proj
    ("inception3a", InceptionWidths(64, 96, 128, 16, 32, 32)),
    ("inception3b", InceptionWidths(128, 128, 192, 32, 96, 64)),
    ("maxpool3", Pool(3, 2, ceil_mode=True)),
    ("inception4a", InceptionWidths(192, 96, 208, 16, 48, 64)),
    ("inception4b", InceptionWidths(160, 112, 224, 24, 64, 64)),
    ("inception4c", InceptionWidths(128, 128, 256, 24, 64, 64)),
    ("inception4d", InceptionWidths(112, 144, 288, 32, 64, 64)),
    ("inception4e", InceptionWidths(256, 160, 320, 32, 128, 128)),
    ("maxpool4", Pool(2, 2, ceil_mode=True)),  # the paper's is 3x3/2
    ("inception5a", InceptionWidths(256, 160, 320, 32, 128, 128)),
    ("inception5b", InceptionWidths(384, 192, 384, 48, 128, 128)),
]
# The auxiliary classifiers sit on the outputs of 4a and 4d (Section 5).
GOOGLENET_AUX = {"inception4a": "aux1", "inception4d": "aux2"}


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier: average-pool to 4x4 → 1x1 conv to 128 → FC 1024 → ReLU → dropout 0.7 → FC (Section 5)."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = BasicConv(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = linear_or_identity(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc2 = linear_or_identity(1024, num_classes)


class GoogLeNet(InceptionNet):
    """GoogLeNet from :data:`GOOGLENET_LAYERS` (torchvision's layer names, so its checkpoints load key for key).

    ``aux_logits``: build the two auxiliary classifiers; in training mode ``forward`` then returns
    ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` as torchvision's does. ``transform_input``: rescale an
    ImageNet-normalised input to [-1, 1] first (what the released weights expect; ``pretrained=True`` turns it on).
    """

    release_keeps_aux = False  # torchvision warns that the released auxiliary heads are untrained, and drops them
    aux_loss_weight = 0.3  # Section 5: "the losses of the auxiliary classifiers were weighted by 0.3"

    def __init__(
        self,
        layers: list[tuple[str, Conv | Pool | InceptionWidths]],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        aux_logits: bool = True,
        transform_input: bool = False,
        aux_drop_rate: float = 0.7,
        branch3_kernel: int = 3,
    ) -> None:
        super().__init__()
        if branch3_kernel not in (3, 5):
            raise ValueError(f"branch3_kernel must be 3 (torchvision's) or 5 (the paper's), got {branch3_kernel}")
        self._init_layout(num_classes, in_chans, drop_rate, drop_path_rate, aux_logits, transform_input)

        def make(row: Any, chs: int) -> tuple[nn.Module, int, int]:
            if isinstance(row, Pool):
                return nn.MaxPool2d(row.kernel, row.stride, ceil_mode=row.ceil_mode), chs, row.stride
            if isinstance(row, Conv):
                return BasicConv(chs, row.out, row.kernel, row.stride, row.padding), row.out, row.stride
            block = Inception(chs, row, branch3_kernel)
            return block, block.out_channels, 1

        self.num_features = self._build_body(layers, make, in_chans)
        if aux_logits:
            for tap, head in GOOGLENET_AUX.items():
                out_chs = getattr(self, tap).out_channels
                self.add_module(head, GoogLeNetAux(out_chs, num_classes, aux_drop_rate))
        self.aux_taps = dict(GOOGLENET_AUX)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = linear_or_identity(self.num_features, num_classes)
        # torchvision's init: N(0, 0.01) weights for every conv and linear layer (bounds +-2: never truncated).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _outputs(self, logits: torch.Tensor, aux: list[torch.Tensor]) -> GoogLeNetOutputs:
        aux1, aux2 = aux
        return GoogLeNetOutputs(logits, aux2, aux1)


def googlenet(**kwargs: Any) -> GoogLeNet:
    return GoogLeNet(GOOGLENET_LAYERS, **kwargs)


# Figures from torchvision's GoogLeNet_Weights.IMAGENET1K_V1 metadata: _ops 1.498 (GMACs at 224), acc@1 69.778;
# its num_params, 6,624,904, is of the released configuration, without the two auxiliary heads.
register(
    googlenet,
    ModelCard(
        name="googlenet",
        family="googlenet",
        year=2014,
        paper="Going Deeper with Convolutions",
        arxiv="1409.4842",
        innovation="Inception modules: parallel 1x1/3x3/5x5/pool branches concatenated, 1x1 reductions before the "
                   "large filters; auxiliary classifiers in training",
        input_size=224,
        # 15: torchvision's min_size; 14 leaves maxpool3 a map it cannot pool.
        min_input_size=15,
        # The count of torchvision's googlenet() (weights=None), whose layout and state dict this is: with the
        # auxiliary heads.
        params=13_004_888,
        macs=1_498_000_000,
        macs_source="torchvision weights meta (_ops: multiply-adds)",
        top1=69.778,
        top1_source="torchvision IMAGENET1K_V1 weights",
        reference="torchvision:googlenet",
        default_kwargs=dict(aux_logits=True, transform_input=False),
        notes="Built as torchvision's googlenet() without weights: with both auxiliary classifiers (6,379,984 of "
              "the 13,004,888 parameters; they run in training mode only, and forward then returns "
              "GoogLeNetOutputs(logits, aux_logits2, aux_logits1) as torchvision does) and transform_input=False. "
              "pretrained=True gives torchvision's pretrained configuration: transform_input=True (the weights "
              "expect [-1, 1] pixels; feed ImageNet-normalised images) and no auxiliary heads (torchvision's "
              "6,624,904 parameters; the released heads are untrained). aux_logits=False builds that layout "
              "without weights. The '5x5' branch is a 3x3 as in torchvision (branch3_kernel=5: the paper's).",
    ),
)
