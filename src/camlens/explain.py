"""`Explainer`: a thin facade over the pipeline (inputs, capture, methods, normalize) that
returns an `Explanation` per image; one Explainer may be shared by several threads."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, cast, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens import inputs as coerce
from camlens import smoothing
from camlens.capture import Capture, Settings, Target, find_targets
from camlens.config import ExplainConfig, resolve_methods
from camlens.devices import check_device
from camlens.errors import CamlensError, FlatMapWarning, MethodError, ModelError
from camlens.explanation import CallStats, ClassMap, Explanation
from camlens.images import MAX_PIXELS
from camlens.inputs import Classes, ClassSpec, ImageInput, Item
from camlens.layers import (
    CamHead,
    at_input_size,
    auto_layer,
    check_input_size,
    describe_head,
    layers_like_auto,
    probe_input,
)
from camlens.maps import normalize
from camlens.methods import METHODS, Method, get_method
from camlens.models import Model, load_model
from camlens.modes import eval_mode
from camlens.progress import Progress
from camlens.replay import forward_bytes, plan_replay
from camlens.taps import RUNS, LayerSpec
from camlens.types import Prediction

__all__ = ["ClassSpec", "Classes", "Explainer", "ImageInput"]
TOP_PREDICTIONS = 5
#: Flat maps listed by name in a :class:`~camlens.errors.FlatMapWarning`; more are counted.
FLAT_LISTED = 3


class Explainer:
    """Explains a classifier's decisions with one or more methods at one or more layers.

    >>> explainer = camlens.Explainer(camlens.load_model(), method="gradcam")  # doctest: +SKIP
    >>> explainer.explain("photo.jpg", top=3).save("out/")                     # doctest: +SKIP

    The keywords are those of :class:`~camlens.config.ExplainConfig` (``method``/``layer`` for
    its ``methods``/``layers``, which may also be :class:`~camlens.methods.Method` objects with
    options and modules), and :attr:`config` is the config it runs: ``from_config(ex.config)``
    computes the same maps. ``model``: a :class:`Model`, a spec or an ``nn.Module``. ``layer``:
    the last spatial layer by default; ``"all"`` every spatial layer of its kind. ``classes``/
    ``top``: what a call explains when it says neither (by default the top class).

    One forward pass per batch serves every class, layer and method; gradients come from one
    batched backward pass with respect to the tapped activations, or from the weights of a
    GAP -> Linear head (checked numerically). The perturbation methods run their passes in
    chunks of ``max_batch_memory`` bytes; ``fast_channels``/``fast_resolution`` trade accuracy for
    speed (:class:`~camlens.methods.perturbation.Scorer`). ``smooth``: ``"tta"`` (the maps of the
    inputs flipped (``tta_flips``) and rescaled (``tta_scales``), undone and averaged) and/or
    ``"pca"`` (see :mod:`camlens.smoothing`).

    Threads: several threads may call one Explainer at once, and each gets what it would get
    alone; a call changes nothing on the Explainer or the model (hooks are per call, modes
    restored), and what it cost comes back on each result (:attr:`Explanation.stats`).
    ``close()`` (or leaving a ``with`` block) drops what it traced of the model.
    """

    def __init__(
        self,
        model: Model | nn.Module | str | None = None,
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        use_head_gradients: bool = True,
        smooth: str | Sequence[str] | None = None,
        tta_flips: bool = True,
        tta_scales: Sequence[float] = (1.0, 1.25),
        max_batch_memory: int = 512 * 2**20,
        fast_channels: int | None = None,
        fast_resolution: float | None = None,
        channels_last: bool = True,
        input_size: tuple[int, int] | None = None,
        max_pixels: int = MAX_PIXELS,
        relu: bool = True,
        classes: int | str | Sequence[int | str] | None = None,
        top: int | None = None,
    ) -> None:
        methods = _methods(method)
        layers = [layer] if isinstance(layer, str | nn.Module) else list(layer or [])
        config = ExplainConfig(  # checks every option before any model is touched
            model=model if isinstance(model, str) else None,
            device=str(device) if device is not None else "cpu",
            methods=tuple(m.name for m in methods),
            layers=tuple(x for x in layers if isinstance(x, str)),
            classes=() if classes is None else classes,  # type: ignore[arg-type]  # checked
            top=top,
            smooth=smooth or (),  # type: ignore[arg-type]  # checked
            tta_flips=tta_flips,
            tta_scales=tta_scales,  # type: ignore[arg-type]  # checked
            batch_size=batch_size,
            max_batch_memory=max_batch_memory,
            fast_channels=fast_channels,
            fast_resolution=fast_resolution,
            use_head_gradients=use_head_gradients,
            channels_last=channels_last,
            input_size=input_size,
            max_pixels=max_pixels,
            relu=relu,
        )
        self._build(config, model, methods, layers, move=device is not None)

    @classmethod
    def from_config(cls, config: ExplainConfig, model: Model | None = None) -> Explainer:
        """The Explainer ``config`` describes; ``model`` (already loaded from ``config.model``,
        say, to share it between Explainers) instead of loading it again."""
        explainer = cls.__new__(cls)
        methods = [get_method(name) for name in config.methods]
        explainer._build(config, model, methods, list(config.layers), move=True)
        return explainer

    def _build(
        self,
        config: ExplainConfig,
        model: Model | nn.Module | str | None,
        methods: list[Method],
        layers: list[LayerSpec],
        *,
        move: bool,
    ) -> None:
        if not isinstance(model, Model):
            model = load_model(model or config.model, weights=config.weights, device=config.device)
        elif move:
            model.to(check_device(config.device))
        self.model = model if config.input_size is None else at_input_size(model, config.input_size)
        if "tta" in config.smooth:
            _check_scales(self.model, config.tta_scales)
        self._classes = coerce.class_lists(self.model, config.classes or None, config.top, 1)
        if layers == ["all"]:
            layers = list(layers_like_auto(self.model))
        targets = find_targets(self.model, layers or [auto_layer(self.model)])
        self.methods = _applicable(self.model, methods, targets)
        scores = any(m.needs == "scores" for m in self.methods)
        if scores:
            net = self.model.net
            targets = [
                replace(t, replay=plan_replay(net, t.name, t.module, t.adapter, t.head))
                for t in targets
            ]
        self._targets: tuple[Target, ...] = tuple(targets)
        self._settings = Settings(
            head_gradients=config.use_head_gradients,
            max_batch_memory=config.max_batch_memory,
            fast_channels=config.fast_channels,
            fast_resolution=config.fast_resolution,
            channels_last=config.channels_last,
            row_bytes=forward_bytes(self.model.net, probe_input(self.model)) if scores else None,
        )
        weights = getattr(self.model, "weights", None)
        #: The config this Explainer runs: the options as given, the model and layers resolved.
        self.config = config.replace(
            methods=tuple(m.name for m in self.methods),
            device=str(self.model.device),
            model=getattr(self.model, "spec", None),
            weights=None if weights is None else str(weights),
            layers=tuple(t.name for t in targets),
        )
        self._closed = False

    # --- what it was built with ------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def max_pixels(self) -> int:
        return self.config.max_pixels

    @property
    def classes(self) -> tuple[int | str, ...] | None:
        """The classes a call explains when it says neither ``classes`` nor ``top``."""
        return self.config.classes or None

    @property
    def top(self) -> int | None:
        return self.config.top

    @property
    def augmentations(self) -> tuple[smoothing.Augmentation, ...]:
        """The test-time augmentations each batch runs (the identity alone without ``tta``)."""
        if "tta" not in self.config.smooth:
            return (smoothing.Augmentation(),)
        return smoothing.augmentations(self.config.tta_flips, self.config.tta_scales)

    @property
    def layers(self) -> list[str]:
        return [t.name for t in self._targets]

    @property
    def heads(self) -> dict[str, CamHead | None]:
        """The GAP -> Linear head each layer feeds, or None."""
        return {t.name: t.head for t in self._targets}

    @property
    def head_gradients(self) -> set[str]:
        """Layers whose class-score gradients come from the head's weights, with no backward pass."""
        if not self._settings.head_gradients:
            return set()
        return {t.name for t in self._targets if t.head is not None}

    def close(self) -> None:
        """Drops the replays traced from the model; the Explainer cannot be used after."""
        self._targets = tuple(replace(t, replay=None) for t in self._targets)
        self._closed = True

    def __enter__(self) -> Explainer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- explaining: every entry point reads its inputs, then runs _batches ----------------------

    @overload
    def explain(  # type: ignore[overload-overlap]  # a str is a Sequence too: this one wins
        self,
        inputs: str | Path | Image.Image | np.ndarray,
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Explanation: ...

    @overload
    def explain(
        self,
        inputs: Sequence[ImageInput] | torch.Tensor,
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Explanation]: ...

    def explain(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Explanation | list[Explanation]:
        """Maps for ``inputs``: a path, a PIL image, an RGB array, a normalized [3, H, W] tensor
        (one image -> one :class:`Explanation`), or a list of those or an [N, 3, H, W] batch
        (-> a list). ``classes``: indices or names for every image (``[285, "espresso"]``), or
        one list per image; otherwise the ``top`` (default 1) predicted classes (when a call
        gives neither, the Explainer's own). ``names``: how reports name the inputs (default:
        their paths, or ``<image N>``). ``progress`` gets the perturbation methods' events.

        All or nothing: a file that cannot be read, an input with NaN values, a model giving NaN
        scores raises a :class:`~camlens.errors.CamlensError` naming it (see
        :mod:`camlens.inputs` for what is accepted); :meth:`explain_each` is the other way. A
        constant map is zeros with ``flat=True``, and a :class:`~camlens.errors.FlatMapWarning`
        names the image."""
        batches = self.iter_explain(
            inputs, classes=classes, top=top, names=names, progress=progress
        )
        results = [result for batch in batches for result in batch]
        return results[0] if coerce.is_single(inputs) else results

    def iter_explain(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Iterator[list[Explanation]]:
        """Like :meth:`explain` for a list, but yields each batch's explanations as it is done."""
        self._open()
        entries = coerce.read(inputs, names, self.max_pixels)
        for entry in entries:
            if isinstance(entry, CamlensError):
                raise entry
        for _, results in self._batches(entries, classes, top, progress, alone=False):
            yield cast(list[Explanation], results)

    def explain_each(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Explanation | CamlensError]:
        """Like :meth:`explain`, but one bad input does not lose the others: always a list with,
        for each input in order, its :class:`Explanation` or the
        :class:`~camlens.errors.CamlensError` that stopped it. What is wrong with the call itself
        (``None``, an empty list, a malformed tensor, unknown classes, too few ``names``) still
        raises. A batch that fails is explained again one image at a time, so that the error is
        given to the input it belongs to."""
        self._open()
        entries = coerce.read(inputs, names, self.max_pixels)
        return self._each(entries, classes, top, progress)

    def explain_prepared(
        self,
        inputs: torch.Tensor,
        photos: Sequence[Image.Image],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Explanation | CamlensError]:
        """:meth:`explain_each` of photos already preprocessed elsewhere (by the reading threads
        of a run): ``inputs`` is the [N, 3, H, W] batch :func:`camlens.images.preprocess` makes
        of ``photos``; the explanations show ``photos`` at their own size."""
        self._open()
        entries = coerce.prepared(inputs, photos, names)
        return self._each(entries, classes, top, None)

    def _open(self) -> None:
        if self._closed:
            raise CamlensError("this Explainer is closed")

    def _each(
        self,
        entries: list[Item | CamlensError],
        classes: Classes | None,
        top: int | None,
        progress: Progress | None,
    ) -> list[Explanation | CamlensError]:
        out: list[Any] = list(entries)  # each Item replaced by its result below
        for chunk, results in self._batches(entries, classes, top, progress, alone=True):
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
        return out

    def _batches(
        self,
        entries: list[Item | CamlensError],
        classes: Classes | None,
        top: int | None,
        progress: Progress | None,
        *,
        alone: bool,
    ) -> Iterator[tuple[list[int], list[Explanation | CamlensError]]]:
        """The good entries in batches: (their places, their results). ``alone``: a batch that
        fails is explained again an image at a time, each failure as its input's result."""
        if classes is None and top is None:
            wanted = None if self._classes is None else self._classes * len(entries)
            depth = self.config.top or 1
        else:
            wanted, depth = coerce.class_lists(self.model, classes, top, len(entries)), top or 1
        good = [i for i, e in enumerate(entries) if isinstance(e, Item)]

        def run(chunk: list[int]) -> list[Explanation]:
            items = [cast(Item, entries[i]) for i in chunk]
            chosen = None if wanted is None else [wanted[i] for i in chunk]
            return self._batch(items, chosen, depth, progress)

        def run_alone(i: int) -> Explanation | CamlensError:
            try:
                return run([i])[0]
            except CamlensError as exc:
                return _naming(exc, cast(Item, entries[i]).source)

        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            try:
                results: list[Explanation | CamlensError] = list(run(chunk))
            except CamlensError:
                if not alone:
                    raise
                results = [run_alone(i) for i in chunk]
            yield chunk, results

    def _batch(
        self,
        items: list[Item],
        chosen: list[list[int]] | None,
        depth: int,
        progress: Progress | None,
    ) -> list[Explanation]:
        """One batch through the pipeline: capture (per augmentation), methods, normalize."""
        started, model = time.perf_counter(), self.model
        x = coerce.model_input(items, model.preprocess).to(model.device)
        with eval_mode(model.net), RUNS.shared():
            captures = [self._capture(x, progress)]
            probs = captures[0].probs
            if chosen is None:
                chosen = probs.topk(depth, dim=1).indices.tolist()
            runs = [self._class_maps(captures[0], chosen)]
            augmentations = self.augmentations
            for aug in augmentations[1:]:  # the same classes, explained on each augmented input
                captures.append(self._capture(aug.apply(x), progress))
                runs.append(self._class_maps(captures[-1], chosen))
        per_image = runs[0] if len(runs) == 1 else smoothing.merge_augmented(runs, augmentations)
        stats = CallStats(
            images=len(items),
            forward_passes=len(captures),
            backward_passes=sum(c.backward_passes for c in captures),
            perturbation_passes=sum(c.perturbation_passes for c in captures),
            seconds=time.perf_counter() - started,
            replays=tuple(sorted(captures[0].replay_kinds.items())),
        )
        top_p, top_i = probs.topk(min(TOP_PREDICTIONS, model.num_classes), dim=1)
        results = []
        for b, item in enumerate(items):
            single = item.pixels() == 1  # a single pixel: no map can show where
            if single:
                for m in per_image[b]:
                    m.map, m.flat = torch.zeros_like(m.map), True
            predictions = [
                Prediction(int(i), model.labels[int(i)], float(p))
                for p, i in zip(top_p[b], top_i[b], strict=True)
            ]
            result = Explanation(
                source=item.source,
                image=coerce.picture(item, x[b], model.preprocess),
                input_size=model.preprocess.input_size,
                model=model.name,
                predictions=predictions,
                maps=per_image[b],
                stats=stats,
            )
            _warn_flat(result, single=single)
            results.append(result)
        return results

    def _capture(self, x: torch.Tensor, progress: Progress | None) -> Capture:
        gradients = any(m.needs == "gradients" for m in self.methods)
        autograd = [n for n in self.layers if gradients and n not in self.head_gradients]
        return Capture(
            self.model,
            self._targets,
            x,
            gradients=autograd,
            settings=self._settings,
            progress=progress,
        )

    def _class_maps(self, capture: Capture, chosen: list[list[int]]) -> list[list[ClassMap]]:
        """The maps of the classes ``chosen`` for each image, per layer, rank and method."""
        depth = max(len(cs) for cs in chosen)
        # each image's class list padded with its last class, so that ranks form a tensor
        padded = [cs + [cs[-1]] * (depth - len(cs)) for cs in chosen]
        index = torch.tensor(padded, device=capture.x.device)
        reduce = smoothing.pca_map if "pca" in self.config.smooth else None
        per_image: list[list[ClassMap]] = [[] for _ in chosen]
        for target in self._targets:
            raws = [m.maps(capture, target.name, index, reduce) for m in self.methods]
            for j in range(depth):
                for method, raw in zip(self.methods, raws, strict=True):
                    maps, flat = normalize(raw[:, j].detach(), relu=self.config.relu)
                    for b, cs in enumerate(chosen):
                        if j < len(cs):
                            c = cs[j]
                            per_image[b].append(
                                ClassMap(
                                    c,
                                    self.model.labels[c],
                                    float(capture.probs[b, c]),
                                    method.name,
                                    target.name,
                                    maps[b],
                                    bool(flat[b]),
                                )
                            )
        return per_image


# --- building ---------------------------------------------------------------------------------


def _methods(method: str | Method | Sequence[str | Method]) -> list[Method]:
    """Method names, groups and :class:`Method` objects (taken as they are) -> each method once."""
    given = [method] if isinstance(method, str | Method) else list(method)
    if not given:
        raise MethodError("no method given: choose one or more of " + ", ".join(METHODS))
    chosen: dict[str, Method] = {}
    for m in given:
        for one in [m] if isinstance(m, Method) else map(get_method, resolve_methods(m)):
            chosen.setdefault(one.name, one)
    return list(chosen.values())


def _applicable(model: Model, methods: list[Method], targets: list[Target]) -> list[Method]:
    """``methods`` less those that need a GAP -> Linear head where a layer feeds none (with a
    warning), or an error saying why when nothing would be left."""
    head_methods = [m for m in methods if m.needs == "head"]
    headless = [t for t in targets if t.head is None]
    if not head_methods or not headless:
        return methods
    if len(head_methods) == len(methods):
        headless[0].require_head(model)  # raises: says why CAM does not apply
    warnings.warn(
        f"{', '.join(m.name for m in head_methods)} left out: "
        f"{describe_head(model, headless[0].name, headless[0].channels)}",
        stacklevel=_outside(),
    )
    return [m for m in methods if m.needs != "head"]


def _check_scales(model: Model, scales: Sequence[float]) -> None:
    """Test-time augmentation rescales the input: a model with a fixed input size (a timm ViT
    without ``dynamic_img_size``, a Keras model with a ``Flatten`` head) is said to refuse it
    here, with what to do, rather than failing in the middle of a call."""
    height, width = model.preprocess.input_size
    for scale in sorted({s for s in scales if s != 1}):
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        try:
            check_input_size(model, size, head=False)
        except ModelError as exc:
            raise ModelError(
                f"test-time augmentation rescales the input by {scale:g}, and {exc}; "
                "use the flips alone (tta_scales=(1.0,))"
            ) from None


# --- results ----------------------------------------------------------------------------------


def _naming(exc: CamlensError, source: str) -> CamlensError:
    """``exc`` with the input it is about named first, as every per-input error is."""
    if str(exc).startswith(f"{source}: "):
        return exc
    try:
        return type(exc)(f"{source}: {exc}")
    except TypeError:  # an error type made otherwise (ImageError names its path already)
        return CamlensError(f"{source}: {exc}")


def _warn_flat(result: Explanation, *, single: bool) -> None:
    """A :class:`~camlens.errors.FlatMapWarning` naming the image and its flat maps, if any."""
    flat = [m for m in result.maps if m.flat]
    if not flat:
        return
    if single:
        text = f"{result.source}: a picture of a single pixel: its maps are flat (no place to show)"
    else:
        listed = ", ".join(
            f"{m.method} of class {m.class_index} ({m.label}) at {m.layer}"
            for m in flat[:FLAT_LISTED]
        )
        more = f" and {len(flat) - FLAT_LISTED} more" if len(flat) > FLAT_LISTED else ""
        text = (
            f"{result.source}: {len(flat)} of {len(result.maps)} maps are flat (constant: the "
            f"method found no evidence there, shown as zeros): {listed}{more}"
        )
    warnings.warn(FlatMapWarning(text), stacklevel=_outside())


def _outside() -> int:
    """The ``stacklevel`` of a warning that names the caller's line, outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level
