"""The ``camlens`` command: explain images, list methods and layers.

Exit status: 0 on success, 2 on bad input (one line on stderr per problem, naming the file); the
other images of the same call are still processed.

The commands are in a module per group, each registering them on the one Typer ``app`` of
:mod:`camlens.cli.common` (with the console output, error handling, options, model loading and
progress bars they share): :mod:`~camlens.cli.explain` (explain, summary),
:mod:`~camlens.cli.models` (methods, layers), :mod:`~camlens.cli.train`,
:mod:`~camlens.cli.localize` (localize, evaluate), :mod:`~camlens.cli.synthetic` and
:mod:`~camlens.cli.serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

# Importing a command module registers its commands: these imports, in this order, are the order
# of `camlens --help`.
# isort: off
from camlens.cli import explain, models, train, localize, synthetic, serve  # noqa: F401

# isort: on
from camlens.cli.common import EventBars, app, one_line
from camlens.cli.explain import bare_ray, console_line

__all__ = ["EventBars", "app", "bare_ray", "console_line", "main", "one_line"]


def _print_version(value: bool) -> None:
    if value:
        from camlens.version import __version__

        typer.echo(f"camlens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    pass


def main(argv: Sequence[str] | None = None) -> None:
    """The ``camlens`` command (``argv``: its arguments, by default the process's)."""
    app(args=bare_ray(list(sys.argv[1:] if argv is None else argv)), prog_name="camlens")
