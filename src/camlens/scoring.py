"""Targets against a model: :class:`TargetPlan` checks a model's targets once (classes that
exist, outputs in range, the reference images' embeddings), and gives for each batch the
:class:`Goals`, the ``D`` targets of each of its ``N`` images as one function of the model's output
that the methods differentiate (gradients) or evaluate on their masked or ablated passes (scores).

Linear targets (a class, a contrast, a binary head's sign, a raw output) are a weight tensor
``W`` [N, D, outputs]: the score of rank ``j`` of image ``n`` is ``W[n, j] . y[n]``; their gradient
is one backward pass seeded with ``W`` (as a class's is with a one-hot row), and CAM reads the
head's rows ``W @ head.weight``. Similarity and callables are functions of the output (and of the
embedding), differentiated through.

A segmentation model's output is ``y`` [N, C, H, W]; its targets are segments (a class given
plainly is its segment over the pixels the model assigns to it): ``W`` picks the class and
``regions`` [N, D, H, W] the pixels, the score being ``sum_hw regions[n, j] * (W[n, j] . y[n])``,
linear in ``y`` as well. The regions come from the unperturbed pass and stay fixed.

A detector's output is ``y`` [N, K, 6], rows ``(x0, y0, x1, y1, score, label)``; its targets are
detections. On a pass, detection ``j`` of image ``n`` scores the ``score`` of the row of its
label whose box has the highest IoU with its ``boxes[n, j]`` (in the pass's input pixels), or 0
when that IoU is under :data:`MATCH_IOU`. On the pass it was matched on (the one the gradients
are taken of), that is ``W[n, j] . y[n, :, 4]`` with ``W`` the one-hot row of the match: the
backward pass is seeded with it, as a class's is."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens.errors import CamlensError, ClassError, LayerError
from camlens.images import load_image, preprocess
from camlens.models import Model
from camlens.modes import eval_mode
from camlens.taps import RUNS, hooked, resolve_layer
from camlens.targets import (
    Binary,
    ClassScore,
    Contrast,
    Detection,
    Function,
    Output,
    Segment,
    Similarity,
    TargetError,
    VersusTrue,
    as_target,
)

MATCH_IOU = 0.5
"""A detection's box matches a pass's row of its label when their IoU is at least this."""


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The IoU [M, D, K] of boxes ``a`` [M, D, 4] with boxes ``b`` [M, K, 4] (``x0, y0, x1,
    y1``), per row ``m``; 0 where a union is empty."""
    lo = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    hi = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def match_detections(
    outputs: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each detection (``boxes`` [M, D, 4] in the input's pixels, ``labels`` [M, D]) the row
    [M, D] of ``outputs`` [M, K, 6] of the same label whose box overlaps it most, and whether
    that IoU is at least :data:`MATCH_IOU` (a padding row, label -1, never matches)."""
    m, d = labels.shape
    if outputs.shape[1] == 0:
        zeros = torch.zeros(m, d, dtype=torch.long, device=outputs.device)
        return zeros, zeros.bool()
    with torch.no_grad():
        rows = outputs.detach().to(boxes.dtype)
        iou = box_iou(boxes, rows[..., :4])
        same = rows[:, None, :, 5] == labels[:, :, None].to(rows.dtype)
        iou = torch.where(same, iou, torch.full_like(iou, -1.0))
        best = iou.argmax(dim=-1)
        matched = iou.gather(-1, best[..., None])[..., 0] >= MATCH_IOU
    return best, matched


@dataclass(frozen=True)
class Explained:
    """What one map explains, in words and as data (``{"kind": "contrast", "classes": [282,
    285]}``), with the class it is about (the first class of a class or contrast target, else
    None) for the reports' ``class_index`` and ``label``."""

    data: dict[str, Any]
    words: str
    class_index: int | None


class Embedding:
    """The features a similarity compares: the input of the model's last linear layer (its
    pooled features, ``layer=None``) or ``layer``'s output averaged over its locations. Recorded
    by :meth:`tap` during forward passes."""

    def __init__(self, model: Model, layer: str | None) -> None:
        self.layer = layer
        if layer is None:
            linears = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise TargetError(
                    f"similarity: {model.name} has no linear classifier whose input would be its "
                    "embedding: name a layer (embedding=LAYER, --embedding)"
                )
            self.name = linears[-1][0]
            self.module: nn.Module = linears[-1][1]
            self.before = True
        else:
            try:
                self.name, self.module = resolve_layer(model.net, layer)
            except LayerError as exc:
                raise TargetError(f"similarity: {exc}") from None
            self.before = False
        self.describe = (
            f"the input of {self.name!r}" if self.before else f"the output of {self.name!r}"
        )

    @contextlib.contextmanager
    def tap(self, into: list[torch.Tensor]) -> Iterator[None]:
        """Appends each forward pass's embedding [N, E] to ``into`` for the duration."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            value = inputs[0] if self.before else output
            if not isinstance(value, torch.Tensor) or value.ndim < 2:
                raise TargetError(
                    f"similarity: {self.describe} is not a tensor [N, ...] an embedding can be "
                    "read from; name another layer"
                )
            into.append(value.mean(dim=(2, 3)) if value.ndim == 4 else value.flatten(1))

        with hooked([(self.module, hook)]):
            yield


ScoreFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class Goals:
    """The ``D`` targets of each of ``N`` images: ``weights`` [N, D, outputs] for the linear
    ones (zero rows elsewhere), ``functions`` ``(images, rank, fn)`` for the others (the images
    [I] whose rank ``rank`` is that target), where ``fn(outputs [M, C], embeddings [M, E] or
    None) -> [M]``; ``explained[n][j]`` says what each
    is, ``depth[n]`` how many ranks image ``n`` really has (the others repeat its last)."""

    weights: torch.Tensor
    functions: list[tuple[torch.Tensor, int, ScoreFn]]
    explained: list[list[Explained]]
    embedding: Embedding | None = None
    values: torch.Tensor | None = field(default=None, repr=False)
    regions: torch.Tensor | None = field(default=None, repr=False)
    boxes: torch.Tensor | None = field(default=None, repr=False)
    labels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def linear(self) -> bool:
        """Every target is a fixed linear combination of the outputs."""
        return not self.functions

    @property
    def shape(self) -> tuple[int, int]:
        n, d = self.weights.shape[:2]
        return int(n), int(d)

    @classmethod
    def classes(cls, index: torch.Tensor, outputs: int, labels: Sequence[str] = ()) -> Goals:
        """The class scores ``y[index[n, j]]`` of ``index`` [N, D] (top-k or given classes)."""
        n, d = index.shape
        weights = torch.zeros(n, d, outputs, device=index.device)
        weights.scatter_(2, index[:, :, None], 1.0)
        explained = [[_class_explained(int(c), labels) for c in row] for row in index.tolist()]
        return cls(weights, [], explained)

    def score(
        self, outputs: torch.Tensor, rows: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scores [M, D] of output rows ``outputs`` [M, C] that belong to the images ``rows``
        [M] (differentiable)."""
        weights = self.weights[rows].to(outputs.dtype)
        if outputs.ndim == 3:
            out = self._detections(outputs, rows)
        elif outputs.ndim == 4:
            out = self._segments(outputs, rows, weights)
        else:
            out = torch.einsum("mc,mdc->md", outputs, weights)
        if not self.functions:
            return out
        out = out.clone()
        for images, rank, fn in self.functions:
            chosen = torch.isin(rows, images).nonzero()[:, 0]
            if len(chosen) == 0:
                continue
            emb = embeddings[chosen] if embeddings is not None else None
            value = fn(outputs[chosen], emb)
            out[chosen, rank] = value.to(out.dtype)
        return out

    def _segments(
        self, outputs: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The segments' scores [M, D] of segmentation outputs [M, C, H, W] (resized to the
        regions' grid when a pass ran at another resolution)."""
        if self.regions is None:
            return outputs.new_zeros(len(outputs), weights.shape[1])
        regions = self.regions[rows].to(outputs.dtype)
        if outputs.shape[-2:] != regions.shape[-2:]:
            outputs = F.interpolate(
                outputs, size=regions.shape[-2:], mode="bilinear", align_corners=False
            )
        per_class = torch.einsum("mchw,mdhw->mdc", outputs, regions)
        return (per_class * weights).sum(dim=2)

    def _detections(self, outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The detections' scores [M, D] on detector outputs [M, K, 6]: each its matching row's
        score (:func:`match_detections`), 0 where none matches."""
        if self.boxes is None or self.labels is None:
            return outputs.new_zeros(len(outputs), self.weights.shape[1])
        best, matched = match_detections(outputs, self.boxes[rows], self.labels[rows])
        if outputs.shape[1] == 0:
            return outputs.new_zeros(best.shape)
        scores = outputs[:, :, 4].gather(1, best)
        return torch.where(matched, scores, torch.zeros_like(scores))

    def seeds(self, outputs: torch.Tensor) -> torch.Tensor:
        """The backward pass's seeds [D, N, *outputs.shape[1:]] of linear goals: ``W`` for
        logits [N, C]; ``W`` times the regions for segmentation outputs [N, C, H, W]; for
        detections [N, K, 6], ``W`` (the matched rows) at the score column."""
        weights = self.weights.to(outputs.dtype)
        if outputs.ndim == 3:
            column = torch.zeros(outputs.shape[-1], dtype=outputs.dtype, device=outputs.device)
            column[4] = 1
            weights = weights[:, :, :, None] * column
        elif outputs.ndim == 4 and self.regions is not None:
            regions = self.regions.to(outputs.dtype)
            weights = weights[:, :, :, None, None] * regions[:, :, None]
        return weights.transpose(0, 1).contiguous()


def _class_explained(c: int, labels: Sequence[str]) -> Explained:
    label = labels[c] if c < len(labels) else f"class {c}"
    return Explained({"kind": "class", "classes": [c]}, label, c)


class TargetPlan:
    """The targets of an explainer, checked against ``model`` once: class names and indices
    exist, a contrast is not of a class with itself, an output index is in range, a binary target
    has a one-output model, a reference image can be read (its embedding is computed here, once).
    Each problem is a :class:`~camlens.targets.TargetError` (or ClassError) naming it."""

    def __init__(
        self, model: Model, targets: Sequence[Any], *, max_pixels: int | None = None
    ) -> None:
        self.model = model
        self.targets = tuple(as_target(t) for t in targets)
        self._references: dict[tuple[str, str | None], torch.Tensor] = {}
        self._embeddings: dict[str | None, Embedding] = {}
        self._masks: dict[str, torch.Tensor] = {}
        outputs = model.num_classes
        for t in self.targets:
            if not _fits(model, t, given=True):
                raise TargetError(_wrong_kind(model, t))
            if isinstance(t, Detection):
                model.class_index(t.label)
            elif isinstance(t, Segment):
                model.class_index(t.cls)
                if isinstance(t.mask, str):
                    self._mask(t.mask)
            elif isinstance(t, ClassScore):
                model.class_index(t.cls)
            elif isinstance(t, Contrast):
                first = None if t.cls is None else model.class_index(t.cls)
                others = [model.class_index(v) for v in t.versus]
                if first is not None and first in others:
                    raise ClassError(
                        f"contrast: class {t.cls!r} ({first}) versus itself explains nothing"
                    )
                if t.next is not None and t.next >= outputs:
                    raise ClassError(
                        f"contrast: next {t.next} needs {t.next + 1} classes; {model.name} has "
                        f"{outputs}"
                    )
                if outputs < 2:
                    raise ClassError(f"contrast: {model.name} has one output, nothing to contrast")
            elif isinstance(t, Output):
                if t.index >= outputs:
                    raise TargetError(
                        f"output {t.index} is out of range: {model.name} has {outputs} outputs "
                        f"(0..{outputs - 1})"
                    )
            elif isinstance(t, Binary):
                if outputs != 1:
                    raise TargetError(
                        f"binary positive/negative explains a one-output head; {model.name} has "
                        f"{outputs} outputs: explain a class instead"
                    )
            elif isinstance(t, Similarity):
                self._reference(t, max_pixels)
            elif isinstance(t, VersusTrue):
                self._check_truth(t)
        kinds = {t.layer for t in self.targets if isinstance(t, Similarity)}
        if len(kinds) > 1:
            raise TargetError(
                "similarity targets of one call compare one embedding: give them the same layer"
            )

    def _mask(self, path: str) -> torch.Tensor:
        """The mask image ``path`` as a boolean tensor [height, width] (its non-zero pixels),
        read once; a TargetError naming it when it cannot be read or is empty."""
        if path not in self._masks:
            import numpy as np
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("L"))
            except (OSError, UnidentifiedImageError) as exc:
                raise TargetError(f"segment: the mask {path} cannot be read: {exc}") from None
            mask = torch.from_numpy(pixels > 0)
            if not bool(mask.any()):
                raise TargetError(f"segment: the mask {path} is empty (every pixel is 0)")
            self._masks[path] = mask
        return self._masks[path]

    def _region(
        self, t: Segment, k: int, predicted: torch.Tensor, size: tuple[int, int] | None
    ) -> tuple[torch.Tensor, dict[str, Any], str]:
        """The region [H, W] of segment ``t`` (class ``k``) on an output grid where the model
        assigns ``predicted`` [H, W], for a photo of ``size`` (width, height; None: the grid's
        own), with its data and words."""
        h, w = predicted.shape
        width, height = size or (w, h)
        label = self.model.labels[k]
        if t.box is not None:
            x0, y0, x1, y1 = t.box
            if x1 > width or y1 > height:
                raise TargetError(
                    f"segment: the region {x0},{y0},{x1},{y1} is outside the {width}x{height} image"
                )
            xs = torch.arange(w, device=predicted.device)
            ys = torch.arange(h, device=predicted.device)
            # output pixels whose part of the photo meets the box
            cols = (xs * width / w < x1) & ((xs + 1) * width / w > x0)
            rows = (ys * height / h < y1) & ((ys + 1) * height / h > y0)
            region = rows[:, None] & cols[None, :]
            return region, {"region": list(t.box)}, f"{label} in {x0},{y0},{x1},{y1}"
        if t.mask is not None:
            if isinstance(t.mask, str):
                mask, name = self._mask(t.mask), t.mask
            else:
                mask, name = torch.as_tensor(t.mask).bool(), "the mask"
            if tuple(mask.shape) != (height, width):
                raise TargetError(
                    f"segment: {name} is {mask.shape[1]}x{mask.shape[0]}, the image "
                    f"{width}x{height}: give a mask of the image's size"
                )
            cover = F.interpolate(
                mask[None, None].float().to(predicted.device), size=(h, w), mode="area"
            )[0, 0]
            region = cover >= 0.5
            if not bool(region.any()):  # a mask smaller than an output pixel: the pixels it meets
                region = cover > 0
            data = {"region": "mask"} | ({"mask": t.mask} if isinstance(t.mask, str) else {})
            return region, data, f"{label} in {Path(name).name if name != 'the mask' else name}"
        return predicted == k, {"region": "predicted"}, label

    def mirrored(
        self, chosen: Sequence[Sequence[Any]], sizes: Sequence[tuple[int, int]]
    ) -> list[list[Any]]:
        """``chosen`` for the photos mirrored left-right (a test-time augmentation): each
        segment's box or mask mirrored in its photo of ``sizes`` (width, height)."""
        out: list[list[Any]] = []
        for ts, (width, _) in zip(chosen, sizes, strict=True):
            row: list[Any] = []
            for t in ts:
                if isinstance(t, Segment) and t.box is not None:
                    x0, y0, x1, y1 = t.box
                    t = Segment(t.cls, box=(max(0, width - x1), y0, max(1, width - x0), y1))
                elif isinstance(t, Segment) and t.mask is not None:
                    mask = (
                        self._mask(t.mask) if isinstance(t.mask, str) else torch.as_tensor(t.mask)
                    )
                    t = Segment(t.cls, mask=mask.bool().flip(-1))
                elif isinstance(t, Detection):
                    left, top, right, bottom = t.box
                    t = Detection((width - right, top, width - left, bottom), t.label, t.score)
                row.append(t)
            out.append(row)
        return out

    def _check_truth(self, target: VersusTrue) -> int | None:
        """The true class of ``target`` as an index (None: unknown), checked against the model."""
        model = self.model
        if model.scores == "raw" or model.num_classes < 2:
            raise TargetError(
                f"versus true contrasts the top-1 class with the true class; {model.name} "
                f"{'has raw outputs, not classes' if model.scores == 'raw' else 'has one output'}"
            )
        return None if target.truth is None else model.class_index(target.truth)

    def with_top1(self, chosen: Sequence[Sequence[Any]], top1: Sequence[int]) -> list[list[Any]]:
        """``chosen`` (per image, targets or class indices) with each :class:`VersusTrue` made
        what it explains for the image whose top-1 class is ``top1[n]``: that class, then, when
        the true class is known and is another, the contrast of the two."""
        out: list[list[Any]] = []
        for ts, first in zip(chosen, top1, strict=True):
            row: list[Any] = []
            for t in ts:
                if not isinstance(t, VersusTrue):
                    row.append(t)
                    continue
                truth = self._check_truth(t)
                row.append(int(first))
                if truth is not None and truth != first:
                    row.append(Contrast(int(first), (truth,)))
            out.append(row)
        return out

    @property
    def linear(self) -> bool:
        """Every target of the plan is linear in the outputs (CAM and head gradients apply)."""
        return not any(isinstance(t, Similarity | Function) for t in self.targets)

    @property
    def nonlinear_words(self) -> str:
        """The targets that are not linear, in words."""
        return ", ".join(
            f"the similarity to {Path(t.reference).name}"
            if isinstance(t, Similarity)
            else f"the callable {t.name!r}"
            for t in self.targets
            if isinstance(t, Similarity | Function)
        )

    @property
    def embedding(self) -> Embedding | None:
        """The embedding the similarity targets read (None without one)."""
        return next(iter(self._embeddings.values()), None)

    def _reference(self, target: Similarity, max_pixels: int | None) -> torch.Tensor:
        key = (target.reference, target.layer)
        if key in self._references:
            return self._references[key]
        if target.layer not in self._embeddings:
            self._embeddings[target.layer] = Embedding(self.model, target.layer)
        embedding = self._embeddings[target.layer]
        try:
            photo = load_image(
                Path(target.reference), **({} if max_pixels is None else {"max_pixels": max_pixels})
            )
        except CamlensError as exc:
            raise TargetError(f"similarity: the reference cannot be read: {exc}") from None
        x = preprocess([photo], self.model.preprocess).to(self.model.device)
        found: list[torch.Tensor] = []
        with (
            eval_mode(self.model.net),
            RUNS.shared(),
            torch.inference_mode(),
            embedding.tap(found),
        ):
            self.model.net(x)
        if not found:
            raise TargetError(
                f"similarity: {embedding.describe} is not run by {self.model.name}'s forward pass; "
                "name a layer it runs"
            )
        vector = found[-1][0].float()
        if not bool(torch.isfinite(vector).all()) or float(vector.norm()) == 0:
            raise TargetError(
                f"similarity: the reference {target.reference}'s embedding is zero or not finite: "
                "nothing to compare with"
            )
        self._references[key] = vector
        return vector

    def goals(
        self,
        outputs: torch.Tensor,
        chosen: Sequence[Sequence[Any]],
        embeddings: torch.Tensor | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Goals:
        """The goals of ``chosen[n]`` (targets, or class indices) for each image of a batch whose
        outputs are ``outputs`` [N, C] (they decide ``Contrast(next=K)`` and a contrast of the
        top-1); each list is padded with its last target. A segmentation model's outputs
        [N, C, H, W] decide the segments' regions; ``sizes`` gives each photo's (width, height)
        for the boxes and masks in its pixels (None: the output grid's). A detector's outputs
        [N, K, 6] are matched with its detections, whose boxes (in the photo's pixels) are
        scaled to ``input_size`` (height, width), the pass's input (None: as they are)."""
        model = self.model
        n, c = outputs.shape[:2]
        depth = max(len(ts) for ts in chosen)
        weights = torch.zeros(n, depth, c, device=outputs.device, dtype=outputs.dtype)
        segmenter = outputs.ndim == 4
        detector = outputs.ndim == 3
        boxes = labels = None
        if detector:
            boxes = torch.zeros(n, depth, 4, device=outputs.device)
            labels = torch.full((n, depth), -2, dtype=torch.long, device=outputs.device)
        regions = predicted = None
        if segmenter:
            regions = torch.zeros(n, depth, *outputs.shape[2:], device=outputs.device)
            predicted = outputs.argmax(dim=1)
        grouped: dict[tuple[int, Any], tuple[list[int], ScoreFn]] = {}
        explained: list[list[Explained]] = []
        order = (
            None if segmenter or detector else outputs.argsort(dim=1, descending=True, stable=True)
        )
        for b, ts in enumerate(chosen):
            row: list[Explained] = []
            for j in range(depth):
                t = as_target(ts[min(j, len(ts) - 1)])
                if segmenter and isinstance(t, ClassScore):
                    t = Segment(t.cls)
                if not _fits(model, t):
                    raise TargetError(_wrong_kind(model, t))
                if isinstance(t, Detection):
                    assert boxes is not None and labels is not None
                    k = model.class_index(t.label)
                    width, height = (None, None) if sizes is None else sizes[b]
                    box = torch.tensor(t.box, dtype=boxes.dtype)
                    if input_size is not None and width and height:
                        scale = torch.tensor([input_size[1] / width, input_size[0] / height])
                        box = box * scale.repeat(2)
                    boxes[b, j] = box
                    labels[b, j] = k
                    data = Detection(t.box, k, t.score).to_dict()
                    row.append(Explained(data, _detection_words(t, model.labels[k]), k))
                elif isinstance(t, Segment):
                    assert regions is not None and predicted is not None
                    k = model.class_index(t.cls)
                    size = None if sizes is None else sizes[b]
                    region, data, words = self._region(t, k, predicted[b], size)
                    weights[b, j, k] = 1
                    regions[b, j] = region
                    data = {"kind": "segment", "classes": [k], **data}
                    data["pixels"] = int(region.sum())
                    row.append(Explained(data, words, k))
                elif isinstance(t, ClassScore):
                    k = model.class_index(t.cls)
                    weights[b, j, k] = 1
                    row.append(_class_explained(k, model.labels))
                elif isinstance(t, Contrast):
                    assert order is not None
                    first = int(order[b, 0]) if t.cls is None else model.class_index(t.cls)
                    if t.next is not None:
                        rest = [int(i) for i in order[b].tolist() if int(i) != first][: t.next]
                    else:
                        rest = [model.class_index(v) for v in t.versus]
                    if first in rest:
                        raise ClassError(
                            f"contrast: class {first} ({model.labels[first]}) versus itself "
                            "explains nothing"
                        )
                    weights[b, j, first] = 1
                    weights[b, j, rest] = -1 / len(rest)
                    names = [model.labels[i] for i in rest]
                    versus = names[0] if len(names) == 1 else "the mean of " + ", ".join(names)
                    row.append(
                        Explained(
                            {"kind": "contrast", "classes": [first, *rest]},
                            f"{model.labels[first]} versus {versus}",
                            first,
                        )
                    )
                elif isinstance(t, Output):
                    weights[b, j, t.index] = 1
                    row.append(
                        Explained({"kind": "output", "index": t.index}, f"output {t.index}", None)
                    )
                elif isinstance(t, Binary):
                    weights[b, j, 0] = 1 if t.positive else -1
                    side = "positive" if t.positive else "negative"
                    row.append(
                        Explained(
                            {"kind": "binary", "positive": t.positive},
                            f"{model.labels[0]}: {side}",
                            0 if t.positive else None,
                        )
                    )
                elif isinstance(t, Similarity):
                    reference = self._reference(t, None)
                    grouped.setdefault((j, t), ([], _cosine(reference)))[0].append(b)
                    row.append(
                        Explained(
                            {"kind": "similarity", "reference": t.reference, "layer": t.layer},
                            f"similarity to {Path(t.reference).name}",
                            None,
                        )
                    )
                elif isinstance(t, Function):
                    grouped.setdefault((j, t), ([], _calling(t)))[0].append(b)
                    row.append(Explained({"kind": "callable", "name": t.name}, t.name, None))
                elif isinstance(t, VersusTrue):
                    raise TargetError(
                        "versus true is made per image by TargetPlan.with_top1 before its goals"
                    )
            explained.append(row)
        functions = [
            (torch.tensor(images, device=outputs.device), j, fn)
            for (j, _), (images, fn) in grouped.items()
        ]
        if detector and outputs.shape[1] > 0:  # the rows matched on this pass: the seeds
            assert boxes is not None and labels is not None
            best, matched = match_detections(outputs, boxes, labels)
            weights.scatter_(2, best[:, :, None], matched[:, :, None].to(weights.dtype))
        goals = Goals(
            weights,
            functions,
            explained,
            self.embedding,
            regions=regions,
            boxes=boxes,
            labels=labels,
        )
        similar = any(isinstance(t, Similarity) for ts in chosen for t in map(as_target, ts))
        if similar and embeddings is None:
            raise TargetError("similarity: the forward pass recorded no embedding")
        with torch.no_grad():
            goals.values = goals.score(outputs, torch.arange(n, device=outputs.device), embeddings)
        if goals.values.shape != (n, depth):
            raise TargetError(
                f"the targets gave scores {tuple(goals.values.shape)}, not {(n, depth)}"
            )
        return goals


def _fits(model: Model, target: Any, *, given: bool = False) -> bool:
    """Whether ``target`` fits ``model``'s kind: a segment a segmentation model (or a class, made
    its segment), a detection a detector, the other kinds a classifier; a callable any model.
    ``given``: a target of the plan, where a class given to a segmentation model is allowed."""
    if isinstance(target, Function):
        return True
    if model.kind == "detection":
        return isinstance(target, Detection)
    if model.kind == "segmentation":
        return isinstance(target, Segment) or (given and isinstance(target, ClassScore))
    return not isinstance(target, Detection | Segment)


def _detection_words(t: Detection, label: str) -> str:
    """A detection in words: ``person 0.93 at 12,30,200,410``."""
    score = "" if t.score is None else f" {t.score:.2f}"
    return f"{label}{score} at " + ",".join(f"{v:g}" for v in (round(v) for v in t.box))


def _wrong_kind(model: Model, target: Any) -> str:
    """Why ``target`` does not fit ``model``'s kind."""
    if model.kind == "detection":
        return (
            f"{model.name} is a detector: explain its detections (min_score, detections, or "
            f"Detection(box, label) targets), not a {target.kind} target"
        )
    if isinstance(target, Detection):
        return f"a detection target explains a detector; {model.name} is a {model.kind}"
    if model.kind == "segmentation":
        return (
            f"{model.name} is a segmentation model: explain a class's segment (a class, or "
            f"Segment(class, box=..., mask=...)), not a {target.kind} target"
        )
    return f"a segment target explains a segmentation model; {model.name} is a {model.kind}"


def _cosine(reference: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def similarity(outputs: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        if embeddings is None:
            raise TargetError("similarity: no embedding was recorded for these passes")
        ref = reference.to(embeddings.device, embeddings.dtype)
        if embeddings.shape[1] != ref.shape[0]:
            raise TargetError(
                f"similarity: the embedding has {embeddings.shape[1]} features, the reference's "
                f"{ref.shape[0]}"
            )
        return F.cosine_similarity(embeddings, ref[None], dim=1)

    return similarity


def _calling(target: Function) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def call(outputs: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        try:
            value = target.fn(outputs)
        except Exception as exc:  # the user's function: its failure named, in one line
            raise TargetError(
                f"the callable target {target.name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(value, torch.Tensor) or value.shape != (len(outputs),):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TargetError(
                f"the callable target {target.name!r} gave {shape} for {len(outputs)} images: it "
                "must give one score per image, a tensor [N]"
            )
        if not bool(torch.isfinite(value).all()):
            raise TargetError(f"the callable target {target.name!r} gave NaN or infinite scores")
        return value

    return call


__all__ = [
    "MATCH_IOU",
    "Embedding",
    "Explained",
    "Goals",
    "TargetPlan",
    "box_iou",
    "match_detections",
]
