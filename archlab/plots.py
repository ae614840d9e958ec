"""Plots people would rather look at than a table: accuracy against cost, with the efficiency frontier; and the
seed's design patterns stage by stage (resolution down, channels up, receptive field out)."""

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


def plot_stage_traces(traces: Sequence[Any], path: Path) -> Path:
    """Three panels, one line per model (:class:`archlab.analysis.trace.StageTrace`): resolution, channels and
    receptive field of each stage output, from the input to the pooled vector. The seed's design patterns —
    spatial size halving, channels doubling, the receptive field growing past the image — side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), dpi=120)
    panels = (("resolution (pixels, log scale)", lambda s: s.resolution[0]),
              ("channels (log scale)", lambda s: s.channels),
              ("receptive field (input pixels, log scale)", lambda s: s.receptive_field))
    # Models often share a pattern exactly (224→112→...→7): distinct markers, dashes and shrinking marker sizes
    # keep every line visible where they coincide.
    markers, dashes = "osD^vP*X", ["-", "--", "-.", ":"]
    for ax, (ylabel, value) in zip(axes, panels):
        for i, t in enumerate(traces):
            stages = [s for s in t.stages if value(s) > 0]
            ax.plot(range(len(stages)), [value(s) for s in stages], marker=markers[i % len(markers)],
                    ls=dashes[i % len(dashes)], ms=max(3.0, 9.0 - 1.5 * i), alpha=0.85, label=t.name)
        if ylabel.startswith("receptive"):
            for size in sorted({t.input_size[0] for t in traces}):
                ax.axhline(size, color="grey", lw=0.8, ls=":")
            ax.text(0, max(t.input_size[0] for t in traces), " input size", fontsize=8, va="bottom", color="grey")
        ax.set_yscale("log", base=2)
        ax.set_xlabel("stage output (0 = input, last = pre-logits vector)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("spatial size decreases")
    axes[1].set_title("channel depth increases")
    axes[2].set_title("receptive field grows")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_effective_rf(erf: Any, path: Path) -> Path:
    """One panel per stage (:class:`archlab.analysis.effective_rf.EffectiveRF`): the centre unit's input-gradient
    magnitude (square-root colour scale, so the tails show), with the theoretical field (dashed) and the
    effective one (solid) outlined around the gradient's centre of mass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(erf.stages)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), dpi=120, squeeze=False)
    for ax, s in zip(axes[0], erf.stages):
        ax.imshow([[v**0.5 for v in row] for row in s.gradient], cmap="magma", interpolation="nearest")
        cy, cx = s.centre
        for side, style, colour in ((s.theoretical, "--", "white"), (s.effective, "-", "cyan")):
            ax.add_patch(Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, ls=style, lw=1.2,
                                   ec=colour))
        ax.set_title(f"{s.stage} ({s.resolution[0]}x{s.resolution[1]})\nRF {s.theoretical}, effective "
                     f"{s.effective} ({100 * s.fraction:.0f}%)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{erf.name}: |d centre unit / d input| per stage output; dashed: theoretical receptive field, "
                 f"solid: square holding {100 * erf.mass:g}% of the gradient", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bench(rows: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """``archlab bench --plot``: images/s of each implementation (rows of :func:`archlab.bench.summarize` with a
    ``model``), against batch size when several were timed (log-log, bars for the interquartile range), else as
    grouped bars. Ours solid, the references dashed in the same colour as the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)

    def speed(r: dict[str, Any], key: str) -> float:
        return r["batch"] * 1e3 / r[key]

    # Rows of `bench --runtime` carry their runtime: archlab's own is the fused form, the others are peers.
    runtimes = any("runtime" in r for r in rows)

    def is_ours(r: dict[str, Any]) -> bool:
        return r["impl"] == "ours" or r.get("runtime") == "fused"

    def name_of(r: dict[str, Any]) -> str:
        return "archlab" if r["impl"] == "ours" else r["impl"] if runtimes else r["impl"].split(":")[0]

    if len(batches) > 1:
        for model in models:
            for impl in dict.fromkeys(r["impl"] for r in rows if r["model"] == model):
                line = sorted((r for r in rows if r["model"] == model and r["impl"] == impl), key=lambda r: r["batch"])
                ys = [r["images_per_s"] for r in line]
                err = [[y - speed(r, "q3_ms") for y, r in zip(ys, line)],
                       [speed(r, "q1_ms") - y for y, r in zip(ys, line)]]
                ours = is_ours(line[0])
                ax.errorbar([r["batch"] for r in line], ys, yerr=err, color=colours[model], capsize=2,
                            marker="o" if ours else "s", ls="-" if ours else "--",
                            label=f"{model} ({name_of(line[0])})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
    else:
        everyone_ours = all(is_ours(r) for r in rows)
        width = 0.8 / max(1, max(sum(r["model"] == m for r in rows) for m in models))
        for i, model in enumerate(models):
            mine = [r for r in rows if r["model"] == model]
            for j, r in enumerate(mine):
                y = r["images_per_s"]
                ours = is_ours(r)
                ax.bar(i + (j - (len(mine) - 1) / 2) * width, y, width * 0.95, color=colours[model],
                       alpha=1.0 if ours else 0.45, hatch=None if ours else "//", edgecolor="black",
                       yerr=[[y - speed(r, "q3_ms")], [speed(r, "q1_ms") - y]], capsize=2)
                # Inside the bar, from its foot: the implementation's library (its model name is the group's).
                ax.annotate(name_of(r), (i + (j - (len(mine) - 1) / 2) * width, 0),
                            xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8,
                            rotation=90)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
        peers = "the other runtimes" if runtimes else "the reference implementation"
        ax.set_xlabel(f"batch {batches[0]}" + ("" if everyone_ours else f"; hatched: {peers}"))
    ax.set_ylabel("images / s (median; bars: interquartile range)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if len(batches) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scaling(rows: Sequence[Any], constraint: float, path: Path) -> Path:
    """``archlab scale --plot``: multiply-adds and parameters over B0's against phi (log scale): the formula's
    promise ``constraint ** phi``, B0 scaled by the formula and measured, and the released B1–B7 measured
    (rows of :func:`archlab.analysis.scaling.scaling_table`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    formula = [r for r in rows if r.kind == "formula"]
    released = [r for r in rows if r.kind == "released"]
    phis = [r.phi for r in rows]
    grid = [min(phis) + (max(phis) - min(phis)) * i / 100 for i in range(101)]
    for ax, what in zip(axes, ("macs", "params")):
        if what == "macs":
            ax.plot(grid, [constraint**p for p in grid], color="black", ls="--", lw=1.5, zorder=5,
                    label=f"the formula's promise: ({constraint:.3f})^phi")
            ys_f, ys_r = [r.macs_ratio for r in formula], [r.macs_ratio for r in released]
            ax.set_ylabel("multiply-adds over B0's at 224 (log scale)")
            ax.set_title("FLOPs growth: the formula's promise and the networks built")
        else:
            ys_f, ys_r = [r.params_ratio for r in formula], [r.params_ratio for r in released]
            ax.set_ylabel("parameters over B0's (log scale)")
            ax.set_title("parameter growth (depth x width^2; resolution adds none)")
        ax.plot([r.phi for r in formula], ys_f, "o-", label="B0 scaled by the formula (measured)")
        if released:  # drawn from B0 (1, 1), which both series start from
            ax.plot([0.0] + [r.phi for r in released], [1.0] + ys_r, "s-", label="released B1-B7 (measured)")
            for r, y in zip(released, ys_r):
                ax.annotate(r.model.replace("efficientnet_", ""), (r.phi, y), xytext=(4, -10),
                            textcoords="offset points", fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("phi (compound coefficient)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_layer_shares(summary: Any, path: Path) -> Path:
    """``archlab summary --plot``: each row's share of the parameters, of the multiply-adds and (``--time``) of the
    measured forward time, as horizontal bars, first layer at the top (:class:`archlab.analysis.summary.Summary`).
    Where the bars of one row differ, cost is not where the counts say: depthwise convs are few MACs and much time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.rows
    timed = summary.time_ms is not None
    series = [("parameters", [r.params / max(summary.params, 1) for r in rows], "0.6"),
              ("multiply-adds", [r.share for r in rows], "tab:blue")]
    if timed:
        series.append(("measured time", [r.time_share or 0.0 for r in rows], "tab:orange"))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * len(rows) * (1 + 0.3 * len(series))), dpi=120)
    for k, (label, shares, colour) in enumerate(series):
        ys = [i + (k - (len(series) - 1) / 2) * height for i in range(len(rows))]
        ax.barh(ys, [100 * v for v in shares], height * 0.95, color=colour, label=label)
    ax.set_yticks(range(len(rows)), [f"{r.name} ({r.type})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of the whole network (%)")
    h, w = summary.input_size
    timing = f", {summary.time_ms:.1f} ms per forward (batch {summary.time_batch})" if timed else ""
    ax.set_title(f"{summary.name} at {h}x{w}: {summary.params / 1e6:.2f}M params, {summary.macs / 1e9:.3f}G MACs"
                 f"{timing}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ design studies
# `archlab study` (archlab.studies.report): training curves per arm, the metric against multiply-adds, and the speed
# study's throughput ratios beside the paper's. Each takes the plain dicts of archlab.studies.results.collect.

_METRIC_LABELS = {"val_error": "validation error (%)", "train_error": "training error (%)"}


def _study_pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_study_curves(arms: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Training and validation error per epoch, one line per arm: the mean over its seeds, with a band from the
    lowest to the highest seed."""
    plt = _study_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for i, arm in enumerate(arms):
        curves = [c for c in arm.get("curves") or [] if c]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        colour = f"C{i % 10}"
        for ax, key in zip(axes, ("train_error", "val_error")):
            xs = [curves[0][e]["epoch"] for e in range(epochs)]
            values = [[c[e][key] for c in curves] for e in range(epochs)]
            mean = [sum(v) / len(v) for v in values]
            ax.plot(xs, mean, "-o", ms=3, color=colour, label=f"{arm['label']} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.18)
    for ax, key in zip(axes, ("train_error", "val_error")):
        ax.set(xlabel="epoch", ylabel=_METRIC_LABELS[key], title=_METRIC_LABELS[key].split(" (")[0])
        ax.grid(alpha=0.3)
    if axes[1].get_lines():
        axes[1].legend(fontsize=8)
    else:  # no trial finished an epoch yet (or every one failed): say so instead of an empty legend's warning
        axes[1].text(0.5, 0.5, "no finished epoch yet", ha="center", va="center", transform=axes[1].transAxes)
    fig.suptitle(title + " (line: mean over seeds; band: lowest to highest seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_study_cost(arms: Sequence[dict[str, Any]], metric: str, title: str, path: Path) -> Path:
    """Each arm's metric (mean, with the seeds' standard deviation as error bars) against its multiply-adds."""
    plt = _study_pyplot()
    kept = [a for a in arms if a.get(f"{metric}_mean") is not None and a.get("macs")]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, a in enumerate(kept):
        ax.errorbar(a["macs"] / 1e6, a[f"{metric}_mean"], yerr=a.get(f"{metric}_std") or 0.0, fmt="o", capsize=4,
                    color=f"C{i % 10}", label=f"{a['label']} (n={a['seeds_done']})")
        ax.annotate(a["label"], (a["macs"] / 1e6, a[f"{metric}_mean"]), xytext=(6, 4), textcoords="offset points",
                    fontsize=8)
    if kept and max(a["macs"] for a in kept) > 3 * min(a["macs"] for a in kept):
        ax.set_xscale("log")
    ax.set(xlabel="multiply-adds (M)", ylabel=_METRIC_LABELS.get(metric, metric), title=title)
    ax.grid(True, which="both", alpha=0.3)
    if kept:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_speed_study(tables: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """One panel per table: each row's throughput over the first row's, measured here beside the paper's."""
    plt = _study_pyplot()
    shown = [t for t in tables if t.get("rows")]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 4.2), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], shown):
        labels = [r["label"] for r in t["rows"]]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], [r["ratio"] for r in t["rows"]], 0.4, label=f"measured ({t['device']})")
        ax.bar([x + 0.2 for x in xs], [r["paper_ratio"] for r in t["rows"]], 0.4, label=f"paper: {t['paper_column']}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=8)
        ax.set(title=f"{t['name']} ({t['where']}): {t['verdict']}", ylabel="throughput / first row's")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- architecture search
# `archlab search` (archlab.search.report): the compound-scaling search's two steps, the latency-aware search's Pareto
# front, and the design-space error EDFs. Each takes the plain dicts of archlab.search's results.


def plot_compound_search(r: dict[str, Any], path: Path) -> Path:
    """Left: step 1, every network's validation accuracy (mean, seeds' standard deviation as error bars) against its
    multiply-adds, the best and the paper's point marked. Right: step 2, accuracy against multiply-adds as phi grows,
    one line for the found coefficients and one for the paper's."""
    plt = _study_pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    rows = [x for x in r["step1"] if x.get("acc_mean") is not None and x.get("macs")]
    for x in rows:
        colour = "C3" if x.get("paper") else ("C2" if x.get("rank") == 1 else "C0")
        left.errorbar(x["macs"] / 1e6, x["acc_mean"], yerr=x.get("acc_std") or 0.0, fmt="o", ms=4, capsize=2,
                      color=colour, alpha=0.9 if colour != "C0" else 0.5)
        if colour != "C0":
            who = "paper" if x.get("paper") else "best"
            left.annotate(f"{who} ({x['alpha']:g}, {x['beta']:g}, {x['gamma']:g})", (x["macs"] / 1e6, x["acc_mean"]),
                          xytext=(6, 4), textcoords="offset points", fontsize=8, color=colour)
    left.set(xlabel="multiply-adds (M) at phi = 1", ylabel="validation accuracy (%)",
             title=f"step 1: {len(rows)} networks, alpha*beta^2*gamma^2 within {r['tolerance']:g} of 2")
    left.grid(alpha=0.3)
    for i, who in enumerate(("found", "paper")):
        line = sorted((x for x in r["step2"]["rows"] if x["coefficients"] in (who, "base") and x.get("macs")
                       and x.get("acc_mean") is not None), key=lambda x: x["phi"])
        if len(line) < 2 and not any(x["coefficients"] == who for x in line):
            continue
        c = line[-1] if line[-1]["coefficients"] == who else None
        name = f"{who}" + (f" ({c['alpha']:g}, {c['beta']:g}, {c['gamma']:g})" if c else "")
        right.errorbar([x["macs"] / 1e6 for x in line], [x["acc_mean"] for x in line],
                       yerr=[x.get("acc_std") or 0.0 for x in line], fmt="-o", capsize=3, color=("C2", "C3")[i],
                       label=name)
        for x in line:
            if x["phi"] or not i:  # the base (phi = 0) is on both lines: named once
                right.annotate(f"phi={x['phi']}", (x["macs"] / 1e6, x["acc_mean"]), xytext=(4, -10),
                               textcoords="offset points", fontsize=7)
    right.set(xlabel="multiply-adds (M, log scale)", ylabel="validation accuracy (%)",
              title="step 2: scaled by phi = 0..3")
    right.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    right.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 2, 5, 10, 20 ... as plain numbers
    right.xaxis.set_major_formatter(ScalarFormatter())
    right.xaxis.set_minor_formatter(NullFormatter())
    right.grid(True, which="both", alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    fig.suptitle(f"compound-scaling search on {r['data']} (base {r['base']}, {r['budget']} budget)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pareto_search(r: dict[str, Any], path: Path) -> Path:
    """Every candidate's validation accuracy against its cost (latency with its quartiles as horizontal bars, or
    multiply-adds), the Pareto front joined as a staircase, the anchor's latency (and the reward's target) marked."""
    plt = _study_pyplot()
    key = r["cost_key"]
    scale, label = (1.0, "latency at batch 1 (ms, this CPU)") if key == "latency_ms" else (1e-6, "multiply-adds (M)")
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=110)
    rows = [x for x in r["candidates"] if x.get(key) is not None and x.get("acc_mean") is not None]
    for x in rows:
        colour = "C3" if x["pareto"] else "C0"
        xerr = None
        if key == "latency_ms":
            xerr = [[x["latency_ms"] - x["latency_q1_ms"]], [x["latency_q3_ms"] - x["latency_ms"]]]
        ax.errorbar(x[key] * scale, x["acc_mean"], xerr=xerr, fmt="o", ms=5 if x["pareto"] else 4, capsize=2,
                    color=colour, alpha=1.0 if x["pareto"] else 0.45)
    front = sorted((x for x in rows if x["pareto"]), key=lambda x: x[key])
    if front:
        ax.step([x[key] * scale for x in front], [x["acc_mean"] for x in front], where="post", color="C3", lw=1,
                label=f"Pareto front ({len(front)})")
        for x in front:
            ax.annotate(x["label"], (x[key] * scale, x["acc_mean"]), xytext=(5, -10), textcoords="offset points",
                        fontsize=7, color="C3")
    anchor = r.get("anchor") or {}
    if key == "latency_ms" and anchor.get("median_ms"):
        ax.axvline(anchor["median_ms"], color="grey", ls=":", lw=1, label=f"anchor {anchor['spec'].split(':')[0]} "
                   f"({anchor['median_ms']:.2f} ms)")
    target = (r.get("options") or {}).get("target_ms")
    if target:
        ax.axvline(target, color="C2", ls="--", lw=1, label=f"target T = {target:g} ms")
    ax.set(xlabel=label, ylabel="validation accuracy (%)",
           title=f"{r['options']['sampler']} search, {len(rows)} candidates on {r['data']} ({r['budget']} budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_space_edf(r: dict[str, Any], path: Path) -> Path:
    """Each design space's error EDF (the share of its models with validation error up to e) on one plot, the
    Kolmogorov-Smirnov statistic between each pair in the title."""
    plt = _study_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for i, s in enumerate(r["spaces"]):
        if not s["edf"]:
            continue
        xs = [s["edf"][0][0]] + [e for e, _ in s["edf"]]  # from 0 at the lowest error, a step up at each model
        ys = [0.0] + [f for _, f in s["edf"]]
        ax.step(xs, ys, where="post", color=f"C{i % 10}", lw=1.6,
                label=f"{s['space']} ({s['trained']} models; min {s['min']:.1f}%, median {s['median']:.1f}%)")
    ks = "; ".join(f"{k['a']} vs {k['b']}: D = {k['statistic']:.2f} (p = {k['p_value']:.2g})" for k in r["ks"]
                   if k.get("statistic") is not None)
    band = f"{r['band'][0] / 1e6:g}M-{r['band'][1] / 1e6:g}M MACs"
    ax.set(xlabel="validation error (%)", ylabel="cumulative share of models", ylim=(0, 1.02),
           title=f"error EDFs on {r['data']} ({band}, {r['budget']} budget)\n{ks}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
