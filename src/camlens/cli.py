"""The ``camlens`` command: explain images, list methods and layers.

Exit status: 0 on success, 2 on bad input (one line on stderr per problem, naming the file); the
other images of the same call are still processed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from camlens.errors import CamlensError
from camlens.images import MAX_PIXELS, find_images
from camlens.progress import Event

if TYPE_CHECKING:
    from camlens.batch import Done
    from camlens.explanation import Explanation
    from camlens.train import EpochRecord


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
        warnings.showwarning = show
        yield


class _Commands(TyperGroup):
    """The commands, each run with :func:`one_line_warnings`; a usage error (an option's value
    of the wrong type, a missing argument, an unknown command) is one line too, not a box."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's own click Context
        with one_line_warnings():
            try:
                return super().invoke(ctx)
            except typer.TyperException as exc:
                where = getattr(exc, "ctx", None)
                hint = f" (see `{where.command_path} --help`)" if where is not None else ""
                _say(f"{exc.format_message()}{hint}")
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


def _say(message: str) -> None:
    """One line about bad input on stderr (the command goes on)."""
    say(f"camlens: {message}", style="red", err=True)


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2."""
    _say(message)
    raise typer.Exit(2)


@contextmanager
def bad_input() -> Iterator[None]:
    """Turns camlens's own errors into a one-line message and exit status 2, and the library's
    warnings into one line each (``camlens: warning: ...``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except CamlensError as exc:
            _warn(caught)
            fail(str(exc))
    _warn(caught)


def _warn(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for warning in caught:
        text = str(warning.message)
        if text not in seen:
            seen.add(text)
            say(f"camlens: warning: {text}", style="yellow", err=True)


def _load(spec: str | None, weights: Path | None, device: str):  # type: ignore[no-untyped-def]
    from camlens.models import load_model

    return load_model(spec, weights=weights, device=device)


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
def _progress(total: int | None = None, *, rate: bool = False) -> Iterator[Progress]:
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


def _files(paths: Sequence[Path]) -> list[Path]:
    """The image files of ``paths``; a folder without any is kept, for the runner to say so."""
    files = find_images(paths, empty_folders=True)
    if all(file.is_dir() for file in files):
        fail("no images found in " + ", ".join(map(str, paths)))
    return files


def console_line(result: Explanation) -> str:
    """One line per explained image: its top-3 predictions, the classes explained, and the maps
    that came out flat (nothing left after the ReLU: no positive evidence at that layer)."""
    top = "; ".join(f"{p.label} {p.score:.3f}" for p in result.predictions[:3])
    explained = "; ".join(dict.fromkeys(m.label for m in result.maps))
    line = f"{result.source}: {top} | explained: {explained}"
    flat = [f"{m.label} ({m.method}, {m.layer})" for m in result.maps if m.flat]
    if flat:
        more = f" and {len(flat) - 3} more" if len(flat) > 3 else ""
        line += (
            f" | {len(flat)} flat map{'s' if len(flat) > 1 else ''}, no positive evidence: "
            f"{'; '.join(flat[:3])}{more} (--no-relu shows the signed map)"
        )
    return line


def row_line(row: dict[str, object]) -> str:
    """:func:`console_line` of an image from its row in a run's index (a Ray run's images come
    back as rows)."""
    predictions = cast(list[dict[str, object]], row["predictions"])
    maps = cast(list[dict[str, object]], row["explanations"])
    top = "; ".join(f"{p['label']} {cast(float, p['score']):.3f}" for p in predictions[:3])
    explained = "; ".join(dict.fromkeys(str(m["label"]) for m in maps))
    line = f"{row['image']}: {top} | explained: {explained}"
    flat = [f"{m['label']} ({m['method']}, {m['layer']})" for m in maps if m.get("flat")]
    if flat:
        more = f" and {len(flat) - 3} more" if len(flat) > 3 else ""
        line += (
            f" | {len(flat)} flat map{'s' if len(flat) > 1 else ''}, no positive evidence: "
            f"{'; '.join(flat[:3])}{more} (--no-relu shows the signed map)"
        )
    return line


def _optional_path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _mib(mib: int) -> int:
    if mib < 1:
        fail(f"--max-batch-memory must be at least 1 MiB, not {mib}")
    return mib * 2**20


@app.command()
def explain(
    paths: Annotated[
        list[Path], typer.Argument(help="image files or folders (searched recursively)")
    ],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    method: MethodsOpt = None,
    layer: LayersOpt = None,
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", "-c", help="class index or name (repeat for several)"),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", "-k", help="explain the top K predicted classes")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camlens-out"),
    cmap: Annotated[str, typer.Option(help="matplotlib colormap of the overlays")] = "jet",
    alpha: Annotated[float, typer.Option(help="heatmap opacity in the overlays, 0..1")] = 0.5,
    grid: Annotated[
        Path | None, typer.Option("--grid", help="also write one PNG with every map")
    ] = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = 16,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    boxes: Annotated[
        bool,
        typer.Option(
            "--boxes", help="box each map's largest region, in the JSON and on the overlay"
        ),
    ] = False,
    all_boxes: AllBoxesOpt = False,
    threshold: ThresholdOpt = "0.2",
    smooth: SmoothOpt = None,
    max_batch_memory: MaxBatchMemoryOpt = 512,
    fast_channels: FastChannelsOpt = None,
    fast_resolution: FastResolutionOpt = None,
    input_size: InputSizeOpt = None,
    relu: Annotated[
        bool,
        typer.Option(
            "--relu/--no-relu",
            help="--no-relu: signed maps, min-max of the raw map (a class with no positive "
            "evidence still shows where it is least negative)",
        ),
    ] = True,
    panels: Annotated[
        bool, typer.Option("--panels", help="also a photo | heatmap | overlay picture per map")
    ] = False,
    # --- runs over many files ---
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="files: an overlay and a .npy at the photo's size per map; dataset: an overlay "
            "per map, the maps at the layer's resolution in the reports and OUT/index.jsonl",
        ),
    ] = "files",
    overlay_format: Annotated[
        str | None,
        typer.Option(
            "--overlay-format", help="png, jpeg or webp (default: png for files, jpeg for dataset)"
        ),
    ] = None,
    quality: Annotated[int, typer.Option("--quality", help="JPEG and WebP quality, 1..100")] = 90,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="redo the images an earlier run into OUT did (default: skip them)"
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="batches explained at once (default: the cores / --threads)"
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="threads of each batch's forward pass (same threads, same bytes)",
        ),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="run on Ray: local (start one on this machine; also --ray alone, last or before "
            "another option), auto (the running cluster) or HOST:PORT",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors",
            min=1,
            help="with --ray: Explainers at work (default: the cluster's CPUs - 1)",
        ),
    ] = None,
) -> None:
    """Explain images: writes OUT/STEM.json, an overlay and a map per class and method, and
    OUT/index.jsonl (a line per image; `camlens summary OUT` reads it). Run again, the same
    command skips the images already done (--overwrite redoes them); Ctrl-C stops after the
    batches under way.

    --layer all: every layer of the automatic layer's kind (every conv stage of a VGG), in depth
    order, and OUT/STEM.grid.png with all of them per image."""
    from camlens.batch import explain_files
    from camlens.config import ExplainConfig, OutputConfig
    from camlens.explain import Explainer
    from camlens.explanation import grid as grid_of
    from camlens.files import output_file, output_folder
    from camlens.images import parse_size
    from camlens.localize import parse_threshold
    from camlens.render import save_png

    with bad_input():  # every option, and the output places, before any model runs
        config = ExplainConfig(
            model=model,
            weights=_optional_path(weights),
            device=device,
            methods=tuple(method or ["gradcam"]),
            layers=tuple(layer or ()),
            classes=tuple(classes or ()),
            top=top,
            smooth=tuple(smooth or ()),
            batch_size=batch_size,
            max_batch_memory=_mib(max_batch_memory),
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            max_pixels=max_pixels,
            input_size=parse_size(input_size) if input_size is not None else None,
            relu=relu,
        )
        output = OutputConfig(
            cmap=cmap,
            alpha=alpha,
            boxes="all" if all_boxes else "largest" if boxes else None,
            threshold=parse_threshold(threshold),
            panels=panels,
            grids=config.layers == ("all",),
            format=output_format,  # type: ignore[arg-type]  # checked by OutputConfig
            overlay_format=overlay_format,  # type: ignore[arg-type]
            quality=quality,
        )
        address = _ray_address(ray) if ray is not None else None
        if ray is not None and grid is not None:
            raise CamlensError(
                "--grid is not available with --ray: explain the grid's images alone"
            )
        out = output_folder(out)
        grid_file = output_file(grid, "--grid") if grid is not None else None
    files = _outside(_files(paths), out)
    with bad_input():
        explainer = Explainer.from_config(config)
    kept: list[Explanation] = []
    tally = _Tally()
    with _progress(rate=True) as progress, _stop_on_ctrl_c() as stopping, bad_input():
        bars = EventBars(progress)
        if ray is not None:
            from camlens.distributed import explain_on_ray

            runs = explain_on_ray(
                files,
                explainer,
                out,
                output,
                address=address,
                actors=actors,
                threads=threads,
                progress=bars,
                overwrite=overwrite,
                stop=stopping,
            )
        else:
            import torch

            torch.set_num_threads(threads)
            runs = explain_files(
                files,
                explainer,
                out,
                output,
                progress=bars,
                overwrite=overwrite,
                workers=workers or max(1, (os.cpu_count() or 1) // threads),
                stop=stopping,
            )
        try:
            for done in runs:
                tally.add(done)
                if done.explanation is not None and grid_file is not None and done.row is not None:
                    kept.append(done.explanation)
                if done.row is not None and done.problem is None:
                    line = (
                        console_line(done.explanation)
                        if done.explanation is not None
                        else row_line(done.row)
                    )
                    say(f"{line} -> {done.report}")
        except KeyboardInterrupt:  # a second Ctrl-C: what is in the index is done, the rest is not
            runs.close()
            say(tally.line(out, interrupted=True), err=True)
            raise typer.Exit(130) from None
    if sys.stderr.isatty() or tally.skipped or stopping():
        # for people; a script reads the lines above, and hears of skipped images and stops
        say(tally.line(out, interrupted=stopping()), err=True)
    if grid_file is not None and kept:
        with bad_input():
            say(f"grid: {save_png(grid_of(kept, cmap=cmap, alpha=alpha), grid_file)}")
    if stopping():
        raise typer.Exit(130)
    if bars.problems:
        raise typer.Exit(2)


class _Tally:
    """The counts of a run, for its closing line."""

    def __init__(self) -> None:
        self.explained = self.skipped = self.errors = 0
        self.started = time.monotonic()

    def add(self, done: Done) -> None:
        if done.skipped:
            self.skipped += 1
        elif done.problem is not None:
            self.errors += 1
        else:
            self.explained += 1

    def line(self, out: Path, *, interrupted: bool) -> str:
        seconds = time.monotonic() - self.started
        rate = self.explained / seconds if seconds > 0 else 0.0
        parts = [f"{self.explained} explained"]
        if self.skipped:
            parts.append(f"{self.skipped} already done (skipped; --overwrite redoes them)")
        parts.append(f"{self.errors} error{'s' if self.errors != 1 else ''}")
        text = (
            f"camlens: {', '.join(parts)} in {seconds:.1f} s ({rate:.1f} images/s); "
            f"index: {out / 'index.jsonl'}"
        )
        if interrupted:
            text += "; interrupted: run the same command again to go on where it stopped"
        return text


def _ray_address(text: str) -> str | None:
    """``--ray``'s value: None for a local Ray, else the address to join."""
    value = text.strip()
    if value.lower() == "local":
        return None
    if value == "auto" or value.startswith("ray://") or ":" in value:
        return value
    raise CamlensError(f"--ray takes local, auto or HOST:PORT, not {text!r}")


def _outside(files: list[Path], out: Path) -> list[Path]:
    """``files`` less those inside ``out`` (a run's own outputs are never its inputs)."""
    root = out.resolve()
    return [f for f in files if root not in f.resolve().parents]


@contextmanager
def _stop_on_ctrl_c() -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C asks the run to stop after the batches under way (the function yielded
    turns true); a second one stops at once."""
    flag: list[bool] = []

    def handle(signum: int, frame: object) -> None:
        if flag:
            raise KeyboardInterrupt
        flag.append(True)
        # a plain write: the handler may run in the middle of a print
        os.write(2, b"\ncamlens: stopping after the batches under way (Ctrl-C again to stop now)\n")

    try:
        previous = signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread: no handler, the default behaviour
        yield lambda: bool(flag)
        return
    try:
        yield lambda: bool(flag)
    finally:
        signal.signal(signal.SIGINT, previous)


@app.command()
def summary(
    out: Annotated[Path, typer.Argument(help="the --out folder of a `camlens explain` run")],
    top: Annotated[
        int, typer.Option("--top", "-n", min=0, help="images in each list of notable maps")
    ] = 10,
    classes: Annotated[
        int, typer.Option("--classes", min=0, help="rows of the class table (0: all)")
    ] = 20,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            help="order of the class table: images, score, top1, spread or off-center "
            "(default: top1 with labels, else images)",
        ),
    ] = "",
) -> None:
    """A run as a whole, from OUT/index.jsonl: per class the images, mean score and (when the
    images' folders name classes) how often the top-1 is right; then the images whose maps are
    most spread or most off center, and the most confident mistakes."""
    from camlens.runs import INDEX, summarize

    index = out / INDEX
    if not index.is_file():
        fail(f"{index}: no run index (run `camlens explain ... --out {out}` first)")
    with bad_input():
        from camlens.runs import read_index

        result = summarize(read_index(out), top=top)
    text = (
        f"{out}: {result.images} images, {result.explained} explained, {len(result.errors)} errors"
    )
    if result.flat:
        text += f", {result.flat} with a flat first map"
    if result.labelled:
        text += (
            f"; {result.labelled} with a class from their folder's name: top-1 "
            f"{result.top1:.3f}, top-5 {result.top5:.3f}"
        )
    say(text)
    keys = {
        "images": lambda c: (-c.images, c.class_index),
        "score": lambda c: (c.score, c.class_index),
        "top1": lambda c: (c.top1 if c.top1 is not None else 2.0, -c.images),
        "spread": lambda c: (-(c.spread or 0.0), c.class_index),
        "off-center": lambda c: (-(c.off_center or 0.0), c.class_index),
    }
    chosen = sort or ("top1" if result.labelled else "images")
    if chosen not in keys:
        fail(f"--sort must be one of {', '.join(keys)}, not {sort!r}")
    rows = sorted(result.classes, key=keys[chosen])
    table = Table(
        title=f"per class ({'true class, from folder names' if result.by == 'truth' else 'top-1 class'})",
        header_style="bold",
        box=None,
    )
    columns = ["class", "images", "mean score"]
    if result.labelled:
        columns += ["top-1 right", "top-5 right"]
    columns += ["mean spread", "mean off-center"]
    for column in columns:
        table.add_column(column, justify="left" if column == "class" else "right")
    for line in rows[: classes or None]:
        cells = [f"{line.label} ({line.class_index})", str(line.images), f"{line.score:.3f}"]
        if result.labelled:
            cells += [_fraction(line.top1), _fraction(line.top5)]
        cells += [_fraction(line.spread), _fraction(line.off_center)]
        table.add_row(*(escape(c) for c in cells))
    out_console.print(table)
    lists = [
        ("most spread maps (share of the photo where the map >= 0.5)", result.spread),
        (
            "most off-center maps (center of mass from the photo's center, 1 = a corner)",
            result.off_center,
        ),
        ("most confident mistakes (top-1 score)", result.confident_mistakes),
    ]
    for title, notable in lists:
        if not notable:
            continue
        listing = Table(title=title, header_style="bold", box=None)
        for column in ("image", "class", "value", "overlay"):
            listing.add_column(column, justify="right" if column == "value" else "left")
        for n in notable:
            listing.add_row(
                escape(n.image), escape(n.label), f"{n.value:.3f}", escape(n.overlay or "")
            )
        out_console.print(listing)
    for _image, problem in result.errors[:top]:
        say(f"error: {problem}")


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


@app.command()
def methods() -> None:
    """The methods, one line each, with their paper."""
    from camlens.methods import METHODS

    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("method", "needs", "what it does", "paper"):
        table.add_column(column)
    for m in METHODS.values():
        table.add_row(m.name, m.needs, m.summary, m.paper)
    out_console.print(table)


@app.command()
def layers(model: ModelOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "cpu") -> None:
    """The model's layers with spatial output, their maps' shapes and how each output becomes maps
    (conv, channels-last, tokens on a grid); * marks the automatic choice. A VGG's layers also
    show their Keras names (block5_conv3), which --layer accepts too."""
    from camlens.keras_names import keras_names
    from camlens.layers import auto_layer, spatial_layers, warn_if_broken

    with bad_input():
        loaded = _load(model, weights, device)
        found = spatial_layers(loaded)
        chosen = auto_layer(loaded, found)
        warn_if_broken(loaded)
    aliases = {name: alias for alias, name in keras_names(loaded.net).items()}
    table = Table(show_header=True, header_style="bold", box=None)
    columns = ("", "layer", "Keras name", "type", "maps [C, H, W]", "adapter")
    for column in columns if aliases else columns[:2] + columns[3:]:
        table.add_column(column)
    for info in found:
        mark = "*" if info.name == chosen else ""
        shape = "x".join(map(str, info.shape))
        extra = [aliases.get(info.name, "")] if aliases else []
        table.add_row(*map(escape, [mark, info.name, *extra, info.kind, shape, info.adapter]))
    out_console.print(table)
    say(f"* automatic target layer of {loaded.name}: {chosen}")


@app.command("train")
def train_command(
    folder: Annotated[
        Path,
        typer.Argument(
            help="training images, one subfolder per class (FOLDER/CLASS/*.jpg), or named after "
            "their class with --classes-from names (FOLDER/cat.1.jpg)"
        ),
    ],
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            "-b",
            help="efficientnet_lite0 (default, offline ImageNet weights), timm:NAME, torchvision:NAME, "
            "a .camlens checkpoint or a Keras .keras/.h5 file",
        ),
    ] = "efficientnet_lite0",
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="local state dict of the backbone (.pth/.safetensors)"),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="the checkpoint to write (.camlens)")
    ] = Path("model.camlens"),
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, help="head epochs")] = 10,
    val: Annotated[
        str,
        typer.Option("--val", help="validation: a fraction of each class (seeded), 0, or a folder"),
    ] = "0.2",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    lr: Annotated[float, typer.Option("--lr", help="learning rate of the head")] = 1e-2,
    classes_from: Annotated[
        str,
        typer.Option(
            "--classes-from",
            help="folders (FOLDER/CLASS/x.jpg) or names (FOLDER/CLASS.N.jpg: the file name up to "
            "its first dot, less a trailing number)",
        ),
    ] = "folders",
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd")] = "adamw",
    momentum: Annotated[
        float | None, typer.Option("--momentum", help="sgd's momentum (default 0)")
    ] = None,
    nesterov: Annotated[
        bool, typer.Option("--nesterov", help="sgd with Nesterov momentum")
    ] = False,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help="default: 0.01 with adamw, 0 with sgd"),
    ] = None,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="flips and random resized crops")
    ] = True,
    views: Annotated[
        int, typer.Option("--views", min=1, help="cached views of each training image")
    ] = 4,
    patience: Annotated[
        int, typer.Option("--patience", min=1, help="epochs without progress before stopping")
    ] = 3,
    fine_tune: Annotated[
        int, typer.Option("--fine-tune", min=0, help="then train the backbone's last N blocks")
    ] = 0,
    fine_tune_epochs: Annotated[int, typer.Option("--fine-tune-epochs", min=0)] = 3,
    fine_tune_lr: Annotated[
        float | None, typer.Option("--fine-tune-lr", help="default: lr / 100")
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            help="HEIGHTxWIDTH in pixels (128x68: 128 high, 68 wide) or one side for a square, "
            "instead of the backbone's",
        ),
    ] = None,
    dropout: Annotated[float, typer.Option("--dropout", help="before the linear layer")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Train a CAM-ready head (GAP -> Linear on a frozen backbone) on a folder of images.

    Writes OUT (a .camlens checkpoint, for `camlens explain --model OUT --method cam`) and
    OUT's stem + .training.png (the training curves); prints the validation accuracy and the
    confusion matrix. Unreadable images are listed on stderr and skipped (exit status 2 at the end).
    """
    import torch

    from camlens.devices import check_device
    from camlens.images import parse_size
    from camlens.models import build_cam_model, save
    from camlens.models.checkpoint import checkpoint_path
    from camlens.train import check_settings, optimizer_config, scan_folder, train

    validation: float | Path
    try:
        validation = float(val)
    except ValueError:
        validation = Path(val)
    with bad_input(), _unreadable_listed(), _progress() as progress:
        # every setting, the device, the checkpoint's place and the folder before any model
        size = parse_size(input_size) if input_size is not None else None
        optimizer_config(optimizer, weight_decay, momentum, nesterov)
        check_settings(
            epochs, batch_size, lr, views, patience, fine_tune, fine_tune_epochs, fine_tune_lr
        )
        check_device(device)
        out = checkpoint_path(out, "--out")
        classes = scan_folder(folder, classes_from=classes_from).classes
        torch.manual_seed(seed)
        model = build_cam_model(
            backbone,
            class_names=classes,
            weights=weights,
            dropout=dropout,
            input_size=size,
            device=device,
        )
        history = train(
            model,
            folder,
            epochs=epochs,
            val=validation,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            nesterov=nesterov,
            classes_from=classes_from,
            augment=augment,
            views=views,
            patience=patience,
            fine_tune=fine_tune,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_lr=fine_tune_lr,
            seed=seed,
            progress=EventBars(progress),
            callback=lambda record: progress.console.print(
                _epoch_line(record), markup=False, highlight=False, soft_wrap=True
            ),
        )
        checkpoint = save(model, out)
        curve = history.plot(out.with_name(out.name[: -len(".camlens")] + ".training.png"))
    best = history.best
    if best is not None and best.val_accuracy is not None:
        say(
            f"validation accuracy {best.val_accuracy:.3f}, loss {best.val_loss:.4g} "
            f"(best epoch {history.best_epoch} of {len(history.epochs)}; "
            f"{history.train_images} training, {history.val_images} validation images)"
        )
    if history.confusion is not None:
        table = Table(title="validation confusion matrix (rows: true class, columns: predicted)")
        table.add_column("true \\ predicted", style="bold")
        for name in model.labels:
            table.add_column(escape(name), justify="right")
        for name, row in zip(model.labels, history.confusion, strict=True):
            table.add_row(escape(name), *(str(v) for v in row))
        out_console.print(table)
    if history.interrupted:
        say(f"interrupted: kept the best epoch so far ({history.best_epoch})")
    say(f"wrote {checkpoint} and {curve}")
    if history.interrupted:
        raise typer.Exit(130)
    if history.skipped:
        raise typer.Exit(2)


@contextmanager
def _unreadable_listed() -> Iterator[None]:
    """Training's warning that lists the unreadable images, left out: they were said one a line
    as they were met."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped .* unreadable image")
        yield


def _epoch_line(record: EpochRecord) -> str:
    """``epoch 3 (head, 0.02 s): loss 0.41 acc 0.850  val loss 0.38 val acc 0.900``."""
    text = f"loss {record.train_loss:.4g} acc {record.train_accuracy:.3f}"
    if record.val_loss is not None and record.val_accuracy is not None:
        text += f"  val loss {record.val_loss:.4g} val acc {record.val_accuracy:.3f}"
    return f"epoch {record.epoch} ({record.phase}, {record.seconds:.2f} s): {text}"


@app.command()
def localize(
    paths: Annotated[
        list[Path], typer.Argument(help="image files or folders (searched recursively)")
    ],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    method: Annotated[str, typer.Option("--method", help="see `camlens methods`")] = "gradcam",
    layer: Annotated[str | None, typer.Option("--layer", help="target layer")] = None,
    top: Annotated[
        int, typer.Option("--top", "-k", help="look for the top K predicted classes")
    ] = 5,
    min_score: Annotated[
        float, typer.Option("--min-score", help="skip classes less probable than this")
    ] = 0.01,
    threshold: ThresholdOpt = "0.2",
    iou: Annotated[
        float, typer.Option("--iou", help="boxes overlapping more than this are merged (NMS)")
    ] = 0.5,
    crops: Annotated[
        bool, typer.Option("--crops/--no-crops", help="re-classify each box cropped from the photo")
    ] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camlens-out"),
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = 16,
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    smooth: SmoothOpt = None,
    max_batch_memory: MaxBatchMemoryOpt = 512,
    fast_channels: FastChannelsOpt = None,
    fast_resolution: FastResolutionOpt = None,
    input_size: InputSizeOpt = None,
    all_boxes: AllBoxesOpt = False,
) -> None:
    """Find objects: a box per top class (its map's largest region above the threshold),
    duplicates merged across classes, each box cropped and re-classified. Writes OUT/boxes.jsonl
    (one image a line) and OUT/STEM.boxes.png per image."""
    from camlens.batch import localize_files
    from camlens.config import ExplainConfig, OutputConfig
    from camlens.explain import Explainer
    from camlens.files import output_folder
    from camlens.images import parse_size
    from camlens.localize import check_localize_options, parse_threshold

    with bad_input():  # every option, and the output folder, before any model runs
        config = ExplainConfig(
            model=model,
            weights=_optional_path(weights),
            device=device,
            methods=(method,),
            layers=(layer,) if layer else (),
            smooth=tuple(smooth or ()),
            batch_size=batch_size,
            max_batch_memory=_mib(max_batch_memory),
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            max_pixels=max_pixels,
            input_size=parse_size(input_size) if input_size is not None else None,
        )
        output = OutputConfig(
            threshold=parse_threshold(threshold), boxes="all" if all_boxes else "largest"
        )
        check_localize_options(min_score=min_score, iou_threshold=iou)
        if top < 1:
            raise CamlensError(f"--top must be at least 1, not {top}")
        out = output_folder(out)
    files = _files(paths)
    with bad_input():
        explainer = Explainer.from_config(config)
    found = 0
    with _progress(len(files)) as progress:
        bars = EventBars(progress)
        for done in localize_files(
            files,
            explainer,
            out,
            model=explainer.model if crops else None,
            top=min(top, explainer.model.num_classes),  # a model may have fewer classes
            min_score=min_score,
            iou_threshold=iou,
            output=output,
            progress=bars,
        ):
            if done.localization is None:
                continue
            found += 1
            summary = "; ".join(
                f"{o.label} {o.score:.2f} {o.box.to_dict()['box']}"
                + (f" -> crop: {o.crop.label} {o.crop.score:.2f}" if o.crop else "")
                for o in done.localization.objects
            )
            say(f"{done.path}: {summary or 'no object found'}")
    if found:
        say(f"boxes: {out / 'boxes.jsonl'}")
    else:
        say(f"no image localized: {out / 'boxes.jsonl'} left as it was")
    if bars.problems:
        raise typer.Exit(2)


@app.command("evaluate")
def evaluate_command(
    dataset: Annotated[
        Path,
        typer.Argument(help="COCO .json file, or a folder of Pascal VOC .xml files (or one .json)"),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="folder of the image files (default: beside the annotations)"
        ),
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    method: MethodsOpt = None,
    layer: Annotated[str | None, typer.Option("--layer", help="target layer")] = None,
    threshold: ThresholdOpt = "0.2",
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="pointing game tolerance in pixels")
    ] = 15.0,
    iou: Annotated[float, typer.Option("--iou", help="IoU for a correct box")] = 0.5,
    faithfulness: Annotated[
        bool,
        typer.Option(
            "--faithfulness/--no-faithfulness",
            help="also average drop, deletion/insertion and ROAD (many forward passes per image)",
        ),
    ] = True,
    steps: Annotated[int, typer.Option("--steps", min=1, help="deletion/insertion steps")] = 32,
    road_metric: Annotated[
        bool,
        typer.Option("--road/--no-road", help="ROAD (sparse imputations: slow on large inputs)"),
    ] = True,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="only the first N images")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camlens-eval"),
    device: DeviceOpt = "cpu",
    batch_size: BatchSizeOpt = 16,
    smooth: SmoothOpt = None,
    max_batch_memory: MaxBatchMemoryOpt = 512,
    fast_channels: FastChannelsOpt = None,
    fast_resolution: FastResolutionOpt = None,
) -> None:
    """Evaluate methods against ground-truth boxes: prints a table (a row per method), writes
    OUT/evaluation.json and OUT/deletion_insertion.png."""
    from camlens.config import ExplainConfig
    from camlens.datasets import read_dataset
    from camlens.evaluate import check_evaluate_options, evaluate
    from camlens.files import output_folder
    from camlens.localize import parse_threshold
    from camlens.metrics import ROAD_PERCENTAGES

    with bad_input():  # every option and the output folder before any model runs
        config = ExplainConfig(
            model=model,
            weights=_optional_path(weights),
            device=device,
            methods=tuple(method or ["gradcam"]),
            layers=(layer,) if layer else (),
            smooth=tuple(smooth or ()),
            batch_size=batch_size,
            max_batch_memory=_mib(max_batch_memory),
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
        )
        box_threshold = parse_threshold(threshold)
        check_evaluate_options(
            tolerance=tolerance, iou_threshold=iou, steps=steps, batch_size=batch_size, limit=limit
        )
        out = output_folder(out)
        data = read_dataset(dataset, images)
        loaded = _load(model, weights, device)
        total = min(len(data), limit) if limit is not None else len(data)
        with _progress(total) as progress:
            report = evaluate(
                loaded,
                data,
                config=config,
                threshold=box_threshold,
                tolerance=tolerance,
                iou_threshold=iou,
                faithfulness=faithfulness,
                steps=steps,
                road_percentages=ROAD_PERCENTAGES if road_metric else (),
                limit=limit,
                progress=EventBars(progress),
            )
        if report.evaluated:
            out_console.print(report.table())
            say(f"report: {report.save(out / 'evaluation.json')}")
            plot = report.plot(out / "deletion_insertion.png")
            if plot is not None:
                say(f"deletion/insertion curves: {plot}")
        else:  # an earlier run's report stays
            say(
                f"no image of {dataset} could be evaluated: {out / 'evaluation.json'} left as it was"
            )
    if report.problems or not report.evaluated:
        count = len(report.problems)
        say(
            f"{count} problem{'' if count == 1 else 's'} with {dataset} (on stderr); "
            f"{report.evaluated} of {report.images} images evaluated"
        )
        raise typer.Exit(2)


@app.command("synthetic")
def synthetic_command(
    out: Annotated[Path, typer.Argument(help="output folder")],
    count: Annotated[int, typer.Option("--count", min=1, help="number of images")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    size: Annotated[int, typer.Option("--size", min=8, help="image side in pixels")] = 64,
    objects: Annotated[int, typer.Option("--objects", min=1, help="objects per image")] = 1,
    train_model: Annotated[
        bool,
        typer.Option(
            "--train",
            help="also train the synthetic CNN on OUT/train (--count images) and write "
            "OUT/model.pt, for `camlens evaluate OUT/test/annotations.json --model synthetic "
            "--weights OUT/model.pt`",
        ),
    ] = False,
) -> None:
    """Write a synthetic localization set (COCO JSON); with --train, a training set, a held-out
    set and a model trained on the first (OUT/train, OUT/test, OUT/model.pt)."""
    import torch

    from camlens.datasets import make_synthetic
    from camlens.files import atomic_write, output_folder
    from camlens.train import train_synthetic_model

    if train_model and objects != 1:
        fail(
            "--train makes one object per image (the CNN learns each image's class): drop --objects"
        )
    with bad_input():
        out = output_folder(out, "OUT")
        if not train_model:
            written = make_synthetic(out, count, seed=seed, size=size, objects=objects)
            say(str(written))
            return
        train_set = make_synthetic(out / "train", count, seed=seed, size=size)
        test_set = make_synthetic(out / "test", max(count // 4, 1), seed=seed + 1, size=size)
        with _progress() as progress:
            model = train_synthetic_model(
                train_set, seed=seed, threads=1, progress=EventBars(progress)
            )
        weights = atomic_write(out / "model.pt", partial(torch.save, model.net.state_dict()))
    say(f"training set: {train_set}")
    say(f"held-out set: {test_set}")
    say(f"model: {weights}")


@app.command()
def serve(
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="a run's --out folder, or a folder of them: their files under /runs/ and a "
            "gallery on the page",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (this machine only by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="images per forward pass")
    ] = 16,
    batch_wait: Annotated[
        float,
        typer.Option("--batch-wait", min=0, max=1000, help="ms to wait for a batch to fill"),
    ] = 5.0,
    queue_size: Annotated[
        int, typer.Option("--queue-size", min=1, help="requests that may wait; then 503")
    ] = 64,
    results: Annotated[
        int, typer.Option("--results", min=1, help="results whose files stay available")
    ] = 128,
    max_upload: Annotated[
        float, typer.Option("--max-upload", min=0.001, help="MB per uploaded image")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="refuse larger images")
    ] = 40_000_000,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="an origin allowed to call the API (repeat)"),
    ] = None,
    input_size: InputSizeOpt = None,
) -> None:
    """Serve the explorer page and the HTTP API (documented at /docs) around one model."""
    try:
        import uvicorn

        from camlens.images import parse_size
        from camlens.serve import ServeSettings, create_app
    except ImportError as exc:
        fail(f"camlens serve needs the serve extra: pip install 'camlens[serve]' ({exc})")
    with bad_input():
        settings = ServeSettings(
            runs=runs,
            max_upload_bytes=round(max_upload * 2**20),
            max_pixels=max_pixels,
            max_batch=batch_size,
            batch_wait=batch_wait / 1000,
            max_queue=queue_size,
            results=results,
            cors_origins=tuple(cors_origin or ()),
        )
        loaded = _load(model, weights, device)
        if input_size is not None:
            loaded = _at_size(loaded, parse_size(input_size))
        application = create_app(loaded, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"listening on {host}: anyone who can reach this machine can use the server")
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=max(100, 4 * queue_size),
        timeout_graceful_shutdown=5,
    )


def _at_size(model: Any, size: tuple[int, int]) -> Any:
    """``model`` explained at ``size`` (height, width) from now on: refused where its head reads
    a fixed grid (see :func:`camlens.layers.check_input_size`)."""
    from dataclasses import replace

    from camlens.layers import check_input_size

    check_input_size(model, size)
    model.preprocess = replace(model.preprocess, input_size=size)
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """The ``camlens`` command (``argv``: its arguments, by default the process's)."""
    app(args=bare_ray(list(sys.argv[1:] if argv is None else argv)), prog_name="camlens")


def bare_ray(args: list[str]) -> list[str]:
    """``--ray`` given without a value (last, or before another option) as ``--ray local``."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("local")
    return out


if __name__ == "__main__":
    main()
