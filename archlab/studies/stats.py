"""Verdicts a reader can trust: each ordering a claim predicts is tested at 5%, and a claim holds only if all of its
orderings do.

* Training studies: Welch's two-sided t-test (unequal variances, ``scipy.stats.ttest_ind(equal_var=False)``) on
  the per-seed metric of the two arms. An ordering *holds* when p < 0.05 and the difference has the predicted
  sign, is *contradicted* when p < 0.05 with the other sign, and is *inconclusive* otherwise (the difference is
  within seed noise) or when either arm has fewer than two finished seeds.
* Speed studies: the rows of a table are timed interleaved, so each repeat gives a pair of times measured under
  the same load; the test is the two-sided Wilcoxon signed-rank test of the per-repeat log time ratios against 0
  (ranks, so that a burst of load from a neighbour, a few repeats many times slower, does not swamp the rest).
* A claim (a study, or a speed table) *holds* when every ordering it predicts holds (an intersection-union test:
  still at 5%, without a correction for the number of orderings), is *contradicted* when any ordering is, and is
  *inconclusive* otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

ALPHA = 0.05
METHOD_TRAIN = ("Welch's two-sided t-test at 5% on the per-seed metric of the two arms; a claim holds when all "
                "its orderings hold (intersection-union test)")
METHOD_SPEED = ("two-sided Wilcoxon signed-rank test at 5% on the per-repeat log time ratio of two interleaved rows; "
                "a guideline holds when all its orderings hold")


@dataclass(frozen=True)
class Comparison:
    """One predicted ordering, tested: ``better`` should have the lower mean (error, or time)."""

    better: str
    worse: str
    metric: str
    mean_better: float | None
    mean_worse: float | None
    p_value: float | None
    verdict: str  # holds / contradicted / inconclusive
    reason: str = ""
    why: str = ""

    @property
    def difference(self) -> float | None:
        if self.mean_better is None or self.mean_worse is None:
            return None
        return self.mean_worse - self.mean_better

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _decide(p: float, predicted_sign: bool) -> str:
    if p < ALPHA:
        return "holds" if predicted_sign else "contradicted"
    return "inconclusive"


def welch(better: Sequence[float], worse: Sequence[float], labels: tuple[str, str], metric: str,
          why: str = "") -> Comparison:
    """Test "mean(better) < mean(worse)" from per-seed values (Welch's t-test, two-sided, 5%)."""
    m_b, _ = mean_std(better)
    m_w, _ = mean_std(worse)
    base = dict(better=labels[0], worse=labels[1], metric=metric, mean_better=m_b, mean_worse=m_w, why=why)
    short = [label for label, values in zip(labels, (better, worse)) if len(values) < 2]
    if short:
        return Comparison(**base, p_value=None, verdict="inconclusive",
                          reason=f"fewer than 2 finished seeds for {', '.join(short)}")
    if statistics.pvariance(better) == 0 and statistics.pvariance(worse) == 0:
        # Every seed gave the same value on both sides: a t statistic does not exist. Equal values are no
        # evidence either way; different ones are as decisive as the data can be.
        if m_b == m_w:
            return Comparison(**base, p_value=1.0, verdict="inconclusive", reason="identical on every seed")
        return Comparison(**base, p_value=0.0, verdict=_decide(0.0, m_b < m_w), reason="no seed-to-seed variance")
    from scipy import stats

    p = float(stats.ttest_ind(list(better), list(worse), equal_var=False).pvalue)
    return Comparison(**base, p_value=p, verdict=_decide(p, m_b < m_w))


def paired_log_ratio(better_ms: Sequence[float], worse_ms: Sequence[float], labels: tuple[str, str],
                     why: str = "") -> Comparison:
    """Test "better runs faster" from interleaved per-repeat times (ms): Wilcoxon signed-rank test of
    log(worse / better) against 0; the direction is that of the median ratio."""
    ratios = [math.log(w / b) for b, w in zip(better_ms, worse_ms) if b > 0 and w > 0]
    base = dict(better=labels[0], worse=labels[1], metric="time", mean_better=statistics.median(better_ms),
                mean_worse=statistics.median(worse_ms), why=why)
    if len(ratios) < 2:
        return Comparison(**base, p_value=None, verdict="inconclusive", reason="fewer than 2 timed repeats")
    if all(r == 0 for r in ratios):
        return Comparison(**base, p_value=1.0, verdict="inconclusive", reason="identical times")
    from scipy import stats

    p = float(stats.wilcoxon(ratios).pvalue)
    return Comparison(**base, p_value=p, verdict=_decide(p, statistics.median(ratios) > 0))


def overall(comparisons: Sequence[Comparison]) -> str:
    """holds (all hold), contradicted (any is), else inconclusive; no comparison at all is inconclusive."""
    verdicts = [c.verdict for c in comparisons]
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "inconclusive"
