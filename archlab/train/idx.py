"""The IDX files of MNIST and Fashion-MNIST (LeCun et al.; Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747), read
without a download: ``--data fashion-mnist`` reads Debian's ``dataset-fashion-mnist`` package, or any folder holding
the four files (gzipped or not).

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then each dimension as a
4-byte integer) followed by the values; images are ``uint8`` of shape (N, 28, 28), labels ``uint8`` of shape (N,).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_FOLDER = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install dataset-fashion-mnist` puts it
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """A missing, truncated or malformed IDX file; the message names it."""


def find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (each as ``NAME`` or ``NAME.gz``), or None when any is missing."""
    found = {}
    for key, name in FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file holds (gzip-compressed when its name ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise IDXError(f"{path}: cannot read it ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IDXError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise IDXError(f"{path}: holds {len(data) - header} bytes of values, its header says {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x H x W uint8, labels N int64) of the ``train`` or ``test`` split, checked against each other."""
    images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXError(f"{files[f'{split}_images']}: expected uint8 images of shape (N, H, W), got "
                       f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IDXError(f"{files[f'{split}_labels']}: expected {len(images)} labels, got shape {labels.shape}")
    return images, labels.astype(np.int64)
