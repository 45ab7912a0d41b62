"""The OpenAPI document of ``camlens serve``, as this server answers: FastAPI's document with the
values each form field takes (this model's layers and classes, the method names, the limits of
this server), a working example for each field (so that the documentation's "Try it out" works
as it is filled in), and for every error status the ``{detail, parameter}`` answers it really
gives, worded as the server words them (``tests/test_serve_contract.py`` sends each example's
request and compares)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import matplotlib
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from camlens.config import METHOD_GROUPS, NORMALIZATIONS
from camlens.methods import METHODS
from camlens.serve.errors import (
    FILES,
    ApiError,
    busy,
    field_too_long,
    upload_stalled,
    upload_too_large,
)
from camlens.serve.parameters import check_kind, unknown_parameter
from camlens.serve.routers.explain import check_inline, read_image
from camlens.serve.routers.results import no_region, output_options
from camlens.serve.routers.runs import get_run_image
from camlens.serve.state import ServerState, kept_result, run_index
from camlens.targets import SCORES

IMAGE_TYPES = "image/*"
"""The content type of the photo parts (any image Pillow reads: JPEG, PNG, WebP, TIFF...)."""

FORM = "multipart/form-data"
JSON = "application/json"


def install(app: FastAPI, state: ServerState) -> None:
    """Makes ``app.openapi`` give :func:`document` (built once, on the first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way


def document(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """FastAPI's OpenAPI document of ``app``, with the form fields' values and examples, and
    each error status's examples."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "query" and parameter["name"] in QUERY_VALUES:
                    parameter["schema"].update(QUERY_VALUES[parameter["name"]]())
                if parameter["in"] == "path" and parameter["name"] in ("run", "image_id"):
                    names = run_names(state) if parameter["name"] == "run" else [0]
                    if names:  # the runs there were when the document was made
                        parameter["schema"]["examples"] = names
            body = operation.get("requestBody", {}).get("content", {}).get(FORM)
            if body is not None:
                describe_form(doc, body, state)
    link_explain_answer(doc)
    examples = error_examples(doc, state)
    for path, operations in doc["paths"].items():
        for verb, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    found = examples.get((verb.upper(), path), {}).get(int(status))
                    if not found:
                        raise RuntimeError(f"no example of {verb.upper()} {path}'s {status}")
                    answer["content"] = {
                        JSON: {
                            "schema": {"$ref": "#/components/schemas/ErrorBody"},
                            "examples": {
                                name: {"value": {"detail": detail, "parameter": parameter}}
                                for name, (detail, parameter) in found.items()
                            },
                        }
                    }
    return doc


def link_explain_answer(doc: dict[str, Any]) -> None:
    """Links from POST /api/explain's answer to what it names: the result (its ``id``) and its
    files (map 0's)."""
    paths = doc["paths"]
    result = "$response.body#/id"
    targets: dict[str, tuple[str, str, dict[str, Any]]] = {
        "result": ("/api/results/{result_id}", "get", {"result_id": result}),
        "photo": ("/api/results/{result_id}/photo.jpg", "get", {"result_id": result}),
        "download": ("/api/results/{result_id}/download.zip", "get", {"result_id": result}),
    }
    for kind in ("overlay.png", "heatmap.png", "map.npy"):
        path = f"/api/results/{{result_id}}/maps/{{index}}/{kind}"
        targets[kind.split(".")[0]] = (path, "get", {"result_id": result, "index": 0})
    links = {
        name: {"operationId": paths[path][verb]["operationId"], "parameters": parameters}
        for name, (path, verb, parameters) in targets.items()
        if path in paths
    }
    paths["/api/explain"]["post"]["responses"]["200"]["links"] = links


# --- the explain form ------------------------------------------------------------------------------


QUERY_VALUES: dict[str, Callable[[], dict[str, Any]]] = {
    "cmap": lambda: {"enum": colormaps()},
    "alpha": lambda: {"minimum": 0, "maximum": 1},
}
"""The values of the query parameters that the result files' endpoints check themselves."""


def run_names(state: ServerState) -> list[str]:
    """The names of the runs in the --runs folder (none without one)."""
    return [] if state.gallery is None else list(state.gallery.runs())


def colormaps() -> list[str]:
    """Every colormap name matplotlib knows (any of them works), for the document."""
    return sorted(matplotlib.colormaps)


def describe_form(doc: dict[str, Any], body: dict[str, Any], state: ServerState) -> None:
    """The multipart form's fields as a client sends them: none is ``null`` (a field left out
    takes its default), each with the values it takes and a working example, the photos as
    image parts."""
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    schema = doc["components"]["schemas"][name]
    fields = schema["properties"]
    for field in fields.values():
        branches = field.pop("anyOf", None)
        if branches:  # "X or null": X (leaving the field out is the null)
            field.update(next(b for b in branches if b.get("type") != "null"))
    model = state.model
    layers = list(state.layer_names)
    labels = list(model.labels)
    classes = [*labels, *(str(i) for i in range(model.num_classes))]
    # The examples make one request, the one the documentation page fills in: Grad-CAM of the
    # top class at the automatic layer. The page sends every field: the example of a field
    # left out is empty (a field sent empty is left out; else the page would send the first
    # value it takes, or a number).
    values: dict[str, dict[str, Any]] = {
        "methods": _items({"enum": [*METHODS, *METHOD_GROUPS]}, ["gradcam"]),
        "layers": _items({"enum": layers}, []),
        "classes": _items({"enum": _unique(classes)}, []),
        "top": {"minimum": 1, "maximum": model.num_classes, "examples": [1]},
        "boxes": {"enum": ["none", "largest", "all"], "examples": ["none"]},
        "threshold": {"pattern": r"^\s*(otsu|0*(\.\d*)?)\s*$"},  # otsu, or a fraction: 0.2
        "cmap": {"enum": colormaps()},
        "alpha": {"minimum": 0, "maximum": 1},
        "smooth": _items({"enum": ["tta", "pca"]}, []),
        "normalize": {"enum": list(NORMALIZATIONS)},
        "fast_channels": {"minimum": 1, "examples": [""]},
        "fast_resolution": {"exclusiveMinimum": 0, "maximum": 1, "examples": [""]},
        "versus": _items({"enum": _unique([*classes, "next"])}, []),
        "output": _items({"type": "integer", "minimum": 0, "maximum": model.num_classes - 1}, []),
        "above": {"examples": [""]},
        "job": {"examples": [""]},
        "scores": {"enum": list(SCORES), "examples": [""]},
        "embedding": {"enum": layers, "examples": [""]},
        "region": {"pattern": r"^\s*\d+\s*(,\s*\d+\s*){3}$", "examples": [""]},
        "min_score": {"minimum": 0, "maximum": 1, "examples": [""]},
        "detections": {"minimum": 1, "examples": [""]},
    }
    for field, extra in values.items():
        if field in fields:
            items = {**fields[field].get("items", {}), **extra.pop("items", {})}
            fields[field].update(extra, **({"items": items} if items else {}))
    for prop in fields.values():  # a field sent empty is a field not given (as forms send)
        for taken in (prop, prop.get("items", {})):
            if "enum" in taken and "" not in taken["enum"]:
                taken["enum"] = [*taken["enum"], ""]
    for photo in FILES:
        if photo in fields:
            body.setdefault("encoding", {})[photo] = {"contentType": IMAGE_TYPES}
    schema["additionalProperties"] = False  # any other field is a 422 naming it
    # what no field's values can say: the fields that exclude each other, and like's field
    schema["not"] = {"anyOf": [{"required": pair} for pair in EXCLUSIVE]}
    schema["dependentRequired"] = {"embedding": ["like"]}


WHAT = ("classes", "top", "above", "output", "versus", "like")
"""The explain form's fields that say what is explained: classes, and targets (outputs,
contrasts, a similarity) beside them or alone; or the top K; or the classes above a score, with
top at most K of them."""

EXCLUSIVE = [
    [one, other]
    for i, one in enumerate(WHAT)
    for other in WHAT[i + 1 :]
    if {one, other} & {"top", "above"} and {one, other} != {"top", "above"}
]
"""The explain form's fields that cannot be given together (what is explained is said once)."""


def _items(items: dict[str, Any], example: list[Any]) -> dict[str, Any]:
    return {"items": {**items}, "examples": [example]}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- what each error says --------------------------------------------------------------------------

Examples = dict[int, dict[str, tuple[str, str | None]]]


def error_examples(doc: dict[str, Any], st: ServerState) -> dict[tuple[str, str], Examples]:
    """Per operation of ``doc`` (``("GET", "/api/model")``) and error status, named examples of
    the real answers' ``(detail, parameter)``: made by the code that answers them where it can be
    called alone, with this server's settings."""
    settings = st.settings
    found: dict[tuple[str, str], Examples] = {}
    for path, operations in doc["paths"].items():
        for verb in operations:
            found[(verb.upper(), path)] = {422: {"unknown": unknown_example(doc, verb, path)}}
    for (_, path), examples in found.items():
        if path.startswith("/api/results/"):
            examples[404] = {"result": said(404, kept_result, st, "Qx3nVd8aYw0bKp1z")}
            if "{index}" in path:
                examples[404]["map"] = ("map 3 does not exist: this result has maps 0..0", "index")
            if path.endswith("region.png"):
                examples[404]["region"] = (no_region(0), "index")
            if path.endswith(("overlay.png", "heatmap.png")):
                examples[422]["cmap"] = said(422, output_options, cmap="nosuch")
        elif path.startswith("/api/jobs/"):
            examples[404] = {"job": said(404, st.jobs.get, "no-such-job-1")}
        elif path.startswith("/api/runs"):
            examples[404] = {"runs": NO_RUNS}
            if path != "/api/runs":
                examples[404]["run"] = NO_SUCH_RUN
                examples[409] = {"unreadable": UNREADABLE}
            if path.endswith("{image_id}") and (image := no_such_image(st)) is not None:
                examples[404]["past"] = image
    explain = found[("POST", "/api/explain")]
    explain[400] = {
        "field": (field_too_long("methods"), "methods"),
        "form": ("the form cannot be read: Missing boundary in multipart", None),
    }
    explain[408] = {"stalled": (upload_stalled(settings.upload_stall), "image")}
    explain[409] = {
        "cancelled": ("job 'my-job-0001' was cancelled (DELETE /api/jobs/my-job-0001)", "job")
    }
    huge = _png_header(20000, 20000)
    photo = INLINE_PHOTO[0] * INLINE_PHOTO[1] * 4 * 4 / 3  # a map's .npy in base64
    explain[413] = {
        "upload": (upload_too_large(settings.max_upload_bytes), "image"),
        "pixels": said(413, read_image, st, huge, "huge.png"),
        "inline": said(
            413, check_inline, st, int(settings.max_inline_bytes // photo) + 1, INLINE_PHOTO, 0
        ),
    }
    explain[415] = {"image": said(415, read_image, st, b"just some text", "notes.txt")}
    explain[422]["top"] = ("top must be at least 1, not 0", "top")
    other = {"classifier": "region", "segmentation": "versus", "detection": "top"}
    field = other.get(st.model.kind, "region")
    explain[422]["kind"] = said(422, check_kind, st.model, {field: "1"})
    explain[503] = {"busy": (busy(2), None)}
    return found


NO_RUNS = ("this server shows no runs: start it with camlens serve --runs FOLDER", None)
NO_SUCH_RUN = ("there is no run named 'no-such-run' here (GET /api/runs lists them)", "run")
UNREADABLE = (
    "run 'audit': audit/index.jsonl, line 1: not a camlens index row: no predictions",
    None,
)
INLINE_PHOTO = (4000, 3000)
"""The photo of the inline example: 12 megapixels, a phone's."""


def no_such_image(st: ServerState) -> tuple[str, str | None] | None:
    """The 404 of an image past the end of the first readable run (None without one)."""
    if st.gallery is None:
        return None
    for name in st.gallery.runs():
        try:
            run = run_index(st.gallery, name)
        except ApiError:
            continue
        return said(404, get_run_image, run, "", len(run[1].items), None)
    return None


def said(
    status: int, call: Callable[..., object], *args: Any, **kwargs: Any
) -> tuple[str, str | None]:
    """The ``(detail, parameter)`` of the :class:`ApiError` of ``status`` that ``call`` raises."""
    try:
        call(*args, **kwargs)
    except ApiError as exc:
        if exc.status == status:
            return exc.detail, exc.parameter
        raise
    raise RuntimeError(f"{call.__name__} answered without an error")


def unknown_example(doc: dict[str, Any], verb: str, path: str) -> tuple[str, str | None]:
    """The 422 of an operation of ``doc`` for a parameter it does not take (a form field where
    it reads a form, else a query parameter), as :func:`only_known_parameters` words it."""
    operation = doc["paths"][path][verb]
    endpoint = f"{verb.upper()} {path}"
    form = operation.get("requestBody", {}).get("content", {}).get(FORM)
    if form is not None:
        name = form["schema"]["$ref"].rsplit("/", 1)[-1]
        fields = list(doc["components"]["schemas"][name]["properties"])
        return unknown_parameter("colour", "form field", fields, endpoint), "colour"
    query = [p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"]
    return unknown_parameter("colour", "query parameter", query, endpoint), "colour"


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, header and an empty data chunk: its size is read, no pixel is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")
