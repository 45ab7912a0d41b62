"""The ``camlens`` command (and ``python -m camlens``): the command line of :mod:`camlens.cli`,
with Ctrl-C while its modules load answered by one line and exit status 130, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Runs the ``camlens`` command on the process's arguments."""
    try:
        from camlens.cli import main as command

        command()
    except KeyboardInterrupt:
        print("camlens: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
