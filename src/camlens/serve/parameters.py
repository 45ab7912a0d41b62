"""What a request asks for: its parameters checked against those the endpoint takes (an unknown
one is a 422 naming it, with the closest known name), and an explain request's options turned
into one :class:`~camlens.config.ExplainConfig` and one :class:`~camlens.config.OutputConfig`,
whose errors name the parameter at fault."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from camlens.config import ExplainConfig, OutputConfig
from camlens.errors import CamlensError
from camlens.models import Model
from camlens.scoring import TargetPlan
from camlens.serve.errors import ApiError, bad_option
from camlens.serve.state import KIND_FIELDS, ServerState
from camlens.targets import Segment, check_box, from_options

KIND_WORDS = {
    "classifier": "it explains classes",
    "segmentation": "it explains a class's segment: classes or top, over a region or mask",
    "detection": "it explains its detections: min_score and detections choose them",
}


def check_kind(model: Model, given: dict[str, object]) -> None:
    """A 422 naming the first field of ``given`` (name -> value, None: not given) that does not
    apply to ``model``'s kind."""
    kind = model.kind
    taken = KIND_FIELDS.get(kind, KIND_FIELDS["classifier"])
    for name, value in given.items():
        if value is None or value == [] or value == () or name in taken:
            continue
        if any(name in fields for fields in KIND_FIELDS.values()):
            raise ApiError(
                422,
                f"{name} does not apply to {model.name}, a {kind} model: "
                f"{KIND_WORDS.get(kind, KIND_WORDS['classifier'])} ({', '.join(taken)})",
                name,
            )


@dataclass(frozen=True)
class Known:
    """The query parameters and form fields an endpoint takes, and those of them that take
    several values (repeated: ``-F methods=cam -F methods=gradcam``)."""

    query: tuple[str, ...]
    form: tuple[str, ...]
    repeatable: frozenset[str] = frozenset()


_known: dict[int, Known] = {}


def known_names(route: APIRoute) -> Known:
    """The query parameters and form fields of ``route`` and its dependencies, by the names a
    client sends (their aliases)."""
    found = _known.get(id(route))
    if found is None:
        query: list[str] = []
        form: list[str] = []
        repeatable: set[str] = set()
        stack = [route.dependant]
        while stack:
            dependant = stack.pop()
            query.extend(f.alias for f in dependant.query_params)
            form.extend(f.alias for f in dependant.body_params)
            for f in [*dependant.query_params, *dependant.body_params]:
                if _is_list(f.field_info.annotation):
                    repeatable.add(f.alias)
            stack.extend(reversed(dependant.dependencies))  # in order, as the document lists them
        found = _known[id(route)] = Known(
            tuple(dict.fromkeys(query)), tuple(dict.fromkeys(form)), frozenset(repeatable)
        )
    return found


def _is_list(annotation: Any) -> bool:
    """Whether a parameter of this type takes several values (``list[str] | None``, say)."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    return any(typing.get_origin(a) in (list, tuple, set) for a in (annotation, *kinds))


async def only_known_parameters(request: Request) -> None:
    """A dependency: a query parameter or form field the endpoint does not take is a 422 naming
    it, with the closest name it takes (``method``: "did you mean 'methods'?"), never ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = known_names(route)
    for name in request.query_params:
        if name not in known.query:
            raise _unknown(request, name, "query parameter", known.query)
    _once(request.query_params, "query parameter", known)
    if known.form:  # the form is parsed already (FastAPI reads it before any dependency)
        form = await request.form()
        for name in form:
            if name not in known.form:
                raise _unknown(request, name, "form field", known.form)
        _once(form, "form field", known)


def _once(given: Any, kind: str, known: Known) -> None:
    """A 422 naming a parameter of one value that is given more than once (else the last
    would be taken silently)."""
    for name in dict.fromkeys(given.keys()):
        count = len(given.getlist(name))
        if count > 1 and name not in known.repeatable:
            raise ApiError(422, f"{kind} {name!r} is given {count} times: it takes one value", name)


def _unknown(request: Request, name: str, kind: str, known: Sequence[str]) -> ApiError:
    endpoint = f"{request.method} {request.scope['route'].path}"
    return ApiError(422, unknown_parameter(name, kind, known, endpoint), name)


def unknown_parameter(name: str, kind: str, known: Sequence[str], endpoint: str) -> str:
    """The 422's message for a ``kind`` (query parameter, form field) ``name`` that ``endpoint``
    does not take: the closest name it takes, and those it takes."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]!r}?" if close else ""
    takes = f"takes {', '.join(known)}" if known else f"takes no {kind}"
    return f"unknown {kind} {name!r}{hint} ({endpoint} {takes})"


def items(values: Sequence[str] | None, split: bool = True) -> list[str]:
    """Repeated form fields, each also split at commas when ``split`` (class names keep theirs)."""
    out: list[str] = []
    for value in values or ():
        parts = value.split(",") if split else [value]
        out.extend(p.strip() for p in parts if p.strip())
    return out


def explain_options(
    st: ServerState,
    *,
    methods: Sequence[str] | None,
    layers: Sequence[str] | None,
    classes: Sequence[str] | None,
    top: int | None,
    smooth: Sequence[str] | None,
    fast_channels: int | None,
    normalize: str = "minmax",
    fast_resolution: float | None,
    boxes: str | None,
    threshold: str,
    cmap: str,
    alpha: float,
    versus: Sequence[str] | None = None,
    above: float | None = None,
    outputs: Sequence[str] | None = None,
    scores: str | None = None,
    like: str | None = None,
    embedding: str | None = None,
    region: str | None = None,
    mask: str | None = None,
    min_score: float | None = None,
    detections: int | None = None,
) -> tuple[ExplainConfig, OutputConfig]:
    """The request's options as one config and one output config, checked against the model
    (its kind, classes, layers) and this server's limits; a 422 names the parameter at fault.
    Class names are resolved here, once: the config holds their indices."""
    model = st.model
    check_kind(
        model,
        {
            "classes": list(classes or ()),
            "top": top,
            "above": above,
            "versus": list(versus or ()),
            "output": list(outputs or ()),
            "scores": scores,
            "like": like,
            "embedding": embedding,
            "region": region,
            "mask": mask,
            "min_score": min_score,
            "detections": detections,
        },
    )
    try:
        indices = tuple(model.class_index(c) for c in items(classes, split=False))
    except CamlensError as exc:
        raise bad_option(exc, "classes") from None
    numbers = []
    for text in items(outputs):
        try:
            numbers.append(int(text))
        except ValueError:
            raise ApiError(
                422, f"output is an output's index, a whole number, not {text!r}", "output"
            ) from None
    try:
        given, targets = from_options(
            indices, items(versus, split=False), numbers or None, like, embedding
        )
    except CamlensError as exc:
        raise bad_option(exc, "embedding" if like is None and embedding else "versus") from None
    targets_field = "like" if like is not None else "versus" if versus else "output"
    if region is not None or mask is not None:
        given, targets = segments(given, region, mask, top)
        targets_field = "region" if region is not None else "mask"
    try:
        TargetPlan(model, targets)  # a class or output the model does not have, named here
    except CamlensError as exc:
        raise bad_option(exc, targets_field) from None
    detector: dict[str, Any] = {} if min_score is None else {"min_score": min_score}
    try:
        config = ExplainConfig(
            methods=tuple(items(methods)) or ("gradcam",),
            layers=tuple(items(layers)),
            classes=given,
            top=top,
            targets=targets,
            above=above,
            scores=scores,  # type: ignore[arg-type]  # checked by ExplainConfig
            smooth=tuple(items(smooth)),
            normalize=normalize,
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            max_pixels=st.settings.max_pixels,
            batch_size=st.settings.max_batch,
            **detector,
            detections=detections,
            device=str(model.device),
        )
    except CamlensError as exc:
        if exc.option == "targets":  # the config's name: the form field that made them
            raise ApiError(422, str(exc), targets_field) from None
        raise bad_option(exc) from None
    if model.kind == "detection" and config.detections is None:
        # as many detections as max_maps allows (the answer lists every detection over min_score)
        per_detection = len(config.methods) * max(1, len(config.layers))
        config = config.replace(detections=max(1, st.settings.max_maps // per_detection))
    unknown = [name for name in config.layers if name not in st.layer_names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], st.layer_names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}" if close else ""
        raise ApiError(
            422,
            f"layer {unknown[0]!r} is not a spatial layer of {model.name}{hint} "
            "(GET /api/model lists them)",
            "layers",
        )
    if config.top is not None and config.top > model.num_classes:
        raise ApiError(422, f"top must be at most {model.num_classes}, not {config.top}", "top")
    count = maps_asked(config, model)
    if count > st.settings.max_maps:
        if config.above is not None and config.top is None:
            per_class = len(config.methods) * max(1, len(config.layers))
            most = st.settings.max_maps // per_class
            bound = f"give top (at most {most} here) to explain the best of those classes only"
            raise ApiError(
                422,
                f"above {config.above:g} may ask for {count} maps (every class scored at least "
                f"that x methods x layers), over this server's limit of {st.settings.max_maps}: "
                f"{bound if most else 'choose fewer methods or layers'}",
                "above",
            )
        raise ApiError(
            422,
            f"{count} maps asked for ({'detections' if config.detections else 'classes'} x "
            f"methods x layers), over this server's limit "
            f"of {st.settings.max_maps}",
            "classes" if indices else "detections" if config.detections else "top",
        )
    box_mode = None if boxes is None or boxes.strip().lower() in ("", "none") else boxes.strip()
    try:
        output = OutputConfig(cmap=cmap, alpha=alpha, boxes=box_mode, threshold=threshold)  # type: ignore[arg-type]
    except CamlensError as exc:
        raise bad_option(exc) from None
    return config, output


def segments(
    given: tuple[int | str, ...], region: str | None, mask: str | None, top: int | None
) -> tuple[tuple[int | str, ...], tuple[Segment, ...]]:
    """``region`` (x0,y0,x1,y1) or ``mask`` (the uploaded mask's path): each class given as a
    segment over it; a 422 naming the field at fault."""
    field = "region" if region is not None else "mask"
    if region is not None and mask is not None:
        raise ApiError(422, "give region or mask, not both", "mask")
    if top is not None or not given:
        raise ApiError(
            422,
            f"{field} needs classes (not top): the classes whose logits are summed over it",
            field,
        )
    try:
        box = None if region is None else check_box(region)
    except CamlensError as exc:
        raise ApiError(422, str(exc), "region") from None
    return (), tuple(Segment(c, box=box, mask=mask) for c in given)


def maps_asked(config: ExplainConfig, model: Model) -> int:
    """How many maps ``config`` may ask of one photo: targets (or classes, or top) x methods x
    layers. ``above`` may ask for every class: at most ``1 / above`` of them under softmax (the
    scores sum to 1), else all of them; at most ``top`` when it is given."""
    wanted = len(config.targets) or len(config.classes) or config.top or config.detections or 1
    if config.above is not None:
        softmax = (config.scores or model.scores) == "softmax"
        wanted = model.num_classes
        if softmax and config.above * wanted > 1:
            wanted = int(1 / config.above)
        if config.top is not None:
            wanted = min(wanted, config.top)
    return wanted * len(config.methods) * max(1, len(config.layers))
