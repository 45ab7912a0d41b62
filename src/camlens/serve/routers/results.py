"""``/api/results/ID``: a kept result again, and its files (photo, overlays, coloured maps,
``.npy`` maps)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from camlens.config import OutputConfig
from camlens.errors import CamlensError
from camlens.serve.encoders import (
    file_response,
    file_stem,
    has_region,
    heatmap_png,
    map_npy,
    overlay_png,
    photo_jpeg,
    region_png,
    result_zip,
)
from camlens.serve.errors import BAD_PARAMETER, ApiError, bad_option
from camlens.serve.parameters import only_known_parameters
from camlens.serve.schemas import ErrorBody, ExplainOut
from camlens.serve.state import KeptResult, MapIndex

NOT_KEPT: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such result (no longer kept), or no such map"}
}

router = APIRouter(
    prefix="/api/results",
    tags=["results"],
    dependencies=[Depends(only_known_parameters)],
    responses={**NOT_KEPT, **BAD_PARAMETER},
)

PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}


def output_options(**options: Any) -> OutputConfig:
    try:
        return OutputConfig(**options)
    except CamlensError as exc:
        raise bad_option(exc) from None


@router.get("/{result_id}")
async def get_result(found: KeptResult) -> ExplainOut:
    """A result again, as POST /api/explain returned it (the newest results are kept)."""
    return found.response


@router.get(
    "/{result_id}/photo.jpg",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def get_photo(found: KeptResult) -> Response:
    """The photo as it was explained: upright, RGB, at its own size."""
    return file_response(photo_jpeg(found.explanation), "image/jpeg")


@router.get("/{result_id}/maps/{index}/overlay.png", response_class=Response, responses=PNG)
def get_overlay(
    found: KeptResult,
    index: MapIndex,
    cmap: Annotated[str, Query(description="matplotlib colormap")] = "jet",
    alpha: Annotated[float, Query(description="heatmap opacity, 0..1")] = 0.5,
    boxes: Annotated[bool, Query(description="draw the map's boxes")] = False,
) -> Response:
    """Map ``index`` over the photo, at the photo's size."""
    output = output_options(cmap=cmap, alpha=alpha)
    png = overlay_png(found.explanation, index, output.cmap, output.alpha, boxes)
    return file_response(png, "image/png")


@router.get("/{result_id}/maps/{index}/heatmap.png", response_class=Response, responses=PNG)
def get_heatmap(
    found: KeptResult,
    index: MapIndex,
    cmap: Annotated[str, Query(description="matplotlib colormap")] = "jet",
    max_side: Annotated[
        int | None, Query(ge=1, description="at most this many pixels on the longer side")
    ] = None,
) -> Response:
    """Map ``index`` coloured, alone, at the photo's size (or smaller, with its shape)."""
    output = output_options(cmap=cmap)
    return file_response(heatmap_png(found.explanation, index, output.cmap, max_side), "image/png")


def no_region(index: int) -> str:
    """The 404's message for the region of a map that explains none."""
    return f"map {index} explains no region: it is not a segment's (a segmentation model's)"


@router.get("/{result_id}/maps/{index}/region.png", response_class=Response, responses=PNG)
def get_region(
    found: KeptResult,
    index: MapIndex,
    max_side: Annotated[
        int | None, Query(ge=1, description="at most this many pixels on the longer side")
    ] = None,
) -> Response:
    """The region a segment map explains (its class's pixels, the box or the mask given): its
    outline on a transparent PNG at the photo's size (or smaller, with its shape), the rest
    dimmed; a 404 for a map that explains no region (a class of a classifier)."""
    if not has_region(found.explanation, index, found.mask):
        raise ApiError(404, no_region(index), "index")
    return file_response(region_png(found.explanation, index, found.mask, max_side), "image/png")


@router.get(
    "/{result_id}/maps/{index}/map.npy",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_map(
    found: KeptResult,
    index: MapIndex,
    size: Annotated[
        Literal["image", "layer"],
        Query(description="image: at the photo's size; layer: the map's own grid (map_shape)"),
    ] = "image",
) -> Response:
    """Map ``index`` as float32 ``.npy`` [height, width] in [0, 1], at the photo's size (or the
    layer's, with ``size=layer``)."""
    suffix = ".layer" if size == "layer" else ""
    name = f"{file_stem(found.explanation, index)}{suffix}.npy"
    return file_response(
        map_npy(found.explanation, index, size),
        "application/octet-stream",
        {"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{result_id}/download.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def get_zip(found: KeptResult) -> Response:
    """Everything of a result in one zip: ``report.json`` (this result's answer), the photo
    (JPEG) and per map its overlay (PNG, as the answer's overlay URLs draw it) and its map
    (float32 ``.npy`` at the photo's size), named ``PHOTO.METHOD.LAYER.CLASS``."""
    output = found.output
    report = found.response.model_dump_json(indent=2).encode()
    data = result_zip(
        found.explanation, report, output.cmap, output.alpha, output.boxes is not None
    )
    name = f"{file_stem(found.explanation)}.camlens.zip"
    return file_response(
        data, "application/zip", {"Content-Disposition": f'attachment; filename="{name}"'}
    )
