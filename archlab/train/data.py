"""Datasets for training and evaluation, read with torchvision datasets and ``transforms.v2`` only.

A data SPEC is one of:

* ``digits`` — scikit-learn's 1,797 8x8 handwritten digits (shipped with the package, no download), split
  80/20 train/val with a fixed seed (stratified), given to the model as 3-channel images upsampled to the
  input size. Small enough to train a real CNN to >97% in minutes on a laptop CPU.
* ``fashion-mnist`` — Zalando's Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747: 70,000 28x28 grey images of
  10 kinds of clothing; much harder than digits), from ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``apt-get install dataset-fashion-mnist``); or any folder holding its four IDX files (gzipped or not; MNIST's
  too). Training uses a fixed-seed stratified 54,000/6,000 train/val split of the 60,000 training images;
  evaluation alone (``archlab eval``) reports the 10,000 test images.
* a CIFAR-10/100 folder in the python format (``cifar-10-batches-py`` / ``cifar-100-python``, or its parent).
* an ImageFolder root with ``train/`` and ``val/`` sub-folders, each holding one folder per class.

Reproducibility: the order of samples comes from a :class:`DistributedSampler` seeded by (seed, epoch), and the
random augmentation of a sample from a generator seeded by (seed, epoch, index) (:class:`SeededDataset`). So the
data a step sees depends neither on the number of loader workers, nor on the number of processes, nor on
whether the run was interrupted and resumed — which is what makes exact resume and 1-vs-N-process equality hold.
``fraction`` (``--data-fraction``) keeps a fixed-seed share of the training split (stratified for digits and
Fashion-MNIST), for quick budgets; the validation split stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from archlab.preprocessing import Preprocessing

# Pixel statistics of each built-in dataset (train split), for normalisation.
DIGITS_MEAN, DIGITS_STD = (0.3053,) * 3, (0.3760,) * 3
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MEAN, FASHION_STD = (0.2860,) * 3, (0.3530,) * 3
FASHION_VAL = 6000  # images held out of the 60,000 training images for validation
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data SPEC that cannot be read: missing folder, no classes, undecodable image ..."""


@dataclass
class DataBundle:
    train: Dataset | None
    val: Dataset
    num_classes: int
    kind: str  # "digits" | "fashion-mnist" | "cifar" | "imagefolder"
    preprocessing: Preprocessing
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # undecodable images left out (bad_images="skip")


def _interp(name: str) -> v2.InterpolationMode:
    try:
        return v2.InterpolationMode(name)
    except ValueError:
        raise DataError(f"unknown interpolation {name!r}") from None


def eval_transform(prep: Preprocessing) -> v2.Compose:
    resize = int(round(prep.input_size / prep.crop_pct))
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize, interpolation=_interp(prep.interpolation), antialias=True),
        v2.CenterCrop(prep.input_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(prep.mean, prep.std),
    ])


AUGMENT_POLICIES = ("none", "trivial", "randaugment", "autoaugment")


@dataclass(frozen=True)
class Augmentation:
    """Optional augmentation on top of each dataset's own crop/flip (the ingredients of torchvision's newer
    recipes): a per-image ``policy`` — "trivial" (TrivialAugmentWide, Müller & Hutter 2021, arXiv:2103.10158),
    "randaugment" (Cubuk et al. 2019, arXiv:1909.13719, 2 ops of magnitude 9) or "autoaugment" (Cubuk et al. 2018,
    arXiv:1805.09501; the CIFAR-10 policy for CIFAR, the ImageNet one otherwise) — and random erasing with
    probability ``random_erase`` (Zhong et al. 2017, arXiv:1708.04896) on the normalised tensor. Both run per
    sample, so the seeded-sample rule (:class:`SeededDataset`) keeps them reproducible."""

    policy: str = "none"
    random_erase: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in AUGMENT_POLICIES:
            raise ValueError(f"augmentation policy must be one of {', '.join(AUGMENT_POLICIES)}, got {self.policy!r}")
        if not 0.0 <= self.random_erase <= 1.0:
            raise ValueError(f"random_erase must be a probability in [0, 1], got {self.random_erase}")

    def policy_transform(self, kind: str, interp: v2.InterpolationMode) -> list[Any]:
        if self.policy == "trivial":
            return [v2.TrivialAugmentWide(interpolation=interp)]
        if self.policy == "randaugment":
            return [v2.RandAugment(interpolation=interp)]
        if self.policy == "autoaugment":
            policy = v2.AutoAugmentPolicy.CIFAR10 if kind == "cifar" else v2.AutoAugmentPolicy.IMAGENET
            return [v2.AutoAugment(policy, interpolation=interp)]
        return []


def train_transform(kind: str, prep: Preprocessing, augment: Augmentation = Augmentation()) -> v2.Compose:
    size, interp = prep.input_size, _interp(prep.interpolation)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
    if augment.random_erase > 0:
        tail.append(v2.RandomErasing(p=augment.random_erase, value=0))
    if kind == "digits":
        # DigitsDataset is upsampled once at load time; digits are not mirror-symmetric, so the only
        # augmentation is a shift of up to 1/8 of the image (RandomAffine costs 3x more for no gain here).
        head = [v2.ToImage(), v2.RandomCrop(size, padding=size // 8)]
    elif kind == "fashion-mnist":
        # Resized once at load time, like digits; clothes are left-right symmetric, so shifts and flips.
        head = [v2.ToImage(), v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]
    elif kind == "cifar":
        # The standard CIFAR recipe (He et al. 2015, arXiv:1512.03385, sec. 4.2): pad 4, random crop, flip.
        head = [v2.ToImage(), v2.Resize(size, interpolation=interp, antialias=True),
                v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]
    else:
        head = [v2.ToImage(), v2.RandomResizedCrop(size, interpolation=interp, antialias=True),
                v2.RandomHorizontalFlip()]
    return v2.Compose(head + augment.policy_transform(kind, interp) + tail)


# ------------------------------------------------------------------------------------------------- datasets


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits as 3-channel uint8 images (grey replicated), for ``transforms.v2``; also any
    in-memory grey images stored with one channel (N, 1, H, W), given to the model as three."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None,
                 classes: list[str] | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = classes or [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        img = tv_tensors.Image(img.expand(3, -1, -1) if img.shape[0] == 1 else img)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def _digits_split(size: int, interp: str, split_seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 ink levels -> 0..255 bytes, grey -> RGB so every ImageNet-shaped model takes it unchanged.
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    images = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    # Upsample once for all epochs (a deterministic step; per-sample it would cost more than the augmentation).
    images = v2.functional.resize(images, [size, size], interpolation=_interp(interp), antialias=True)
    labels = torch.from_numpy(digits.target)
    idx_train, idx_val = train_test_split(
        list(range(len(labels))), test_size=0.2, random_state=split_seed, stratify=digits.target
    )
    return {"train": (images[idx_train], labels[idx_train]), "val": (images[idx_val], labels[idx_val])}


def keep_fraction(labels: Any, fraction: float, seed: int = 0) -> list[int]:
    """Indices of a fixed-seed, stratified ``fraction`` of a split (at least one sample per class)."""
    n = len(labels)
    if fraction >= 1.0:
        return list(range(n))
    from sklearn.model_selection import train_test_split

    classes = len(set(int(v) for v in labels))
    keep = max(classes, int(round(fraction * n)))
    if keep >= n:
        return list(range(n))
    kept, _ = train_test_split(list(range(n)), train_size=keep, random_state=seed, stratify=list(labels))
    return sorted(kept)


def _fashion_mnist(spec: str, prep: Preprocessing, with_train: bool, augment: Augmentation,
                   fraction: float) -> DataBundle:
    """Fashion-MNIST (or MNIST) from its four IDX files: 54,000 / 6,000 train / val of the training images, the test
    images for evaluation alone; grey images resized once to the input size, kept with one channel."""
    from sklearn.model_selection import train_test_split

    from archlab.train import idx

    folder = idx.DEFAULT_FOLDER if spec == "fashion-mnist" else Path(spec).expanduser()
    files = idx.find_files(folder)
    if files is None:
        if spec == "fashion-mnist":
            raise DataError(f"Fashion-MNIST is not in {folder}: install it with `{idx.INSTALL_HINT}`, or give "
                            f"--data a folder holding its four IDX files")
        raise DataError(f"{folder} does not hold the four IDX files ({', '.join(idx.FILES.values())})")
    classes = idx.CLASSES if spec == "fashion-mnist" or "fashion" in folder.name.lower() else None
    interp = _interp(prep.interpolation)

    def tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        if x.shape[-1] != prep.input_size or x.shape[-2] != prep.input_size:
            x = v2.functional.resize(x, [prep.input_size] * 2, interpolation=interp, antialias=True)
        return x.contiguous(), torch.from_numpy(labels)

    try:
        if not with_train:
            x, y = tensors(*idx.load_split(files, "test"))
            val = DigitsDataset(x, y, eval_transform(prep), classes)
            return DataBundle(None, val, 10, "fashion-mnist", prep, val.classes)
        images, labels = idx.load_split(files, "train")
    except idx.IDXError as exc:
        raise DataError(str(exc)) from None
    n_val = FASHION_VAL if len(labels) >= 10 * FASHION_VAL else max(1, len(labels) // 10)  # a small folder: 10%
    stratify = labels if min(np.bincount(labels)) >= 2 else None
    i_train, i_val = train_test_split(list(range(len(labels))), test_size=n_val, random_state=0,
                                      stratify=stratify)
    i_train = [i_train[j] for j in keep_fraction(labels[i_train], fraction)]
    train = DigitsDataset(*tensors(images[i_train], labels[i_train]), train_transform("fashion-mnist", prep, augment),
                          classes)
    val = DigitsDataset(*tensors(images[i_val], labels[i_val]), eval_transform(prep), classes)
    return DataBundle(train, val, 10, "fashion-mnist", prep, val.classes)


def cifar_root(path: Path) -> tuple[Path, type] | None:
    """(root for torchvision, dataset class) when ``path`` is a CIFAR python-format folder or its parent."""
    for folder, cls in (("cifar-10-batches-py", datasets.CIFAR10), ("cifar-100-python", datasets.CIFAR100)):
        if path.name == folder:
            return path.parent, cls
        if (path / folder).is_dir():
            return path, cls
    return None


def _cifar_problem(root: Path, cls: type) -> str | None:
    """Which file of a CIFAR folder is missing or not the released one (torchvision's own message only suggests
    ``download=True``, an argument archlab's user cannot pass)."""
    from torchvision.datasets.utils import check_integrity

    folder = Path(root) / cls.base_folder
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        return f"{folder} lacks {', '.join(missing)}; download the dataset again"
    corrupt = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
    if corrupt:
        return (f"{', '.join(str(folder / n) for n in corrupt)}: truncated or corrupt (its MD5 is not the release's); "
                f"download the dataset again")
    return None


def load_image(path: str) -> Any:
    """PIL loader for ImageFolder that names the file it cannot decode."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports bad files with all three
        raise DataError(f"cannot decode image {path} ({exc}); remove or replace the file") from None


BAD_IMAGE_POLICIES = ("refuse", "skip")


def undecodable_images(paths: list[str], on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The files among ``paths`` whose image header PIL cannot read (headers only: fast enough to run over a whole
    dataset before training, so that every bad file is found in one pass rather than one per run)."""
    from PIL import Image

    bad = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path):
                pass
        except (OSError, SyntaxError, ValueError):  # PIL reports bad files with all three
            bad.append(path)
        if on_progress is not None and ((i + 1) % 256 == 0 or i + 1 == len(paths)):
            on_progress(i + 1, len(paths))
    return bad


def _image_folder(root: Path, transform: Callable, bad: list[str],
                  on_scan: Callable[[int, int], None] | None = None) -> datasets.ImageFolder:
    """An ImageFolder whose images were all checked first (:func:`undecodable_images`): the undecodable ones are
    left out and appended to ``bad``."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    if not any(p.is_dir() for p in root.iterdir()):
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    try:
        folder = datasets.ImageFolder(str(root), transform=transform, loader=load_image)
    except FileNotFoundError as exc:
        raise DataError(f"{root}: {str(exc).splitlines()[0]}") from None
    found = set(undecodable_images([p for p, _ in folder.samples], on_scan))
    if found:
        folder.samples = [s for s in folder.samples if s[0] not in found]
        folder.imgs, folder.targets = folder.samples, [t for _, t in folder.samples]
        bad.extend(sorted(found))
    return folder


def describe_spec(spec: str) -> str:
    return spec if spec in ("digits", "fashion-mnist") else str(Path(spec).expanduser())


def is_idx_folder(path: Path) -> bool:
    from archlab.train.idx import find_files

    return path.is_dir() and find_files(path) is not None


def build_data(spec: str, prep_for: Callable[[str], Preprocessing], with_train: bool = True,
               augment: Augmentation = Augmentation(), fraction: float = 1.0, bad_images: str = "refuse",
               on_scan: Callable[[int, int], None] | None = None) -> DataBundle:
    """Resolve a data SPEC into train/val datasets.

    ``prep_for(kind)`` gives the :class:`Preprocessing` for the dataset kind (the training command uses the
    dataset's own statistics for digits/CIFAR and the model card's for ImageFolder; evaluation uses the card's).
    ``augment`` adds to the training split's transform (:class:`Augmentation`); ``fraction`` keeps that share of
    the training split (fixed seed). An ImageFolder's images are checked before anything else
    (:func:`undecodable_images`, ``on_scan(done, total)`` as it goes): ``bad_images="refuse"`` (the default: a run
    silently trained on fewer images than the folder holds is not the experiment its user asked for) lists every
    bad file in one error; ``"skip"`` leaves them out and names them in ``DataBundle.skipped``.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise DataError(f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {bad_images!r}")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"the data fraction must be in (0, 1], got {fraction}")
    if spec == "digits":
        prep = prep_for("digits")
        split = _digits_split(prep.input_size, prep.interpolation)
        images, labels = split["train"]
        kept = keep_fraction(labels.tolist(), fraction)
        train = DigitsDataset(images[kept], labels[kept], train_transform("digits", prep, augment)) \
            if with_train else None
        val = DigitsDataset(*split["val"], eval_transform(prep))
        return DataBundle(train, val, 10, "digits", prep, val.classes)
    if spec == "fashion-mnist" or is_idx_folder(Path(spec).expanduser()):
        return _fashion_mnist(spec, prep_for("fashion-mnist"), with_train, augment, fraction)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data folder {path} does not exist (give 'digits', 'fashion-mnist', a CIFAR folder or "
                        f"an ImageFolder root)")
    if not path.is_dir():
        raise DataError(f"data {path} is not a folder")
    if not any(path.iterdir()):
        raise DataError(f"data folder {path} is empty")
    cifar = cifar_root(path)
    if cifar:
        root, cls = cifar
        prep = prep_for("cifar")
        try:
            train = cls(str(root), train=True, download=False, transform=train_transform("cifar", prep, augment)) \
                if with_train else None
            val = cls(str(root), train=False, download=False, transform=eval_transform(prep))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            problem = _cifar_problem(root, cls) or f"not a readable CIFAR python-format folder ({exc})"
            raise DataError(f"{path}: {problem}") from None
        return DataBundle(_subset(train, fraction), val, len(val.classes), "cifar", prep, list(val.classes))
    prep = prep_for("imagefolder")
    train_dir, val_dir = path / "train", path / "val"
    if not val_dir.is_dir():
        if with_train:
            raise DataError(f"{path} needs train/ and val/ sub-folders, each with one folder per class")
        val_dir = path  # evaluation accepts a bare class-per-folder root
    if with_train and not train_dir.is_dir():
        raise DataError(f"{path} has no train/ sub-folder (expected {path}/train/<class>/<image>)")
    skipped: list[str] = []
    val = _image_folder(val_dir, eval_transform(prep), skipped, on_scan)
    train = _image_folder(train_dir, train_transform("imagefolder", prep, augment), skipped, on_scan) \
        if with_train else None
    if skipped and bad_images == "refuse":  # every bad file of both splits in one message: one run finds them all
        names = ", ".join(skipped[:20]) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        raise DataError(f"{len(skipped)} undecodable image{'s' if len(skipped) > 1 else ''} in {path}: {names}; "
                        f"remove or replace them, or leave them out with --bad-images skip")
    if train is not None and train.classes != val.classes:
        raise DataError(f"{path}: train/ and val/ hold different class folders")
    return DataBundle(_subset(train, fraction), val, len(val.classes), "imagefolder", prep, list(val.classes),
                      skipped)


def _subset(train: Dataset | None, fraction: float) -> Dataset | None:
    """A fixed-seed random ``fraction`` of a dataset read from disk (labels unknown until read: not stratified)."""
    if train is None or fraction >= 1.0:
        return train
    keep = max(1, int(round(fraction * len(train))))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:keep]
    return torch.utils.data.Subset(train, sorted(order.tolist()))


# ------------------------------------------------------------------------------------------- reproducibility


class SeededDataset(Dataset):
    """Runs each sample's random augmentation from its own generator, seeded by (seed, epoch, index).

    ``transforms.v2`` draws from torch's global generator; forking it around each ``__getitem__`` makes the
    augmentation of a sample a pure function of (seed, epoch, index), whichever worker or rank loads it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample_seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)  # CPU only: torch.manual_seed costs 30x more
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start an epoch part-way (after a mid-epoch checkpoint)."""

    start_index: int = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def loader_generator(seed: int) -> torch.Generator:
    # The DataLoader draws worker base seeds from this instead of the global generator, so creating a loader
    # iterator does not shift the random stream the model (dropout, drop-path) draws from.
    return torch.Generator().manual_seed(seed)


def make_train_loader(dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int,
                      workers: int, pin_memory: bool) -> tuple[DataLoader, SeededDataset, ResumableSampler]:
    seeded = SeededDataset(dataset, seed)
    sampler = ResumableSampler(seeded, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(seeded, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=pin_memory, generator=loader_generator(seed))
    return loader, seeded, sampler


def make_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """Rank ``r`` of ``world_size`` gets samples r, r+W, ... — every sample exactly once, none padded."""
    if world_size > 1:
        dataset = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=loader_generator(0))
