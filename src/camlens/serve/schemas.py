"""The JSON the HTTP API sends: typed models, which also document it on the OpenAPI page."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: one line saying what is wrong and, for a bad request parameter, its name."""

    detail: str = Field(examples=["top must be at least 1, not 0"])
    parameter: str | None = Field(default=None, examples=["top"])


class Preprocessing(BaseModel):
    input_size: tuple[int, int] = Field(description="(height, width) of the model input")
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class LayerOut(BaseModel):
    name: str
    kind: str = Field(description="the module's class name")
    shape: list[int] = Field(description="output [C, H, W] for one image")


class ModelOut(BaseModel):
    name: str
    num_classes: int
    classes: list[str] = Field(description="class names, by index")
    preprocessing: Preprocessing
    layers: list[LayerOut] = Field(description="layers with a spatial output, in forward order")
    auto_layer: str = Field(description="the layer used when none is asked for")
    scores: str = Field(
        description="how outputs become predictions: softmax, sigmoid (multi-label, binary) or raw"
    )
    kind: str = Field(
        default="classifier",
        description="classifier, segmentation (a class per pixel: explains segments) or "
        "detection (boxes: explains detections)",
    )
    explains: list[str] = Field(
        default_factory=list,
        description="the explain form's fields that say what is explained for this kind of model "
        "(any other of them is a 422 naming it)",
    )
    background: list[int] = Field(
        default_factory=list,
        description="segmentation: the background classes, left out of top (explained when "
        "asked for in classes)",
    )
    min_score: float | None = Field(
        default=None,
        description="detectors: the min_score a request is explained at when it gives none",
    )


class MethodOut(BaseModel):
    name: str
    title: str = Field(description="its name as people write it, for display (Grad-CAM++)")
    needs: str = Field(description="head, gradients, activations or scores")
    summary: str
    paper: str


class MethodsOut(BaseModel):
    methods: list[MethodOut]
    groups: dict[str, list[str]] = Field(description="names that stand for several methods")


class ServerOut(BaseModel):
    version: str
    max_upload_bytes: int
    max_pixels: int
    max_maps: int = Field(description="maps one request may ask for (classes x methods x layers)")
    max_inline_bytes: int = Field(description="bytes an answer with inline=true may hold")
    upload_stall: float = Field(description="seconds an upload may send nothing (then a 408)")
    max_batch: int
    max_queue: int
    results_kept: int = Field(description="explanations whose files stay available, newest first")
    results_bytes: int = Field(description="memory those results may hold (the newest is kept)")
    colormaps: list[str] = Field(description="common colormaps (any matplotlib name works)")
    runs: bool = Field(description="a run folder is served under /runs/")


class PredictionOut(BaseModel):
    class_index: int
    label: str
    score: float = Field(
        description="as the model scores outputs: softmax or sigmoid probability, or raw value"
    )


class BoxOut(BaseModel):
    box: list[int | float] = Field(description="[x0, y0, x1, y1] in the photo's pixels")
    score: float = Field(description="share of the map's mass inside the box")


class SegmentOut(BaseModel):
    class_index: int
    label: str
    share: float = Field(description="the share of the image's pixels the model gives the class")


class DetectionOut(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1] in the photo's pixels")
    class_index: int
    label: str
    score: float = Field(description="the detector's score")


class MapOut(BaseModel):
    index: int = Field(description="the map's number in this result, for its file URLs")
    class_index: int
    label: str
    score: float
    method: str
    layer: str
    flat: bool = Field(description="the method gave a constant map (returned as zeros)")
    peak: tuple[int, int] = Field(description="(x, y) of the map's maximum in the photo's pixels")
    map_shape: tuple[int, int] = Field(description="(h, w): the map's own grid, at the layer")
    boxes: list[BoxOut] | None = Field(default=None, description="when boxes were asked for")
    target: dict[str, Any] | None = Field(
        default=None,
        description='what was explained, when not a plain class: {"kind": "contrast", "classes": '
        '[282, 285]}, {"kind": "output", "index": 0}, {"kind": "similarity", ...}',
    )
    explained: str | None = Field(default=None, description="the target in words")
    value: float | None = Field(default=None, description="the target's score for this image")
    overlay: str = Field(description="URL of the overlay PNG (a data: URL with inline=true)")
    heatmap: str = Field(description="URL of the coloured map alone, PNG at the photo's size")
    map: str = Field(
        description="URL of the map, float32 .npy [height, width] in [0, 1] at the photo's size "
        "(a data: URL with inline=true); ?size=layer: at the layer's own grid"
    )
    region: str | None = Field(
        default=None,
        description="segment maps: URL of the region explained (the class's pixels, the box or "
        "the mask), its outline on a transparent PNG at the photo's size",
    )


class ImageOut(BaseModel):
    name: str
    size: tuple[int, int] = Field(description="(width, height)")
    url: str = Field(description="the photo as explained (upright RGB), JPEG")


class SkippedOut(BaseModel):
    method: str
    layer: str
    reason: str = Field(description="why the method does not apply at that layer")


class StatsOut(BaseModel):
    """What the model work cost: of the batch the request was explained in (concurrent requests
    with the same options share one)."""

    images: int = Field(description="images in the batch")
    forward_passes: int
    backward_passes: int = Field(description="zero where a GAP -> Linear head gave the gradients")
    perturbation_passes: int = Field(description="rows the perturbation methods ran")
    seconds: float = Field(description="the batch's model time")
    queued_seconds: float = Field(description="this request's wait before its batch started")


class ExplainOut(BaseModel):
    id: str
    url: str = Field(description="this result again, while it is kept")
    download: str = Field(
        description="URL of a zip of everything of the result: report.json, the photo, and per "
        "map its overlay PNG and .npy"
    )
    model: str
    image: ImageOut
    methods: list[str]
    layers: list[str]
    scores: str = Field(
        default="softmax", description="how the predictions were scored: softmax, sigmoid or raw"
    )
    predictions: list[PredictionOut] = Field(
        description="the top 5, best first (segmentation: the 5 classes with most pixels, score "
        "their share)"
    )
    segmentation: list[SegmentOut] | None = Field(
        default=None,
        description="segmentation models: every class present, most pixels first",
    )
    detections: list[DetectionOut] | None = Field(
        default=None,
        description="detectors: every detection scored at least min_score, best first; the "
        "maps explain the first `detections` of them (each map's target is its detection)",
    )
    explanations: list[MapOut]
    skipped: list[SkippedOut] = Field(
        default_factory=list,
        description="(method, layer) pairs asked for but left out, and why (CAM at a layer no "
        "GAP -> Linear head reads)",
    )
    stats: StatsOut


class JobOut(BaseModel):
    """The progress of a request named with POST /api/explain's ``job`` field."""

    job: str
    state: str = Field(description="queued, running, done, failed or cancelled")
    passes_done: int = Field(description="perturbation passes run so far")
    passes_total: int = Field(description="passes of the phases started so far")
    phases_done: int = Field(description="perturbation (method, layer, augmentation) finished")
    phases: int = Field(description="perturbation phases the request runs (0: none, one pass)")
    seconds: float = Field(description="time since it started running")
    queued_seconds: float = Field(description="time it waited in the queue")
    estimate_seconds: float | None = Field(description="an estimate of the seconds left")


# --- the run gallery (serve --runs) ---------------------------------------------------------------


class RunOut(BaseModel):
    name: str = Field(description="the run's folder name, as the other /api/runs URLs take it")
    url: str = Field(description="where its files are served, under /runs/")
    images: int = Field(description="rows of its index")
    explained: int
    errors: int = Field(description="images that could not be explained")
    labelled: int = Field(description="images with a true class from their folder's name")
    model: str | None
    methods: list[str]
    layers: list[str] = Field(description="the layers asked for (empty: the automatic one)")
    format: str | None = Field(description="files or dataset (None when the run has no record)")
    kind: str | None = Field(
        default=None,
        description="classifier, segmentation or detection: the model's kind, as the run's "
        "rows say (None when its index cannot be read)",
    )
    problem: str | None = Field(
        default=None, description="why its index cannot be read (then it shows nothing)"
    )


class RunsOut(BaseModel):
    folder: str = Field(description="the name of the folder served with --runs")
    runs: list[RunOut]


class ClassOut(BaseModel):
    class_index: int
    label: str


class GalleryMapOut(BaseModel):
    class_index: int
    label: str
    score: float = Field(description="the class's probability")
    method: str
    layer: str
    flat: bool = Field(description="the method gave a constant map (zeros)")
    peak: list[int] | None = Field(description="(x, y) of the map's maximum in the photo's pixels")
    box: list[int | float] | None = Field(description="its largest region above the threshold")
    spread: float | None = Field(description="the share of the photo where the map is >= 0.5")
    off_center: float | None = Field(
        description="its center of mass from the photo's center (0 center, 1 a corner)"
    )
    overlay: str | None = Field(description="URL of the overlay under /runs/")
    map: str | None = Field(description="URL of the .npy map (files format), else None")
    target: dict[str, Any] | None = Field(
        None,
        description="what the map explains when not a plain class, as data: "
        '{"kind": "contrast", "classes": [top-1, true class]} for the contrast of a mistake '
        "(camlens explain DIR --versus true)",
    )
    explained: str | None = Field(None, description="the target in words (with target)")
    value: float | None = Field(None, description="the target's value, y_A - y_B for a contrast")
    energy_in_box: float | None = Field(
        None,
        description="a detection's map: the share of its sum inside the detection's own box "
        "(low: the map lies outside the box, worth a look)",
    )


class GalleryImageOut(BaseModel):
    id: int = Field(description="the image's row in the index, for GET /api/runs/{run}/images/{id}")
    image: str = Field(description="the path the run was given")
    size: list[int] | None = Field(description="(width, height)")
    error: str | None = Field(description="why the image could not be explained")
    prediction: PredictionOut | None = Field(description="the top-1 class")
    predictions: list[PredictionOut] = Field(description="the top 5, best first")
    truth: ClassOut | None = Field(description="the class its folder names, when it names one")
    report: str | None = Field(description="URL of its JSON report under /runs/")
    focus: int | None = Field(
        description="the map shown and sorted by: the first of the class filtered by, else the "
        "first map"
    )
    maps: list[GalleryMapOut]
    segmentation: list[SegmentOut] | None = Field(
        None, description="a segmentation model's classes present, most pixels first"
    )
    segments_overlay: str | None = Field(
        None, description="URL of the photo with its predicted segmentation drawn over it"
    )
    detections: list[DetectionOut] | None = Field(
        None,
        description="a detector's detections, best first (empty: none scored at least its "
        "min_score); each map's target is one of them",
    )
    detections_overlay: str | None = Field(
        None, description="URL of the photo with the detector's boxes drawn over it"
    )


class GalleryPageOut(BaseModel):
    run: str
    class_index: int | None = Field(description="the class filtered by")
    status: str
    sort: str
    order: str
    offset: int
    limit: int
    total: int = Field(description="images that pass the filters")
    images: list[GalleryImageOut]


class ClassLineOut(BaseModel):
    class_index: int
    label: str
    images: int
    score: float = Field(description="mean top-1 probability")
    top1: float | None = Field(description="share whose top-1 is the true class (with labels)")
    top5: float | None
    spread: float | None = Field(description="mean spread of the images' first maps")
    off_center: float | None


class NotableOut(BaseModel):
    image: str
    label: str
    value: float = Field(description="what put it on its list")
    overlay: str | None = Field(description="URL of its first map's overlay")


class SegmentLineOut(BaseModel):
    class_index: int
    label: str
    images: int = Field(description="images in which the model gives the class pixels")
    share: float = Field(description="its mean share of those images' pixels")


class DetectionLineOut(BaseModel):
    class_index: int
    label: str
    images: int = Field(description="images with at least one detection of the class")
    detections: int = Field(description="its detections in all")
    score: float = Field(description="their mean score")
    energy_in_box: float | None = Field(
        description="the mean share of their maps inside their own boxes (None: none explained)"
    )


class RunSummaryOut(BaseModel):
    run: str
    images: int
    explained: int
    errors: int
    flat: int = Field(description="images whose first map is flat")
    labelled: int
    top1: float | None
    top5: float | None
    by: str = Field(description="truth (classes from folder names) or predicted (the top-1)")
    classes: list[ClassLineOut] = Field(description="most images first")
    spread: list[NotableOut] = Field(description="the images whose first map is most spread")
    off_center: list[NotableOut] = Field(description="... most off center")
    confident_mistakes: list[NotableOut] = Field(description="wrong top-1, highest score first")
    outside_box: list[NotableOut] = Field(
        default_factory=list,
        description="a detector's run: the detections whose maps have the least energy inside "
        "their own box, least first",
    )
    segments: list[SegmentLineOut] = Field(
        default_factory=list,
        description="a segmentation model's run: per class present, the images it is in and "
        "its mean share of their pixels, most images first",
    )
    detections: list[DetectionLineOut] = Field(
        default_factory=list,
        description="a detector's run: per class detected, its images, detections, mean score "
        "and mean energy in box, most images first",
    )
    undetected: int = Field(0, description="a detector's images with no detection")
