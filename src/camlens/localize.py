"""Boxes from class activation maps, and several objects per image.

The CAM paper's point (Zhou et al. 2016, section 4.1) is that a classifier trained without boxes can
localize: threshold the map, take a connected component, and its bounding box is the object's box.

Boxes are :class:`camlens.types.Box` es, in continuous coordinates as in
:func:`camlens.render.draw_boxes`: pixel ``(i, j)`` (column ``i``, row ``j``) spans
``[i, i + 1) x [j, j + 1)``, so a box ``[x0, y0, x1, y1]`` covers the columns ``x0 .. x1 - 1`` and
the rows ``y0 .. y1 - 1``, its area is ``(x1 - x0) * (y1 - y0)``, and ``[0, 0, W, H]`` is the whole
image. Boxes from maps are in the original photo's pixels: give maps at the photo's own size
(:meth:`camlens.Explanation.map_at_image`).

>>> m = np.zeros((6, 8)); m[1:4, 2:5] = 1.0          # a 3 x 3 square at rows 1..3, columns 2..4
>>> boxes_from_map(m)
[Box(x0=2, y0=1, x1=5, y1=4, score=1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from scipy import ndimage

from camlens.errors import CamlensError
from camlens.modes import eval_mode
from camlens.options import Threshold as Threshold
from camlens.options import check_localize_options as check_localize_options
from camlens.options import check_threshold as check_threshold
from camlens.options import parse_threshold as parse_threshold
from camlens.types import Box, Prediction

if TYPE_CHECKING:
    from camlens.explanation import Explanation
    from camlens.models import Model

Mode = Literal["largest", "all"]
MapLike = npt.ArrayLike | torch.Tensor

#: The CAM paper's threshold: 20% of the map's maximum. Grad-CAM used 15% (:data:`GRADCAM_THRESHOLD`).
CAM_THRESHOLD = 0.2
GRADCAM_THRESHOLD = 0.15

#: The least probability of a class :func:`localize_objects` boxes. A second object in a photo often
#: gets a few percent (a cup at 0.017 beside a cat at 0.6): 0.01 keeps it. On the synthetic
#: two-object set it finds as many objects as boxing every top class, with fewer false boxes
#: (``benchmarks/localize_objects.py``: 126 of 200 objects and 229 false boxes, against 126 and 255
#: for every class and 121 and 157 at the former 0.05).
MIN_SCORE = 0.01


def as_map(map2d: MapLike, what: str = "map") -> npt.NDArray[np.float64]:
    """A 2-D float64 numpy copy of a map (a tensor on any device, or an array); NaN is refused."""
    if isinstance(map2d, torch.Tensor):
        arr = map2d.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(map2d, dtype=np.float64)
    if arr.ndim != 2:
        raise CamlensError(f"{what} must be 2-D [height, width], not of shape {list(arr.shape)}")
    if arr.size == 0:
        raise CamlensError(f"{what} is empty ({arr.shape[0]}x{arr.shape[1]})")
    if not np.isfinite(arr).all():
        raise CamlensError(f"{what} has NaN or infinite values")
    return arr


def otsu_threshold(values: MapLike, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979): the split of a ``bins``-bin histogram of ``values`` (over their
    range) that maximizes the between-class variance

        sigma_b^2(t) = w0(t) * w1(t) * (mu0(t) - mu1(t))^2,

    where ``w0, w1`` are the counts of the values in the bins up to ``t`` and above it and ``mu0,
    mu1`` their means (values taken at the bin centers). Returns the center of the last bin of the
    lower class: foreground is ``values > threshold``. This is the convention of
    ``skimage.filters.threshold_otsu`` (checked against it in the tests); a few lines of numpy spare
    the runtime a dependency on scikit-image. Constant values give that value (no foreground).
    """
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    arr = arr.astype(np.float64).ravel()
    low, high = float(arr.min()), float(arr.max())
    if low == high:
        return low
    counts, edges = np.histogram(arr, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    w0 = np.cumsum(counts)  # count at or below each bin
    w1 = np.cumsum(counts[::-1])[::-1]  # count at or above each bin
    mass0 = np.cumsum(counts * centers)
    mass1 = np.cumsum((counts * centers)[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = mass0 / w0
        mu1 = mass1 / w1
    # Split after bin i: class 0 = bins 0..i, class 1 = bins i+1..end.
    between = w0[:-1] * w1[1:] * (mu0[:-1] - mu1[1:]) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(centers[int(np.argmax(between))])


def threshold_value(map2d: MapLike, threshold: Threshold = CAM_THRESHOLD) -> float:
    """The value above which the map counts as foreground: ``threshold * max(map)`` for a fraction,
    or Otsu's threshold of the map's values for ``"otsu"``."""
    arr = as_map(map2d)
    threshold = check_threshold(threshold)
    if threshold == "otsu":
        return otsu_threshold(arr)
    return float(threshold) * float(arr.max())


def foreground(map2d: MapLike, threshold: Threshold = CAM_THRESHOLD) -> npt.NDArray[np.bool_]:
    """The pixels strictly above :func:`threshold_value`; none for a map that is zero everywhere."""
    arr = as_map(map2d)
    if float(arr.max()) <= 0.0:
        return np.zeros(arr.shape, dtype=bool)
    return arr > threshold_value(arr, threshold)


# 8-connectivity: pixels that touch at a corner belong to the same component.
_EIGHT = np.ones((3, 3), dtype=bool)


def boxes_from_map(
    map2d: MapLike,
    *,
    threshold: Threshold = CAM_THRESHOLD,
    mode: Mode = "largest",
    min_area: float = 0.0,
) -> list[Box]:
    """Boxes around the connected regions of a map where it is above a threshold.

    1. foreground: ``map > threshold * max(map)`` (``threshold`` in [0, 1); 0.2 as in the CAM paper,
       0.15 as in Grad-CAM) or ``map > otsu(map)`` with ``threshold="otsu"``;
    2. connected components of the foreground (8-connectivity, ``scipy.ndimage.label``);
    3. ``mode="largest"``: the bounding box of the component with the most pixels (the CAM paper's
       rule); ``mode="all"``: one box per component, best score first;
    4. components smaller than ``min_area`` (a fraction of the map's area, in [0, 1)) are dropped.

    Each box's ``score`` is the share of the map's mass inside the box: ``sum_{(i,j) in box} M(i, j)
    / sum_{i,j} M(i, j)``. A map that is zero everywhere (a flat map) has no boxes.
    """
    arr = as_map(map2d)
    if mode not in ("largest", "all"):
        raise CamlensError(f"mode must be 'largest' or 'all', not {mode!r}")
    if not 0.0 <= min_area < 1.0:
        raise CamlensError(f"min_area {min_area} is outside [0, 1): it is a fraction of the map")
    mask = foreground(arr, threshold)
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    total = float(arr.sum())
    smallest = min_area * arr.size
    slices = ndimage.find_objects(labels)
    boxes = []
    for index, (rows, cols) in enumerate(slices):
        if areas[index] < smallest or areas[index] == 0:
            continue
        inside = float(arr[rows, cols].sum())
        box = Box(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop), inside / total)
        boxes.append((int(areas[index]), box))
    if not boxes:
        return []
    if mode == "largest":
        # Most pixels; among equal areas, the larger mass.
        return [max(boxes, key=lambda ab: (ab[0], ab[1].score))[1]]
    return [b for _, b in sorted(boxes, key=lambda ab: -ab[1].score)]


def nms(boxes: Sequence[Box], scores: Sequence[float], iou_threshold: float = 0.5) -> list[int]:
    """Non-maximum suppression (``torchvision.ops.nms``): the indices of the boxes kept, best score
    first. A box is dropped when its IoU with a better-scored kept box exceeds ``iou_threshold``."""
    if len(boxes) != len(scores):
        raise CamlensError(f"{len(scores)} scores given for {len(boxes)} boxes")
    if not boxes:
        return []
    from torchvision.ops import nms as tv_nms

    xyxy = torch.tensor([b.xyxy for b in boxes], dtype=torch.float64)
    keep = tv_nms(xyxy, torch.tensor(list(scores), dtype=torch.float64), float(iou_threshold))
    return [int(i) for i in keep]


def add_boxes(
    explanation: Explanation,
    *,
    threshold: Threshold = CAM_THRESHOLD,
    mode: Mode = "largest",
    min_area: float = 0.0,
) -> Explanation:
    """Fills ``boxes`` of every map of ``explanation`` (in the photo's pixels; see
    :func:`boxes_from_map`) and returns it. :meth:`Explanation.save` then writes them into the
    JSON and draws them, labelled, on the overlays."""
    for i, m in enumerate(explanation.maps):
        m.boxes = boxes_from_map(
            explanation.map_at_image(i), threshold=threshold, mode=mode, min_area=min_area
        )
    return explanation


@dataclass
class LocalizedObject:
    """One object found in a photo: the class the full photo gave (``class_index``, ``label``,
    ``score`` = its probability), the box of that class's map, and ``crop``: the top prediction of
    the same model on the box cropped from the photo (None when crops were not re-classified)."""

    class_index: int
    label: str
    score: float
    box: Box
    method: str
    layer: str
    crop: Prediction | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_index": self.class_index,
            "label": self.label,
            "score": self.score,
            "box": self.box.to_dict()["box"],
            "box_score": self.box.score,
            "method": self.method,
            "layer": self.layer,
        }
        if self.crop is not None:
            out["crop"] = {
                "class_index": self.crop.class_index,
                "label": self.crop.label,
                "score": self.crop.score,
            }
        return out


@dataclass
class Localization:
    """The objects found in one photo (best class probability first), with the explanation they
    came from."""

    explanation: Explanation
    objects: list[LocalizedObject] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The explanation's report without its maps (:meth:`Explanation.to_dict`), and the
        objects."""
        return {
            **self.explanation.to_dict(maps=False),
            "objects": [o.to_dict() for o in self.objects],
        }

    def picture(self, *, color: Sequence[int] = (0, 255, 0)) -> Image.Image:
        """The photo with every object's box and label ("label 0.93", and "-> crop label 0.88" when
        the crop was re-classified)."""
        return draw_objects(self.explanation.image, self.objects, color=color)


def object_label(obj: LocalizedObject) -> str:
    text = f"{obj.label} {obj.score:.2f}"
    if obj.crop is not None:
        text += f" -> {obj.crop.label} {obj.crop.score:.2f}"
    return text


def draw_objects(
    image: Image.Image, objects: Sequence[LocalizedObject], *, color: Sequence[int] = (0, 255, 0)
) -> Image.Image:
    from camlens import render

    boxes = np.array([o.box.xyxy for o in objects], dtype=np.float64).reshape(-1, 4)
    return render.draw_boxes(image, boxes, labels=[object_label(o) for o in objects], color=color)


def localize_objects(
    explanation: Explanation,
    model: Model | None = None,
    *,
    threshold: Threshold = CAM_THRESHOLD,
    iou_threshold: float = 0.5,
    min_score: float = MIN_SCORE,
    batch_size: int = 16,
    mode: Mode = "largest",
) -> Localization:
    """Several objects in one photo, from an explanation with maps for several classes (say the top
    5: ``explainer.explain(path, top=5)``):

    1. one box per class map: the largest component above ``threshold`` (:func:`boxes_from_map`),
       for the classes whose probability is at least ``min_score`` (:data:`MIN_SCORE`, 0.01, by
       default: a second object in a photo often gets only a few percent); ``mode="all"``: a box
       per component, so several instances of one class (two pandas) are each found;
    2. duplicates merged across classes: non-maximum suppression by IoU (``iou_threshold``), the
       more probable class winning, separately for each (method, layer);
    3. with a ``model``: each box cropped from the original photo and re-classified by the same
       model (its own preprocessing, one batched pass); the crop's top prediction is kept beside
       the class the full photo gave ("going further" in the CAM posts: a box that holds an object
       of another class shows up as a crop whose prediction differs).
    """
    check_localize_options(min_score=min_score, iou_threshold=iou_threshold)
    candidates: dict[tuple[str, str], list[LocalizedObject]] = {}
    for i, m in enumerate(explanation.maps):
        if m.flat or m.score < min_score:
            continue
        found = boxes_from_map(explanation.map_at_image(i), threshold=threshold, mode=mode)
        for box in found:
            obj = LocalizedObject(m.class_index, m.label, m.score, box, m.method, m.layer)
            candidates.setdefault((m.method, m.layer), []).append(obj)
    objects: list[LocalizedObject] = []
    for group in candidates.values():
        keep = nms([o.box for o in group], [o.score for o in group], iou_threshold)
        objects.extend(group[k] for k in keep)
    objects.sort(key=lambda o: -o.score)
    if model is not None and objects:
        crops = classify_crops(model, explanation.image, [o.box for o in objects], batch_size)
        objects = [replace(o, crop=c) for o, c in zip(objects, crops, strict=True)]
    return Localization(explanation, objects)


def crop_box(image: Image.Image, box: Box) -> Image.Image:
    """The part of ``image`` under ``box``, widened to whole pixels and clipped to the image (at
    least one pixel)."""
    width, height = image.size
    x0 = min(max(0, math.floor(box.x0)), width - 1)
    y0 = min(max(0, math.floor(box.y0)), height - 1)
    x1 = max(min(width, math.ceil(box.x1)), x0 + 1)
    y1 = max(min(height, math.ceil(box.y1)), y0 + 1)
    return image.crop((x0, y0, x1, y1))


def classify_crops(
    model: Model, image: Image.Image, boxes: Sequence[Box], batch_size: int = 16
) -> list[Prediction]:
    """The model's top prediction on each box cropped from ``image`` (batched, no gradients)."""
    from camlens.images import preprocess

    predictions: list[Prediction] = []
    crops = [crop_box(image, b) for b in boxes]
    with eval_mode(model.net):
        for start in range(0, len(crops), batch_size):
            x = preprocess(crops[start : start + batch_size], model.preprocess).to(model.device)
            with torch.inference_mode():
                probs = torch.softmax(model.net(x).float(), dim=1)
            score, index = probs.max(dim=1)
            for s, c in zip(score.tolist(), index.tolist(), strict=True):
                predictions.append(Prediction(int(c), model.labels[int(c)], float(s)))
    return predictions


__all__ = [
    "CAM_THRESHOLD",
    "GRADCAM_THRESHOLD",
    "MIN_SCORE",
    "Localization",
    "LocalizedObject",
    "add_boxes",
    "boxes_from_map",
    "classify_crops",
    "crop_box",
    "draw_objects",
    "foreground",
    "localize_objects",
    "nms",
    "otsu_threshold",
    "parse_threshold",
    "threshold_value",
]
