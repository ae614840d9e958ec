"""Design studies: the seed's design claims tested on the user's machine and data (``archlab study``).

A study is a table (:class:`Study`, :mod:`archlab.studies.tables`); one engine runs them all
(:class:`StudyRun`, trials in Optuna's storage); :func:`collect` gathers the results and verdicts and
:mod:`archlab.studies.report` writes them.
"""

from archlab.studies.engine import StudyRun
from archlab.studies.plan import Settings
from archlab.studies.study import Arm, Expect, Source, Study, StudyError
from archlab.studies.tables import STUDIES, get_study, list_studies

__all__ = ["Arm", "Expect", "Settings", "Source", "STUDIES", "Study", "StudyError", "StudyRun", "get_study",
           "list_studies"]
