"""The recipe a run gets when the user names only a model and data: defaults per kind of data and optimizer.

``archlab train MODEL --data KIND`` gives a sensible run as is; the studies build their trials' configurations the
same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from archlab.train.loop import TrainConfig

# Defaults per kind of data, chosen so that `archlab train MODEL --data KIND` gives a sensible run as is.
# digits: cifar_resnet20 reaches >97% val in a few CPU minutes; cifar: He et al. 2015 (arXiv:1512.03385) sec. 4.2
# at 200 epochs with a cosine schedule; imagefolder: the torchvision ImageNet recipe (lr 0.1 per 256 images).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=10, batch_size=64, warmup_epochs=1.0, label_smoothing=0.1, workers=0, channels_last=True),
    # Fashion-MNIST: held in memory like digits, so no loader processes.
    "fashion-mnist": dict(epochs=20, batch_size=128, warmup_epochs=1.0, label_smoothing=0.1, workers=0,
                          channels_last=True),
    "cifar": dict(epochs=200, batch_size=128, warmup_epochs=1.0, label_smoothing=0.0, workers=4),
    "imagefolder": dict(epochs=90, batch_size=256, warmup_epochs=5.0, label_smoothing=0.1, workers=8),
}
OPT_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=5e-4), "adamw": dict(lr=2e-3, weight_decay=0.05)}
# Options a resumed run may change: they affect neither the maths nor the data order.
RESUMABLE_OVERRIDES = ("workers", "data", "device", "grad_checkpointing")


def data_kind(spec: str) -> str:
    """'digits', 'fashion-mnist' (the name, or a folder of IDX files), 'cifar' (a CIFAR python-format folder) or
    'imagefolder'."""
    from archlab.train.data import cifar_root, is_idx_folder

    if spec in ("digits", "fashion-mnist"):
        return spec
    path = Path(spec).expanduser()
    if is_idx_folder(path):
        return "fashion-mnist"
    return "cifar" if path.is_dir() and cifar_root(path) else "imagefolder"


# A default warm-up takes at most this share of a run: the ImageFolder default of 5 epochs in a 2-epoch run would
# keep the learning rate from ever reaching its peak (measured on 10,000 Fashion-MNIST images: 31.9% after 2
# epochs with it, 77.6% after 3 without).
MAX_DEFAULT_WARMUP_SHARE = 0.2


def resolve_config(given: dict[str, Any], run_dir: str) -> TrainConfig:
    """A fresh run's :class:`TrainConfig`: the ``given`` fields (``model`` and ``data`` at least), else the defaults
    for the kind of data and the optimizer. A default warm-up is shortened to a fifth of a short run (the config
    records the value used); a warm-up the user gave that is not shorter than the run is a ValueError."""
    kind = data_kind(given["data"])
    opt = given.get("opt", "sgd")
    values: dict[str, Any] = {**KIND_DEFAULTS[kind], **OPT_DEFAULTS[opt], "opt": opt}
    if kind not in ("digits", "fashion-mnist"):
        values["workers"] = min(values["workers"], os.cpu_count() or 1)
    values.update(given)
    if "warmup_epochs" in given and given["warmup_epochs"] > 0 and given["warmup_epochs"] >= values["epochs"]:
        raise ValueError(f"--warmup-epochs {given['warmup_epochs']:g} is not shorter than --epochs {values['epochs']}:"
                         f" the learning rate would never reach its peak")
    if "warmup_epochs" not in given:
        values["warmup_epochs"] = min(values["warmup_epochs"], MAX_DEFAULT_WARMUP_SHARE * values["epochs"])
    values["run_dir"] = run_dir
    return TrainConfig(**values)
