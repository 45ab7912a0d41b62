"""What the commands share: the Typer app they register on, the consoles and one-line output,
bad input as one line and exit status 2, the options several commands take, model loading and
progress bars."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from camlens.errors import CamlensError
from camlens.options import MAX_PIXELS
from camlens.progress import Event

if TYPE_CHECKING:
    from camlens.config import ExplainConfig


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Shows each warning as one line, ``camlens: warning: ...``, never Python's own format with
    a line of source; a warning with the same text as an earlier one of the same block is not
    shown again."""
    shown: set[str] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if text not in shown:
            shown.add(text)
            say(f"camlens: warning: {text}", style="yellow", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every warning reaches show(), which drops repeats
        warnings.showwarning = show
        yield


class _Commands(TyperGroup):
    """The commands, each run with :func:`one_line_warnings`; a usage error (an option's value
    of the wrong type, a missing argument, an unknown command) is one line too, not a box, and
    Ctrl-C is one line and exit status 130."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's own click Context
        with one_line_warnings():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:  # Ctrl-C while a command starts (its imports, the model)
                say("camlens: interrupted", err=True)
                raise typer.Exit(130) from None
            except typer.TyperException as exc:
                where = getattr(exc, "ctx", None)
                hint = f" (see `{where.command_path} --help`)" if where is not None else ""
                say_problem(f"{exc.format_message()}{hint}")
                raise typer.Exit(getattr(exc, "exit_code", 2)) from None


app = typer.Typer(
    help="Where a CNN classifier looks: class activation maps (CAM, Grad-CAM and family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
# Reports are often piped to a file: give tables room rather than the 80 columns of a non-terminal.
out_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="efficientnet_lite0 (default, offline ImageNet weights), timm:NAME, torchvision:NAME, "
        "a .camlens checkpoint or a Keras .keras/.h5 file",
    ),
]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="local state dict (.pth/.safetensors) for --model")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps...")]
MethodsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        help="a method (repeat for several; all, gradients, scores for groups); "
        "see `camlens methods`",
    ),
]
LayersOpt = Annotated[
    list[str] | None,
    typer.Option("--layer", help="target layer (repeat for several); see `camlens layers`"),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="images per forward pass")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="refuse larger images")]
SmoothOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--smooth",
        help="tta (flips and scales, undone and averaged) or pca (first principal component "
        "of the weighted activations); repeat for both",
    ),
]
MaxBatchMemoryOpt = Annotated[
    int, typer.Option("--max-batch-memory", help="MiB for each batch of masked or ablated passes")
]
FastChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--fast-channels",
        help="perturbation methods: only the N channels of largest variance (approximate)",
    ),
]
FastResolutionOpt = Annotated[
    float | None,
    typer.Option(
        "--fast-resolution",
        help="Score-CAM family: masked passes at this fraction of the input size (approximate)",
    ),
]
InputSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-size",
        help="explain at HEIGHTxWIDTH (or one side) instead of the model's own input size; "
        "for a model with a global-average-pooling head (any camlens-built model); a model whose "
        "head reads a fixed grid (VGG's classifier) is refused",
    ),
]
AllBoxesOpt = Annotated[
    bool,
    typer.Option(
        "--all-boxes",
        help="a box for every region of each map above the threshold, not only the largest "
        "(several objects of one class)",
    ),
]
ThresholdOpt = Annotated[
    str,
    typer.Option(
        "--threshold",
        help="box threshold: a fraction of the map's maximum (0.2 as in CAM, 0.15 as in Grad-CAM) or otsu",
    ),
]


ReluOpt = Annotated[
    bool,
    typer.Option(
        "--relu/--no-relu",
        help="--no-relu: signed maps, min-max of the raw map (a class with no positive "
        "evidence still shows where it is least negative)",
    ),
]


def explain_config(
    *,
    model: str | None,
    weights: Path | None,
    device: str,
    methods: Sequence[str] | None,
    layers: Sequence[str] | None,
    smooth: Sequence[str] | None,
    batch_size: int,
    max_batch_memory: int,
    fast_channels: int | None,
    fast_resolution: float | None,
    max_pixels: int = MAX_PIXELS,
    input_size: str | None = None,
    relu: bool = True,
    normalize: str = "minmax",
    classes: Sequence[int | str] | None = None,
    top: int | None = None,
    targets: Sequence[Any] = (),
    above: float | None = None,
    scores: str | None = None,
    min_score: float | None = None,
    detections: int | None = None,
) -> ExplainConfig:
    """The one :class:`~camlens.config.ExplainConfig` of the options ``explain``, ``localize``
    and ``evaluate`` share (``--model``, ``--weights``, ``--device``, ``--method``, ``--layer``,
    ``--smooth``, ``--batch-size``, ``--max-batch-memory`` in MiB, ``--fast-channels``,
    ``--fast-resolution``, ``--max-pixels``, ``--input-size``, ``--relu/--no-relu``, and
    ``--class``/``--top`` where they choose the classes, and the targets, ``--above``,
    ``--scores``, ``--normalize``, ``--min-score`` and ``--detections`` of ``explain``). A bad
    value is a one-line error and exit status 2, before torch or any model is loaded."""
    from camlens.config import ExplainConfig
    from camlens.options import parse_size

    with bad_input():
        return ExplainConfig(
            model=model,
            weights=path_text(weights),
            device=device,
            methods=tuple(methods or ["gradcam"]),
            layers=tuple(layers or ()),
            classes=tuple(classes or ()),
            top=top,
            smooth=tuple(smooth or ()),
            batch_size=batch_size,
            max_batch_memory=mib_bytes(max_batch_memory),
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            max_pixels=max_pixels,
            input_size=parse_size(input_size) if input_size is not None else None,
            relu=relu,
            normalize=normalize,
            targets=tuple(targets),
            above=above,
            scores=scores,  # type: ignore[arg-type]  # checked by ExplainConfig
            detections=detections,
            min_score=ExplainConfig.min_score if min_score is None else min_score,
        )


def detector_options(
    kind: str, config: ExplainConfig, min_score: float | None, detections: int | None
) -> None:
    """``--min-score`` and ``--detections`` are for a detector, and a detector explains its
    detections, not classes: either given to the other kind of model, a CamlensError naming the
    options (never silently ignored), before any image runs."""
    if kind == "detection":
        chosen = [
            name
            for name, given in (
                ("--class", config.classes),
                ("--top", config.top is not None),
                ("--above", config.above is not None),
            )
            if given
        ]
        if chosen:
            raise CamlensError(
                f"{' and '.join(chosen)} {'choose' if len(chosen) > 1 else 'chooses'} classes; "
                "this model is a detector: it explains its detections (--min-score, --detections)"
            )
        return
    given = [
        name
        for name, value in (("--min-score", min_score), ("--detections", detections))
        if value is not None
    ]
    if given:
        raise CamlensError(
            f"{' and '.join(given)} {'choose' if len(given) > 1 else 'chooses'} a detector's "
            f"detections; this model is a {kind}: drop {'them' if len(given) > 1 else 'it'}"
        )


def say(text: str, *, style: str | None = None, err: bool = False) -> None:
    """One line of text, printed as it is: never read as Rich markup (a file named
    ``[cat] photo.jpg`` prints as such) or highlighted, and one line whatever it holds."""
    console = err_console if err else out_console
    console.print(one_line(text), style=style, markup=False, highlight=False, soft_wrap=True)


# control characters and line separators (a file name may hold a newline) as their escapes:
# \n, \t, \x1b, \x85, \u2028...
_CONTROLS = {c: repr(chr(c))[1:-1] for c in [*range(32), *range(127, 160), 0x2028, 0x2029]}


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters as escapes (``\\n``), bytes of a file
    name that are not UTF-8 as ``\\xNN``."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROLS)


def say_problem(message: str) -> None:
    """One line about bad input on stderr (the command goes on)."""
    say(f"camlens: {message}", style="red", err=True)


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2."""
    say_problem(message)
    raise typer.Exit(2)


@contextmanager
def bad_input() -> Iterator[None]:
    """Turns camlens's own errors into a one-line message and exit status 2 (warnings are
    already one line each, as they come: :func:`one_line_warnings`)."""
    try:
        yield
    except CamlensError as exc:
        fail(str(exc))


def model_from_options(  # type: ignore[no-untyped-def]
    spec: str | None, weights: Path | None, device: str, scores: str | None = None
):
    """The model of --model, --weights and --scores (camlens.models is imported only when a
    command needs it); a bad --scores is said before the model loads."""
    from camlens.targets import check_scores

    if scores is not None:
        check_scores(scores)
    from camlens.models import load_model

    return load_model(spec, weights=weights, device=device, scores=scores)


class EventBars:
    """Draws :class:`~camlens.progress.Event` s as Rich bars on ``progress``: a bar per task,
    except the ``slow`` tasks (a perturbation method's ``passes``), whose bar appears only once
    they have run for more than ``delay`` seconds and goes when they are done. A problem is one
    red line, counted in ``problems``."""

    def __init__(
        self,
        progress: Progress,
        *,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        slow: Sequence[str] = ("passes",),
    ) -> None:
        self.progress = progress
        self.delay = delay
        self.clock = clock
        self.slow = set(slow)
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}
        self.problems = 0

    def __call__(self, event: Event) -> None:
        if event.problem is not None:
            self.problems += 1
            self.progress.console.print(
                one_line(f"camlens: {event.problem}"),
                style="red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if event.task in self.slow:
            self._slow(event)
            return
        if event.task not in self.tasks:
            self.tasks[event.task] = self.progress.add_task(
                event.task, total=event.total, visible=(event.total or 0) > 1
            )
        self.progress.update(self.tasks[event.task], completed=event.done, total=event.total)

    def _slow(self, event: Event) -> None:
        task = self.tasks.get(event.task)
        if event.done == 0:
            self._finish(event.task)
            self.started[event.task] = self.clock()
            return
        if task is None:
            done = event.total is not None and event.done >= event.total
            if done or self.clock() - self.started.get(event.task, self.clock()) <= self.delay:
                return
            task = self.tasks[event.task] = self.progress.add_task(event.task, total=event.total)
        self.progress.update(task, completed=event.done)
        if event.total is not None and event.done >= event.total:
            self._finish(event.task)

    def _finish(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)


@contextmanager
def progress_bars(total: int | None = None, *, rate: bool = False) -> Iterator[Progress]:
    """Rich progress on stderr when it is a terminal (and ``total``, if given, is at least 2);
    with ``rate``, also the units per second and the time left."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if rate:
        columns += [_Rate(), TimeRemainingColumn()]
    progress = Progress(
        *columns,
        TimeElapsedColumn(),
        console=err_console,
        disable=not sys.stderr.isatty() or (total is not None and total < 2),
    )
    with progress:
        yield progress


class _Rate(TextColumn):
    """``12.3/s``: a task's speed as Rich estimates it, blank until it has one."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")


def input_files(paths: Sequence[Path]) -> list[Path]:
    """The image files of ``paths``; a folder without any is kept, for the runner to say so."""
    from camlens.images import find_images

    files = find_images(paths, empty_folders=True)
    if all(file.is_dir() for file in files):
        fail("no images found in " + ", ".join(map(str, paths)))
    return files


def path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def mib_bytes(mib: int) -> int:
    if mib < 1:
        fail(f"--max-batch-memory must be at least 1 MiB, not {mib}")
    return mib * 2**20


# --- what is explained beyond classes (camlens.targets) -------------------------------------------

VersusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--versus",
        help="explain each --class (or the top-1) versus this class: y_A - y_B (repeat for the "
        "mean of several); next or next:K for the next K predicted classes; true: the top-1, "
        "and the top-1 versus the class the image's folder names when they differ",
    ),
]
ScoresOpt = Annotated[
    str | None,
    typer.Option(
        "--scores",
        help="how the model's outputs become predictions: softmax, sigmoid (multi-label, "
        "one-output binary) or raw (regression); default: what the model says",
    ),
]
AboveOpt = Annotated[
    float | None,
    typer.Option(
        "--above",
        help="explain every class whose score is at least P (with sigmoid), best first; "
        "with --top K at most K of them",
    ),
]
MinScoreOpt = Annotated[
    float | None,
    typer.Option(
        "--min-score",
        help="detectors: explain the detections scored at least this, 0..1 (default 0.5)",
    ),
]
DetectionsOpt = Annotated[
    int | None,
    typer.Option(
        "--detections",
        help="detectors: explain the N best detections above --min-score (default: all)",
    ),
]
OutputOpt = Annotated[
    list[int] | None,
    typer.Option("--output", help="explain raw output K as it is (repeat for several)"),
]
LikeOpt = Annotated[
    Path | None,
    typer.Option(
        "--like", help="explain the similarity to this reference image's embedding (cosine)"
    ),
]
EmbeddingOpt = Annotated[
    str | None,
    typer.Option(
        "--embedding",
        help="with --like: the layer whose output (averaged over its locations) is the "
        "embedding; default: the input of the last linear layer",
    ),
]


def target_options(
    classes: Sequence[str] | None,
    versus: Sequence[str] | None,
    outputs: Sequence[int] | None,
    like: Path | None,
    embedding: str | None,
) -> tuple[tuple[int | str, ...], tuple[Any, ...]]:
    """``(classes, targets)`` of the command line's options (see
    :func:`camlens.targets.from_options`)."""
    from camlens.targets import from_options

    return from_options(
        classes, versus, outputs, None if like is None else str(like), embedding, truths=True
    )
