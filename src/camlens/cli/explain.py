"""``camlens explain`` and ``camlens summary``: a run over many images, and the run as a whole
from its index."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from camlens.cli.common import (
    AboveOpt,
    AllBoxesOpt,
    BatchSizeOpt,
    DetectionsOpt,
    DeviceOpt,
    EmbeddingOpt,
    EventBars,
    FastChannelsOpt,
    FastResolutionOpt,
    InputSizeOpt,
    LayersOpt,
    LikeOpt,
    MaxBatchMemoryOpt,
    MaxPixelsOpt,
    MethodsOpt,
    MinScoreOpt,
    ModelOpt,
    OutputOpt,
    ReluOpt,
    ScoresOpt,
    SmoothOpt,
    ThresholdOpt,
    VersusOpt,
    WeightsOpt,
    app,
    bad_input,
    detector_options,
    explain_config,
    fail,
    input_files,
    out_console,
    progress_bars,
    say,
    target_options,
)
from camlens.errors import CamlensError
from camlens.options import MAX_PIXELS

if TYPE_CHECKING:
    from camlens.batch import Done
    from camlens.explanation import Explanation


def _segment_targets(
    given: tuple[int | str, ...],
    targets: tuple[object, ...],
    region: str | None,
    mask: Path | None,
) -> tuple[tuple[int | str, ...], tuple[object, ...]]:
    """``--region``/``--mask``: each ``--class`` as a segment over that region; a CamlensError
    naming what is missing or in the way."""
    from camlens.targets import Segment, check_box

    box = None if region is None else check_box(region)
    if targets:
        raise CamlensError("--region and --mask take the classes of --class alone (no --versus...)")
    if not given:
        raise CamlensError(
            f"{'--region' if region is not None else '--mask'} needs --class NAME: the class "
            "whose logits are summed over it"
        )
    if region is not None and mask is not None:
        raise CamlensError("give --region or --mask, not both")
    if mask is not None and not mask.is_file():
        raise CamlensError(f"--mask {mask}: no such file")
    return (), tuple(Segment(c, box=box, mask=None if mask is None else str(mask)) for c in given)


def console_line(result: Explanation) -> str:
    """One line per explained image: its top-3 predictions (a detector's: how many detections,
    and the 3 best), the classes explained, and the maps that came out flat (nothing left after
    the ReLU: no positive evidence at that layer)."""
    row: dict[str, object] = {
        "image": result.source,
        "predictions": [{"label": p.label, "score": p.score} for p in result.predictions],
        "explanations": [
            {"label": m.label, "method": m.method, "layer": m.layer, "flat": m.flat}
            for m in result.maps
        ],
    }
    if result.detections is not None:
        row["detections"] = [{"label": d.label, "score": d.score} for d in result.detections]
    return row_line(row)


def row_line(row: dict[str, object]) -> str:
    """:func:`console_line` of an image from its row in a run's index (what a Ray run's images
    come back as)."""
    predictions = cast(list[dict[str, object]], row["predictions"])
    maps = cast(list[dict[str, object]], row["explanations"])
    top = "; ".join(f"{p['label']} {cast(float, p['score']):.3f}" for p in predictions[:3])
    found = cast("list[dict[str, object]] | None", row.get("detections"))
    if found is not None:  # a detector: its detections rather than its top classes
        count = f"{len(found)} detection{'' if len(found) == 1 else 's'}"
        best = "; ".join(f"{d['label']} {cast(float, d['score']):.3f}" for d in found[:3])
        top = f"{count}: {best}" if found else "no detection"
    explained = "; ".join(dict.fromkeys(str(m["label"]) for m in maps))
    line = f"{row['image']}: {top} | explained: {explained or 'nothing'}"
    flat = [f"{m['label']} ({m['method']}, {m['layer']})" for m in maps if m.get("flat")]
    if flat:
        more = f" and {len(flat) - 3} more" if len(flat) > 3 else ""
        line += (
            f" | {len(flat)} flat map{'s' if len(flat) > 1 else ''}, no positive evidence: "
            f"{'; '.join(flat[:3])}{more} (--no-relu shows the signed map)"
        )
    return line


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
        typer.Option(
            "--class",
            "-c",
            help="class index or name (repeat for several); not with --top: give one or the other",
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-k",
            help="explain the top K predicted classes (default 1; not with --class; with "
            "--above P: at most K of the classes scored at least P). The "
            "console line shows the top-3 predictions whatever is explained, then "
            "'explained:' and the classes explained",
        ),
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
    relu: ReluOpt = True,
    normalize: Annotated[
        str,
        typer.Option(
            "--normalize",
            help="minmax: each map stretched to [0, 1]; max: divided by its maximum after the "
            "ReLU, as the CAM and Grad-CAM write-ups do (not with --no-relu)",
        ),
    ] = "minmax",
    panels: Annotated[
        bool, typer.Option("--panels", help="also a photo | heatmap | overlay picture per map")
    ] = False,
    raw_panel: Annotated[
        bool,
        typer.Option(
            "--raw-panel",
            help="a fourth tile in each panel: the map at the layer's own grid, before "
            "upsampling (a cell per value, a colorbar); implies --panels",
        ),
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
    versus: VersusOpt = None,
    scores: ScoresOpt = None,
    above: AboveOpt = None,
    output_index: OutputOpt = None,
    like: LikeOpt = None,
    embedding: EmbeddingOpt = None,
    min_score: MinScoreOpt = None,
    detections: DetectionsOpt = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="segmentation models: explain --class's logits summed over the box "
            "x0,y0,x1,y1 (the photo's pixels) rather than over the pixels it is given",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="segmentation models: explain --class's logits summed over this mask image's "
            "non-zero pixels (the photo's size)",
        ),
    ] = None,
) -> None:
    """Explain images: writes OUT/STEM.json, an overlay and a map per class and method, and
    OUT/index.jsonl (a line per image; `camlens summary OUT` reads it). Run again, the same
    command skips the images already done (--overwrite redoes them); Ctrl-C stops after the
    batches under way.

    --layer all: every layer of the automatic layer's kind (every conv stage of a VGG), in depth
    order, and OUT/STEM.grid.png with all of them per image."""
    from camlens.config import OutputConfig
    from camlens.files import output_file, output_folder
    from camlens.options import parse_threshold

    with bad_input():
        given, targets = target_options(classes, versus, output_index, like, embedding)
        if region is not None or mask is not None:
            given, targets = _segment_targets(given, targets, region, mask)
    config = explain_config(
        model=model,
        weights=weights,
        device=device,
        methods=method,
        layers=layer,
        classes=given,
        top=top,
        smooth=smooth,
        batch_size=batch_size,
        max_batch_memory=max_batch_memory,
        fast_channels=fast_channels,
        fast_resolution=fast_resolution,
        max_pixels=max_pixels,
        input_size=input_size,
        relu=relu,
        normalize=normalize,
        targets=targets,
        above=above,
        scores=scores,
        min_score=min_score,
        detections=detections,
    )
    with bad_input():  # every option, and the output places, before torch or any model loads
        output = OutputConfig(
            cmap=cmap,
            alpha=alpha,
            boxes="all" if all_boxes else "largest" if boxes else None,
            threshold=parse_threshold(threshold),
            panels=panels or raw_panel,
            raw_panels=raw_panel,
            grids=config.layers == ("all",),
            format=output_format,  # type: ignore[arg-type]  # checked by OutputConfig
            overlay_format=overlay_format,  # type: ignore[arg-type]
            quality=quality,
        )
        address = _ray_address(ray) if ray is not None else None
        if ray is None and actors is not None:
            raise CamlensError("--actors is for --ray runs: add --ray, or drop --actors")
        if ray is not None and grid is not None:
            raise CamlensError(
                "--grid is not available with --ray: explain the grid's images alone"
            )
        if grid is not None and grid.suffix.lower() != ".png":
            raise CamlensError(f"--grid {grid}: the grid is a PNG; give it a .png name")
        out = output_folder(out)
        grid_file = output_file(grid, "--grid") if grid is not None else None
    from camlens.batch import explain_files
    from camlens.explain import Explainer
    from camlens.explanation import grid as grid_of
    from camlens.render import save_png

    found = input_files(paths)
    files = _outside(found, out)
    if not files:
        fail(f"every input is inside --out {out} (a run's outputs are never its inputs)")
    if grid_file is not None and os.path.realpath(grid_file) in map(os.path.realpath, files):
        fail(f"--grid {grid_file} is one of the inputs: the grid would overwrite it")
    with bad_input():
        from camlens.inputs import class_lists
        from camlens.models import load_model

        loaded = load_model(
            config.model, weights=config.weights, device=config.device, scores=config.scores
        )
        class_lists(loaded, config.classes or None, config.top, 1)  # an unknown class first
        detector_options(loaded.kind, config, min_score, detections)  # before the library's
        explainer = Explainer.from_config(config, model=loaded)
    kept: list[Explanation] = []
    tally = _Tally()
    with progress_bars(rate=True) as progress, _stop_on_ctrl_c() as stopping, bad_input():
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
    if tally.unlabelled and any(t.kind == "versus_true" for t in config.targets):
        say(
            f"camlens: --versus true: {tally.unlabelled} of {tally.explained} images explained "
            "had no class in their folder's name: their top-1 alone was explained",
            err=True,
        )
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
        self.unlabelled = 0  # explained images whose folder names no class (no truth)
        self.started = time.monotonic()

    def add(self, done: Done) -> None:
        if done.skipped:
            self.skipped += 1
        elif done.problem is not None:
            self.errors += 1
        else:
            self.explained += 1
            if done.row is not None and done.row.get("truth") is None:
                self.unlabelled += 1

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


def bare_ray(args: list[str]) -> list[str]:
    """``--ray`` given without a value (last, or before another option) as ``--ray local``."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("local")
    return out


def _outside(files: list[Path], out: Path) -> list[Path]:
    """``files`` less those inside ``out`` (a run's own outputs are never its inputs)."""
    root = Path(os.path.realpath(out))  # realpath, not resolve(): a symlink loop is no error here
    return [f for f in files if root not in Path(os.path.realpath(f)).parents]


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
    if result.undetected:
        text += f", {result.undetected} with no detection"
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
    if result.segments:  # a segmentation model's run
        segments = Table(
            title="segments: images with the class, its mean share of their pixels",
            header_style="bold",
            box=None,
        )
        for column in ("class", "images", "mean share"):
            segments.add_column(column, justify="left" if column == "class" else "right")
        for seg in result.segments[: classes or None]:
            segments.add_row(
                escape(f"{seg.label} ({seg.class_index})"), str(seg.images), f"{seg.share:.3f}"
            )
        out_console.print(segments)
    if result.detections:  # a detector's run
        found = Table(
            title="detections: images with the class, its detections, their mean score and "
            "the mean share of their maps inside their boxes",
            header_style="bold",
            box=None,
        )
        for column in ("class", "images", "detections", "mean score", "mean energy in box"):
            found.add_column(column, justify="left" if column == "class" else "right")
        for det in result.detections[: classes or None]:
            found.add_row(
                escape(f"{det.label} ({det.class_index})"),
                str(det.images),
                str(det.detections),
                f"{det.score:.3f}",
                _fraction(det.energy_in_box),
            )
        out_console.print(found)
    lists = [
        ("most spread maps (share of the photo where the map >= 0.5)", result.spread),
        (
            "most off-center maps (center of mass from the photo's center, 1 = a corner)",
            result.off_center,
        ),
        ("most confident mistakes (top-1 score)", result.confident_mistakes),
        (
            "detections whose maps lie most outside their own box (energy in box, least first)",
            result.outside_box,
        ),
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
