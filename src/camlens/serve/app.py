"""The FastAPI app of ``camlens serve``: the explorer page and the HTTP API, around one model.

Requests are checked with the same :class:`~camlens.config.ExplainConfig` and
:class:`~camlens.config.OutputConfig` as everywhere; a bad parameter is a 422 naming it. Images
are read in memory, their pixel count checked from the header before decoding (413 over the
limit, 415 for what is not an image), and explained by the :class:`~camlens.serve.batcher.Batcher`
(503 with Retry-After when its queue is full). Results stay available, the newest
``settings.results``, for their files (overlay, coloured map, ``.npy`` map, photo) to be fetched.
No URL given by a client is ever fetched.
"""

from __future__ import annotations

import base64
import difflib
import io
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import numpy as np
from anyio import to_thread
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import camlens
from camlens import render
from camlens.config import METHOD_GROUPS, ExplainConfig, OutputConfig, resolve_methods
from camlens.errors import (
    CamlensError,
    ClassError,
    ImageError,
    LayerError,
    MethodError,
    PixelLimitError,
)
from camlens.explanation import Explanation
from camlens.images import load_image
from camlens.layers import auto_layer, spatial_layers
from camlens.localize import add_boxes, boxes_from_map
from camlens.maps import upsample
from camlens.methods import METHODS
from camlens.models import Model
from camlens.serve.batcher import Batcher, Closed, QueueFull
from camlens.serve.batcher import Request as Job
from camlens.serve.gallery import (
    DEFAULT_ORDER,
    Gallery,
    Order,
    Place,
    RunIndex,
    RunNotFound,
    RunUnreadable,
    Sort,
    Status,
    image_json,
    run_json,
    summary_json,
    unreadable_run_json,
)
from camlens.serve.schemas import (
    ErrorBody,
    ExplainOut,
    GalleryImageOut,
    GalleryPageOut,
    LayerOut,
    MethodOut,
    MethodsOut,
    ModelOut,
    Preprocessing,
    RunsOut,
    RunSummaryOut,
    ServerOut,
)
from camlens.serve.store import Result, ResultStore

STATIC = Path(__file__).parent / "static"
FORM_BYTES = 16 * 1024  # allowed in a request besides the upload: the form's fields and headers
T = TypeVar("T")


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs. ``runs``: a folder whose files are served under ``/runs/`` (none
    outside it), and whose runs (itself, and the folders one level down, that hold an
    ``index.jsonl``) the gallery shows. ``max_upload_bytes`` per request; ``max_pixels`` per image (checked before
    decoding); ``max_maps`` per request (classes x methods x layers). ``max_batch`` images per
    forward pass, gathered for at most ``batch_wait`` seconds; ``max_queue`` requests (and
    ``max_queue_pixels`` pixels) may wait, beyond that a 503. ``results``: how many results keep
    their files available, in at most ``results_bytes`` of photos. ``cors_origins``: origins allowed to call the API from a browser
    (none by default; the page itself is served by the same app)."""

    runs: Path | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_maps: int = 100
    max_batch: int = 16
    batch_wait: float = 0.005
    max_queue: int = 64
    max_queue_pixels: int = 400_000_000
    results: int = 128
    results_bytes: int = 2**30
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_maps",
            "max_batch",
            "max_queue",
            "max_queue_pixels",
            "results",
            "results_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CamlensError(f"{name} must be a whole number of at least 1, not {value!r}")
        if not (isinstance(self.batch_wait, int | float) and 0 <= self.batch_wait <= 1):
            raise CamlensError(f"batch_wait must be 0 to 1 seconds, not {self.batch_wait!r}")
        if self.runs is not None:
            runs = Path(self.runs)
            if not runs.is_dir():
                raise CamlensError(f"runs: {runs} is not a folder")
            object.__setattr__(self, "runs", runs.resolve())
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))


class ApiError(Exception):
    """An error response: ``status``, a one-line ``detail`` and the ``parameter`` at fault."""

    def __init__(
        self,
        status: int,
        detail: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.parameter = parameter
        self.headers = headers


def _error(status: int, detail: str, parameter: str | None = None, **headers: str) -> JSONResponse:
    body = ErrorBody(detail=detail, parameter=parameter).model_dump()
    return JSONResponse(body, status_code=status, headers=headers or None)


def _check(parameter: str, make: Callable[[], T]) -> T:
    """``make()``, its CamlensError turned into a 422 naming ``parameter``."""
    try:
        return make()
    except CamlensError as exc:
        raise ApiError(422, str(exc), parameter) from None


def _items(values: Sequence[str] | None, split: bool = True) -> list[str]:
    """Repeated form fields, each also split at commas when ``split`` (class names keep theirs)."""
    out: list[str] = []
    for value in values or ():
        parts = value.split(",") if split else [value]
        out.extend(p.strip() for p in parts if p.strip())
    return out


def _upload_name(filename: str | None) -> str:
    """The upload's file name, without folders or control characters, for messages."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:120]
    return name or "upload"


class ServerState:
    """What every request shares: the model, its description, the batcher and the results."""

    def __init__(self, model: Model, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        layers = spatial_layers(model)
        self.layer_names = [info.name for info in layers]
        self.model_info = ModelOut(
            name=model.name,
            num_classes=model.num_classes,
            classes=list(model.labels),
            preprocessing=Preprocessing(
                input_size=model.preprocess.input_size,
                interpolation=model.preprocess.interpolation,
                mean=model.preprocess.mean,
                std=model.preprocess.std,
            ),
            layers=[LayerOut(name=i.name, kind=i.kind, shape=list(i.shape)) for i in layers],
            auto_layer=auto_layer(model, layers),
        )
        self.batcher = Batcher(
            model,
            max_batch=settings.max_batch,
            max_wait=settings.batch_wait,
            max_queue=settings.max_queue,
            max_queue_pixels=settings.max_queue_pixels,
        )
        self.store = ResultStore(settings.results, settings.results_bytes)
        self.gallery = None if settings.runs is None else Gallery(settings.runs)

    # --- options ---------------------------------------------------------------------------------

    def options(
        self,
        *,
        methods: Sequence[str] | None,
        layers: Sequence[str] | None,
        classes: Sequence[str] | None,
        top: int | None,
        smooth: Sequence[str] | None,
        fast_channels: int | None,
        fast_resolution: float | None,
        boxes: str | None,
        threshold: str,
        cmap: str,
        alpha: float,
    ) -> tuple[ExplainConfig, OutputConfig]:
        """The request's options, each checked on its own so that a 422 names the bad one."""
        method_names = _check("methods", lambda: resolve_methods(_items(methods) or ["gradcam"]))
        layer_names = _check("layers", lambda: self._layers(_items(layers)))
        given = _check(
            "classes", lambda: ExplainConfig(classes=tuple(_items(classes, split=False)))
        )
        indices = _check("classes", lambda: tuple(map(self.model.class_index, given.classes)))
        if top is not None:
            _check("top", lambda: ExplainConfig(top=top))
            if top > self.model.num_classes:
                raise ApiError(
                    422, f"top must be at most {self.model.num_classes}, not {top}", "top"
                )
        smoothing = _check("smooth", lambda: ExplainConfig(smooth=tuple(_items(smooth))).smooth)
        _check("fast_channels", lambda: ExplainConfig(fast_channels=fast_channels))
        _check("fast_resolution", lambda: ExplainConfig(fast_resolution=fast_resolution))
        config = _check(
            "classes" if indices else "top",
            lambda: ExplainConfig(
                methods=method_names,
                layers=layer_names,
                classes=indices,
                top=top,
                smooth=smoothing,
                fast_channels=fast_channels,
                fast_resolution=fast_resolution,
                max_pixels=self.settings.max_pixels,
                device=str(self.model.device),
            ),
        )
        count = (len(indices) or top or 1) * len(method_names) * max(1, len(layer_names))
        if count > self.settings.max_maps:
            raise ApiError(
                422,
                f"{count} maps asked for (classes x methods x layers), over this server's limit "
                f"of {self.settings.max_maps}",
                "classes" if indices else "top",
            )
        box_mode = None if boxes is None or boxes.strip().lower() in ("", "none") else boxes
        _check("cmap", lambda: OutputConfig(cmap=cmap))
        _check("alpha", lambda: OutputConfig(alpha=alpha))
        _check("boxes", lambda: OutputConfig(boxes=box_mode))  # type: ignore[arg-type]
        output = _check(
            "threshold",
            lambda: OutputConfig(cmap=cmap, alpha=alpha, boxes=box_mode, threshold=threshold),  # type: ignore[arg-type]
        )
        return config, output

    def _layers(self, names: list[str]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in self.layer_names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], self.layer_names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}" if close else ""
            raise LayerError(
                f"layer {unknown[0]!r} is not a spatial layer of {self.model.name}{hint} "
                "(GET /api/model lists them)"
            )
        return tuple(dict.fromkeys(names))

    # --- images and results ----------------------------------------------------------------------

    def read_image(self, data: bytes, name: str) -> Image.Image:
        """The uploaded image, upright RGB; 413 over the pixel limit, 415 if not an image."""
        try:
            return load_image(data, max_pixels=self.settings.max_pixels)
        except PixelLimitError as exc:
            problem = exc.problem.split(";")[0]  # the hint about max_pixels= is not the client's
            raise ApiError(413, f"{name}: {problem}", "image") from None
        except ImageError as exc:
            raise ApiError(415, f"{name}: {exc.problem}", "image") from None

    def respond(
        self,
        result_id: str,
        explanation: Explanation,
        config: ExplainConfig,
        output: OutputConfig,
        inline: bool,
        root: str,
    ) -> dict[str, Any]:
        """The JSON for a finished explanation (boxes added when asked); the result is kept."""
        if output.boxes is not None:
            add_boxes(explanation, threshold=output.threshold, mode=output.boxes)  # type: ignore[arg-type]
        base = f"{root}/api/results/{result_id}"
        query = urlencode(
            {"cmap": output.cmap, "alpha": f"{output.alpha:g}", "boxes": int(bool(output.boxes))}
        )
        maps = []
        for i, m in enumerate(explanation.maps):
            entry: dict[str, Any] = {
                "index": i,
                "class_index": m.class_index,
                "label": m.label,
                "score": m.score,
                "method": m.method,
                "layer": m.layer,
                "flat": m.flat,
                "peak": explanation.peak(i),
                "boxes": None if m.boxes is None else [b.to_dict() for b in m.boxes],
                "overlay": f"{base}/maps/{i}/overlay.png?{query}",
                "heatmap": f"{base}/maps/{i}/heatmap.png?{urlencode({'cmap': output.cmap})}",
                "map": f"{base}/maps/{i}/map.npy",
            }
            if inline:
                png = overlay_png(
                    explanation, i, output.cmap, output.alpha, output.boxes is not None
                )
                entry["overlay"] = _data_url("image/png", png)
                entry["map"] = _data_url("application/octet-stream", map_npy(explanation, i))
            maps.append(entry)
        width, height = explanation.size
        body = {
            "id": result_id,
            "url": base,
            "model": explanation.model,
            "image": {
                "name": explanation.source,
                "size": (width, height),
                "url": f"{base}/photo.jpg",
            },
            "methods": list(config.methods),
            "layers": sorted({m.layer for m in explanation.maps}, key=self.layer_names.index),
            "predictions": [
                {"class_index": p.class_index, "label": p.label, "score": p.score}
                for p in explanation.predictions
            ],
            "explanations": maps,
        }
        self.store.put(result_id, Result(explanation, output, body))
        return body

    def result(self, result_id: str) -> Result:
        found = self.store.get(result_id)
        if found is None:
            raise ApiError(
                404,
                f"result {result_id!r} is not kept (the server keeps its newest results): "
                "explain the image again",
            )
        return found

    def class_map(self, result_id: str, index: int) -> tuple[Result, int]:
        found = self.result(result_id)
        count = len(found.explanation.maps)
        if not 0 <= index < count:
            raise ApiError(404, f"map {index} does not exist: this result has maps 0..{count - 1}")
        return found, index

    # --- the run gallery -------------------------------------------------------------------------

    def runs(self) -> Gallery:
        if self.gallery is None:
            raise ApiError(
                404, "this server shows no runs: start it with camlens serve --runs FOLDER"
            )
        return self.gallery

    def run_index(self, name: str) -> tuple[Place, RunIndex]:
        """The run named ``name`` and its index: 404 for a name not found, 500 for an index
        that cannot be read."""
        gallery = self.runs()
        try:
            place = gallery.place(name)
            return place, gallery.index(place)
        except RunNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except RunUnreadable as exc:
            raise ApiError(500, str(exc)) from None


# --- files ----------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: overlays of photos barely shrink
    return buffer.getvalue()


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def overlay_png(explanation: Explanation, i: int, cmap: str, alpha: float, boxes: bool) -> bytes:
    """Map ``i`` over the photo, with its boxes (computed at the default threshold if the
    request did not ask for them) when ``boxes``."""
    picture = explanation.overlay(i, cmap=cmap, alpha=alpha)
    m = explanation.maps[i]
    if boxes:
        if m.boxes is None:
            m.boxes = boxes_from_map(explanation.map_at_image(i))
        if m.boxes:
            picture = render.draw_boxes(
                picture, [b.xyxy for b in m.boxes], labels=[m.title] * len(m.boxes)
            )
    return _png(picture)


def heatmap_png(explanation: Explanation, i: int, cmap: str, max_side: int | None = None) -> bytes:
    """Map ``i`` coloured, alone, at the photo's size, or at most ``max_side`` pixels on its
    longer side with the photo's shape (the page lays it over the photo, as large as it shows)."""
    width, height = explanation.size
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = upsample(explanation.maps[i].map, size).detach().float().cpu().numpy()
    return _png(Image.fromarray(render.colorize(resized, cmap)))


def map_npy(explanation: Explanation, i: int) -> bytes:
    """Map ``i`` at the photo's size as float32 ``.npy`` [height, width], in [0, 1]."""
    buffer = io.BytesIO()
    full = explanation.map_at_image(i).detach().float().cpu().numpy().astype(np.float32)
    np.save(buffer, full, allow_pickle=False)
    return buffer.getvalue()


def photo_jpeg(explanation: Explanation) -> bytes:
    buffer = io.BytesIO()
    explanation.image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


# --- the app --------------------------------------------------------------------------------------


class _NoSniff:
    """Adds ``X-Content-Type-Options: nosniff`` to every response (pure ASGI: no buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


class _TooLarge(Exception):
    pass


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 naming the limit: at once when the
    Content-Length says so (nothing is read), else as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp, limit: int, message: str) -> None:
        self.app = app
        self.limit = limit
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await _error(413, self.message, "image", Connection="close")(scope, receive, send)
            return
        received = 0
        over = started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body (a 400, say): the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await _error(413, self.message, "image", Connection="close")(scope, receive, send)


PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {
        "model": ErrorBody,
        "description": "upload over the size limit, or image over the pixel limit",
    },
    415: {"model": ErrorBody, "description": "the upload is not an image"},
    422: {"model": ErrorBody, "description": "a bad parameter, named in `parameter`"},
    503: {
        "model": ErrorBody,
        "description": "the queue is full: retry after `Retry-After` seconds",
    },
}


def state(request: Request) -> ServerState:
    """The shared state of the app (a FastAPI dependency)."""
    found: ServerState = request.app.state.camlens
    return found


State = Annotated[ServerState, Depends(state)]


def create_app(model: Model, settings: ServeSettings | None = None) -> FastAPI:
    """The app around ``model`` (loaded once): the page at ``/``, the API under ``/api``, its
    documentation at ``/docs``, and ``settings.runs`` under ``/runs/``."""
    settings = settings or ServeSettings()
    shared = ServerState(model, settings)
    # Uploads up to the limit stay in memory: no temporary file is ever written.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Threads decode uploads and draw results: a few per core are enough, and each thread
        # may keep a memory arena of its own (anyio's default is 40).
        to_thread.current_default_thread_limiter().total_tokens = 4 * (os.cpu_count() or 1)
        shared.batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(shared.batcher.close)

    app = FastAPIOffline(
        title="camlens",
        version=camlens.__version__,
        description="Class activation maps of an image classifier: explain an uploaded photo "
        "and fetch its overlays and maps. Errors are `{detail, parameter}`.",
        lifespan=lifespan,
    )
    app.state.camlens = shared
    limit = f"the upload is over this server's limit of {_size(settings.max_upload_bytes)}"
    app.add_middleware(_BodyLimit, limit=settings.max_upload_bytes + FORM_BYTES, message=limit)
    app.add_middleware(_NoSniff)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"]
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.detail, exc.parameter, **(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        parameter = where[0] if where else None
        message = str(first.get("msg", "invalid"))
        return _error(422, f"{parameter}: {message}" if parameter else message, parameter)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), None, **(exc.headers or {}))

    # --- the page ----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.runs is not None:
        # StaticFiles resolves symbolic links and refuses any path whose real location is not
        # inside the folder (follow_symlink=False), as well as ".." in any spelling.
        app.mount("/runs", StaticFiles(directory=settings.runs, follow_symlink=False), name="runs")

    # --- the API -----------------------------------------------------------------------------

    @app.get("/api/model", response_model=ModelOut, tags=["model"])
    async def get_model(st: State) -> ModelOut:
        """The model: name, class names, preprocessing, the spatial layers with their output
        shapes, and the layer chosen when none is asked for."""
        return st.model_info

    @app.get("/api/methods", response_model=MethodsOut, tags=["model"])
    async def get_methods() -> MethodsOut:
        """The methods, with what each needs and its paper, and the names of method groups."""
        return MethodsOut(
            methods=[
                MethodOut(name=m.name, needs=m.needs, summary=m.summary, paper=m.paper)
                for m in METHODS.values()
            ],
            groups={k: list(v) for k, v in METHOD_GROUPS.items()},
        )

    @app.get("/api/server", response_model=ServerOut, tags=["model"])
    async def get_server(st: State) -> ServerOut:
        """This server's limits and what it offers."""
        return ServerOut(
            version=camlens.__version__,
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_maps=settings.max_maps,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            results_kept=settings.results,
            colormaps=list(render.COMMON_CMAPS),
            runs=settings.runs is not None,
        )

    # --- the run gallery ---------------------------------------------------------------------

    run_errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorBody, "description": "no such run, or no --runs folder"}
    }

    @app.get("/api/runs", response_model=RunsOut, responses=run_errors, tags=["runs"])
    def get_runs(request: Request, st: State) -> Any:
        """The runs found in the --runs folder (the folder itself if it is a run, and the runs
        one level down): per run its images, how many were explained and failed, the model,
        methods and layers, and where its files are served."""
        gallery = st.runs()
        root = request.scope.get("root_path", "")
        found = []
        for place in gallery.runs().values():
            try:
                found.append(run_json(gallery.facts(place), place, root))
            except RunNotFound:
                continue  # gone since it was found
            except RunUnreadable as exc:
                found.append(unreadable_run_json(place, str(exc), root))
        return {"folder": gallery.root.name, "runs": found}

    @app.get(
        "/api/runs/{run}/images",
        response_model=GalleryPageOut,
        responses={**run_errors, 422: ERRORS[422]},
        tags=["runs"],
    )
    def get_run_images(
        request: Request,
        st: State,
        run: str,
        class_name: Annotated[
            str | None,
            Query(
                alias="class",
                description="a class index or name: the images of that true class (when the "
                "run has classes from folder names), else of that top-1 class",
            ),
        ] = None,
        status: Annotated[Status, Query(description="all, explained or failed images")] = "all",
        sort: Annotated[
            Sort,
            Query(
                description="by the shown map's score, spread or off-center (the map of the class "
                "filtered by, else the first), or by the image's name"
            ),
        ] = "score",
        order: Annotated[
            Order | None, Query(description="asc or desc (default: desc, asc by name)")
        ] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 60,
    ) -> Any:
        """A page of a run's images, filtered and sorted: per image its size, predictions,
        true class when known, error when it failed, and each map's class, method, layer,
        score, spread, off-center, peak, box and overlay URL. Failed images and flat maps
        come last in the orders by value."""
        place, index = st.run_index(run)
        chosen = order or DEFAULT_ORDER[sort]
        class_index = None
        if class_name is not None and class_name.strip():
            class_index = _check("class", lambda: index.class_of(class_name))
        positions = index.select(class_index, status, sort, chosen)
        root = request.scope.get("root_path", "")
        return {
            "run": place.name,
            "class_index": class_index,
            "status": status,
            "sort": sort,
            "order": chosen,
            "offset": offset,
            "limit": limit,
            "total": len(positions),
            "images": [
                image_json(place, index.items[p], index.row(index.items[p]), class_index, root)
                for p in positions[offset : offset + limit]
            ],
        }

    @app.get(
        "/api/runs/{run}/images/{image_id}",
        response_model=GalleryImageOut,
        responses={**run_errors, 422: ERRORS[422]},
        tags=["runs"],
    )
    def get_run_image(
        request: Request,
        st: State,
        run: str,
        image_id: int,
        class_name: Annotated[
            str | None, Query(alias="class", description="the class whose map is in focus")
        ] = None,
    ) -> Any:
        """One image of a run, by its ``id`` (its row in the index)."""
        place, index = st.run_index(run)
        if not 0 <= image_id < len(index.items):
            raise ApiError(
                404, f"run {place.name!r} has images 0..{len(index.items) - 1}, not {image_id}"
            )
        class_index = None
        if class_name is not None and class_name.strip():
            class_index = _check("class", lambda: index.class_of(class_name))
        root = request.scope.get("root_path", "")
        item = index.items[image_id]
        return image_json(place, item, index.row(item), class_index, root)

    @app.get(
        "/api/runs/{run}/summary",
        response_model=RunSummaryOut,
        responses=run_errors,
        tags=["runs"],
    )
    def get_run_summary(request: Request, st: State, run: str) -> Any:
        """The run as ``camlens summary`` sees it: per class the images, mean score and (with
        classes from folder names) top-1 and top-5 accuracy; the images whose first map is most
        spread or off center, and the most confident mistakes."""
        _, index = st.run_index(run)
        return summary_json(index, request.scope.get("root_path", ""))

    @app.post(
        "/api/explain",
        response_model=ExplainOut,
        responses=ERRORS,
        tags=["explain"],
        form_limits={"max_files": 1, "max_fields": 100, "max_part_size": 4096},
    )
    async def explain(
        request: Request,
        st: State,
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
            int | None, Form(description="explain the top K classes (default 1)")
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
        fast_channels: Annotated[
            int | None, Form(description="perturbation methods: the N channels of largest variance")
        ] = None,
        fast_resolution: Annotated[
            float | None, Form(description="Score-CAM family: masked passes at this fraction")
        ] = None,
        inline: Annotated[
            bool, Form(description="overlay PNG and map .npy as data: URLs in the JSON")
        ] = False,
    ) -> Any:
        """Explains one photo: the top-5 predictions and, per map, its class, method, layer,
        peak, boxes (when asked), whether it is flat, and the URLs of the overlay PNG, the
        coloured map and the map as float32 `.npy` at the photo's size."""
        config, output = st.options(
            methods=methods,
            layers=layers,
            classes=classes,
            top=top,
            smooth=smooth,
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            boxes=boxes,
            threshold=threshold,
            cmap=cmap,
            alpha=alpha,
        )
        if st.batcher.queued >= settings.max_queue:  # before any decoding
            raise _busy(st)
        name = _upload_name(image.filename)
        ticket = st.batcher.expect()  # a batch about to start waits for this one
        try:
            data = await image.read()
            photo = await run_in_threadpool(st.read_image, data, name)
            del data
            explanation = await st.batcher.explain(Job(photo, name, config), ticket)
        except QueueFull as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except Closed as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
        except CamlensError as exc:  # what the model refuses: CAM without a head, say
            raise ApiError(422, str(exc), _parameter_of(exc)) from None
        finally:
            ticket.cancel()  # unless explain() took it
        root = request.scope.get("root_path", "")
        result_id = st.store.new_id()
        return await run_in_threadpool(
            st.respond, result_id, explanation, config, output, inline, root
        )

    @app.get("/api/results/{result_id}", response_model=ExplainOut, tags=["results"])
    async def get_result(st: State, result_id: str) -> Any:
        """A result again, as POST /api/explain returned it (the newest results are kept)."""
        return st.result(result_id).response

    @app.get(
        "/api/results/{result_id}/photo.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
        tags=["results"],
    )
    def get_photo(st: State, result_id: str) -> Response:
        """The photo as it was explained: upright, RGB, at its own size."""
        return _file(photo_jpeg(st.result(result_id).explanation), "image/jpeg")

    @app.get(
        "/api/results/{result_id}/maps/{index}/overlay.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 422: ERRORS[422]},
        tags=["results"],
    )
    def get_overlay(
        st: State,
        result_id: str,
        index: int,
        cmap: Annotated[str, Query()] = "jet",
        alpha: Annotated[float, Query()] = 0.5,
        boxes: Annotated[bool, Query(description="draw the map's boxes")] = False,
    ) -> Response:
        """Map ``index`` over the photo, at the photo's size."""
        found, i = st.class_map(result_id, index)
        _check("cmap", lambda: OutputConfig(cmap=cmap))
        _check("alpha", lambda: OutputConfig(alpha=alpha))
        return _file(overlay_png(found.explanation, i, cmap, alpha, boxes), "image/png")

    @app.get(
        "/api/results/{result_id}/maps/{index}/heatmap.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 422: ERRORS[422]},
        tags=["results"],
    )
    def get_heatmap(
        st: State,
        result_id: str,
        index: int,
        cmap: Annotated[str, Query()] = "jet",
        max_side: Annotated[
            int | None, Query(ge=1, description="at most this many pixels on the longer side")
        ] = None,
    ) -> Response:
        """Map ``index`` coloured, alone, at the photo's size (or smaller, with its shape)."""
        found, i = st.class_map(result_id, index)
        _check("cmap", lambda: OutputConfig(cmap=cmap))
        return _file(heatmap_png(found.explanation, i, cmap, max_side), "image/png")

    @app.get(
        "/api/results/{result_id}/maps/{index}/map.npy",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
        tags=["results"],
    )
    def get_map(st: State, result_id: str, index: int) -> Response:
        """Map ``index`` as float32 ``.npy`` [height, width] in [0, 1], at the photo's size."""
        found, i = st.class_map(result_id, index)
        stem = Path(found.explanation.source).stem or "image"
        m = found.explanation.maps[i]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stem}.{m.method}.{m.layer}.{m.class_index}.npy")
        return _file(
            map_npy(found.explanation, i),
            "application/octet-stream",
            {"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app


def _busy(st: ServerState) -> ApiError:
    retry = st.batcher.retry_after()
    return ApiError(
        503, f"the server is busy: try again in {retry} s", headers={"Retry-After": str(retry)}
    )


def _file(data: bytes, media_type: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", **(headers or {})},
    )


def _parameter_of(exc: CamlensError) -> str | None:
    if isinstance(exc, LayerError):
        return "layers"
    if isinstance(exc, MethodError):
        return "methods"
    if isinstance(exc, ClassError):
        return "classes"
    return None


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n} bytes"
