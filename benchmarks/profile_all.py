"""Profile every registered model at its card's resolution on the meta device and compare with published MACs.

    OMP_NUM_THREADS=1 python benchmarks/profile_all.py [PATTERN]

Prints one line per model (params, counted MACs, the card's published MACs, the difference in %, seconds) and the
total time; the goal is <= 15 s for the whole registry on 2 cores. A model whose count differs from the published
figure by more than 2% is flagged with '!'.
"""

from __future__ import annotations

import sys
import time

from archlab.analysis import profile
from archlab.registry import list_models, model_card


def main(pattern: str = "*") -> int:
    names = list_models(pattern)
    if not names:
        print(f"no model matches {pattern!r}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"{'model':<22}{'res':>5}{'params':>12}{'MACs':>12}{'published':>12}{'delta %':>9}{'time s':>8}")
    for name in names:
        card = model_card(name)
        p = profile(name, training_memory=False)
        delta = f"{100 * (p.macs - card.macs) / card.macs:+.2f}" if card.macs else "-"
        flag = "!" if card.macs and abs(p.macs - card.macs) > 0.02 * card.macs else ""
        published = f"{card.macs / 1e9:.3f}G" if card.macs else "-"
        print(f"{name:<22}{card.input_size:>5}{p.params / 1e6:>11.2f}M{p.macs / 1e9:>11.3f}G{published:>12}"
              f"{delta:>9}{p.seconds:>8.2f} {flag}")
    print(f"{len(names)} models in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
