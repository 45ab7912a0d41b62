"""``camlens localize`` and ``camlens evaluate``: boxes from maps, and maps measured against
ground-truth boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camlens.cli.common import (
    AllBoxesOpt,
    BatchSizeOpt,
    DeviceOpt,
    EventBars,
    FastChannelsOpt,
    FastResolutionOpt,
    InputSizeOpt,
    MaxBatchMemoryOpt,
    MaxPixelsOpt,
    MethodsOpt,
    ModelOpt,
    ReluOpt,
    SmoothOpt,
    ThresholdOpt,
    WeightsOpt,
    app,
    bad_input,
    explain_config,
    input_files,
    model_from_options,
    out_console,
    progress_bars,
    say,
)
from camlens.errors import CamlensError
from camlens.options import MAX_PIXELS


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
    relu: ReluOpt = True,
    all_boxes: AllBoxesOpt = False,
) -> None:
    """Find objects: a box per top class (its map's largest region above the threshold),
    duplicates merged across classes, each box cropped and re-classified. Writes OUT/boxes.jsonl
    (one image a line) and OUT/STEM.boxes.png per image."""
    from camlens.config import OutputConfig
    from camlens.files import output_folder
    from camlens.options import check_localize_options, parse_threshold

    config = explain_config(
        model=model,
        weights=weights,
        device=device,
        methods=[method],
        layers=[layer] if layer else None,
        smooth=smooth,
        batch_size=batch_size,
        max_batch_memory=max_batch_memory,
        fast_channels=fast_channels,
        fast_resolution=fast_resolution,
        max_pixels=max_pixels,
        input_size=input_size,
        relu=relu,
    )
    with bad_input():  # every option, and the output folder, before torch or any model loads
        output = OutputConfig(
            threshold=parse_threshold(threshold), boxes="all" if all_boxes else "largest"
        )
        check_localize_options(min_score=min_score, iou_threshold=iou)
        if top < 1:
            raise CamlensError(f"--top must be at least 1, not {top}")
        out = output_folder(out)
    from camlens.batch import localize_files
    from camlens.explain import Explainer

    files = input_files(paths)
    with bad_input():
        explainer = Explainer.from_config(config)
    found = 0
    with progress_bars(len(files)) as progress:
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
    max_pixels: MaxPixelsOpt = MAX_PIXELS,
    input_size: InputSizeOpt = None,
    relu: ReluOpt = True,
) -> None:
    """Evaluate methods against ground-truth boxes: prints a table (a row per method), writes
    OUT/evaluation.json and OUT/deletion_insertion.png."""
    from camlens.files import output_folder
    from camlens.options import parse_threshold

    config = explain_config(
        model=model,
        weights=weights,
        device=device,
        methods=method,
        layers=[layer] if layer else None,
        smooth=smooth,
        batch_size=batch_size,
        max_batch_memory=max_batch_memory,
        fast_channels=fast_channels,
        fast_resolution=fast_resolution,
        max_pixels=max_pixels,
        input_size=input_size,
        relu=relu,
    )
    with bad_input():  # every option and the output folder before any model runs
        box_threshold = parse_threshold(threshold)
        from camlens.datasets import read_dataset
        from camlens.evaluate import check_evaluate_options, evaluate
        from camlens.metrics import ROAD_PERCENTAGES

        check_evaluate_options(
            tolerance=tolerance, iou_threshold=iou, steps=steps, batch_size=batch_size, limit=limit
        )
        out = output_folder(out)
        data = read_dataset(dataset, images)
        loaded = model_from_options(model, weights, device)
        total = min(len(data), limit) if limit is not None else len(data)
        with progress_bars(total) as progress:
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
