"""`Explainer`: a thin facade over the pipeline (preprocess, capture, methods, normalize) that
returns an `Explanation` per image; one Explainer may be shared by several threads."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, cast, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens import smoothing
from camlens.capture import Capture, Settings, Target, find_targets
from camlens.config import ExplainConfig, resolve_methods
from camlens.devices import check_device
from camlens.errors import CamlensError, ClassError, FlatMapWarning, MethodError, ModelError
from camlens.explanation import CallStats, ClassMap, Explanation
from camlens.images import MAX_PIXELS, load_image, preprocess, tensor_to_image
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

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
ClassSpec = int | str
Classes = ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]]
TOP_PREDICTIONS = 5


class Explainer:
    """Explains a classifier's decisions with one or more methods at one or more layers.

    >>> model = camlens.load_model()                                  # doctest: +SKIP
    >>> explainer = camlens.Explainer(model, method="gradcam")        # doctest: +SKIP
    >>> result = explainer.explain("photo.jpg", top=3)                # doctest: +SKIP
    >>> result.save("out/")                                           # doctest: +SKIP

    ``model``: a :class:`Model`, a spec for :func:`load_model` or an ``nn.Module``.
    ``method``: a name, a group (``all``, ``gradients``, ``scores``) or several (see ``camlens
    methods``); a :class:`~camlens.methods.Method` with options is taken as it is. ``layer``: a
    name or module, or several; the last spatial layer by default (see ``camlens layers``);
    ``"all"``: every spatial layer of the automatic layer's kind, in depth order.
    ``input_size`` (height, width): explain at another size than the model's own (a model whose
    head reads a fixed grid is refused). ``relu=False``: signed maps (min-max of the raw map).
    ``classes``/``top``: what :meth:`explain` explains when a call says neither (by default the
    top class). :meth:`from_config` builds one from an :class:`~camlens.config.ExplainConfig`.

    One forward pass per batch serves every class, layer and method. Gradients are taken with
    ``torch.autograd.grad`` with respect to the tapped activations only, for every requested class
    in one batched backward pass, and the autograd graph covers only the layers after them. Where
    a layer feeds a GAP -> Linear head (checked numerically), the gradient of every class is known
    from the head's weights, so CAM and the gradient methods there need no backward pass at all.

    The perturbation methods (Score-CAM, Ablation-CAM...) run further passes after that one: the
    logits of each masked input (or ablated activation) serve every requested class of every
    image, batched across images, at most ``max_batch_memory`` bytes at a time (an estimate), in
    inference mode. ``fast_channels`` and ``fast_resolution`` trade accuracy for speed there (off by
    default; see :class:`~camlens.methods.perturbation.Scorer`). ``channels_last``: the masked
    inputs go to the model in the channels-last memory format, which takes 27-42% less time on
    the CPU here (benchmarks/channels_last.py).

    ``smooth``: ``"tta"`` (test-time augmentation: the maps of flipped and rescaled inputs,
    ``augmentations``, undone and averaged) and/or ``"pca"`` (the first principal component of the
    weighted activations instead of their sum); see :mod:`camlens.smoothing`.

    Threads: several threads may call one Explainer at once, and each gets what it would get
    alone. Nothing is changed on the Explainer by a call; hooks are added per call and see only
    their own thread's passes; eval mode is held while any call runs and each module's own mode
    is restored when the last one ends. What a call cost comes back on each result
    (:attr:`Explanation.stats`). Hooks, modes and flags of the model are left as they were found.
    ``close()`` (or leaving a ``with`` block) drops what the Explainer traced of the model; it
    cannot be used after that.
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
        augmentations: Sequence[smoothing.Augmentation] = smoothing.DEFAULT_AUGMENTATIONS,
        max_batch_memory: int = 512 * 2**20,
        fast_channels: int | None = None,
        fast_resolution: float | None = None,
        channels_last: bool = True,
        input_size: tuple[int, int] | None = None,
        max_pixels: int = MAX_PIXELS,
        relu: bool = True,
        classes: Classes | None = None,
        top: int | None = None,
    ) -> None:
        given = [method] if isinstance(method, str | Method) else list(method)
        if not given:
            raise MethodError("no method given: choose one or more of " + ", ".join(METHODS))
        chosen: dict[str, Method] = {}
        for m in given:
            for one in [m] if isinstance(m, Method) else map(get_method, resolve_methods(m)):
                chosen.setdefault(one.name, one)
        self.methods = list(chosen.values())
        options = ExplainConfig(  # checks every option before any model is touched
            device=str(device) if device is not None else "cpu",
            methods=tuple(chosen),
            smooth=(smooth,) if isinstance(smooth, str) else tuple(smooth or ()),
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
        self.max_pixels = options.max_pixels
        self.relu = options.relu
        self.model = model if isinstance(model, Model) else load_model(model)
        if device is not None:
            self.model.to(check_device(device))
        if options.input_size is not None:
            self.model = at_input_size(self.model, options.input_size)
        self.smooth = set(options.smooth)
        self.augmentations = (
            smoothing.Augmentation(),
            *[a for a in augmentations if a != smoothing.Augmentation()],
        )
        if "tta" in self.smooth:
            self._check_augmented_sizes()
        self.batch_size = options.batch_size
        self.classes, self.top = classes, top
        self.resolve_classes(classes, top, 1)  # checks the default classes against the model
        if layer is None:
            layers: list[LayerSpec] = [auto_layer(self.model)]
        elif layer == "all" or (isinstance(layer, Sequence) and list(layer) == ["all"]):
            layers = list(layers_like_auto(self.model))
        elif isinstance(layer, str | nn.Module):
            layers = [layer]
        else:
            layers = list(layer)
        targets = find_targets(self.model, layers)
        head_methods = [m for m in self.methods if m.needs == "head"]
        headless = [t for t in targets if t.head is None]
        self.skipped: tuple[tuple[str, str, str], ...] = ()
        """(method, layer, reason) of each pair left out: CAM at a layer no GAP -> Linear head
        reads (it still runs at the layers where it applies)."""
        if head_methods and headless:
            if len(head_methods) == len(self.methods) and len(headless) == len(targets):
                headless[0].require_head(self.model)  # raises: says why CAM does not apply
            self.skipped = tuple(
                (m.name, t.name, describe_head(self.model, t.name, t.channels))
                for t in headless
                for m in head_methods
            )
            if len(headless) == len(targets):
                self.methods = [m for m in self.methods if m.needs != "head"]
            warnings.warn(
                "; ".join(f"{method} left out: {why}" for method, _, why in self.skipped),
                stacklevel=2,
            )
        scores = any(m.needs == "scores" for m in self.methods)
        if scores:
            targets = [
                replace(t, replay=plan_replay(self.model.net, t.name, t.module, t.adapter, t.head))
                for t in targets
            ]
        self._targets: tuple[Target, ...] = tuple(targets)
        self._settings = Settings(
            head_gradients=options.use_head_gradients,
            max_batch_memory=options.max_batch_memory,
            fast_channels=options.fast_channels,
            fast_resolution=options.fast_resolution,
            channels_last=options.channels_last,
            row_bytes=forward_bytes(self.model.net, probe_input(self.model)) if scores else None,
        )
        self.config = options.replace(
            methods=tuple(m.name for m in self.methods),
            device=str(self.model.device),
            model=getattr(self.model, "spec", None),
            weights=_optional_str(getattr(self.model, "weights", None)),
            layers=tuple(t.name for t in targets),
            classes=(),
            top=None,
        )
        self._closed = False

    def _check_augmented_sizes(self) -> None:
        """Test-time augmentation rescales the input: a model with a fixed input size (a timm ViT
        without ``dynamic_img_size``, a Keras model with a ``Flatten`` head) is said to refuse it
        here, with what to do, rather than failing in the middle of a call."""
        height, width = self.model.preprocess.input_size
        for scale in sorted({a.scale for a in self.augmentations if a.scale != 1}):
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            try:
                check_input_size(self.model, size, head=False)
            except ModelError as exc:
                raise ModelError(
                    f"test-time augmentation rescales the input by {scale:g}, and {exc}; "
                    "use the flips alone (tta_scales=(1.0,), or "
                    "augmentations=camlens.smoothing.augmentations(scales=(1.0,)))"
                ) from None

    @classmethod
    def from_config(cls, config: ExplainConfig, model: Model | None = None) -> Explainer:
        """The Explainer ``config`` describes; ``model`` (already loaded from ``config.model``,
        say, to share it between Explainers) instead of loading it again."""
        if model is None:
            model = load_model(config.model, weights=config.weights, device=config.device)
        return cls(
            model,
            method=list(config.methods),
            layer=list(config.layers) or None,
            device=config.device,
            batch_size=config.batch_size,
            use_head_gradients=config.use_head_gradients,
            smooth=list(config.smooth),
            augmentations=smoothing.augmentations(config.tta_flips, config.tta_scales),
            max_batch_memory=config.max_batch_memory,
            fast_channels=config.fast_channels,
            fast_resolution=config.fast_resolution,
            channels_last=config.channels_last,
            input_size=config.input_size,
            max_pixels=config.max_pixels,
            relu=config.relu,
            classes=list(config.classes) or None,
            top=config.top,
        )

    # --- what it was built with ------------------------------------------------------------------

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
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- explaining ------------------------------------------------------------------------------

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
        inputs: Sequence[ImageInput],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Explanation]: ...

    @overload
    def explain(
        self,
        inputs: torch.Tensor,
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Explanation | list[Explanation]: ...

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
        (-> a list).

        ``classes``: class indices or names for every image (``[285, "espresso"]``), or one list per
        image (a list of lists, as long as the inputs); otherwise the ``top`` (default 1) predicted
        classes of each image (when a call gives neither, the Explainer's own ``classes``/``top``).
        ``names``: how reports name the inputs (default: their paths, or ``<image N>``).
        ``progress`` gets the perturbation methods' :class:`~camlens.progress.Event` s.

        Tensor inputs must hold finite floats: a float64 or float16 batch is converted to
        float32, an integer one (pixels) is refused, as are ``None``, an empty list and an empty
        batch (a :class:`~camlens.errors.CamlensError` saying which).

        All or nothing: a path that cannot be read, an input with NaN or infinite values, a model
        that gives NaN scores... raises a :class:`~camlens.errors.CamlensError` (an
        :class:`~camlens.errors.ImageError` naming the file) and no image of the call is
        explained. :meth:`explain_each` takes the same inputs the other way: every good one
        explained, each bad one's error in its place, as the batch runner
        (:func:`camlens.batch.explain_files`) does with files.

        A map that comes out constant (all zero after the ReLU, or an image of a single pixel) is
        zeros with ``flat=True``, and a :class:`~camlens.errors.FlatMapWarning` names the image.
        """
        single = isinstance(inputs, str | Path | Image.Image | np.ndarray) or (
            isinstance(inputs, torch.Tensor) and inputs.ndim == 3
        )
        batches = self.iter_explain(
            inputs, classes=classes, top=top, names=names, progress=progress
        )
        results = [result for batch in batches for result in batch]
        return results[0] if single else results

    def explain_each(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Explanation | CamlensError]:
        """Like :meth:`explain`, but one bad input does not lose the others: a list with one
        entry per input, in order, each the input's :class:`Explanation` or the
        :class:`~camlens.errors.CamlensError` that stopped it (an
        :class:`~camlens.errors.ImageError` naming a file that cannot be read, an input with NaN
        or infinite values...). Always a list, also for one input.

        >>> for result in explainer.explain_each(["cat.jpg", "broken.jpg"]):  # doctest: +SKIP
        ...     print(result if isinstance(result, camlens.CamlensError) else result.predictions[0])

        What is wrong with the call itself, not with one input, still raises: ``None``, an empty
        list or batch, a tensor that is not [N, 3, H, W] floats, unknown classes, ``classes``
        and ``top`` both given, too few ``names``. Each good input gets what :meth:`explain`
        would give it in the same batch; a batch that fails is explained again one image at a
        time, so that the error is given to the input it belongs to."""
        if self._closed:
            raise CamlensError("this Explainer is closed")
        entries = _each_item(inputs, names, self.max_pixels)
        if classes is None and top is None:
            classes, top = self.classes, self.top
        per_image = self.resolve_classes(classes, top, len(entries))
        return self._each(entries, per_image, top, progress)

    def _each(
        self,
        entries: Sequence[_Item | CamlensError],
        per_image: list[list[int]] | None,
        top: int | None,
        progress: Progress | None,
    ) -> list[Explanation | CamlensError]:
        """:meth:`explain_each` of inputs already read: a batch that fails is explained again
        one image at a time, so that the error is given to the input it belongs to."""
        out: list[Explanation | CamlensError | None] = [
            e if isinstance(e, CamlensError) else None for e in entries
        ]
        good = [i for i, e in enumerate(entries) if isinstance(e, _Item)]

        def run(chunk: list[int]) -> list[Explanation]:
            items = [cast(_Item, entries[i]) for i in chunk]
            wanted = [per_image[i] for i in chunk] if per_image is not None else None
            return self._explain_batch(items, wanted, top or 1, 0, progress)

        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            try:
                for i, result in zip(chunk, run(chunk), strict=True):
                    out[i] = result
            except CamlensError as exc:
                if len(chunk) == 1:
                    out[chunk[0]] = _naming(exc, entries[chunk[0]])
                    continue
                for i in chunk:  # find the input at fault: each alone
                    try:
                        out[i] = run([i])[0]
                    except CamlensError as alone:
                        out[i] = _naming(alone, entries[i])
        return [cast(Explanation | CamlensError, r) for r in out]

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
        if self._closed:
            raise CamlensError("this Explainer is closed")
        items = _as_items(inputs, names, self.max_pixels)
        if classes is None and top is None:
            classes, top = self.classes, self.top
        per_image = self.resolve_classes(classes, top, len(items))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            wanted = per_image[start : start + self.batch_size] if per_image else None
            yield self._explain_batch(chunk, wanted, top or 1, start, progress)

    def explain_prepared(
        self,
        inputs: torch.Tensor,
        photos: Sequence[Image.Image],
        *,
        classes: Classes | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Explanation | CamlensError]:
        """:meth:`explain_each` of photos that were already preprocessed elsewhere (by the
        reading threads of a run, say): ``inputs`` is the [N, 3, H, W] batch
        :func:`camlens.images.preprocess` makes of ``photos``, and the explanations show
        ``photos`` at their own size, as :meth:`explain` of the photos would. Up to
        ``batch_size`` images go through the model together; one that makes its batch fail gets
        the error, the others their explanations. ``classes``, ``top`` and ``names`` as in
        :meth:`explain`."""
        if self._closed:
            raise CamlensError("this Explainer is closed")
        tensors = _tensor_batch(inputs)
        if len(photos) != len(tensors):
            raise CamlensError(f"{len(photos)} photos given for {len(tensors)} inputs")
        items = [_Item(photo, None, t) for photo, t in zip(photos, tensors, strict=True)]
        if names is not None:
            if len(names) != len(items):
                raise CamlensError(f"{len(names)} names given for {len(items)} images")
            for item, name in zip(items, names, strict=True):
                item.source = name
        if classes is None and top is None:
            classes, top = self.classes, self.top
        per_image = self.resolve_classes(classes, top, len(items))
        return self._each(items, per_image, top, None)

    def resolve_classes(
        self, classes: Classes | None, top: int | None, count: int
    ) -> list[list[int]] | None:
        """The class indices to explain for each of ``count`` images, or None for the top classes;
        raises ClassError for unknown classes, a list of lists of the wrong length, or both
        ``classes`` and ``top``."""
        if classes is None:
            if top is not None and (
                isinstance(top, bool)
                or not isinstance(top, int)
                or not 1 <= top <= self.model.num_classes
            ):
                raise ClassError(f"top must be between 1 and {self.model.num_classes}, not {top}")
            return None
        if top is not None:
            raise ClassError("give classes or top, not both")
        given = [classes] if isinstance(classes, int | str) else list(classes)
        if not given:
            raise ClassError("an empty list of classes")
        if all(isinstance(c, Sequence) and not isinstance(c, str) for c in given):
            if len(given) != count:
                raise ClassError(
                    f"{len(given)} class lists given for {count} images: give one list per image, "
                    "or one flat list for all"
                )
            lists = [[self.model.class_index(c) for c in cs] for cs in given]  # type: ignore[union-attr]
            if any(not cs for cs in lists):
                raise ClassError("an image was given an empty list of classes")
            return lists
        flat = [self.model.class_index(c) for c in given]  # type: ignore[arg-type]
        return [flat] * count

    def _explain_batch(
        self,
        items: list[_Item],
        wanted: list[list[int]] | None,
        top: int,
        offset: int,
        progress: Progress | None,
    ) -> list[Explanation]:
        started = time.perf_counter()
        model = self.model
        if all(item.tensor is None for item in items):
            x = preprocess(
                [item.image for item in items if item.image is not None], model.preprocess
            )
        else:
            x = torch.stack([item.tensor_or(model) for item in items])
        x = x.to(model.device)
        with eval_mode(model.net), RUNS.shared():
            capture = self._capture(x, progress)
            chosen = capture.probs.topk(top, dim=1).indices.tolist() if wanted is None else wanted
            per_image = self._class_maps(capture, chosen)
            captures = [capture]
            if "tta" in self.smooth:  # the same classes, explained on each augmented input
                runs = [per_image]
                for aug in self.augmentations[1:]:
                    captures.append(self._capture(aug.apply(x), progress))
                    runs.append(self._class_maps(captures[-1], chosen))
                per_image = smoothing.merge_augmented(runs, self.augmentations)
        stats = CallStats(
            images=len(items),
            forward_passes=len(captures),
            backward_passes=sum(c.backward_passes for c in captures),
            perturbation_passes=sum(c.perturbation_passes for c in captures),
            seconds=time.perf_counter() - started,
            replays=tuple(sorted(capture.replay_kinds.items())),
        )
        for b, item in enumerate(items):
            if _pixels(item, x[b]) == 1:  # a single pixel: no map can show where
                for m in per_image[b]:
                    m.map, m.flat = torch.zeros_like(m.map), True
        probs = capture.probs
        top_p, top_i = probs.topk(min(TOP_PREDICTIONS, model.num_classes), dim=1)
        results = []
        for b, item in enumerate(items):
            predictions = [
                Prediction(int(i), model.labels[int(i)], float(p))
                for p, i in zip(top_p[b], top_i[b], strict=True)
            ]
            # a tensor input's picture is made on first use, from its own CPU copy (a view would
            # keep the whole batch, or device memory, alive as long as any explanation)
            photo = (
                item.image
                if item.image is not None
                else partial(tensor_to_image, x[b].to("cpu", copy=True), model.preprocess)
            )
            results.append(
                Explanation(
                    source=item.source or f"<image {offset + b}>",
                    image=photo,
                    input_size=model.preprocess.input_size,
                    model=model.name,
                    predictions=predictions,
                    maps=per_image[b],
                    stats=stats,
                    skipped=self.skipped,
                )
            )
        for b, result in enumerate(results):
            _warn_flat(result, single=_pixels(items[b], x[b]) == 1)
        return results

    def _capture(self, x: torch.Tensor, progress: Progress | None) -> Capture:
        autograd = [
            t.name
            for t in self._targets
            if not (t.head is not None and self._settings.head_gradients)
            and any(m.needs == "gradients" for m in self.methods)
        ]
        return Capture(
            self.model,
            self._targets,
            x,
            gradients=autograd,
            settings=self._settings,
            progress=progress,
        )

    def _class_maps(self, capture: Capture, chosen: list[list[int]]) -> list[list[ClassMap]]:
        """The maps of the classes ``chosen`` for each image, per layer, rank and method, from
        one capture."""
        model = self.model
        depth = max(len(cs) for cs in chosen)
        # each image's class list padded with its last class, so that ranks form a tensor
        index = torch.tensor(
            [cs + [cs[-1]] * (depth - len(cs)) for cs in chosen], device=capture.x.device
        )
        reduce = smoothing.pca_map if "pca" in self.smooth else None
        per_image: list[list[ClassMap]] = [[] for _ in chosen]
        for target in self._targets:
            methods = [m for m in self.methods if m.needs != "head" or target.head is not None]
            raws = [m.maps(capture, target.name, index, reduce) for m in methods]
            for j in range(depth):
                for method, raw in zip(methods, raws, strict=True):
                    maps, flat = normalize(raw[:, j].detach(), relu=self.relu)
                    for b, cs in enumerate(chosen):
                        if j < len(cs):
                            c = cs[j]
                            per_image[b].append(
                                ClassMap(
                                    c,
                                    model.labels[c],
                                    float(capture.probs[b, c]),
                                    method.name,
                                    target.name,
                                    maps[b],
                                    bool(flat[b]),
                                )
                            )
        return per_image


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _naming(exc: CamlensError, entry: _Item | CamlensError) -> CamlensError:
    """``exc`` with the input it is about named first, as every per-input error is."""
    source = entry.source if isinstance(entry, _Item) else None
    if source is None or str(exc).startswith(f"{source}: "):
        return exc
    try:
        named = type(exc)(f"{source}: {exc}")
    except TypeError:  # an error type made otherwise (ImageError names its path already)
        named = CamlensError(f"{source}: {exc}")
    return named


def _pixels(item: _Item, x: torch.Tensor) -> int:
    """How many pixels the input's own picture has (a tensor input's: its height x width)."""
    if item.image is not None:
        width, height = item.image.size
        return width * height
    return int(x.shape[-1] * x.shape[-2])


#: Flat maps listed by name in a :class:`~camlens.errors.FlatMapWarning`; more are counted.
FLAT_LISTED = 3


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
    warnings.warn(FlatMapWarning(text), stacklevel=5)


class _Item:
    """One input: a photo (with its source) or an already normalized tensor."""

    def __init__(
        self, image: Image.Image | None, source: str | None, tensor: torch.Tensor | None = None
    ) -> None:
        self.image = image
        self.source = source
        self.tensor = tensor

    def tensor_or(self, model: Model) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.image is not None
        x: torch.Tensor = preprocess([self.image], model.preprocess)[0]
        return x


def _each_item(
    inputs: Any, names: Sequence[str] | None, max_pixels: int
) -> list[_Item | CamlensError]:
    """:func:`_as_items` with each input's own problem (a file that cannot be read, NaN values)
    in its place instead of raised; what is wrong with ``inputs`` as a whole still raises. Every
    input is named (its path, or ``<image N>`` by its place in ``inputs``)."""
    entries: list[_Item | CamlensError] = []
    if isinstance(inputs, str | Path | Image.Image | np.ndarray):
        pieces: list[Any] = [inputs]
    elif isinstance(inputs, Sequence):
        pieces = list(inputs)
    else:  # None, a tensor batch, something else: as a whole (the tensor's rows split below)
        pieces = []
        entries.extend(_items(inputs, max_pixels))
    for piece in pieces:
        if isinstance(piece, torch.Tensor):
            entries.extend(_items(piece, max_pixels))  # a malformed tensor: a malformed call
            continue
        try:
            entries.extend(_items(piece, max_pixels))
        except CamlensError as exc:
            entries.append(exc)
    if not entries:
        raise CamlensError("no images given")
    if names is not None and len(names) != len(entries):
        raise CamlensError(f"{len(names)} names given for {len(entries)} images")
    for i, entry in enumerate(entries):
        if isinstance(entry, _Item):
            if names is not None:
                entry.source = names[i]
            entry.source = entry.source or f"<image {i}>"
            if entry.tensor is not None and not bool(torch.isfinite(entry.tensor).all()):
                entries[i] = CamlensError(f"{entry.source}: the input has NaN or infinite values")
    return entries


def _as_items(inputs: Any, names: Sequence[str] | None, max_pixels: int) -> list[_Item]:
    items = _items(inputs, max_pixels)
    if not items:
        raise CamlensError("no images given")
    if names is not None:
        if len(names) != len(items):
            raise CamlensError(f"{len(names)} names given for {len(items)} images")
        for item, name in zip(items, names, strict=True):
            item.source = name
    return items


def _items(inputs: Any, max_pixels: int) -> list[_Item]:
    if inputs is None:
        raise CamlensError(
            "no image given (None): pass a path, a PIL image, an RGB array or a tensor"
        )
    if isinstance(inputs, torch.Tensor):
        return [_Item(None, None, t) for t in _tensor_batch(inputs)]
    if isinstance(inputs, str | Path | Image.Image | np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, Sequence):
        raise CamlensError(
            f"cannot explain a {type(inputs).__name__}: pass a path, a PIL image, an RGB array, "
            "a tensor, or a list of those"
        )
    items = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            items.extend(_items(x, max_pixels))
        else:
            source = str(x) if isinstance(x, str | Path) else None
            items.append(_Item(load_image(x, max_pixels=max_pixels), source))
    return items


def _tensor_batch(x: torch.Tensor) -> torch.Tensor:
    """A tensor input as a float32 [N, 3, H, W] batch of normalized images."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise CamlensError(f"a tensor input must be [3, H, W] or [N, 3, H, W], not {list(x.shape)}")
    if not x.is_floating_point():
        raise CamlensError(
            f"a tensor input must hold normalized floats, not {x.dtype}: pass pixels as a PIL "
            "image or a numpy array, or normalize them (camlens.images.preprocess)"
        )
    if x.shape[0] == 0:
        raise CamlensError("no images given (an empty batch)")
    return x.detach().to(torch.float32)
