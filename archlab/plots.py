"""Plots people would rather look at than a table: accuracy against cost, with the efficiency frontier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

AXES = {
    "macs": ("multiply-adds (G, log scale)", 1e-9, "Top-1 vs multiply-adds: the efficiency frontier"),
    "latency_ms": ("measured CPU latency at batch 1 (ms, log scale)", 1.0, "Top-1 vs measured latency"),
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _label_points(ax: Any, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label each point to its right, moving a label down (with a leader line) until it clears the ones placed
    before it, so clustered models (ResNet-50, ResNeXt-50, SE-ResNet-50, DenseNet-201) stay readable."""
    ax.figure.canvas.draw()  # fixes the limits, so data -> pixel transforms are final
    to_px = ax.transData.transform
    placed: list[tuple[float, float]] = []  # label anchors in pixels
    order = sorted(range(len(xs)), key=lambda i: -ys[i])
    for i in order:
        px, py = to_px((xs[i], ys[i]))
        ly = py + 4
        while any(abs(px - qx) < 160 and abs(ly - qy) < 11 for qx, qy in placed):
            ly -= 11
        placed.append((px, ly))
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(6, ly - py), textcoords="offset pixels", fontsize=8,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="grey") if ly < py - 6 else None)


def plot_accuracy_vs(rows: Sequence[Any], x_attr: str, path: Path) -> Path:
    """Scatter of published top-1 against ``x_attr`` of each row (marker area by params), labelled, with the
    frontier of models that no other model beats on both axes. Rows without a top-1 or cost are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, scale, title = AXES[x_attr]
    kept = [r for r in rows if r.top1 is not None and getattr(r, x_attr)]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    xs = [getattr(r, x_attr) * scale for r in kept]
    ys = [r.top1 for r in kept]
    sizes = [20 + 400 * math.sqrt(r.params / 1e8) for r in kept]
    ax.scatter(xs, ys, s=sizes, alpha=0.55, c=[r.year for r in kept], cmap="viridis", edgecolors="black")
    ax.set_xscale("log")
    _label_points(ax, xs, ys, [f"{r.name} ({r.params / 1e6:.1f}M)" for r in kept])
    front = pareto_front(list(zip(xs, ys)))
    if len(front) > 1:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", lw=1,
                label="efficiency frontier")
        ax.legend(loc="lower right")
    ax.set_xlabel(label)
    ax.set_ylabel("ImageNet top-1 (%), published")
    ax.set_title(title + "\n(marker area ~ parameters, colour ~ year)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
