"""What an :class:`~camlens.explain.Explainer` runs, built once from its config: the model (at the
config's input size), the target layers as found on a probe input, the methods that apply there
and the capture settings; and the run of one batch of inputs through it: capture (once per
test-time augmentation), the methods' maps for the chosen classes, normalized and merged, as one
:class:`~camlens.explanation.Explanation` per image."""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from types import FrameType
from typing import Any, cast

import torch
from torch import nn

from camlens import inputs as coerce
from camlens import smoothing
from camlens.capture import Capture, Settings, Target, find_targets
from camlens.config import ExplainConfig
from camlens.devices import check_device
from camlens.errors import CamlensError, FlatMapWarning, MethodError, ModelError
from camlens.explanation import CallStats, ClassMap, Detected, Explanation, Segmentation
from camlens.inputs import Classes, Item
from camlens.layers import (
    at_input_size,
    auto_layer,
    check_input_size,
    describe_head,
    layers_like_auto,
    probe_input,
)
from camlens.maps import Normalization, normalize
from camlens.methods import Method, get_method
from camlens.models import Model, load_model
from camlens.models.scores import set_scores
from camlens.modes import eval_mode
from camlens.progress import Progress
from camlens.replay import forward_bytes, plan_replay
from camlens.scoring import TargetPlan
from camlens.taps import RUNS, LayerSpec
from camlens.targets import TargetError
from camlens.types import Prediction

TOP_PREDICTIONS = 5
INSIDE = ("camlens.explain", "camlens.pipeline")  # warnings name the line that called them
#: Flat maps listed by name in a :class:`~camlens.errors.FlatMapWarning`; more are counted.
FLAT_LISTED = 3


class Pipeline:
    """Built from ``config`` (checked), ``model`` (a :class:`Model`, or what to load: the config's
    model when None) and ``layers`` (names or modules; empty: the automatic layer;
    ``["all"]``: every layer of its kind). ``move``: put the given model on the config's device.
    :attr:`config` is ``config`` with the model, device, layers and the methods that apply
    resolved; ``classes``: the config's classes as indices (None: the top classes)."""

    def __init__(
        self,
        config: ExplainConfig,
        model: Model | nn.Module | str | None,
        layers: list[LayerSpec],
        *,
        move: bool,
    ) -> None:
        if not isinstance(model, Model):
            spec = config.model if model is None else model
            model = load_model(
                spec, weights=config.weights, device=config.device, scores=config.scores
            )
        else:
            if move:
                model.to(check_device(config.device))
            if config.scores is not None and config.scores != model.scores:
                model = set_scores(replace(model), config.scores)  # a copy: the caller's stays
        self.model = model if config.input_size is None else at_input_size(model, config.input_size)
        if "tta" in config.smooth:
            _check_scales(self.model, config.tta_scales)
        self.classes = coerce.class_lists(self.model, config.classes or None, config.top, 1)
        _check_kind_options(self.model, config)
        self.plan = TargetPlan(self.model, config.targets, max_pixels=config.max_pixels)
        if layers == ["all"]:
            layers = list(layers_like_auto(self.model))
        targets = find_targets(self.model, layers or [auto_layer(self.model)])
        self.methods, self.skipped = _applicable(
            self.model, _configured(config), targets, self.plan
        )
        scores = any(m.needs == "scores" for m in self.methods)
        if scores:
            net = self.model.net
            targets = [
                replace(t, replay=plan_replay(net, t.name, t.module, t.adapter, t.head))
                for t in targets
            ]
        self.targets: tuple[Target, ...] = tuple(targets)
        self.settings = Settings(
            head_gradients=config.use_head_gradients,
            max_batch_memory=config.max_batch_memory,
            fast_channels=config.fast_channels,
            fast_resolution=config.fast_resolution,
            channels_last=config.channels_last,
            row_bytes=forward_bytes(self.model.net, probe_input(self.model)) if scores else None,
        )
        weights = getattr(self.model, "weights", None)
        names = tuple(m.name for m in self.methods)
        self.config = config.replace(
            methods=names,
            method_options={k: v for k, v in config.method_options.items() if k in names},
            device=str(self.model.device),
            model=getattr(self.model, "spec", None),
            weights=None if weights is None else str(weights),
            layers=tuple(t.name for t in targets),
        )

    @property
    def augmentations(self) -> tuple[smoothing.Augmentation, ...]:
        """The test-time augmentations each batch runs (the identity alone without ``tta``)."""
        if "tta" not in self.config.smooth:
            return (smoothing.Augmentation(),)
        return smoothing.augmentations(self.config.tta_flips, self.config.tta_scales)

    @property
    def head_gradients(self) -> set[str]:
        """Layers whose class-score gradients come from the head's weights, with no backward pass."""
        if not self.settings.head_gradients:
            return set()
        return {t.name for t in self.targets if t.head is not None}

    def close(self) -> None:
        """Drops the replays traced from the model."""
        self.targets = tuple(replace(t, replay=None) for t in self.targets)

    def batches(
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
        wanted: list[list[int]] | list[list[Any]] | None
        if classes is None and top is None:
            wanted = None if self.classes is None else self.classes * len(entries)
            if self.config.targets:
                wanted = [list(self.config.targets)] * len(entries)
            depth = self.config.top
        else:
            wanted, depth = coerce.class_lists(self.model, classes, top, len(entries)), top
        good = [i for i, e in enumerate(entries) if isinstance(e, Item)]

        def run(chunk: list[int]) -> list[Explanation]:
            items = [cast(Item, entries[i]) for i in chunk]
            chosen = None if wanted is None else [wanted[i] for i in chunk]
            return self.batch(items, chosen, depth, progress)

        def run_alone(i: int) -> Explanation | CamlensError:
            try:
                return run([i])[0]
            except CamlensError as exc:
                return _naming(exc, cast(Item, entries[i]).source)

        for start in range(0, len(good), self.config.batch_size):
            chunk = good[start : start + self.config.batch_size]
            try:
                results: list[Explanation | CamlensError] = list(run(chunk))
            except CamlensError:
                if not alone:
                    raise
                results = [run_alone(i) for i in chunk]
            yield chunk, results

    def batch(
        self,
        items: list[Item],
        chosen: Sequence[Sequence[Any]] | None,
        depth: int | None,
        progress: Progress | None,
    ) -> list[Explanation]:
        """One batch through the pipeline: capture (per augmentation), methods, normalize.
        ``chosen``: per image, class indices or targets (None: the top ``depth`` classes, 1 when
        None, or with ``above`` every class scored at least that, at most ``depth`` of them)."""
        started, model = time.perf_counter(), self.model
        x = coerce.model_input(items, model.preprocess).to(model.device)
        sizes = [_size(item) for item in items]
        found: list[list[Detected]] | None = None
        with eval_mode(model.net), RUNS.shared():
            captures = [self._capture(x, progress, first=True)]
            probs = captures[0].probs
            if chosen is None and self.config.above is not None:
                sources = [item.source for item in items]
                chosen = _above(probs, self.config.above, sources, depth)
            elif chosen is None and model.kind == "detection":
                found = _detected(model, captures[0].logits, x, sizes, self.config)
                chosen = [[d.target() for d in ds[: self.config.detections]] for ds in found]
                _warn_undetected(found, captures[0].logits, items, self.config.min_score)
            elif chosen is None and model.kind == "segmentation":
                chosen = _top_segments(model, probs, depth or 1)
            elif chosen is None:
                chosen = probs.topk(depth or 1, dim=1).indices.tolist()
            else:  # versus true: the top-1, and the top-1 versus the true class when they differ
                chosen = self.plan.with_top1(chosen, probs.topk(1, dim=1).indices[:, 0].tolist())
            if found is None and model.kind == "detection":
                found = _detected(model, captures[0].logits, x, sizes, self.config)
            runs = [self._class_maps(captures[0], chosen, sizes)]
            augmentations = self.augmentations
            for aug in augmentations[1:]:  # the same classes, explained on each augmented input
                captures.append(self._capture(aug.apply(x), progress))
                # a segment's box or mask is mirrored with the photo
                these = self.plan.mirrored(chosen, sizes) if aug.flip else chosen
                runs.append(self._class_maps(captures[-1], these, sizes))
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
        segments = _segmentations(model, captures[0].logits)
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
            if segments or found is not None:  # the classes present (segmented or detected)
                predictions = [p for p in predictions if p.score > 0]
            result = Explanation(
                source=item.source,
                image=coerce.picture(item, x[b], model.preprocess),
                input_size=model.preprocess.input_size,
                model=model.name,
                predictions=predictions,
                maps=per_image[b],
                stats=stats,
                scores=model.scores,
                skipped=self.skipped,
                segments=segments[b] if segments else None,
                detections=None if found is None else found[b],
            )
            _warn_flat(result, single=single)
            results.append(result)
        return results

    def _capture(
        self, x: torch.Tensor, progress: Progress | None, *, first: bool = False
    ) -> Capture:
        """A capture of ``x`` (``first``: the unperturbed input, whose detections a detector's
        explanation differentiates: only theirs keep a graph, see
        :func:`camlens.models.detection.graded`)."""
        gradients = any(m.needs == "gradients" for m in self.methods)
        # a similarity or a callable is not linear in the head's outputs: real gradients
        heads = self.head_gradients if self.plan.linear else set()
        autograd = [t.name for t in self.targets if gradients and t.name not in heads]
        config = self.config
        if first and autograd and self.model.kind == "detection" and not config.targets:
            from camlens.models.detection import graded

            with graded(config.min_score, config.detections, autograd):
                return self._run_capture(x, progress, autograd)
        return self._run_capture(x, progress, autograd)

    def _run_capture(
        self, x: torch.Tensor, progress: Progress | None, autograd: list[str]
    ) -> Capture:
        return Capture(
            self.model,
            self.targets,
            x,
            gradients=autograd,
            settings=self.settings,
            progress=progress,
            plan=self.plan,
        )

    def _class_maps(
        self,
        capture: Capture,
        chosen: Sequence[Sequence[Any]],
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[list[ClassMap]]:
        """The maps of the classes or targets ``chosen`` for each image, per layer, rank and
        method; all the targets of the batch go through the methods together."""
        counts = [len(cs) for cs in chosen]
        if not any(counts):  # nothing to explain (no detection, no class above the threshold)
            return [[] for _ in chosen]
        top1 = capture.probs.argmax(dim=1).tolist()
        # an image with nothing to explain (no class above the threshold) rides along on the
        # first target of another (its maps are dropped)
        filler = next(cs[0] for cs in chosen if cs)
        goals = capture.goals(
            [
                cs if cs else [filler if self.model.kind == "detection" else top1[b]]
                for b, cs in enumerate(chosen)
            ],
            sizes,
        )
        values = goals.values
        depth = goals.shape[1]
        reduce = smoothing.pca_map if "pca" in self.config.smooth else None
        per_image: list[list[ClassMap]] = [[] for _ in chosen]
        for target in self.targets:
            methods = [m for m in self.methods if m.needs != "head" or target.head is not None]
            raws = [m.maps(capture, target.name, goals, reduce) for m in methods]
            mode: Normalization = "max" if self.config.normalize == "max" else "minmax"
            for j in range(depth):
                for method, raw in zip(methods, raws, strict=True):
                    maps, flat = normalize(raw[:, j].detach(), relu=self.config.relu, mode=mode)
                    for b, count in enumerate(counts):
                        if j >= count:
                            continue
                        what = goals.explained[b][j]
                        c = -1 if what.class_index is None else what.class_index
                        plain = what.data.get("kind") == "class"
                        value = None if values is None else float(values[b, j])
                        own = c < 0 or what.data.get("kind") == "detection"  # its own score
                        per_image[b].append(
                            ClassMap(
                                c,
                                self.model.labels[c] if plain else what.words,
                                (value or 0.0) if own else float(capture.probs[b, c]),
                                method.name,
                                target.name,
                                maps[b],
                                bool(flat[b]),
                                target=None if plain else what.data,
                                explained=None if plain else what.words,
                                value=None if plain else value,
                                normalize=mode,
                            )
                        )
        return per_image


def _configured(config: ExplainConfig) -> list[Method]:
    """The config's methods with their options, each option checked against the function."""
    methods = []
    for name in config.methods:
        method = get_method(name)
        options = config.method_options.get(name, {})
        known = [
            p.name
            for p in inspect.signature(method.fn).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY
        ]
        unknown = [key for key in options if key not in known]
        if unknown:
            has = f"its options are {', '.join(known)}" if known else "it has none"
            raise MethodError(f"{name} has no option {', '.join(map(repr, unknown))}: {has}")
        methods.append(method.with_options(**options) if options else method)
    return methods


def _applicable(
    model: Model, methods: list[Method], targets: list[Target], plan: TargetPlan
) -> tuple[list[Method], tuple[tuple[str, str, str], ...]]:
    """``methods`` less those that need a GAP -> Linear head where a target is not linear in the
    head's outputs (a similarity, a callable), or where no layer feeds one, with a warning; or an
    error saying why when nothing would be left. Also (method, layer, reason) of each pair left
    out: CAM still runs at the layers a head reads, and is skipped at the others."""
    head_methods = [m for m in methods if m.needs == "head"]
    if head_methods and not plan.linear:
        why = (
            "CAM applies where the target is linear in a GAP -> Linear head's outputs (a class, "
            f"a contrast, an output), not to {plan.nonlinear_words}"
        )
        if len(head_methods) == len(methods):
            raise MethodError(f"{why}: use a gradient method such as gradcam")
        warnings.warn(
            f"{', '.join(m.name for m in head_methods)} left out: {why}", stacklevel=_outside()
        )
        return [m for m in methods if m.needs != "head"], ()
    headless = [t for t in targets if t.head is None]
    if not head_methods or not headless:
        return methods, ()
    if len(head_methods) == len(methods) and len(headless) == len(targets):
        headless[0].require_head(model)  # raises: says why CAM does not apply
    skipped = tuple(
        (m.name, t.name, describe_head(model, t.name, t.channels))
        for t in headless
        for m in head_methods
    )
    warnings.warn(
        "; ".join(f"{method} left out: {why}" for method, _, why in skipped),
        stacklevel=_outside(),
    )
    if len(headless) < len(targets):
        return methods, skipped  # CAM runs at the layers a head reads
    return [m for m in methods if m.needs != "head"], skipped


def _size(item: Item) -> tuple[int, int]:
    """The (width, height) of an input's own picture."""
    if item.photo is not None:
        return item.photo.size
    assert item.batch is not None
    return int(item.batch.shape[-1]), int(item.batch.shape[-2])


def _segmentations(model: Model, logits: torch.Tensor) -> list[Segmentation]:
    """A segmentation model's predicted segmentation of each image (none for a classifier)."""
    if logits.ndim != 4:
        return []
    from camlens.models.segmentation import background_classes

    background = tuple(sorted(background_classes(model)))
    return [
        Segmentation(classes.cpu(), model.labels, background) for classes in logits.argmax(dim=1)
    ]


def _check_kind_options(model: Model, config: ExplainConfig) -> None:
    """A :class:`~camlens.targets.TargetError` naming an option that does not apply to the
    model's kind: classes, top or above for a detector (it explains its detections), detections
    for another model."""
    if model.kind == "detection":
        given = [
            name
            for name, value in (
                ("classes", config.classes),
                ("top", config.top),
                ("above", config.above),
            )
            if value not in (None, ())
        ]
        if given:
            raise TargetError(
                f"{model.name} is a detector: it explains its detections (min_score, detections "
                f"N), not {given[0]}",
                option=given[0],
            )
    elif config.detections is not None:
        raise TargetError(
            f"detections chooses a detector's detections; {model.name} is a {model.kind}",
            option="detections",
        )


def _detected(
    model: Model,
    rows: torch.Tensor,
    x: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    config: ExplainConfig,
) -> list[list[Detected]]:
    """Each image's detections (``rows`` [N, K, 6] of a detector's pass on ``x``) scored at least
    ``config.min_score``, best first, boxes scaled from the input's pixels to the photo's
    (``sizes``: width, height), rounded to 0.01 pixel."""
    height, width = x.shape[-2:]
    out = []
    for b, (w, h) in enumerate(sizes):
        scale = [w / width, h / height] * 2
        kept = []
        for row in rows[b].detach().cpu().tolist():
            score, label = row[4], int(row[5])
            if label < 0 or score < config.min_score or score <= 0:
                continue
            box = [
                min(max(v * f, 0.0), lim)
                for v, f, lim in zip(row[:4], scale, (w, h) * 2, strict=True)
            ]
            if box[0] >= box[2] or box[1] >= box[3]:
                continue  # a box with no area left in the photo
            kept.append(
                Detected(
                    (round(box[0], 2), round(box[1], 2), round(box[2], 2), round(box[3], 2)),
                    label,
                    model.labels[label] if label < model.num_classes else f"class {label}",
                    round(float(score), 6),
                )
            )
        out.append(kept)
    return out


def _warn_undetected(
    found: Sequence[Sequence[Detected]], rows: torch.Tensor, items: Sequence[Item], least: float
) -> None:
    """A warning naming each image with no detection scored at least ``least`` (no map)."""
    for b, ds in enumerate(found):
        if not ds:
            scores = rows[b, :, 4]
            best = f" (the best: {float(scores.max()):.3g})" if len(scores) else ""
            warnings.warn(
                FlatMapWarning(
                    f"{items[b].source}: no detection scored at least {least:g}{best}: no map"
                ),
                stacklevel=_outside(),
            )


def _top_segments(model: Model, shares: torch.Tensor, top: int) -> list[list[int]]:
    """Per image, the ``top`` classes with the most pixels (``shares`` [N, C], the predicted
    segmentation), the background left out (it is explained when asked for by name) and the
    classes with no pixel too."""
    from camlens.models.segmentation import background_classes

    background = background_classes(model)
    out = []
    for row in shares:
        order = row.argsort(descending=True, stable=True).tolist()
        out.append([c for c in order if c not in background and float(row[c]) > 0][:top])
    return out


def _above(
    probs: torch.Tensor, least: float, sources: Sequence[str], most: int | None = None
) -> list[list[int]]:
    """Per image, the classes whose score is at least ``least``, best first, the first ``most``
    of them (None: all); an image with none gets no map, and a warning says so."""
    out = []
    for b, row in enumerate(probs):
        order = row.argsort(descending=True, stable=True)
        chosen = order[row[order] >= least][:most].tolist()
        if not chosen:
            warnings.warn(
                FlatMapWarning(
                    f"{sources[b]}: no class scored at least {least:g} (the best: "
                    f"{float(row.max()):.3g}): no map"
                ),
                stacklevel=_outside(),
            )
        out.append(chosen)
    return out


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


# --- results ---------------------------------------------------------------------------------


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
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__") in INSIDE:
        frame, level = frame.f_back, level + 1
    return level
