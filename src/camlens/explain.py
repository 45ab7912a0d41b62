"""`Explainer`: a thin facade over the pipeline (inputs, capture, methods, normalize) that
returns an `Explanation` per image; one Explainer may be shared by several threads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens import inputs as coerce
from camlens import smoothing
from camlens.config import ExplainConfig, resolve_methods
from camlens.errors import CamlensError, LayerError, MethodError
from camlens.explanation import Explanation
from camlens.images import MAX_PIXELS
from camlens.inputs import Classes, ClassSpec, ImageInput, Item
from camlens.layers import (
    CamHead,
)
from camlens.methods import METHODS, Method, get_method
from camlens.models import Model
from camlens.pipeline import Pipeline
from camlens.progress import Progress
from camlens.taps import LayerSpec

__all__ = ["ClassSpec", "Classes", "Explainer", "ImageInput"]
TOP_PREDICTIONS = 5
#: Flat maps listed by name in a :class:`~camlens.errors.FlatMapWarning`; more are counted.
FLAT_LISTED = 3


class Explainer:
    """Explains a classifier's decisions with one or more methods at one or more layers.

    >>> explainer = camlens.Explainer(camlens.load_model(), method="gradcam")  # doctest: +SKIP
    >>> explainer.explain("photo.jpg", top=3).save("out/")                     # doctest: +SKIP

    The keywords are those of :class:`~camlens.config.ExplainConfig` (``method``/``layer`` for
    its ``methods``/``layers``; a :class:`~camlens.methods.Method` with options gives its name and
    its ``method_options``; a layer may be a module), and :attr:`config` is the config it runs:
    ``from_config(ex.config)`` computes the same maps. ``model``: a :class:`Model`, a spec or an ``nn.Module``. ``layer``:
    the last spatial layer by default; ``"all"`` every spatial layer of its kind. ``classes``/
    ``top``: what a call explains when it says neither (by default the top class). ``targets``:
    what else to explain (:mod:`camlens.targets`: ``Contrast("tiger cat", ("Egyptian cat",))``,
    ``Output(0)``, ``Similarity("ref.jpg")``, ``Binary(False)``, any ``Function``);
    ``above``: every class scored at least that, best first (with ``top``: at most ``top`` of
    them); ``scores``: the model's scoring (``softmax``, ``sigmoid``, ``raw``). A detector
    (:mod:`camlens.models.detection`) explains its detections scored at least ``min_score``
    (0.5), the ``detections`` best (None: all): one map per detection, method and layer.

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
        normalize: str = "minmax",
        classes: int | str | Sequence[int | str] | None = None,
        top: int | None = None,
        targets: Any = (),
        above: float | None = None,
        scores: str | None = None,
        min_score: float = 0.5,
        detections: int | None = None,
    ) -> None:
        methods = _methods(method)
        layers = _layers(layer)
        config = ExplainConfig(  # checks every option before any model is touched
            model=model if isinstance(model, str) else None,
            device=str(device) if device is not None else "cpu",
            methods=tuple(m.name for m in methods),
            method_options={m.name: m.options for m in methods if m.options},
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
            normalize=normalize,
            targets=targets,
            above=above,
            scores=scores,  # type: ignore[arg-type]  # checked
            min_score=min_score,
            detections=detections,
        )
        self._pipeline = Pipeline(config, model, layers, move=device is not None)
        self._closed = False

    @classmethod
    def from_config(cls, config: ExplainConfig, model: Model | None = None) -> Explainer:
        """The Explainer ``config`` describes; ``model`` (already loaded from ``config.model``,
        say, to share it between Explainers) instead of loading it again."""
        explainer = cls.__new__(cls)
        explainer._pipeline = Pipeline(config, model, list(config.layers), move=True)
        explainer._closed = False
        return explainer

    # --- what it was built with ------------------------------------------------------------------

    @property
    def config(self) -> ExplainConfig:
        """The config this Explainer runs: the options as given, the model and layers resolved."""
        return self._pipeline.config

    @property
    def model(self) -> Model:
        return self._pipeline.model

    @property
    def methods(self) -> list[Method]:
        return self._pipeline.methods

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
        return self._pipeline.augmentations

    @property
    def layers(self) -> list[str]:
        return list(self.config.layers)

    @property
    def heads(self) -> dict[str, CamHead | None]:
        """The GAP -> Linear head each layer feeds, or None."""
        return {t.name: t.head for t in self._pipeline.targets}

    @property
    def head_gradients(self) -> set[str]:
        """Layers whose class-score gradients come from the head's weights, with no backward pass."""
        return self._pipeline.head_gradients

    def close(self) -> None:
        """Drops the replays traced from the model; the Explainer cannot be used after."""
        self._pipeline.close()
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
        one list per image; otherwise the ``top`` (default 1) predicted classes, or with the
        Explainer's ``above`` at most ``top`` of the classes scored at least that (when a call
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
        for _, results in self._pipeline.batches(entries, classes, top, progress, alone=False):
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
        for chunk, results in self._pipeline.batches(entries, classes, top, progress, alone=True):
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
        return out


# --- building ---------------------------------------------------------------------------------


def _methods(method: str | Method | Sequence[str | Method]) -> list[Method]:
    """Method names, groups and :class:`Method` objects (with their options) -> each method once."""
    if not isinstance(method, str | Method | Sequence):
        raise MethodError(f"method must be a name, a Method or a list of them, not {method!r}")
    given = [method] if isinstance(method, str | Method) else list(method)
    if not given:
        raise MethodError("no method given: choose one or more of " + ", ".join(METHODS))
    chosen: dict[str, Method] = {}
    for m in given:
        for one in [m] if isinstance(m, Method) else map(get_method, resolve_methods(m)):
            chosen.setdefault(one.name, one)
    return list(chosen.values())


def _layers(layer: LayerSpec | Sequence[LayerSpec] | None) -> list[LayerSpec]:
    if layer is None:
        return []
    if isinstance(layer, str | nn.Module):
        return [layer]
    if not isinstance(layer, Sequence) or not all(isinstance(x, str | nn.Module) for x in layer):
        raise LayerError(f"layer must be a name, a module or a list of them, not {layer!r}")
    return list(layer)
