"""``/api/model``, ``/api/methods``, ``/api/server``: what this server explains with, and how."""

from __future__ import annotations

from fastapi import APIRouter, Depends

import camlens
from camlens import render
from camlens.config import METHOD_GROUPS
from camlens.methods import METHODS
from camlens.serve.errors import BAD_PARAMETER
from camlens.serve.parameters import only_known_parameters
from camlens.serve.schemas import MethodOut, MethodsOut, ModelOut, ServerOut
from camlens.serve.state import State

router = APIRouter(
    prefix="/api",
    tags=["model"],
    dependencies=[Depends(only_known_parameters)],
    responses=BAD_PARAMETER,
)


@router.get("/model")
async def get_model(st: State) -> ModelOut:
    """The model: name, class names, preprocessing, the spatial layers with their output
    shapes, and the layer chosen when none is asked for."""
    return st.model_info


@router.get("/methods")
async def get_methods() -> MethodsOut:
    """The methods, with their display titles, what each needs and its paper, and the names of
    method groups."""
    return MethodsOut(
        methods=[
            MethodOut(name=m.name, title=m.title, needs=m.needs, summary=m.summary, paper=m.paper)
            for m in METHODS.values()
        ],
        groups={k: list(v) for k, v in METHOD_GROUPS.items()},
    )


@router.get("/server")
async def get_server(st: State) -> ServerOut:
    """This server's limits and what it offers."""
    settings = st.settings
    return ServerOut(
        version=camlens.__version__,
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_maps=settings.max_maps,
        max_inline_bytes=settings.max_inline_bytes,
        upload_stall=settings.upload_stall,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        results_kept=settings.results,
        results_bytes=settings.results_bytes,
        colormaps=list(render.COMMON_CMAPS),
        runs=settings.runs is not None,
    )
