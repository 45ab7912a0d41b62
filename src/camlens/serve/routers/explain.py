"""``POST /api/explain``: one photo explained, its answer built from the report every camlens
result has (:meth:`Explanation.to_dict`), and kept for its files."""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from camlens.config import ExplainConfig, OutputConfig
from camlens.errors import CamlensError, ImageError, PixelLimitError
from camlens.explanation import Explanation
from camlens.images import load_image
from camlens.localize import add_boxes
from camlens.serve.batcher import Cancelled, Closed, Job, QueueFull, phases
from camlens.serve.batcher import Request as Request_
from camlens.serve.encoders import data_url, has_region, map_npy, overlay_png
from camlens.serve.errors import ERRORS, FIELD_BYTES, ApiError, bad_option, busy, size_text
from camlens.serve.parameters import explain_options, maps_asked, only_known_parameters
from camlens.serve.schemas import ExplainOut, ImageOut, MapOut, SkippedOut, StatsOut
from camlens.serve.state import Root, ServerState, State
from camlens.serve.store import Result
from camlens.targets import Segment


async def reference_photo(
    st: State,
    like: Annotated[
        UploadFile | None,
        File(description="a reference photo: explain the similarity (cosine) to its embedding"),
    ] = None,
) -> AsyncIterator[str | None]:
    """A dependency: the ``like`` upload, checked as the main upload is (413, 415), kept under
    its upload name (the map's caption shows it) in a folder that lasts the request."""
    data = b"" if like is None else await like.read()
    if like is None or (not data and like.filename in ("", "blob")):
        # none, or a browser's file input left empty: an HTML form sends it as an empty part
        # without a file name, the API documentation's page as an empty "blob"
        yield None
        return
    name = upload_name(like.filename)
    photo = await run_in_threadpool(read_image, st, data, name, "like")
    del data
    with tempfile.TemporaryDirectory(prefix="camlens-like-") as folder:
        path = Path(folder) / name
        await run_in_threadpool(photo.save, path, "PNG")
        yield str(path)


async def mask_image(
    st: State,
    mask: Annotated[
        UploadFile | None,
        File(
            description="segmentation models: a mask image of the photo's size; each of classes "
            "is explained over its non-zero pixels"
        ),
    ] = None,
) -> AsyncIterator[tuple[str, bytes] | None]:
    """A dependency: the ``mask`` upload, checked as the photo is (413, 415), kept under its
    upload name in a folder that lasts the request: (its path, its bytes as PNG)."""
    data = b"" if mask is None else await mask.read()
    if mask is None or (not data and mask.filename in ("", "blob")):
        yield None
        return
    name = upload_name(mask.filename)
    picture = await run_in_threadpool(read_mask, st, data, name)
    del data
    with tempfile.TemporaryDirectory(prefix="camlens-mask-") as folder:
        path = Path(folder) / name
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
        yield str(path), buffer.getvalue()


def read_mask(st: ServerState, data: bytes, name: str) -> Image.Image:
    """The uploaded mask in grey levels (its non-zero pixels are the region); 413, 415 as for a
    photo."""
    try:
        return load_image(data, max_pixels=st.settings.max_pixels).convert("L")
    except PixelLimitError as exc:
        raise ApiError(413, f"{name}: {exc.problem.split(';')[0]}", "mask") from None
    except ImageError as exc:
        raise ApiError(415, f"{name}: {exc.problem}", "mask") from None


router = APIRouter(prefix="/api", tags=["explain"], dependencies=[Depends(only_known_parameters)])


@router.post(
    "/explain",
    responses=ERRORS,
    form_limits={"max_files": 3, "max_fields": 100, "max_part_size": FIELD_BYTES},
)
async def explain(
    st: State,
    root: Root,
    request: Request,
    response: Response,
    image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, TIFF...)")],
    methods: Annotated[
        list[str] | None,
        Form(
            description="method names or groups (all, gradients, scores); repeat or "
            "separate with commas; default gradcam"
        ),
    ] = None,
    layers: Annotated[
        list[str] | None,
        Form(description="target layers (see GET /api/model); default the automatic one"),
    ] = None,
    classes: Annotated[
        list[str] | None,
        Form(description="class indices or names to explain, one per field (repeat)"),
    ] = None,
    top: Annotated[
        int | None,
        Form(description="explain the top K classes (default 1); with above, at most K of those"),
    ] = None,
    boxes: Annotated[
        str | None, Form(description="none, largest or all: boxes from each map")
    ] = None,
    threshold: Annotated[
        str, Form(description="box threshold: a fraction of the map's maximum, or otsu")
    ] = "0.2",
    cmap: Annotated[str, Form(description="matplotlib colormap of the overlays")] = "jet",
    alpha: Annotated[float, Form(description="heatmap opacity in the overlays, 0..1")] = 0.5,
    smooth: Annotated[list[str] | None, Form(description="tta and/or pca")] = None,
    normalize: Annotated[
        str,
        Form(description="minmax (default) or max: each map divided by its maximum after the ReLU"),
    ] = "minmax",
    fast_channels: Annotated[
        int | None, Form(description="perturbation methods: the N channels of largest variance")
    ] = None,
    fast_resolution: Annotated[
        float | None, Form(description="Score-CAM family: masked passes at this fraction")
    ] = None,
    inline: Annotated[
        bool, Form(description="overlay PNG and map .npy as data: URLs in the JSON")
    ] = False,
    versus: Annotated[
        list[str] | None,
        Form(
            description="explain each class (or the top-1) versus this class, y_A - y_B (repeat "
            "for the mean of several), or next / next:K: the next K predictions"
        ),
    ] = None,
    above: Annotated[
        float | None,
        Form(
            description="explain every class whose score is at least this, best first; under "
            "sigmoid or raw scores give top to bound them"
        ),
    ] = None,
    output_index: Annotated[
        list[str] | None,
        Form(alias="output", description="explain raw output K as it is (repeat)"),
    ] = None,
    scores: Annotated[
        str | None, Form(description="softmax, sigmoid or raw: how outputs become predictions")
    ] = None,
    job: Annotated[
        str | None,
        Form(
            description="a name for this request (8 to 64 letters, digits, - or _, unguessable: "
            "a random one): GET /api/jobs/JOB gives its progress, DELETE /api/jobs/JOB cancels it",
            pattern=r"^[A-Za-z0-9_-]{8,64}$",
        ),
    ] = None,
    reference: Annotated[str | None, Depends(reference_photo)] = None,
    embedding: Annotated[
        str | None,
        Form(description="with like: the layer whose averaged output is the embedding"),
    ] = None,
    region: Annotated[
        str | None,
        Form(
            description="segmentation models: x0,y0,x1,y1 in the photo's pixels; each of classes "
            "is explained over this box (not over the pixels the model gives it)"
        ),
    ] = None,
    masked: Annotated[tuple[str, bytes] | None, Depends(mask_image)] = None,
    min_score: Annotated[
        float | None,
        Form(description="detectors: explain the detections scored at least this (default 0.5)"),
    ] = None,
    detections: Annotated[
        int | None,
        Form(
            description="detectors: explain the N best detections over min_score (default: as "
            "many as the server's max_maps allows over the methods x layers asked for)"
        ),
    ] = None,
) -> ExplainOut:
    """Explains one photo: the top-5 predictions and, per map, its class, method, layer,
    peak, boxes (when asked), whether it is flat, and the URLs of the overlay PNG, the
    coloured map and the map as float32 `.npy` at the photo's size."""
    try:
        config, output = explain_options(
            st,
            methods=methods,
            layers=layers,
            classes=classes,
            top=top,
            smooth=smooth,
            normalize=normalize,
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            boxes=boxes,
            threshold=threshold,
            cmap=cmap,
            alpha=alpha,
            versus=versus,
            above=above,
            outputs=output_index,
            scores=scores,
            like=reference,
            embedding=embedding,
            region=region,
            mask=None if masked is None else masked[0],
            min_score=min_score,
            detections=detections,
        )
    except ApiError as exc:  # the mask by its upload name, not the server's folder
        if masked is not None:
            exc.detail = exc.detail.replace(masked[0], Path(masked[0]).name)
        raise
    if st.batcher.queued >= st.settings.max_queue:  # before any decoding
        retry = st.batcher.retry_after()
        raise ApiError(503, busy(retry), headers={"Retry-After": str(retry)})
    name = upload_name(image.filename)
    layers_asked = len(config.layers) or 1
    tracked = Job(job or secrets.token_urlsafe(12), phases(config, layers_asked))
    if job is not None:
        st.jobs.add(tracked)
    ticket = st.batcher.expect()  # a batch about to start waits for this one
    try:
        data = await image.read()
        photo = await run_in_threadpool(read_image, st, data, name)
        del data
        check_regions(config, photo.size)
        if inline:  # before any model runs: the maps' .npy alone would be too much
            check_inline(st, maps_asked(config, st.model), photo.size, 0)
        sent = time.perf_counter()
        explanation = await until_disconnected(
            request, st.batcher.explain(Request_(photo, name, config, tracked), ticket), tracked
        )
        waited = time.perf_counter() - sent
        for m in explanation.maps:  # uploads by their names, not the server's folder
            if reference is not None and m.target and m.target.get("kind") == "similarity":
                m.target = {**m.target, "reference": Path(reference).name}
            if masked is not None and m.target and m.target.get("mask"):
                m.target = {**m.target, "mask": Path(masked[0]).name}
    except Cancelled:
        tracked.cancel()
        raise ApiError(
            409, f"job {tracked.id!r} was cancelled (DELETE /api/jobs/{tracked.id})", "job"
        ) from None
    except QueueFull as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except Closed as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
    except CamlensError as exc:  # what the model refuses: CAM without a head, say
        raise bad_option(exc) from None
    finally:
        ticket.cancel()  # unless explain() took it
        if tracked.state in ("queued", "running"):
            tracked.state = "failed"
            tracked.finished = time.monotonic()
    tracked.state, tracked.finished = "done", time.monotonic()
    mask_png = None if masked is None else masked[1]
    body = await run_in_threadpool(
        respond, st, explanation, config, output, inline, root, waited, mask_png
    )
    response.headers["Server-Timing"] = server_timing(body.stats)
    return body


def check_regions(config: ExplainConfig, size: tuple[int, int]) -> None:
    """A 422 naming ``region`` or ``mask`` when it does not fit the photo of ``size``."""
    width, height = size
    for t in config.targets:
        if isinstance(t, Segment) and t.box is not None:
            x0, y0, x1, y1 = t.box
            if x1 > width or y1 > height:
                raise ApiError(
                    422,
                    f"the region {x0},{y0},{x1},{y1} is outside the {width}x{height} photo",
                    "region",
                )
        elif isinstance(t, Segment) and isinstance(t.mask, str):
            with Image.open(t.mask) as mask:
                if mask.size != size:
                    raise ApiError(
                        422,
                        f"the mask {Path(t.mask).name} is {mask.width}x{mask.height}, the photo "
                        f"{width}x{height}: give a mask of the photo's size",
                        "mask",
                    )


def server_timing(stats: StatsOut) -> str:
    """The ``Server-Timing`` header of an answer: the wait in the queue and the model's time
    (with the passes it ran), in milliseconds."""
    passes = (
        f"{stats.forward_passes} forward, {stats.backward_passes} backward, "
        f"{stats.perturbation_passes} perturbation passes"
    )
    return (
        f"queue;dur={stats.queued_seconds * 1000:.1f}, "
        f'model;dur={stats.seconds * 1000:.1f};desc="{passes}"'
    )


async def until_disconnected(
    request: Request, waiting: Coroutine[Any, Any, Explanation], job: Job
) -> Explanation:
    """The explanation ``waiting`` gives, unless the client goes away first (checked twice a
    second): then the job is cancelled (the batcher drops it, or stops its batch) and so is
    the wait."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if job.cancelled.is_set():
                raise Cancelled(f"job {job.id!r} was cancelled")
            if await request.is_disconnected():
                job.cancel()
                raise Cancelled("the client went away")
    finally:
        if not task.done():
            task.cancel()


def upload_name(filename: str | None) -> str:
    """The upload's file name, without folders or control characters, for messages."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:120]
    return name or "upload"


def read_image(st: ServerState, data: bytes, name: str, field: str = "image") -> Image.Image:
    """The uploaded image, upright RGB; 413 over the pixel limit, 415 if not an image."""
    try:
        return load_image(data, max_pixels=st.settings.max_pixels)
    except PixelLimitError as exc:
        problem = exc.problem.split(";")[0]  # the hint about max_pixels= is not the client's
        raise ApiError(413, f"{name}: {problem}", field) from None
    except ImageError as exc:
        raise ApiError(415, f"{name}: {exc.problem}", field) from None


def check_inline(st: ServerState, maps: int, size: tuple[int, int], inlined: int) -> None:
    """A 413 naming ``inline`` when an answer with ``maps`` maps of a photo of ``size`` inline
    would pass the server's ``max_inline_bytes``: each map's ``.npy`` alone is 4 bytes a pixel,
    a third more in base64 (``inlined``: the bytes of data: URLs already made)."""
    width, height = size
    least = maps * (4 * width * height + 128) * 4 // 3
    limit = st.settings.max_inline_bytes
    if inlined + least > limit or inlined > limit:
        raise ApiError(
            413,
            f"inline=true would answer at least {size_text(max(least, inlined))} for {maps} "
            f"map{'s' if maps != 1 else ''} of {width}x{height} pixels, over this server's limit "
            f"of {size_text(limit)}: ask without inline and fetch each map from its URL",
            "inline",
        )


def respond(
    st: ServerState,
    explanation: Explanation,
    config: ExplainConfig,
    output: OutputConfig,
    inline: bool,
    root: str,
    waited: float = 0.0,
    mask: bytes | None = None,
) -> ExplainOut:
    """The answer for a finished explanation (boxes added when asked): its report
    (:meth:`Explanation.to_dict`) with the result's URLs; the result is kept (with ``mask``, the
    uploaded mask as PNG, for its maps' regions)."""
    if output.boxes is not None:
        add_boxes(explanation, threshold=output.threshold, mode=output.boxes)
    result_id = st.store.new_id()
    base = f"{root}/api/results/{result_id}"
    overlay_query = urlencode(
        {"cmap": output.cmap, "alpha": f"{output.alpha:g}", "boxes": int(bool(output.boxes))}
    )
    heatmap_query = urlencode({"cmap": output.cmap})
    report = explanation.to_dict()
    maps = []
    inlined = 0  # bytes of data: URLs so far
    for i, entry in enumerate(report["explanations"]):
        urls = {
            "overlay": f"{base}/maps/{i}/overlay.png?{overlay_query}",
            "heatmap": f"{base}/maps/{i}/heatmap.png?{heatmap_query}",
            "map": f"{base}/maps/{i}/map.npy",
        }
        if has_region(explanation, i, mask):
            urls["region"] = f"{base}/maps/{i}/region.png"
        if inline:
            check_inline(st, len(report["explanations"]) - i, explanation.size, inlined)
            png = overlay_png(explanation, i, output.cmap, output.alpha, output.boxes is not None)
            urls["overlay"] = data_url("image/png", png)
            urls["map"] = data_url("application/octet-stream", map_npy(explanation, i))
            inlined += len(urls["overlay"]) + len(urls["map"])
        maps.append(MapOut.model_validate({**entry, "index": i, **urls}))
    width, height = report["size"]
    body = ExplainOut(
        id=result_id,
        url=base,
        download=f"{base}/download.zip",
        model=report["model"],
        image=ImageOut(name=report["image"], size=(width, height), url=f"{base}/photo.jpg"),
        methods=list(config.methods),
        layers=sorted({m.layer for m in explanation.maps}, key=st.layer_names.index),
        scores=report["scores"],
        predictions=report["predictions"],
        segmentation=report.get("segmentation"),
        detections=report.get("detections"),
        explanations=maps,
        skipped=[SkippedOut.model_validate(entry) for entry in report.get("skipped", ())],
        stats=StatsOut(
            images=explanation.stats.images,
            forward_passes=explanation.stats.forward_passes,
            backward_passes=explanation.stats.backward_passes,
            perturbation_passes=explanation.stats.perturbation_passes,
            seconds=explanation.stats.seconds,
            queued_seconds=max(0.0, waited - explanation.stats.seconds),
        ),
    )
    st.store.put(result_id, Result(explanation, output, body, mask))
    return body
