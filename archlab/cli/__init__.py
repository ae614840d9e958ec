"""The ``archlab`` command: :mod:`~archlab.cli.main` (the command table, the parser, the one error form),
:mod:`~archlab.cli.args` (shared argument types, :class:`~archlab.cli.args.CLIError`),
:mod:`~archlab.cli.output` (tables, JSON, progress bars, plot files), and one thin module per command.

It sits above the library: nothing outside this package imports it.
"""

from archlab.cli.main import main

__all__ = ["main"]
