"""The built-in design studies: every "why" of the seed's architecture notes, as the table that tests it.

Each study is one :class:`~archlab.studies.study.Study`: the claim, the paper's table or figure with its numbers
(``Arm.published``, in the source's metric), the arms as model specs, and the orderings the claim predicts. The
``quick`` budget is sized so that a study runs in at most 10 minutes on a 2-core CPU with ``--data digits``
(``benchmarks/studies.py`` measures it); ``paper`` is the paper's own CIFAR recipe where it trains on CIFAR,
else ResNet's CIFAR recipe, which the study's notes say.

Digits are 8x8 images, so the quick budget of the CIFAR-ResNet studies trains at 8x8 (every stage still has a
map: 8, 4, 2); the MobileNets, with five stride-2 stages, train at 32x32 there.
"""

from __future__ import annotations

import difflib

from archlab.studies.speed import SHUFFLENET_GUIDELINES
from archlab.studies.study import Arm, Expect, Source, Study, StudyError

# The CIFAR recipe of He et al. 2015 (arXiv:1512.03385) Sec. 4.2: batch 128, lr 0.1 divided by 10 at 32k and
# 48k of 64k iterations (50% and 75%: 164 epochs of 50k images), weight decay 1e-4, momentum 0.9, pad-4 crops and
# flips (archlab's CIFAR augmentation). For the 110-layer nets the paper warms up at lr 0.01 for ~400 iterations;
# here every net warms up linearly over the first epoch.
RESNET_CIFAR = dict(epochs=164, batch_size=128, lr=0.1, sched="step", weight_decay=1e-4, momentum=0.9,
                    warmup_epochs=1.0, label_smoothing=0.0, input_size={"digits": 32, "fashion-mnist": 28, "*": 32})
# ResNeXt's CIFAR recipe (Xie et al. 2016, arXiv:1611.05431, Sec. 5.3): 300 epochs, lr 0.1 divided by 10 at 50%
# and 75%, weight decay 5e-4, batch 128.
RESNEXT_CIFAR = {**RESNET_CIFAR, "epochs": 300, "weight_decay": 5e-4}


def quick(epochs: int, input_size: dict[str, int], **extra: object) -> dict[str, object]:
    """The quick budget: a short cosine schedule with one warm-up epoch, no label smoothing (the training error
    the degradation study reads is then the plain error rate). Batch 32 at lr 0.025 (ResNet's 0.1 per 128 images,
    scaled linearly: Goyal et al. 2017, arXiv:1706.02677): digits' 1,437 training images give 45 steps an epoch.
    At batch 128 (11 steps an epoch) the 29- to 62-layer arms had not trained (60-75% training error) when the
    budget ran out; benchmarks/results/studies-digits-quick-batch128.md keeps that run."""
    return dict(epochs=epochs, batch_size=32, lr=0.025, sched="cosine", weight_decay=5e-4, warmup_epochs=1.0,
                label_smoothing=0.0, input_size=input_size, **extra)


# The CIFAR ResNets' input at the quick budget: digits' own 8x8, Fashion-MNIST halved to 14x14, CIFAR's 32x32.
SMALL = {"digits": 8, "fashion-mnist": 14, "*": 32}
MOBILE = {"digits": 32, "fashion-mnist": 32, "*": 32}  # five stride-2 stages need a 32x32 input to keep a map
BASE16 = {"*": 16}  # the compound-scaling base, so that resolution has room to scale in whole pixels

DEGRADATION = Study(
    name="degradation",
    claim="Deeper plain networks train worse (higher training error), while deeper residual networks do better.",
    source=Source(
        paper="He, Zhang, Ren & Sun 2015, Deep Residual Learning for Image Recognition", arxiv="1512.03385",
        where="Fig. 6 and Table 6 (CIFAR-10)",
        figures="Fig. 6: plain-56 has higher training and test error than plain-20 throughout training (curves, "
                "no table; plain-110 above 60% error); Table 6: ResNet-20/32/44/56/110 test error "
                "8.75/7.51/7.17/6.97/6.43%",
        metric="CIFAR-10 test error (%)"),
    arms=(
        Arm("plain-20", "cifar_plain20"),
        Arm("plain-56", "cifar_plain56"),
        Arm("plain-110", "cifar_plain110", budgets=("paper",)),
        Arm("ResNet-20", "cifar_resnet20", published=8.75),
        Arm("ResNet-56", "cifar_resnet56", published=6.97),
        Arm("ResNet-110", "cifar_resnet110", published=6.43, budgets=("paper",)),
    ),
    expect=(
        Expect("plain-20", "plain-56", "train_error", "degradation: the deeper plain net trains worse"),
        Expect("ResNet-56", "ResNet-20", "val_error", "residual: the deeper net is better"),
        Expect("ResNet-56", "plain-56", "train_error", "the shortcut is what fixes it, at equal depth"),
        Expect("plain-56", "plain-110", "train_error", "degradation grows with depth"),
        Expect("ResNet-110", "ResNet-56", "val_error", "residual: deeper still is better"),
    ),
    budgets={"quick": quick(20, SMALL), "paper": RESNET_CIFAR},
)

# ResNeXt's Table 3 templates at equal cost (ResNeXt-50: 1x64d ... 32x4d, ~4.1 GFLOPs each), here on ResNeXt-29
# for CIFAR at half width (width_mult=0.5: stage widths 32/64/128, so base_width is the group width d of the
# template as named at full width). The five arms' multiply-adds are within 5% of each other (tested).
_RESNEXT = "cifar_resnext29_8x64d:width_mult=0.5,groups={g},base_width={d}"
CARDINALITY = Study(
    name="cardinality",
    claim="At equal multiply-adds, more groups of narrower paths (cardinality) lower the error.",
    source=Source(
        paper="Xie, Girshick, Dollár, Tu & He 2016, Aggregated Residual Transformations for Deep Neural Networks",
        arxiv="1611.05431", where="Table 3 (ResNeXt-50 on ImageNet, equal complexity templates)",
        figures="top-1 error 23.9 / 23.0 / 22.6 / 22.3 / 22.2% for 1x64d / 2x40d / 4x24d / 8x14d / 32x4d",
        metric="ImageNet top-1 error (%)"),
    arms=tuple(Arm(f"{g}x{d}d", _RESNEXT.format(g=g, d=d), published=err)
               for g, d, err in ((1, 64, 23.9), (2, 40, 23.0), (4, 24, 22.6), (8, 14, 22.3), (32, 4, 22.2))),
    expect=(
        Expect("32x4d", "1x64d", why="the largest cardinality beats the plain bottleneck"),
        Expect("2x40d", "1x64d", why="the first step of cardinality, the paper's largest gain (0.9%)"),
    ),
    budgets={"quick": quick(8, SMALL), "paper": RESNEXT_CIFAR},
    notes="The arms are ResNeXt-29 at half width at both budgets; the paper budget changes the recipe only.",
)

SQUEEZE_EXCITATION = Study(
    name="squeeze-excitation",
    claim="Squeeze-and-excitation lowers the error for well under 1% more multiply-adds.",
    source=Source(
        paper="Hu, Shen & Sun 2017, Squeeze-and-Excitation Networks", arxiv="1709.01507",
        where="Table 2 (ImageNet) and the CIFAR table",
        figures="ResNet-50 top-1 error 24.80 -> 23.29% (ImageNet, +0.26% GFLOPs); CIFAR-10 ResNet-110 test "
                "error 6.37 -> 5.21%",
        metric="CIFAR-10 test error (%)"),
    arms=(
        Arm("ResNet-20", "cifar_resnet20"),
        Arm("SE-ResNet-20", "cifar_resnet20:se=True"),
        Arm("ResNet-110", "cifar_resnet110", published=6.37, budgets=("paper",)),
        Arm("SE-ResNet-110", "cifar_resnet110:se=True", published=5.21, budgets=("paper",)),
    ),
    expect=(
        Expect("SE-ResNet-20", "ResNet-20", why="SE helps"),
        Expect("SE-ResNet-110", "ResNet-110", why="SE helps (the paper's CIFAR-10 pair)"),
    ),
    budgets={"quick": quick(20, SMALL), "paper": RESNET_CIFAR},
    notes="SE with r = 16 on every residual branch before the addition; C/16 squeezed channels (1 in the "
          "16-channel stage). The paper budget is ResNet's CIFAR recipe.",
)

DEPTHWISE_SEPARABLE = Study(
    name="depthwise-separable",
    claim="Depthwise-separable convolutions cost 8-9x fewer multiply-adds than full 3x3 convolutions for a small "
          "accuracy loss.",
    source=Source(
        paper="Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks for Mobile Vision "
              "Applications", arxiv="1704.04861", where="Table 4 (ImageNet)",
        figures="Conv MobileNet 71.7% top-1, 4866M mult-adds, 29.3M params; MobileNet 70.6%, 569M, 4.2M",
        metric="ImageNet top-1 error (%)"),
    arms=(
        Arm("full 3x3 conv", "mobilenet_v1:width_mult=0.5,separable=False", published=28.3),
        Arm("depthwise-separable", "mobilenet_v1:width_mult=0.5", published=29.4),
    ),
    expect=(Expect("full 3x3 conv", "depthwise-separable",
                   why="the full convolutions are (a little) more accurate, for ~8x the multiply-adds"),),
    budgets={"quick": quick(15, MOBILE), "paper": RESNET_CIFAR},
    notes="Both arms at width 0.5 (the paper's figures are at width 1.0). The paper trains on ImageNet with "
          "RMSprop; the paper budget here is ResNet's CIFAR recipe.",
)

LINEAR_BOTTLENECK = Study(
    name="linear-bottleneck",
    claim="The projection of an inverted residual block must be linear: a ReLU6 after it lowers accuracy.",
    source=Source(
        paper="Sandler, Howard, Zhu, Zhmoginov & Chen 2018, MobileNetV2: Inverted Residuals and Linear "
              "Bottlenecks", arxiv="1801.04381", where="Fig. 6a (ImageNet)",
        figures="top-1 of the linear bottleneck above that of ReLU6 in the bottleneck throughout training "
                "(training curves; no table)",
        metric="ImageNet top-1 error (%)"),
    arms=(
        Arm("linear", "mobilenet_v2:width_mult=0.5"),
        Arm("ReLU6 after projection", "mobilenet_v2:width_mult=0.5,project_act=relu6"),
    ),
    expect=(Expect("linear", "ReLU6 after projection", why="ReLU on the thin tensor destroys information"),),
    budgets={"quick": quick(20, MOBILE), "paper": RESNET_CIFAR},
    notes="Both arms at width 0.5. The paper trains on ImageNet with RMSprop; the paper budget here is ResNet's "
          "CIFAR recipe.",
)


def _scaled(label: str, factor: str, n: int, width: float, scale: float, published: float | None = None,
            budgets: tuple[str, ...] = ("quick", "paper")) -> Arm:
    """ResNet-32 (n = 5 blocks per stage) scaled to about ``factor`` its multiply-adds."""
    spec = f"cifar_resnet32:depth={6 * n + 2}" + (f",width_mult={width}" if width != 1 else "")
    recipe = {"input_scale": scale} if scale != 1 else {}
    return Arm(f"{label} {factor}", spec, recipe, published, budgets)


# Compound coefficients alpha = 1.2 (depth), beta = 1.1 (width), gamma = 1.15 (resolution), phi = 1 and 2
# (Tan & Le 2019, Sec. 3.3); single dimensions scaled by 2 (depth), sqrt(2) (width) or 2 in pixels (resolution)
# per doubling of the multiply-adds. The base, ResNet-32 (n = 5), is the smallest CIFAR ResNet whose depth takes
# alpha in whole blocks (n = 6 at phi = 1, 7.2 -> 7 at phi = 2). Resolution rounds to pixels, and a stride-2 stage
# rounds an odd map up, so the 2x resolution arm is 22 pixels on the 16-pixel base (x1.375; 23 would cost 2.19x).
# Measured at 16x16: every 2x arm costs 2.00-2.03x the base, every 4x arm 3.98-4.08x (the report shows them).
COMPOUND_SCALING = Study(
    name="compound-scaling",
    claim="At equal multiply-adds, scaling depth, width and resolution together beats scaling any one of them.",
    source=Source(
        paper="Tan & Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        arxiv="1905.11946", where="Fig. 3 and Table 3 (ImageNet)",
        figures="ResNet-50 (4.1B FLOPs, 24.0% top-1 error) scaled to ~4x: depth d=4 21.9%, width w=2 22.3%, "
                "resolution r=2 22.5%, compound 21.2%",
        metric="ImageNet top-1 error (%)"),
    arms=(
        _scaled("base", "1x", 5, 1.0, 1.0, 24.0),
        _scaled("depth", "2x", 10, 1.0, 1.0),
        _scaled("width", "2x", 5, 1.414, 1.0),
        _scaled("resolution", "2x", 5, 1.0, 1.375),
        _scaled("compound", "2x", 6, 1.1, 1.15),
        _scaled("depth", "4x", 20, 1.0, 1.0, 21.9, ("paper",)),
        _scaled("width", "4x", 5, 2.0, 1.0, 22.3, ("paper",)),
        _scaled("resolution", "4x", 5, 1.0, 2.0, 22.5, ("paper",)),
        _scaled("compound", "4x", 7, 1.21, 1.3225, 21.2, ("paper",)),
    ),
    expect=tuple(Expect(f"compound {f}", f"{dim} {f}", why=f"compound beats {dim} alone at ~{f} the cost")
                 for f in ("2x", "4x") for dim in ("depth", "width", "resolution")),
    budgets={"quick": quick(5, BASE16), "paper": {**RESNET_CIFAR, "input_size": {"*": 16}}},
    notes="The base is ResNet-32 at 16x16 (digits upsampled from 8x8: a higher resolution adds interpolated "
          "pixels only); the published figures are EfficientNet's ResNet-50 at ~4x, whose arms run at the paper "
          "budget only.",
)

STUDIES: dict[str, Study] = {s.name: s for s in (
    DEGRADATION, CARDINALITY, SQUEEZE_EXCITATION, DEPTHWISE_SEPARABLE, LINEAR_BOTTLENECK, COMPOUND_SCALING,
    SHUFFLENET_GUIDELINES,
)}


def list_studies() -> list[Study]:
    return list(STUDIES.values())


def get_study(name: str) -> Study:
    """A built-in study by name; an unknown name is a :class:`StudyError` naming the closest ones."""
    try:
        return STUDIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(STUDIES), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(STUDIES)}"
        raise StudyError(f"unknown study {name!r}{hint}") from None
