"""The one progress protocol: the library reports Events, the command line draws them."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from camlens.cli import EventBars
from camlens.progress import Event


def test_event_bars_keep_a_bar_per_task_and_print_problems_in_red() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=200)
    progress = Progress(console=console, disable=True)  # keeps its tasks, draws no bars
    bars = EventBars(progress)
    bars(Event("features", 0, 10))
    bars(Event("features", 4, 10, item="a.jpg"))
    bars(Event("head epochs", 1, 3, item="epoch 1"))
    problem = "[bold]b[/bold].jpg: is not an image Pillow can read (skipped)"
    bars(Event("features", 4, 10, item="[bold]b[/bold].jpg", problem=problem))
    bars(Event("features", 10, 10))
    assert [(t.description, t.completed, t.total) for t in progress.tasks] == [
        ("features", 10, 10),
        ("head epochs", 1, 3),
    ]
    printed = out.getvalue()
    assert "\x1b[31m" in printed  # red
    assert Text.from_ansi(printed).plain == f"camlens: {problem}\n"  # markup shown as typed


def test_an_unknown_total_stays_unknown() -> None:
    progress = Progress(disable=True)
    bars = EventBars(progress)
    bars(Event("features", 3))
    assert [(t.completed, t.total) for t in progress.tasks] == [(3, None)]
