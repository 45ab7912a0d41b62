"""The one progress protocol: long-running library calls report :class:`Event` s to a callback;
front-ends draw them (the command line as Rich bars, the server as nothing at all).

>>> seen = []
>>> report = seen.append
>>> report(Event("images", 1, 10, item="a.jpg"))
>>> seen[0].fraction
0.1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """``done`` of ``total`` units of ``task`` are finished (``total`` None when unknown).

    ``task`` names what is counted: ``"images"``, ``"passes"`` (a perturbation method's masked or
    ablated passes), ``"features"``, ``"epochs"``... ``item`` names the unit just finished (an
    image's path). ``problem`` is set when the unit failed: a one-line message naming it, and the
    call goes on with the other units.
    """

    task: str
    done: int
    total: int | None = None
    item: str | None = None
    problem: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return self.done / self.total


Progress = Callable[[Event], None]
"""What a call that reports progress takes: a function of one :class:`Event`."""


def ignore(event: Event) -> None:
    """The progress callback that draws nothing."""
