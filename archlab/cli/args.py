"""Argument types and checks shared by the commands; :class:`CLIError`, the bad input that every command answers
with one line ("archlab: error: ...") and exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

SPEC_HELP = ("a registered model name (see `archlab list`), or NAME:key=value[,key=value...] to change its "
             "builder's arguments, e.g. resnet50:output_stride=8 or mobilenet_v2:width_mult=0.5")


class CLIError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def positive_ints(text: str) -> list[int]:
    """Parse '1,8,32' into [1, 8, 32], every value >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be an integer >= 1, got {text!r}")
    return values


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a bad value is one line and exit 2, like any bad input)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its error message
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def writable_dir(path: str | Path, flag: str) -> Path:
    """The output folder of ``flag``, created and probed with a file, so that a place that cannot be written is
    said before any work is done (not after a long run)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".archlab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CLIError(f"{flag} {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def writable_file(path: str | Path, flag: str) -> Path:
    """The output file of ``flag``: its folder exists and takes a file, and it is not itself a folder."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {target}: is a folder; give a file name")
    if not target.parent.is_dir():
        raise CLIError(f"{flag}: folder {str(target.parent)!r} does not exist")
    probe = target.parent / f".{target.name}.archlab-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CLIError(f"{flag} {target}: cannot write there ({exc.strerror or exc})") from None
    return target


def plot_path(text: str | None) -> Path | None:
    """The --plot file as a Path (None when not asked for), checked before any work is done."""
    if not text:
        return None
    plot = Path(text)
    if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CLIError(f"--plot takes a .png, .svg or .pdf file, got {text!r}")
    return writable_file(plot, "--plot")


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True):
    """An argparse type: a number in the interval from ``lo`` to ``hi`` (open or closed at each end)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (lo < value if lo_open else lo <= value) or not (value < hi if hi_open else value <= hi):
            raise argparse.ArgumentTypeError(f"must be in {'(' if lo_open else '['}{lo}, {hi}"
                                             f"{')' if hi_open else ']'}, got {value}")
        return value
    return parse


fraction = float_in(0, 1, lo_open=True, hi_open=False)  # an argparse type: a number in (0, 1]
