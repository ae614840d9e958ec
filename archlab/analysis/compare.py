"""The seed's architecture comparison table, measured on this machine (``archlab compare`` renders it).

For each model: the year and key innovation from its card, parameters and multiply-adds *measured* (by
:func:`archlab.analysis.profile` on the meta device, at the card's resolution) beside the *published* figures with
the difference in percent, the published ImageNet top-1 with its source, the activation memory of one forward pass,
a short CPU latency measurement at batch 1, and for the eight models of the seed's own table its figures and what
they are (:mod:`archlab.analysis.seed_table`). The rows are data (:class:`Row`); the
command writes them as tables and plots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from archlab.analysis.seed_table import SEED_FIGURES, SeedFigures

# The seed's comparison table, then the families it discusses without a row.
DEFAULT_MODELS = [
    "alexnet", "vgg16", "resnet50", "resnet152", "densenet201", "mobilenet_v2", "efficientnet_b0",
    "efficientnet_b7", "resnext50_32x4d", "seresnet50", "mobilenet_v1", "mobilenet_v3_large",
]


@dataclass
class Row:
    name: str
    family: str
    year: int
    resolution: int
    params: int
    params_published: int | None
    macs: int
    macs_published: int | None
    top1: float | None
    top1_source: str | None
    activation_bytes: int
    latency_ms: float | None
    innovation: str
    seed: SeedFigures | None = None  # the seed document's figures for this model, where its table has a row

    @staticmethod
    def delta(measured: float, published: float | None) -> float | None:
        return None if not published else 100.0 * (measured - published) / published

    @property
    def params_delta(self) -> float | None:
        return self.delta(self.params, self.params_published)

    @property
    def macs_delta(self) -> float | None:
        return self.delta(self.macs, self.macs_published)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(params_delta_pct=self.params_delta, macs_delta_pct=self.macs_delta)
        seed = d.pop("seed") or {}  # flat, so a CSV row holds it
        d.update({f"seed_{k}": seed.get(k) for k in ("params", "macs", "top1", "note")})
        return d


def latency_budget_repeats(macs: int) -> int:
    """Timed repeats for a short CPU measurement: fewer for the heavy models, so the whole table takes < 1 min."""
    return 7 if macs < 1e9 else 3 if macs < 8e9 else 1


def measure_row(name: str, bench: bool = True) -> Row:
    """Profile one model at its card's resolution and, with ``bench``, time batch-1 CPU inference."""
    import archlab
    from archlab.analysis import profile

    card = archlab.model_card(name)
    prof = profile(name)
    latency = None
    if bench:
        from archlab.bench import Contender, Settings, bench_row, summarize

        contender = Contender(label="ours", build=lambda: archlab.create_model(name), is_ours=True)
        settings = Settings(repeats=latency_budget_repeats(prof.macs), warmup=1)
        bench_row([contender], batch=1, settings=settings, input_size=card.input_size, measure_memory=False)
        latency = summarize(contender, 1)["median_ms"]
    return Row(
        name=name, family=card.family, year=card.year, resolution=card.input_size, params=prof.params,
        params_published=card.params, macs=prof.macs, macs_published=card.macs, top1=card.top1,
        top1_source=card.top1_source, activation_bytes=prof.activation_bytes, latency_ms=latency,
        innovation=card.innovation, seed=SEED_FIGURES.get(name),
    )


def compare(
    names: list[str] | None = None, bench: bool = True, on_row: Callable[[int, str], None] | None = None
) -> list[Row]:
    """Measure every model of ``names`` (default: :data:`DEFAULT_MODELS`); ``on_row(i, name)`` before each."""
    import archlab

    names = list(names or DEFAULT_MODELS)
    for name in names:
        archlab.model_card(name)  # an unknown name fails before any measuring starts
    rows = []
    for i, name in enumerate(names):
        if on_row:
            on_row(i, name)
        rows.append(measure_row(name, bench=bench))
    return rows
