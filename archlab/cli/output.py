"""What the commands print: rich consoles and progress bars (imported lazily, so ``import archlab`` stays light),
JSON on stdout, plot files, and the number formats of the tables."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from archlab.cli.args import CLIError


def draw_plot(plotter: Callable[[Any, Path], Any], data: Any, plot: Path) -> None:
    """``plotter(data, plot)``, a file that cannot be written being bad input (one line, exit 2)."""
    try:
        plotter(data, plot)
    except OSError as exc:
        raise CLIError(f"--plot: cannot write {str(plot)!r}: {exc.strerror or exc}") from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def transient_progress(*columns: Any, stderr: bool = True, disable: bool = False) -> Any:
    """A rich progress bar that vanishes when done, on stderr by default (``--json`` on stdout stays clean), and
    shown only on a terminal: in a pipe or a log a transient bar leaves nothing but an empty line behind."""
    from rich.console import Console
    from rich.progress import Progress

    out = Console(stderr=stderr)
    return Progress(*columns, console=out, transient=True, disable=disable or not out.is_terminal)


def console(stderr: bool = False):
    """A rich console; when output is not a terminal, at least 160 columns, so tables are not squeezed to 80."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() else max(int(columns) if columns.isdigit() else 0, 160)
    return Console(stderr=stderr, width=width)


def count(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def num(v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def pair(p: tuple[float, float] | None) -> str:
    if p is None:
        return "?"
    return num(p[0]) if p[0] == p[1] else f"{num(p[0])}x{num(p[1])}"
