"""What every request shares (the model, its description, the batcher, the kept results, the
run gallery) and the FastAPI dependencies that hand it to the routes: the state, a kept result,
one of its maps, a run and its index."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, Path, Request

from camlens.config import ExplainConfig
from camlens.layers import auto_layer, spatial_layers
from camlens.models import Model
from camlens.models.segmentation import background_classes
from camlens.serve.batcher import Batcher, Job
from camlens.serve.errors import ApiError
from camlens.serve.gallery import Gallery, Place, RunIndex, RunNotFound, RunUnreadable
from camlens.serve.schemas import LayerOut, ModelOut, Preprocessing
from camlens.serve.settings import ServeSettings
from camlens.serve.store import Result, ResultStore

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "classifier": ("classes", "top", "above", "versus", "output", "scores", "like", "embedding"),
    "segmentation": ("classes", "top", "region", "mask"),
    "detection": ("min_score", "detections"),
}
"""Per kind of model, the explain form's fields that say what is explained: a field of another
kind's list is a 422 naming it (never ignored)."""


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
            scores=model.scores,
            kind=model.kind,
            explains=list(KIND_FIELDS.get(model.kind, KIND_FIELDS["classifier"])),
            background=sorted(background_classes(model)) if model.kind == "segmentation" else [],
            min_score=ExplainConfig().min_score if model.kind == "detection" else None,
        )
        self.batcher = Batcher(
            model,
            max_batch=settings.max_batch,
            max_wait=settings.batch_wait,
            max_queue=settings.max_queue,
            max_queue_pixels=settings.max_queue_pixels,
        )
        self.store = ResultStore(settings.results, settings.results_bytes)
        self.jobs = Jobs()
        self.gallery = None if settings.runs is None else Gallery(settings.runs)


class Jobs:
    """The jobs clients named (POST /api/explain's ``job``), for their progress and their
    cancellation: the newest ``capacity``, finished ones dropped first."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        """Keeps ``job``: a 422 if a job of that name is still queued or running."""
        with self._lock:
            old = self._items.get(job.id)
            if old is not None and old.state in ("queued", "running"):
                raise ApiError(422, f"job {job.id!r} is still running: name each job anew", "job")
            self._items.pop(job.id, None)
            self._items[job.id] = job
            over = len(self._items) - self.capacity
            for ident in [i for i, j in self._items.items() if j.finished is not None][:over]:
                del self._items[ident]

    def get(self, ident: str) -> Job:
        with self._lock:
            job = self._items.get(ident)
        if job is None:
            raise ApiError(
                404, f"no job {ident!r}: name one with POST /api/explain's job field", "job"
            )
        return job


def state(request: Request) -> ServerState:
    """The shared state of the app."""
    found: ServerState = request.app.state.camlens
    return found


State = Annotated[ServerState, Depends(state)]


def root_path(request: Request) -> str:
    """The path the app is served under (behind a proxy), for the URLs of the answers."""
    return str(request.scope.get("root_path", ""))


Root = Annotated[str, Depends(root_path)]


# --- results --------------------------------------------------------------------------------------


def kept_result(st: State, result_id: Annotated[str, Path()]) -> Result:
    """The result ``result_id``, while it is kept: else a 404."""
    found = st.store.get(result_id)
    if found is None:
        raise ApiError(
            404,
            f"result {result_id!r} is not kept (the server keeps its newest results): "
            "explain the image again",
            "result_id",
        )
    return found


KeptResult = Annotated[Result, Depends(kept_result)]


def map_index(found: KeptResult, index: Annotated[int, Path()]) -> int:
    """Map ``index`` of the result: a 404 if it has no such map."""
    count = len(found.explanation.maps)
    if not 0 <= index < count:
        raise ApiError(
            404, f"map {index} does not exist: this result has maps 0..{count - 1}", "index"
        )
    return index


MapIndex = Annotated[int, Depends(map_index)]


# --- the run gallery ------------------------------------------------------------------------------


def gallery(st: State) -> Gallery:
    """The gallery of the --runs folder: a 404 without one."""
    if st.gallery is None:
        raise ApiError(404, "this server shows no runs: start it with camlens serve --runs FOLDER")
    return st.gallery


RunGallery = Annotated[Gallery, Depends(gallery)]


def run_index(found: RunGallery, run: Annotated[str, Path()]) -> tuple[Place, RunIndex]:
    """The run named ``run`` and its index: 404 for a name not found, 409 for an index that
    cannot be read (rows camlens did not write: the run's state, not the server, is at fault;
    ``GET /api/runs`` lists it with the same problem)."""
    try:
        place = found.place(run)
        return place, found.index(place)
    except RunNotFound as exc:
        raise ApiError(404, str(exc), "run") from None
    except RunUnreadable as exc:
        raise ApiError(409, str(exc)) from None


Run = Annotated[tuple[Place, RunIndex], Depends(run_index)]
