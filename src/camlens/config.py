"""`ExplainConfig`: every option an explanation depends on, checked when it is made, with a JSON
round trip; `OutputConfig`: how the results are drawn and written. Plain data with checks: it
imports no torch, matplotlib or model code (the names it checks are in :mod:`camlens.options`).

Every front-end (the ``camlens`` command, ``camlens serve``, a Ray job) builds these two, hands
them to the same library code and differs only in where files come from and where results go.
A bad value is refused on construction with a :class:`~camlens.errors.CamlensError` naming the
option, before any model is loaded or any image read; what needs the model (layer names, class
names) is checked by :class:`~camlens.explain.Explainer` before any image runs.

>>> config = ExplainConfig(methods=("gradients",), top=3)
>>> config.methods[:3]
('gradcam', 'gradcampp', 'xgradcam')
>>> ExplainConfig.from_json(config.to_json()) == config
True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from camlens.devices import device_name
from camlens.errors import CamlensError, ClassError, MethodError
from camlens.options import (
    MAX_PIXELS,
    METHOD_GROUPS,
    SMOOTHERS,
    Threshold,
    check_alpha,
    check_cmap,
    check_threshold,
    parse_threshold,
    resolve_methods,
)
from camlens.targets import (
    Scores,
    Target,
    as_target,
    check_above,
    check_min_score,
    check_scores,
)
from camlens.types import class_number

__all__ = ["METHOD_GROUPS", "ExplainConfig", "OutputConfig", "resolve_methods"]

BoxMode = Literal["largest", "all"]
RunFormat = Literal["files", "dataset"]
OverlayFormat = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class ExplainConfig:
    """Everything an explanation depends on.

    ``model``/``weights``: a spec for :func:`camlens.load_model` (None: the embedded default) and
    its local weights file. ``methods``: names or groups (``all``, ``gradients``, ``scores``),
    stored as canonical names; ``method_options``: keyword options of their functions by method
    (``{"sscam": {"samples": 4}}``, as :meth:`camlens.methods.Method.with_options`). ``layers``: target layer names (empty: the automatic one).
    ``layers=("all",)``: every spatial layer of the automatic layer's kind, in depth order.
    ``classes`` (indices or names, for every image) or ``top`` (the top K predicted classes; 1
    when neither is given). ``smooth``: ``tta`` and/or ``pca``; ``tta_flips``/``tta_scales`` the
    test-time augmentations. ``batch_size`` images per forward pass; ``max_batch_memory`` bytes per
    batch of masked or ablated passes; ``fast_channels``/``fast_resolution`` the approximate modes
    of the perturbation methods; ``use_head_gradients`` takes a GAP -> Linear head's gradients from
    its weights; ``channels_last`` the masked passes' memory format. ``input_size`` (height, width)
    replaces the model's input size; ``max_pixels`` refuses larger image files. ``relu=False``
    keeps each map's sign (min-max of the raw map, see :func:`camlens.maps.normalize`).
    ``normalize``: ``minmax`` (each map stretched to [0, 1]) or ``max`` (ReLU, then divided by its
    maximum, as the CAM and Grad-CAM write-ups do; not with ``relu=False``).

    What is explained beyond classes (see :mod:`camlens.targets`): ``targets``, for every image
    (contrasts, outputs, similarities, or in Python callables, which cannot be written as JSON);
    ``above``: every class whose score is at least that (a multi-label model's tags), best first;
    with ``top``, at most ``top`` of them (the ``top`` best that score at least ``above``);
    ``scores``: how the model's outputs become predictions (``softmax``, ``sigmoid``, ``raw``;
    None: what the model says). ``classes``, ``top``, ``targets`` and ``above`` exclude each other,
    but for ``top`` with ``above``. A detector's detections: those scored at least ``min_score``
    (in [0, 1]), the ``detections`` best of them (None: all), each explained.
    """

    model: str | None = None
    weights: str | None = None
    device: str = "cpu"
    methods: tuple[str, ...] = ("gradcam",)
    method_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict, hash=False
    )
    layers: tuple[str, ...] = ()
    classes: tuple[int | str, ...] = ()
    top: int | None = None
    smooth: tuple[str, ...] = ()
    tta_flips: bool = True
    tta_scales: tuple[float, ...] = (1.0, 1.25)
    batch_size: int = 16
    max_batch_memory: int = 512 * 2**20
    fast_channels: int | None = None
    fast_resolution: float | None = None
    use_head_gradients: bool = True
    channels_last: bool = True
    input_size: tuple[int, int] | None = None
    max_pixels: int = MAX_PIXELS
    relu: bool = True
    normalize: str = "minmax"
    targets: tuple[Target, ...] = ()
    above: float | None = None
    scores: Scores | None = None
    min_score: float = 0.5
    detections: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalized values are set once, here
        set_(self, "model", _optional_text(self.model, "model"))
        set_(self, "weights", _optional_text(self.weights, "weights"))
        with _option("device"):
            set_(self, "device", device_name(_text(self.device, "device")))
        with _option("methods"):
            set_(self, "methods", resolve_methods(self.methods))
        with _option("method_options"):
            set_(self, "method_options", _method_options(self.method_options, self.methods))
        set_(self, "layers", _texts(self.layers, "layers"))
        set_(self, "classes", _classes(self.classes))
        if self.top is not None:
            set_(self, "top", _integer(self.top, "top", 1))
            if self.classes:
                raise ClassError("give classes or top, not both", option="classes")
        smooth = tuple(dict.fromkeys(s.strip().lower() for s in _texts(self.smooth, "smooth")))
        unknown = [s for s in smooth if s not in SMOOTHERS]
        if unknown:
            raise MethodError(
                f"unknown smoothing {unknown}: choose from {', '.join(SMOOTHERS)}", option="smooth"
            )
        set_(self, "smooth", smooth)
        set_(self, "tta_flips", _flag(self.tta_flips, "tta_flips"))
        scales = tuple(_number(s, "tta_scales") for s in _sequence(self.tta_scales, "tta_scales"))
        if not scales or any(s <= 0 for s in scales):
            raise CamlensError(
                f"tta_scales must be positive numbers, not {list(scales)}", option="tta_scales"
            )
        set_(self, "tta_scales", scales)
        set_(self, "batch_size", _integer(self.batch_size, "batch_size", 1))
        set_(self, "max_batch_memory", _integer(self.max_batch_memory, "max_batch_memory", 1))
        if self.fast_channels is not None:
            set_(self, "fast_channels", _integer(self.fast_channels, "fast_channels", 1))
        if self.fast_resolution is not None:
            value = _number(self.fast_resolution, "fast_resolution")
            if not 0 < value <= 1:
                raise CamlensError(
                    f"fast_resolution must be in (0, 1], not {value}", option="fast_resolution"
                )
            set_(self, "fast_resolution", value)
        set_(self, "use_head_gradients", _flag(self.use_head_gradients, "use_head_gradients"))
        set_(self, "channels_last", _flag(self.channels_last, "channels_last"))
        if self.input_size is not None:
            size = _sequence(self.input_size, "input_size")
            if len(size) != 2:
                raise CamlensError(
                    f"input_size must be (height, width), not {list(size)}", option="input_size"
                )
            pair = tuple(_integer(n, "input_size", 8) for n in size)
            if pair[0] * pair[1] > MAX_PIXELS:
                raise CamlensError(
                    f"input_size {pair[0]}x{pair[1]} is over {MAX_PIXELS // 10**6} megapixels: "
                    "the model's activations would not fit in memory",
                    option="input_size",
                )
            set_(self, "input_size", pair)
        set_(self, "max_pixels", _integer(self.max_pixels, "max_pixels", 1))
        set_(self, "relu", _flag(self.relu, "relu"))
        set_(self, "normalize", _normalization(self.normalize, self.relu))
        with _option("targets"):
            items = (self.targets,) if isinstance(self.targets, Mapping) else self.targets
            if isinstance(items, str) or not isinstance(items, Sequence):
                items = (items,)
            set_(self, "targets", tuple(dict.fromkeys(as_target(t) for t in items)))
        if self.above is not None:
            with _option("above"):
                set_(self, "above", check_above(self.above))
        if self.scores is not None:
            with _option("scores"):
                set_(self, "scores", check_scores(self.scores))
        with _option("min_score"):
            set_(self, "min_score", check_min_score(self.min_score))
        if self.detections is not None:
            set_(self, "detections", _integer(self.detections, "detections", 1))
        chosen = [
            name
            for name, given in (
                ("classes", bool(self.classes)),
                ("top", self.top is not None and self.above is None),  # top bounds above
                ("targets", bool(self.targets)),
                ("above", self.above is not None),
            )
            if given
        ]
        if len(chosen) > 1:
            raise ClassError(
                f"give one of classes, top, targets (contrasts, outputs, similarity) or above "
                f"(with top: at most top of its classes), not {' and '.join(chosen)}",
                option=chosen[1],
            )
        if "all" in self.layers and len(self.layers) > 1:
            raise CamlensError(
                "layers: 'all' stands for every layer; give it alone", option="layers"
            )

    # --- JSON -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (tuples as lists, targets as their dicts; a callable
        target cannot be written and says so)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        with _option("targets"):
            out["targets"] = [t.to_dict() for t in self.targets]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExplainConfig:
        """The config of :meth:`to_dict`'s output; unknown keys are refused, missing ones default."""
        return cls(**_known_fields(cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExplainConfig:
        return cls.from_dict(_json_object(text, cls.__name__))

    def replace(self, **changes: Any) -> ExplainConfig:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class OutputConfig:
    """How results are drawn and written: the overlays' colormap and heatmap opacity ``alpha``;
    ``boxes``: none, the ``largest`` region of each map or ``all`` its regions, found at
    ``threshold`` (a fraction of the map's maximum, or ``"otsu"``); ``panels``: also a
    "photo | heatmap | overlay" picture per map, with ``raw_panels`` a fourth tile, the map at
    the layer's own grid (:func:`camlens.render.raw_map`); ``grids``: also one picture per image
    with all its maps (the layers in depth order).

    What a run writes (:mod:`camlens.outputs`): ``format`` ``"files"`` (an overlay and a ``.npy``
    at the photo's size per map) or ``"dataset"`` (an overlay per map, the maps at the layer's
    resolution in the reports and the index); ``overlay_format`` ``png``, ``jpeg`` or ``webp``
    (None: PNG for files, JPEG for dataset) at ``quality`` (JPEG and WebP, 1..100)."""

    cmap: str = "jet"
    alpha: float = 0.5
    boxes: BoxMode | None = None
    threshold: Threshold = 0.2
    panels: bool = False
    raw_panels: bool = False
    grids: bool = False
    # --- runs over many files ---
    format: RunFormat = "files"
    overlay_format: OverlayFormat | None = None
    quality: int = 90

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        with _option("cmap"):
            set_(self, "cmap", check_cmap(_text(self.cmap, "cmap")))
        with _option("alpha"):
            set_(self, "alpha", check_alpha(self.alpha))
        if self.boxes not in (None, "largest", "all"):
            raise CamlensError(
                f"boxes must be 'largest' or 'all' (or none), not {self.boxes!r}", option="boxes"
            )
        with _option("threshold"):
            threshold = (
                parse_threshold(self.threshold)
                if isinstance(self.threshold, str)
                else check_threshold(self.threshold)
            )
        set_(self, "threshold", threshold)
        set_(self, "panels", _flag(self.panels, "panels"))
        set_(self, "raw_panels", _flag(self.raw_panels, "raw_panels"))
        if self.raw_panels and not self.panels:
            raise CamlensError(
                "raw_panels is a tile of the panels: give panels=True with it", option="raw_panels"
            )
        set_(self, "grids", _flag(self.grids, "grids"))
        # --- runs over many files ---
        if self.format not in ("files", "dataset"):
            raise CamlensError(
                f"format must be 'files' or 'dataset', not {self.format!r}", option="format"
            )
        if self.overlay_format is not None:
            kind = _text(self.overlay_format, "overlay_format").lower()
            kind = "jpeg" if kind == "jpg" else kind
            if kind not in ("png", "jpeg", "webp"):
                raise CamlensError(
                    f"overlay_format must be png, jpeg or webp, not {self.overlay_format!r}",
                    option="overlay_format",
                )
            set_(self, "overlay_format", kind)
        quality = _integer(self.quality, "quality", 1)
        if quality > 100:
            raise CamlensError(f"quality must be at most 100, not {quality}", option="quality")
        set_(self, "quality", quality)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputConfig:
        return cls(**_known_fields(cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> OutputConfig:
        return cls.from_dict(_json_object(text, cls.__name__))


# --- checks ---------------------------------------------------------------------------------------


@contextmanager
def _option(name: str) -> Iterator[None]:
    """Names ``name`` as the option at fault in a CamlensError raised inside (unless it names one
    already), so that front-ends can point at it."""
    try:
        yield
    except CamlensError as exc:
        if exc.option is None:
            exc.option = name
        raise


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise CamlensError(f"a {cls.__name__} is read from a mapping, not {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise CamlensError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}")
    return dict(data)


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise CamlensError(f"not a {what} in JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CamlensError(f"a {what} in JSON is an object, not {type(data).__name__}")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _method_options(value: Any, methods: tuple[str, ...]) -> Mapping[str, Mapping[str, Any]]:
    """``{method: {option: value}}`` with canonical method names among ``methods`` and JSON
    values (the options' names are checked against the methods' functions by the Explainer)."""
    if not isinstance(value, Mapping):
        raise CamlensError(f"method_options must map method names to options, not {value!r}")
    out: dict[str, Mapping[str, Any]] = {}
    for name, options in value.items():
        canonical = resolve_methods(name) if isinstance(name, str) else ()
        if len(canonical) != 1 or canonical[0] not in methods:
            raise MethodError(
                f"method_options: {name!r} is not one of the methods ({', '.join(methods)})"
            )
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise CamlensError(f"method_options: {name}'s options are a mapping, not {options!r}")
        for key, option in options.items():
            if (option is not None and not isinstance(option, bool | int | float | str)) or (
                isinstance(option, float) and not math.isfinite(option)
            ):
                raise CamlensError(
                    f"method_options: {name}'s {key} must be a number, text, true/false or "
                    f"null, not {option!r}"
                )
        if options:
            out[canonical[0]] = MappingProxyType(dict(options))
    return MappingProxyType(out)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CamlensError(f"{name} must be a non-empty string, not {value!r}", option=name)
    return value.strip()


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if hasattr(value, "__fspath__"):
        value = str(value)
    return _text(value, name)


def _sequence(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise CamlensError(f"{name} must be a list, not {value!r}", option=name)
    return tuple(value)


def _texts(value: Any, name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else _sequence(value, name)
    return tuple(dict.fromkeys(_text(v, name) for v in items))


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise CamlensError(f"{name} must be true or false, not {value!r}", option=name)
    return value


def _integer(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise CamlensError(f"{name} must be a whole number, not {value!r}", option=name)
    if value < least:
        raise CamlensError(f"{name} must be at least {least}, not {value}", option=name)
    return int(value)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CamlensError(f"{name} must be a finite number, not {value!r}", option=name)
    return float(value)


NORMALIZATIONS = ("minmax", "max")
"""The values of ``ExplainConfig.normalize`` (:func:`camlens.maps.normalize`'s modes)."""


def _normalization(value: Any, relu: bool) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in NORMALIZATIONS:
        raise CamlensError(
            f"normalize must be 'minmax' or 'max', not {value!r}", option="normalize"
        )
    if key == "max" and not relu:
        raise CamlensError(
            "normalize 'max' divides the map by its maximum after the ReLU; a signed map "
            "(relu off, --no-relu) is min-maxed: give normalize 'minmax' with it",
            option="normalize",
        )
    return str(key)


def _classes(value: Any) -> tuple[int | str, ...]:
    items = (value,) if isinstance(value, int | str) else _sequence(value, "classes")
    out: list[int | str] = []
    for c in items:
        if isinstance(c, bool) or not isinstance(c, int | str):
            raise ClassError(f"a class is an index or a name, not {c!r}", option="classes")
        if isinstance(c, str):
            c = c.strip()
            if not c:
                raise ClassError("an empty class name", option="classes")
            number = class_number(c)
            c = c if number is None else number
        out.append(c)
    return tuple(dict.fromkeys(out))
