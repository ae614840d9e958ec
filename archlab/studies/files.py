"""A study the user writes: a TOML file with the fields of :class:`~archlab.studies.study.Study` (``archlab study
FILE.toml``; docs/studies.md has an example). A missing or mistyped field is a :class:`StudyError` naming it.

The file is read with the standard library's ``tomllib``; its text is kept with the study's results, so that
``archlab study show`` and the worker processes rebuild exactly the study that ran.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from archlab.studies.study import BUDGETS, Arm, Expect, Source, Study, StudyError, validate

TOP_LEVEL = {"name", "claim", "source", "arms", "expect", "seeds", "metric", "budgets", "notes"}
SOURCE_FIELDS = {"paper": True, "arxiv": True, "where": True, "figures": True, "metric": False}
ARM_FIELDS = {"label", "model", "recipe", "published", "budgets"}
EXPECT_FIELDS = {"better", "worse", "metric", "why"}


def load_study_file(path: str | Path) -> tuple[Study, dict[str, Any]]:
    """(the study, its source record for the results) from a TOML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    return study_from_toml(text, str(path)), {"file": str(path), "toml": text}


def study_from_toml(text: str, where: str = "study file") -> Study:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{where}: not valid TOML ({exc})") from None
    return study_from_dict(data, where)


def _need(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    if key not in table:
        if required:
            raise StudyError(f"{where}: missing field {key!r}")
        return None
    value = table[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise StudyError(f"{where}: field {key!r} must be {_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise StudyError(f"{where}: field {key!r} must be {_name(kind)}, got {value!r}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise StudyError(f"{where}: unknown field {extra[0]!r}; known: {', '.join(sorted(allowed))}")


def study_from_dict(data: dict[str, Any], where: str = "study file") -> Study:
    """A :class:`Study` from plain data (a parsed TOML file), every field checked and named when wrong."""
    _unknown(data, TOP_LEVEL, where)
    name = _need(data, "name", str, where)
    claim = _need(data, "claim", str, where)
    src = _need(data, "source", dict, where)
    _unknown(src, set(SOURCE_FIELDS), f"{where}: source")
    source = Source(**{k: _need(src, k, str, f"{where}: source", required) or "" for k, required in
                       SOURCE_FIELDS.items()})
    arms_data = _need(data, "arms", list, where)
    if not arms_data:
        raise StudyError(f"{where}: field 'arms' is empty")
    arms = []
    for i, a in enumerate(arms_data):
        at = f"{where}: arms[{i}]"
        if not isinstance(a, dict):
            raise StudyError(f"{at}: expected a table with label and model, got {a!r}")
        _unknown(a, ARM_FIELDS, at)
        published = _need(a, "published", (int, float), at, required=False)
        budgets = _need(a, "budgets", list, at, required=False)
        arms.append(Arm(label=_need(a, "label", str, at), model=_need(a, "model", str, at),
                        recipe=_need(a, "recipe", dict, at, required=False) or {},
                        published=None if published is None else float(published),
                        budgets=tuple(budgets) if budgets is not None else BUDGETS))
    expect = []
    for i, e in enumerate(_need(data, "expect", list, where, required=False) or []):
        at = f"{where}: expect[{i}]"
        if not isinstance(e, dict):
            raise StudyError(f"{at}: expected a table with better and worse, got {e!r}")
        _unknown(e, EXPECT_FIELDS, at)
        expect.append(Expect(better=_need(e, "better", str, at), worse=_need(e, "worse", str, at),
                             metric=_need(e, "metric", str, at, required=False) or "val_error",
                             why=_need(e, "why", str, at, required=False) or ""))
    seeds = _need(data, "seeds", list, where, required=False)
    if seeds is not None and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyError(f"{where}: field 'seeds' must be a list of integers, got {seeds!r}")
    budgets = _need(data, "budgets", dict, where, required=False) or {}
    for budget, recipe in budgets.items():
        if not isinstance(recipe, dict):
            raise StudyError(f"{where}: budgets.{budget} must be a table of recipe fields, got {recipe!r}")
    study = Study(name=name, claim=claim, source=source, arms=tuple(arms), expect=tuple(expect),
                  seeds=tuple(seeds) if seeds is not None else (0, 1, 2),
                  metric=_need(data, "metric", str, where, required=False) or "val_error",
                  budgets=budgets, notes=_need(data, "notes", str, where, required=False) or "")
    try:
        return validate(study)
    except StudyError as exc:
        raise StudyError(f"{where}: {exc}") from None


def study_from_source(source: dict) -> Study:
    """The study a results record names: a built-in one, or the text of the user's TOML file."""
    if "builtin" in source:
        from archlab.studies.tables import get_study

        return get_study(source["builtin"])
    return study_from_toml(source["toml"], source.get("file", "study file"))
