"""`--data fashion-mnist`: the IDX reader, the fixed-seed split, --data-fraction, and one-line errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from archlab.preprocessing import Preprocessing
from archlab.train import idx
from archlab.train.data import FASHION_MEAN, FASHION_STD, DataError, build_data
from archlab.train.recipe import data_kind
from idx_data import NAMES, tiny_idx_folder, write_idx


def prep(size: int = 28) -> Preprocessing:
    return Preprocessing(size, FASHION_MEAN, FASHION_STD, "bilinear", 1.0)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, array)
    assert np.array_equal(idx.read_idx(path), array)


def test_bad_idx_files_are_named(tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(idx.IDXError, match="not an IDX file"):
        idx.read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(idx.IDXError, match="header says 10"):
        idx.read_idx(short)


def test_folder_split_fraction_and_eval_split(tmp_path) -> None:
    folder = tiny_idx_folder(tmp_path / "fm", train=200, test=50)
    assert data_kind(str(folder)) == "fashion-mnist" and data_kind("fashion-mnist") == "fashion-mnist"
    bundle = build_data(str(folder), lambda kind: prep(16))
    assert bundle.kind == "fashion-mnist" and bundle.num_classes == 10
    assert (len(bundle.train), len(bundle.val)) == (180, 20)  # a small folder keeps 10% for validation
    image, label = bundle.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= label < 10
    again = build_data(str(folder), lambda kind: prep(16))
    assert torch.equal(bundle.val.labels, again.val.labels)  # the split is fixed
    half = build_data(str(folder), lambda kind: prep(16), fraction=0.5)
    assert len(half.train) == 90 and len(half.val) == 20
    assert sorted(torch.bincount(half.train.labels).tolist()) == [9] * 10  # stratified
    test = build_data(str(folder), lambda kind: prep(), with_train=False)
    assert test.train is None and len(test.val) == 50  # evaluation alone: the test images


def test_missing_data_is_one_line_saying_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(idx, "DEFAULT_FOLDER", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        build_data("fashion-mnist", lambda kind: prep())
    assert "\n" not in str(info.value)
    folder = tiny_idx_folder(tmp_path / "broken")
    (folder / (NAMES["train_labels"] + ".gz")).write_bytes(b"junk")
    with pytest.raises(DataError, match="train-labels"):
        build_data(str(folder), lambda kind: prep())
    with pytest.raises(DataError, match="fraction must be in"):
        build_data(str(folder), lambda kind: prep(), fraction=0)


@pytest.mark.skipif(idx.find_files(idx.DEFAULT_FOLDER) is None, reason="dataset-fashion-mnist is not installed")
def test_the_debian_package() -> None:
    """The real files: 60,000 + 10,000 images, the split 54,000 / 6,000, the pixel statistics we normalise by."""
    files = idx.find_files(idx.DEFAULT_FOLDER)
    images, labels = idx.load_split(files, "train")
    assert images.shape == (60000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10
    assert abs(images.mean() / 255 - FASHION_MEAN[0]) < 1e-3 and abs(images.std() / 255 - FASHION_STD[0]) < 1e-3
    bundle = build_data("fashion-mnist", lambda kind: prep(), fraction=0.1)
    assert (len(bundle.train), len(bundle.val)) == (5400, 6000)
    assert bundle.classes[0] == "T-shirt/top"
    assert len(build_data("fashion-mnist", lambda kind: prep(), with_train=False).val) == 10000


def test_train_takes_it_from_the_command_line(tmp_path, capsys) -> None:
    import json

    from archlab.cli.main import main

    folder = tiny_idx_folder(tmp_path / "fm", train=100, test=30)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "cifar_resnet20:depth=8,width_mult=0.25", "--data", str(folder), "--data-fraction", "0.5",
                 "--epochs", "1", "--warmup-epochs", "0", "--sched", "step", "--input-size", "8", "--batch-size", "15",
                 "--out", str(run), "--json"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data_fraction"] == 0.5 and config["sched"] == "step" and config["model"].endswith("=0.25")
    assert json.loads(capsys.readouterr().out)["steps"] == 3  # 45 of the 90 training images, batch 15
    assert main(["train", "cifar_resnet20", "--data", str(folder), "--data-fraction", "0"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
