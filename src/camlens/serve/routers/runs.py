"""``/api/runs``: the runs of the --runs folder, a page of a run's images, one image, a run's
summary (the gallery)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from camlens.errors import CamlensError
from camlens.serve.errors import BAD_PARAMETER, ApiError, bad_option
from camlens.serve.gallery import (
    DEFAULT_ORDER,
    NoTruth,
    Order,
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
from camlens.serve.parameters import only_known_parameters
from camlens.serve.schemas import (
    ErrorBody,
    GalleryImageOut,
    GalleryPageOut,
    RunsOut,
    RunSummaryOut,
)
from camlens.serve.state import Root, Run, RunGallery

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such run, or no --runs folder"},
    **BAD_PARAMETER,
}

UNREADABLE: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "the run's index cannot be read (rows camlens did not write): "
        "GET /api/runs lists the run with the same problem",
    },
}
"""The answer of the endpoints of one run whose index cannot be read."""

router = APIRouter(
    prefix="/api/runs",
    tags=["runs"],
    dependencies=[Depends(only_known_parameters)],
    responses=NOT_FOUND,
)


def _class_of(index: RunIndex, class_name: str | None) -> int | None:
    if class_name is None or not class_name.strip():
        return None
    try:
        return index.class_of(class_name)
    except CamlensError as exc:
        raise bad_option(exc, "class") from None


@router.get("", response_model=RunsOut)
def get_runs(gallery: RunGallery, root: Root) -> Any:
    """The runs found in the --runs folder (the folder itself if it is a run, and the runs
    one level down): per run its images, how many were explained and failed, the model,
    methods and layers, and where its files are served."""
    found = []
    for place in gallery.runs().values():
        try:
            found.append(run_json(gallery.facts(place), place, root))
        except RunNotFound:
            continue  # gone since it was found
        except RunUnreadable as exc:
            found.append(unreadable_run_json(place, str(exc), root))
    return {"folder": gallery.root.name, "runs": found}


@router.get("/{run}/images", response_model=GalleryPageOut, responses=UNREADABLE)
def get_run_images(
    run: Run,
    root: Root,
    class_name: Annotated[
        str | None,
        Query(
            alias="class",
            description="a class index or name: the images of that true class (when the "
            "run has classes from folder names), else of that top-1 class",
        ),
    ] = None,
    status: Annotated[
        Status,
        Query(
            description="all, explained or failed images, or wrong: the mistakes, whose top-1 "
            "is not their true class (a 422 in a run without classes from folder names)"
        ),
    ] = "all",
    sort: Annotated[
        Sort,
        Query(
            description="by the shown map's score, spread or off-center (the map of the class "
            "filtered by, else the first), by energy_in_box (a detector's run: the share of a "
            "detection's map inside its own box, the image's lowest, lowest first by default), "
            "or by the image's name"
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
    place, index = run
    chosen = order or DEFAULT_ORDER[sort]
    class_index = _class_of(index, class_name)
    try:
        positions = index.select(class_index, status, sort, chosen)
    except NoTruth as exc:
        raise bad_option(exc, "status") from None
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
            image_json(place, index.items[p], index.row(index.items[p]), class_index, root, sort)
            for p in positions[offset : offset + limit]
        ],
    }


@router.get("/{run}/images/{image_id}", response_model=GalleryImageOut, responses=UNREADABLE)
def get_run_image(
    run: Run,
    root: Root,
    image_id: int,
    class_name: Annotated[
        str | None, Query(alias="class", description="the class whose map is in focus")
    ] = None,
) -> Any:
    """One image of a run, by its ``id`` (its row in the index)."""
    place, index = run
    if not 0 <= image_id < len(index.items):
        raise ApiError(
            404,
            f"run {place.name!r} has images 0..{len(index.items) - 1}, not {image_id}",
            "image_id",
        )
    class_index = _class_of(index, class_name)
    item = index.items[image_id]
    return image_json(place, item, index.row(item), class_index, root)


@router.get("/{run}/summary", response_model=RunSummaryOut, responses=UNREADABLE)
def get_run_summary(run: Run, root: Root) -> Any:
    """The run as ``camlens summary`` sees it: per class the images, mean score and (with
    classes from folder names) top-1 and top-5 accuracy; the images whose first map is most
    spread or off center, and the most confident mistakes."""
    _, index = run
    return summary_json(index, root)
