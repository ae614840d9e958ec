"""``archlab search space``: design spaces compared as distributions (Radosavovic, Johnson, Xie, Lo & Dollár 2019,
"On Network Design Spaces for Visual Recognition", arXiv:1905.13214; Radosavovic, Kosaraju, Girshick, He & Dollár
2020, "Designing Network Design Spaces", arXiv:2003.13678).

Sample N models from each space within a band of multiply-adds, train each briefly, and compare the spaces by the
empirical distribution function (EDF) of their models' errors, F(e) = the share of models with error below e
(1905.13214 Sec. 3), not by their single best models; the two-sample Kolmogorov-Smirnov statistic (the largest gap
between two EDFs, scipy.stats.ks_2samp) says how far apart two spaces are.

A space is data (:class:`DesignSpace`): a model spec template and a table of parameters, each drawn uniformly (or
log-uniformly) from a range or from a list, as in the papers. The built-in ones are the papers' (2003.13678):

* ``anynet``: AnyNetX_C (Sec. 3.1): four stages of X blocks with free depths d_i in [1, 16] and widths w_i in
  [8, 1024] (multiples of 8, log-uniform), one group width g in {1, 2, 4, ..., 32} and bottleneck ratio 1/b,
  b in {1, 2, 4}, shared by the stages;
* ``regnet``: RegNetX (Sec. 3.3): widths and depths from the quantized linear rule, d < 64, w0 and wa < 256
  (log-uniform), 1.5 <= wm <= 3, g as above, b = 1.

A user's space is a TOML file with the same fields (``name``, ``model`` with ``{param}`` fields, ``[params.NAME]``
tables with one of ``int = [lo, hi]``, ``float = [lo, hi]``, ``choice = [...]``, and ``log``/``step``).
"""

from __future__ import annotations

import math
import random
import statistics
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from archlab.search.runner import Clock, SearchError, SearchSettings, drive, open_round, round_results
from archlab.studies.plan import input_size_for
from archlab.studies.study import Arm, Source, Study
from archlab.studies.tables import quick

PARAM_KINDS = ("int", "float", "choice")
DEFAULT_SPACES = ("anynet", "regnet")
# The papers compare spaces within a narrow band of flops (2003.13678: 360M-400M). At 32x32 a network costs
# (32/224)^2 = 1/49 of its 224x224 multiply-adds: 4M-8M here is the 200M-400M regime.
DEFAULT_BAND = (4e6, 8e6)
DEFAULT_MAX_TRIES = 500
INPUT_SIZE = {"*": 32}  # the stem and four stride-2 stages keep a 1x1 map at 32x32
# Quick: 3 epochs of the studies' quick recipe, 16 models a space; paper: 2003.13678's short schedule (Sec. 3:
# 10 epochs, SGD at lr 0.05, batch 128, cosine, weight decay 5e-5), 100 models a space (the paper: 500).
BUDGETS = {"quick": quick(3, INPUT_SIZE), "paper": dict(epochs=10, batch_size=128, lr=0.05, sched="cosine",
                                                      weight_decay=5e-5, warmup_epochs=0.0, label_smoothing=0.0,
                                                      input_size=INPUT_SIZE)}
SAMPLES = {"quick": 16, "paper": 100}
SEEDS = {"quick": 1, "paper": 1}
SOURCE = Source(paper="Radosavovic, Kosaraju, Girshick, He & Dollár 2020, Designing Network Design Spaces",
                arxiv="2003.13678", where="Sec. 2-3 (error EDFs of models sampled from a space; AnyNetX, RegNetX); "
                "the method: Radosavovic et al. 2019, arXiv:1905.13214",
                figures="EDFs of 500 models a space in a flop band, trained 10 epochs on ImageNet",
                metric="ImageNet top-1 error")


@dataclass(frozen=True)
class Param:
    """One design parameter: ``kind`` int / float (from ``low`` to ``high``, log-uniform when ``log``, ints in
    multiples of ``step``) or choice (one of ``choices``, uniformly)."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        if self.kind == "float":
            return round(x, 4)
        q = max(1, self.step)
        return int(min(self.high, max(self.low, q * round(x / q))))


@dataclass(frozen=True)
class DesignSpace:
    name: str
    model: str  # a model spec with {param} fields
    params: tuple[Param, ...]
    source: str = ""

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {p.name: p.sample(rng) for p in self.params}

    def spec(self, values: dict[str, Any]) -> str:
        return self.model.format(**values)


_GROUPS = Param("g", "choice", choices=(1, 2, 4, 8, 16, 32))
ANYNET = DesignSpace(
    "anynet", "regnet:widths=({w1},{w2},{w3},{w4}),depths=({d1},{d2},{d3},{d4}),group_width={g},bottleneck_ratio={b}",
    tuple(Param(f"d{i}", "int", 1, 16) for i in range(1, 5)) + tuple(Param(f"w{i}", "int", 8, 1024, log=True, step=8)
                                                                      for i in range(1, 5))
    + (_GROUPS, Param("b", "choice", choices=(1.0, 0.5, 0.25))),
    "AnyNetX_C, arXiv:2003.13678 Sec. 3.1")
REGNET = DesignSpace(
    "regnet", "regnet:w0={w0},wa={wa},wm={wm},depth={depth},group_width={g}",
    (Param("depth", "int", 1, 63), Param("w0", "int", 8, 248, log=True, step=8), Param("wa", "float", 8.0, 255.0,
                                                                                       log=True),
     Param("wm", "float", 1.5, 3.0), _GROUPS),
    "RegNetX, arXiv:2003.13678 Sec. 3.3")
SPACES = {s.name: s for s in (ANYNET, REGNET)}


def load_space(text: str) -> DesignSpace:
    """A built-in space by name, or a TOML file (module docstring); a bad file is a SearchError naming the field."""
    if text in SPACES:
        return SPACES[text]
    path = Path(text)
    if not path.is_file():
        raise SearchError(f"--space {text!r}: neither a built-in space ({', '.join(SPACES)}) nor a file")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SearchError(f"--space {path}: not a readable TOML file ({exc})") from None
    where = f"--space {path}"
    for key in ("name", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise SearchError(f"{where}: needs a string field {key!r}")
    tables = data.get("params")
    if not isinstance(tables, dict) or not tables:
        raise SearchError(f"{where}: needs [params.NAME] tables")
    params = []
    for name, t in tables.items():
        kinds = [k for k in PARAM_KINDS if k in t] if isinstance(t, dict) else []
        if len(kinds) != 1:
            raise SearchError(f"{where}: params.{name} needs exactly one of int = [lo, hi], float = [lo, hi], "
                              "choice = [...]")
        kind, value = kinds[0], t[kinds[0]]
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise SearchError(f"{where}: params.{name}.choice must be a non-empty list")
            params.append(Param(name, kind, choices=tuple(value)))
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                and value[0] <= value[1]):
            raise SearchError(f"{where}: params.{name}.{kind} must be [lo, hi] with lo <= hi, got {value!r}")
        log = bool(t.get("log", False))
        if log and value[0] <= 0:
            raise SearchError(f"{where}: params.{name}: a log-uniform range needs lo > 0")
        params.append(Param(name, kind, float(value[0]), float(value[1]), log, int(t.get("step", 1))))
    space = DesignSpace(data["name"], data["model"], tuple(params), str(data.get("source", path.name)))
    try:
        space.spec(space.sample(random.Random(0)))
    except (KeyError, IndexError, ValueError) as exc:
        raise SearchError(f"{where}: the model template names a parameter the file does not define ({exc})") from None
    return space


def regnet_macs(spec: str, input_size: int, num_classes: int = 10) -> int | None:
    """Multiply-adds of a ``regnet`` spec (RegNetX: no SE) counted from its stage table without building it: the
    same count as :func:`archlab.analysis.profile` (convolutions and the FC; tested), a thousand times faster, so
    that rejection sampling can afford hundreds of tries. None for any other spec."""
    from archlab.models.regnet import STEM_WIDTH, anynet_stages, regnet_widths
    from archlab.registry import model_card, parse_model_spec

    name, keys = parse_model_spec(spec)
    if name != "regnet" or keys.get("se_ratio"):
        return None
    k = {**model_card("regnet").default_kwargs, **keys}
    ratio = k.get("bottleneck_ratio", 1.0)
    if k.get("widths") is not None or k.get("depths") is not None:
        stages = anynet_stages(k.get("widths"), k.get("depths"), k["group_width"], ratio)
    else:
        stages = regnet_widths(k["w0"], k["wa"], k["wm"], k["depth"], k["group_width"], ratio)
    r = -(-input_size // 2)  # a 3x3 stride-2 conv with padding 1: ceil(size / 2)
    macs, chs = r * r * 3 * 9 * STEM_WIDTH, STEM_WIDTH
    for s in stages:
        for j in range(s.depth):
            r_in, r = r, (-(-r // 2) if j == 0 else r)
            inner = int(round(s.width * ratio))
            macs += r_in * r_in * chs * inner + r * r * inner * 9 * s.group_width + r * r * inner * s.width
            if j == 0 or chs != s.width:
                macs += r * r * chs * s.width  # the projection shortcut
            chs = s.width
    return macs + chs * num_classes


@dataclass(frozen=True)
class Sample:
    space: str
    index: int
    spec: str
    values: dict[str, Any]
    macs: int
    params: int
    tries: int


def sample_space(space: DesignSpace, n: int, band: tuple[float, float], input_size: int, max_tries: int,
                 seed: int = 0) -> list[Sample]:
    """``n`` distinct models of ``space`` whose multiply-adds at ``input_size`` lie in ``band``, by rejection (a
    point that does not build counts as a try). Sample ``i`` draws from its own seeded generator, so the same
    command draws the same models. After ``max_tries`` tries for one sample: a SearchError saying how close the
    nearest came."""
    import torch

    from archlab.analysis import profile
    from archlab.registry import create_from_spec

    out: list[Sample] = []
    seen: set[str] = set()
    for i in range(n):
        rng = random.Random(f"{space.name}/{seed}/{i}")
        nearest: tuple[float, int] | None = None
        for t in range(1, max_tries + 1):
            values = space.sample(rng)
            spec = space.spec(values)
            if spec in seen:
                continue
            try:
                macs = regnet_macs(spec, input_size)
                if macs is None or band[0] <= macs <= band[1]:  # counted by building it (on the meta device)
                    with torch.device("meta"):
                        p = profile(create_from_spec(spec, num_classes=10), input_size=input_size,
                                    training_memory=False)
                    macs = p.macs
            except ValueError:
                continue
            gap = max(band[0] - macs, macs - band[1], 0)
            if nearest is None or gap < nearest[0]:
                nearest = (gap, macs)
            if gap == 0:
                seen.add(spec)
                out.append(Sample(space.name, i, spec, values, macs, p.params, t))
                break
        else:
            near = "no point built" if nearest is None else f"the nearest had {nearest[1] / 1e6:.3g}M"
            raise SearchError(f"space {space.name}: no sample within the multiply-add band {band[0] / 1e6:g}M-"
                              f"{band[1] / 1e6:g}M after {max_tries} tries ({near}); widen --macs or raise "
                              "--max-tries")
    return out


def edf(errors: list[float]) -> list[tuple[float, float]]:
    """The empirical distribution function as (error, share of models with an error up to it) steps."""
    xs = sorted(errors)
    return [(x, (i + 1) / len(xs)) for i, x in enumerate(xs)]


def ks(a: list[float], b: list[float]) -> dict[str, float] | None:
    """The two-sample Kolmogorov-Smirnov statistic and p-value (scipy.stats.ks_2samp); None with an empty side."""
    if not a or not b:
        return None
    from scipy import stats

    result = stats.ks_2samp(a, b)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


@dataclass(frozen=True)
class SpaceOptions:
    spaces: tuple[str, ...] = DEFAULT_SPACES
    samples: int | None = None  # None: the budget's
    band: tuple[float, float] = DEFAULT_BAND
    max_tries: int = DEFAULT_MAX_TRIES


def parse_band(text: str) -> tuple[float, float]:
    """``LO:HI`` in millions of multiply-adds."""
    try:
        lo, hi = (float(v) * 1e6 for v in text.split(":"))
    except ValueError:
        raise SearchError(f"--macs takes LO:HI in millions of multiply-adds (e.g. 4:8), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise SearchError(f"--macs {text!r}: needs 0 <= LO <= HI")
    return lo, hi


def sample_all(o: SpaceOptions, settings: SearchSettings) -> tuple[list[DesignSpace], dict[str, list[Sample]]]:
    """Every space's samples (bad input, a space that cannot fill the band included, fails here, before training)."""
    spaces = [load_space(s) for s in o.spaces]
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise SearchError(f"--space: two spaces have one name ({', '.join(names)})")
    size = input_size_for(INPUT_SIZE, settings.data) or 32
    n = o.samples or SAMPLES[settings.budget]
    return spaces, {s.name: sample_space(s, n, o.band, size, o.max_tries) for s in spaces}


def run_space(o: SpaceOptions, settings: SearchSettings, out: Path,
              on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Sample, train (one study: every space's models, interleaved so that a search stopped early has as many of
    each), and compare the spaces' error EDFs; returns the results."""
    clock = Clock(settings)
    spaces, samples = sample_all(o, settings)
    n = max(len(v) for v in samples.values())
    arms = [Arm(f"{s.name}-{i:03d}", samples[s.name][i].spec) for i in range(n) for s in spaces]
    seeds = settings.seeds or SEEDS[settings.budget]
    study = Study(name="search-space", claim="Design spaces compared by the error EDFs of their models",
                  source=SOURCE, arms=tuple(arms), seeds=tuple(range(seeds)), budgets=BUDGETS,
                  notes=f"band {o.band[0] / 1e6:g}M-{o.band[1] / 1e6:g}M MACs; spaces {', '.join(o.spaces)}")
    run = open_round(study, settings, out)
    stopped = drive(run, settings.workers, clock, 0, on_progress and (lambda p: on_progress("models", p)))
    res = round_results(run)
    by_label = {a["label"]: a for a in res["arms"]}
    rows, errors = [], {s.name: [] for s in spaces}
    for s in spaces:
        for smp in samples[s.name]:
            a = by_label[f"{s.name}-{smp.index:03d}"]
            err = a.get("val_error_mean")
            rows.append({"label": a["label"], "space": s.name, "spec": smp.spec, "params": smp.params,
                         "macs": smp.macs, "tries": smp.tries, "val_error": err,
                         "val_error_std": a.get("val_error_std"),
                         "seeds_done": a["seeds_done"], "seeds": a["seeds"]})
            if err is not None:
                errors[s.name].append(err)
    summary = []
    for s in spaces:
        e = sorted(errors[s.name])
        summary.append({"space": s.name, "source": s.source, "model": s.model, "sampled": len(samples[s.name]),
                        "trained": len(e), "min": e[0] if e else None, "median": statistics.median(e) if e else None,
                        "max": e[-1] if e else None, "edf": edf(e),
                        "params": [asdict(p) for p in s.params]})
    pairs = [{"a": a.name, "b": b.name, **(ks(errors[a.name], errors[b.name]) or {})}
             for i, a in enumerate(spaces) for b in spaces[i + 1:]]
    return {"search": "space", "source": asdict(SOURCE), "band": list(o.band), "input_size": rows and
            res["arms"][0].get("input_size"), "budget": settings.budget, "data": settings.data,
            "data_fraction": settings.data_fraction,
            "recipe": {**res["recipe"], **({"epochs": settings.epochs} if settings.epochs else {})},
            "seeds": seeds, "samples": n, "spaces": summary, "ks": pairs, "models": rows, "trials": res["trials"],
            "missing": res["missing"], "storage": run.storage_url, "out": str(out), "machine": res["machine"],
            "stopped": stopped, "wall_s": clock.elapsed()}
