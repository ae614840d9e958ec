"""Architecture search (``archlab search``) on the design-study engine (:mod:`archlab.studies`).

* :mod:`archlab.search.compound`: EfficientNet's grid search for the compound-scaling coefficients
  (arXiv:1905.11946, Sec. 3.3), step 1 and step 2;
* :mod:`archlab.search.mnas`: a multi-objective search of a mobile design space for accuracy against measured
  latency or multiply-adds (MnasNet, arXiv:1807.11626), with Optuna's samplers;
* :mod:`archlab.search.space`: design spaces compared by the error EDF of models sampled from them
  (Radosavovic et al., arXiv:1905.13214 and arXiv:2003.13678).

Every candidate is a model spec string that every archlab command takes; the library returns plain data and
:mod:`archlab.search.report` writes it.
"""

from archlab.search.runner import SearchError, SearchSettings

__all__ = ["SearchError", "SearchSettings"]
