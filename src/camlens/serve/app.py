"""The FastAPI app of ``camlens serve``: the explorer page and the HTTP API, around one model.

The API is a router per concern (:mod:`camlens.serve.routers`): the model and its methods,
explain, results, runs. Requests are checked with the same :class:`~camlens.config.ExplainConfig`
and :class:`~camlens.config.OutputConfig` as everywhere, one of each per request; a bad or
unknown parameter is a 422 naming it. Images are read in memory, their pixel count checked from
the header before decoding (413 over the limit, 415 for what is not an image), and explained by
the :class:`~camlens.serve.batcher.Batcher` (503 with Retry-After when its queue is full).
Results stay available, the newest ``settings.results``, for their files (overlay, coloured map,
``.npy`` map, photo) to be fetched. No URL given by a client is ever fetched.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath

from anyio import to_thread
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

import camlens
from camlens.models import Model
from camlens.serve import errors, openapi
from camlens.serve.middleware import BodyLimit, NoSniff
from camlens.serve.routers import explain, jobs, results, runs
from camlens.serve.routers import model as model_routes
from camlens.serve.settings import ServeSettings
from camlens.serve.state import ServerState

STATIC = Path(__file__).parent / "static"
FORM_BYTES = 16 * 1024  # allowed in a request besides the upload: the form's fields and headers

PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


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
    app.add_middleware(
        BodyLimit,
        limit=settings.max_upload_bytes + FORM_BYTES,
        message=errors.upload_too_large(settings.max_upload_bytes),
        stall=settings.upload_stall,
    )
    app.add_middleware(NoSniff)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"]
        )
    errors.install(app)
    openapi.install(app, shared)

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
        app.mount("/runs", RunFiles(directory=settings.runs, follow_symlink=False), name="runs")
    for router in (model_routes.router, explain.router, jobs.router, results.router, runs.router):
        app.include_router(router)
    return app


class RunFiles(StaticFiles):
    """The files of the --runs folder the gallery shows, and no others: overlays, panels and
    grids (PNG, JPEG, WebP), ``.npy`` maps and ``.json`` reports, outside any hidden folder (a
    run's options in ``.camlens/run``, its index, and any other file are a 404)."""

    SHOWN = frozenset({".png", ".jpg", ".webp", ".npy", ".json"})

    def get_path(self, scope: Scope) -> str:
        path = super().get_path(scope)
        parts = PurePosixPath(path.replace("\\", "/")).parts
        if (
            not parts
            or any(part.startswith(".") for part in parts)
            or PurePosixPath(parts[-1]).suffix.lower() not in self.SHOWN
        ):
            raise HTTPException(404)
        return path
