"""The ``camlens`` command: explain images, list methods and layers.

Exit status: 0 on success, 2 on bad input (one line on stderr per problem, naming the file); the
other images of the same call are still processed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from camlens.errors import CamlensError
from camlens.images import MAX_PIXELS, find_images, load_image

app = typer.Typer(
    help="Where a CNN classifier looks: class activation maps (CAM, Grad-CAM and family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Reports are often piped to a file: give tables room rather than the 80 columns of a non-terminal.
out_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="efficientnet_lite0 (default, offline ImageNet weights), timm:NAME or torchvision:NAME",
    ),
]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="local state dict (.pth/.safetensors) for --model")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps...")]
ThresholdOpt = Annotated[
    str,
    typer.Option(
        "--threshold",
        help="box threshold: a fraction of the map's maximum (0.2 as in CAM, 0.15 as in Grad-CAM) or otsu",
    ),
]


def _say(message: str) -> None:
    """One line about bad input on stderr (the command goes on)."""
    err_console.print(f"camlens: {message}", style="red", highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2."""
    _say(message)
    raise typer.Exit(2)


@contextmanager
def bad_input() -> Iterator[None]:
    """Turns camlens's own errors into a one-line message and exit status 2."""
    try:
        yield
    except CamlensError as exc:
        fail(str(exc))


def _load(spec: str | None, weights: Path | None, device: str):  # type: ignore[no-untyped-def]
    from camlens.models import load_model

    return load_model(spec, weights=weights, device=device)


class ImageBatches:
    """The readable images of ``files``, ``batch_size`` at a time, with their paths as names. An
    unreadable file is named on stderr, counted in ``skipped`` and reported to ``on_skip``; the
    others go on."""

    def __init__(
        self,
        files: Sequence[Path],
        batch_size: int,
        max_pixels: int,
        on_skip: Callable[[], None] = lambda: None,
    ) -> None:
        self.files = files
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.on_skip = on_skip
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[list[Image.Image], list[str]]]:
        for start in range(0, len(self.files), self.batch_size):
            batch, names = [], []
            for path in self.files[start : start + self.batch_size]:
                try:
                    batch.append(load_image(path, max_pixels=self.max_pixels))
                    names.append(str(path))
                except CamlensError as exc:
                    self.skipped += 1
                    _say(str(exc))
                    self.on_skip()
            if batch:
                yield batch, names


def output_stem(path: Path, out: Path) -> Path:
    """Where the reports of input ``path`` go: ``out`` / the input's relative folder / its stem.

    A relative path keeps its folders (``a/0.png`` -> ``OUT/a/0``); an absolute one, or one that
    climbs out with ``..``, is taken relative to the current folder when it lies below it, else
    whole without its root (``/data/x/0.png`` -> ``OUT/data/x/0``). So two inputs with the same
    name never overwrite each other.
    """
    if not path.is_absolute() and ".." not in path.parts:
        relative = path
    else:
        resolved = path.resolve()
        try:
            relative = resolved.relative_to(Path.cwd().resolve())
        except ValueError:
            relative = resolved.relative_to(resolved.anchor)
    return out / relative.parent / relative.stem


@app.command()
def explain(
    paths: Annotated[
        list[Path], typer.Argument(help="image files or folders (searched recursively)")
    ],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="a method (repeat for several); see `camlens methods`"),
    ] = None,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", help="target layer (repeat for several); see `camlens layers`"),
    ] = None,
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
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="refuse larger images")
    ] = MAX_PIXELS,
    boxes: Annotated[
        bool,
        typer.Option(
            "--boxes", help="box each map's largest region, in the JSON and on the overlay"
        ),
    ] = False,
    threshold: ThresholdOpt = "0.2",
    smooth: Annotated[
        list[str] | None,
        typer.Option(
            "--smooth",
            help="tta (flips and scales, undone and averaged) or pca (first principal component "
            "of the weighted activations); repeat for both",
        ),
    ] = None,
    max_batch_memory: Annotated[
        int,
        typer.Option(
            "--max-batch-memory", min=1, help="MiB for each batch of masked or ablated passes"
        ),
    ] = 512,
    fast_channels: Annotated[
        int | None,
        typer.Option(
            "--fast-channels",
            min=1,
            help="perturbation methods: only the N channels of largest variance (approximate)",
        ),
    ] = None,
    fast_resolution: Annotated[
        float | None,
        typer.Option(
            "--fast-resolution",
            help="Score-CAM family: masked passes at this fraction of the input size (approximate)",
        ),
    ] = None,
) -> None:
    """Explain images: writes OUT/STEM.json, an overlay PNG and a map .npy per class and method."""
    from camlens import render
    from camlens.explain import Explainer
    from camlens.explanation import Explanation
    from camlens.explanation import grid as grid_of
    from camlens.localize import add_boxes, parse_threshold

    with bad_input():
        explainer = Explainer(
            _load(model, weights, device),
            method=method or ["gradcam"],
            layer=layer or None,
            batch_size=batch_size,
            smooth=smooth,
            max_batch_memory=max_batch_memory * 2**20,
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
        )
        explainer.resolve_classes(classes, top, 1)  # checks classes and top before any work
        render.colorize(np.zeros((1, 1)), cmap)  # checks the colormap
        box_threshold = parse_threshold(threshold)
    files = find_images(paths)
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
    done: list[Explanation] = []
    with _progress() as progress:
        task = progress.add_task("explaining", total=len(files), visible=len(files) > 1)
        explainer.progress = PassProgress(progress)
        batches = ImageBatches(files, batch_size, max_pixels, lambda: progress.advance(task))
        for batch, names in batches:
            with bad_input():
                results = explainer.explain(batch, classes=classes, top=top, names=names)
                for result in results:
                    if boxes:
                        add_boxes(result, threshold=box_threshold)
                    stem = output_stem(Path(result.source), out)
                    report = result.save(stem.parent, stem.name, cmap=cmap, alpha=alpha)
                    if grid:
                        done.append(result)
                    best = result.predictions[0]
                    out_console.print(
                        f"{result.source}: {best.label} ({best.score:.3f}) -> {report}",
                        highlight=False,
                        soft_wrap=True,
                    )
                    progress.advance(task)
    if grid and done:
        render.save_png(grid_of(done), grid)
        out_console.print(f"grid: {grid}")
    if batches.skipped:
        raise typer.Exit(2)


@contextmanager
def _progress(total: int | None = None) -> Iterator[Progress]:
    """Rich progress on stderr when it is a terminal (and ``total``, if given, is at least 2)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not sys.stderr.isatty() or (total is not None and total < 2),
    )
    with progress:
        yield progress


class PassProgress:
    """A bar for the masked (or ablated) passes of a perturbation method, shown only once they
    have run for more than ``delay`` seconds; the explainer calls it with ``(done, total)``, and
    ``done == 0`` when a method starts."""

    def __init__(
        self,
        progress: Progress,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress = progress
        self.delay = delay
        self.clock = clock
        self.task: TaskID | None = None
        self.started = clock()

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self._finish()
            self.started = self.clock()
            return
        if self.task is None:
            if done >= total or self.clock() - self.started <= self.delay:
                return
            self.task = self.progress.add_task("passes", total=total)
        self.progress.update(self.task, completed=done)
        if done >= total:
            self._finish()

    def _finish(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


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
    """The model's layers with spatial output and their shapes; * marks the automatic choice."""
    from camlens.layers import auto_layer, spatial_layers

    with bad_input():
        loaded = _load(model, weights, device)
        found = spatial_layers(loaded)
        chosen = auto_layer(loaded, found)
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("", "layer", "type", "output [C, H, W]"):
        table.add_column(column)
    for info in found:
        mark = "*" if info.name == chosen else ""
        table.add_row(mark, info.name, info.kind, "x".join(map(str, info.shape)))
    out_console.print(table)
    out_console.print(f"* automatic target layer of {loaded.name}: {chosen}")


@app.command("train")
def train_command(
    folder: Annotated[
        Path, typer.Argument(help="training images, one subfolder per class (FOLDER/CLASS/*.jpg)")
    ],
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            "-b",
            help="efficientnet_lite0 (default, offline ImageNet weights), timm:NAME or torchvision:NAME",
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
        int | None,
        typer.Option("--input-size", help="square input side, instead of the backbone's"),
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
    import warnings

    import torch

    from camlens.checkpoint import save
    from camlens.models.head import build_cam_model
    from camlens.train import scan_folder, train

    validation: float | Path
    try:
        validation = float(val)
    except ValueError:
        validation = Path(val)
    if out.suffix != ".camlens":
        out = out.with_name(out.name + ".camlens")
    with bad_input(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classes = scan_folder(folder).classes  # bad folders fail before any model is built
        torch.manual_seed(seed)
        model = build_cam_model(
            backbone,
            class_names=classes,
            weights=weights,
            dropout=dropout,
            input_size=input_size,
            device=device,
        )
        history = train(
            model,
            folder,
            epochs=epochs,
            val=validation,
            batch_size=batch_size,
            lr=lr,
            augment=augment,
            views=views,
            patience=patience,
            fine_tune=fine_tune,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_lr=fine_tune_lr,
            seed=seed,
            progress=True,
        )
        checkpoint = save(model, out)
    for warning in caught:
        if "unreadable image" not in str(warning.message):  # listed one a line below
            err_console.print(
                f"camlens: warning: {warning.message}",
                style="yellow",
                highlight=False,
                soft_wrap=True,
            )
    for path, problem in history.skipped:
        err_console.print(
            f"camlens: {path}: {problem} (skipped)", style="red", highlight=False, soft_wrap=True
        )
    curve = history.plot(out.with_name(out.name[: -len(".camlens")] + ".training.png"))
    best = history.best
    if best is not None and best.val_accuracy is not None:
        out_console.print(
            f"validation accuracy {best.val_accuracy:.3f}, loss {best.val_loss:.4g} "
            f"(best epoch {history.best_epoch} of {len(history.epochs)}; "
            f"{history.train_images} training, {history.val_images} validation images)",
            highlight=False,
        )
    if history.confusion is not None:
        table = Table(title="validation confusion matrix (rows: true class, columns: predicted)")
        table.add_column("true \\ predicted", style="bold")
        for name in model.labels:
            table.add_column(name, justify="right")
        for name, row in zip(model.labels, history.confusion, strict=True):
            table.add_row(name, *(str(v) for v in row))
        out_console.print(table)
    if history.interrupted:
        out_console.print(f"interrupted: kept the best epoch so far ({history.best_epoch})")
    out_console.print(f"wrote {checkpoint} and {curve}", highlight=False)
    if history.interrupted:
        raise typer.Exit(130)
    if history.skipped:
        raise typer.Exit(2)


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
        int, typer.Option("--top", "-k", min=1, help="look for the top K predicted classes")
    ] = 5,
    min_score: Annotated[
        float, typer.Option("--min-score", help="skip classes less probable than this")
    ] = 0.05,
    threshold: ThresholdOpt = "0.2",
    iou: Annotated[
        float, typer.Option("--iou", help="boxes overlapping more than this are merged (NMS)")
    ] = 0.5,
    crops: Annotated[
        bool, typer.Option("--crops/--no-crops", help="re-classify each box cropped from the photo")
    ] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camlens-out"),
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="refuse larger images")
    ] = MAX_PIXELS,
) -> None:
    """Find objects: a box per top class (its map's largest region above the threshold),
    duplicates merged across classes, each box cropped and re-classified. Writes OUT/boxes.jsonl
    (one image a line) and OUT/STEM.boxes.png per image."""
    import json

    from camlens import render
    from camlens.explain import Explainer
    from camlens.localize import localize_objects, parse_threshold

    with bad_input():
        box_threshold = parse_threshold(threshold)
        loaded = _load(model, weights, device)
        explainer = Explainer(loaded, method=method, layer=layer, batch_size=batch_size)
        explainer.resolve_classes(None, top, 1)  # checks top before any work
    files = find_images(paths)
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "boxes.jsonl"
    with _progress(len(files)) as progress, lines.open("w") as jsonl:
        task = progress.add_task("localizing", total=len(files))
        batches = ImageBatches(files, batch_size, max_pixels, lambda: progress.advance(task))
        for batch, names in batches:
            with bad_input():
                for result in explainer.explain(batch, top=top, names=names):
                    found = localize_objects(
                        result,
                        loaded if crops else None,
                        threshold=box_threshold,
                        iou_threshold=iou,
                        min_score=min_score,
                        batch_size=batch_size,
                    )
                    stem = output_stem(Path(result.source), out)
                    picture = render.save_png(found.picture(), f"{stem}.boxes.png")
                    record = found.to_dict()
                    record["picture"] = picture.relative_to(out).as_posix()
                    jsonl.write(json.dumps(record) + "\n")
                    jsonl.flush()
                    summary = "; ".join(
                        f"{o.label} {o.score:.2f} {o.box.to_dict()['box']}"
                        + (f" -> crop: {o.crop.label} {o.crop.score:.2f}" if o.crop else "")
                        for o in found.objects
                    )
                    out_console.print(
                        f"{result.source}: {summary or 'no object found'}", highlight=False
                    )
                    progress.advance(task)
    out_console.print(f"boxes: {lines}")
    if batches.skipped:
        raise typer.Exit(2)


def _method_names(names: Sequence[str] | None) -> list[str]:
    """``all`` stands for every method, ``gradients`` for every gradient method."""
    from camlens.methods import METHODS

    expanded: list[str] = []
    for name in names or ["gradcam"]:
        key = name.strip().lower()
        if key == "all":
            expanded.extend(METHODS)
        elif key in ("gradient", "gradients"):
            expanded.extend(n for n, m in METHODS.items() if m.needs == "gradients")
        else:
            expanded.append(name)
    return list(dict.fromkeys(expanded))


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
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method", help="a method (repeat for several; 'all', 'gradients'); a row each"
        ),
    ] = None,
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
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
) -> None:
    """Evaluate methods against ground-truth boxes: prints a table (a row per method), writes
    OUT/evaluation.json and OUT/deletion_insertion.png."""
    from camlens.datasets import read_dataset
    from camlens.evaluate import evaluate
    from camlens.localize import parse_threshold
    from camlens.metrics import ROAD_PERCENTAGES

    with bad_input():
        box_threshold = parse_threshold(threshold)
        data = read_dataset(dataset, images)
        loaded = _load(model, weights, device)
        total = min(len(data), limit) if limit is not None else len(data)
        with _progress(total) as progress:
            task = progress.add_task("evaluating", total=total)
            report = evaluate(
                loaded,
                data,
                _method_names(method),
                layer=layer,
                threshold=box_threshold,
                tolerance=tolerance,
                iou_threshold=iou,
                faithfulness=faithfulness,
                steps=steps,
                road_percentages=ROAD_PERCENTAGES if road_metric else (),
                batch_size=batch_size,
                limit=limit,
                on_problem=lambda message: progress.console.print(
                    f"camlens: {message}", style="red", highlight=False, soft_wrap=True
                ),
                on_image=lambda _: progress.advance(task),
            )
    if report.evaluated:
        out_console.print(report.table())
    else:
        out_console.print(f"no image of {dataset} could be evaluated")
    saved = report.save(out / "evaluation.json")
    out_console.print(f"report: {saved}")
    plot = report.plot(out / "deletion_insertion.png")
    if plot is not None:
        out_console.print(f"deletion/insertion curves: {plot}")
    if report.problems:
        out_console.print(
            f"{len(report.problems)} problems with {dataset} (on stderr); "
            f"{report.evaluated} of {report.images} images evaluated"
        )
        raise typer.Exit(2)


@app.command()
def serve(
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    runs: Annotated[
        Path | None, typer.Option("--runs", help="a folder of finished runs to serve under /runs/")
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
) -> None:
    """Serve the explorer page and the HTTP API (documented at /docs) around one model."""
    try:
        import uvicorn

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
        application = create_app(_load(model, weights, device), settings)
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


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None)
