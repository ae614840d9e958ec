"""The run folder's human-readable side: config.json, metrics.csv and a PNG of the loss/accuracy curves.

Written by rank 0 only, atomically, after every epoch; rebuilt from the checkpoint's history on resume so the
files always describe exactly the epochs the checkpoint holds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from archlab.train.checkpoint import atomic_write_bytes, atomic_write_text

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_ema",
                  "images_per_s", "epoch_s")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def read_config(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    atomic_write_text(Path(run_dir) / "metrics.csv", buf.getvalue())


def plot_curves(run_dir: Path, history: list[dict[str, Any]], title: str) -> None:
    """curves.png: loss (train/val) and accuracy (train/val/val EMA) per epoch."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers, and no GUI toolkit import
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], "o-", label="val")
    if any(r.get("val_acc_ema") is not None for r in history):
        ax_acc.plot(epochs, [r.get("val_acc_ema") for r in history], "o-", label="val (EMA)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(run_dir) / "curves.png", lambda f: f.write(buf.getvalue()))
