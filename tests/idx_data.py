"""Tiny IDX datasets written by the tests themselves (the format of MNIST / Fashion-MNIST), so the data path and
the design-study engine are tested without the real files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of uint8 values: zero, zero, type 0x08, the number of dimensions, each dimension (big-endian)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def tiny_idx_folder(root: Path, train: int = 200, test: int = 50, size: int = 28, gz: bool = True) -> Path:
    """Four IDX files of learnable 10-class images: class k is a bright bar at row 2k, plus noise."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, size, size))
        for i, k in enumerate(labels):
            images[i, (2 * k) % size: (2 * k) % size + 2, :] = 255
        suffix = ".gz" if gz else ""
        write_idx(root / (NAMES[f"{split}_images"] + suffix), images.astype(np.uint8))
        write_idx(root / (NAMES[f"{split}_labels"] + suffix), labels.astype(np.uint8))
    return root
