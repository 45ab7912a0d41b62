"""Detection models: networks with torchvision's detection format. In eval mode such a network
takes a list of ``[3, H, W]`` float images in [0, 1] and gives per image a dict of ``boxes``
``[K, 4]`` (``x0, y0, x1, y1`` in the input's pixels), ``labels`` ``[K]`` and ``scores`` ``[K]``.
:class:`DetectionNet` makes it give one tensor ``[N, K, 6]`` of rows ``(x0, y0, x1, y1, score,
label)``, keeping its layers' names (``backbone.body.layer4``, ``backbone.fpn.layer_blocks.0``);
a :class:`~camlens.models.Model` of kind ``"detection"`` holds it. What is explained of it is a
:class:`~camlens.targets.Detection`: one detection's score, followed through each forward pass
(the row of the same label whose box overlaps it most, counted when their IoU is at least 0.5).

**Input.** The photo is resized to a square of the detector's own ``min_size`` (800 pixels for
Faster R-CNN, RetinaNet and FCOS, 320 for SSDlite; ``input_size`` overrides it), not normalized:
the detector normalizes inside. A detector loaded by name has a transform that neither resizes nor
pads, so its activations cover exactly the photo, at any input size.

**Which detections.** Those of the unperturbed pass scored at least ``min_score`` (0.5), the
``detections`` best (all by default); each becomes a ``Detection`` target in the photo's pixels,
and gets its maps. A photo with none gets no map (a warning says so).

**Methods.** Every gradient method (``gradcam``, ``gradcampp``, ``xgradcam``, ``hirescam``,
``gradcam_elementwise``, ``layercam``, ``eigengradcam``) and Eigen-CAM (no gradient: the first
principal component of the activations, so the same map for every detection) apply. The
gradients of N detections come from one forward pass and one batched backward (one backward
pass per detection where a Faster R-CNN's boxes are scored on windows); a torchvision
Faster R-CNN scores again, with the graph, only the proposals of the detections explained (the
box head reads the thousand proposals of the RPN without one), and at a layer before its feature
pyramid from the region of its level each proposal samples where that pays (a ResNet-50's
finest levels; :mod:`camlens.models.windows`); a RetinaNet from the window of features each
logit reads. Each detection's backward pass still runs whole through the backbone's stages
between the layer and the pyramid (a ResNet-50's ``layer4`` at the automatic layer), so that N
detections cost more than one, by about a tenth of the forward pass each on a ResNet-50 (the
figures: ``benchmarks/README.md``). The
perturbation methods (``scorecam``, ``sscam``, ``iscam``, ``ablationcam``) apply too, scoring
their masked or ablated passes with each detection's matching score, at the price of one
detector pass per channel of the layer (960 at ``backbone.body.16``: minutes on a CPU; use
``fast_channels``). CAM does not apply: a detector has no GAP -> Linear head.

**Layers.** The candidate layers are the modules a forward pass runs once per image (the
backbone's stages and blocks, the feature pyramid's levels ``backbone.fpn.layer_blocks.0..3`` and
RetinaNet's and FCOS's ``p6``/``p7``; heads shared between pyramid levels are not). A detection
is made from one pyramid level: at another level's layer its map is flat. The automatic layer is
the backbone's last stage of stride 16 (ResNet's ``layer3``, MobileNet's ``backbone.body.12``,
SSDlite's ``backbone.features.0``; :data:`TORCHVISION_DETECTION`, and for any other detector with
a torchvision-style ``backbone.body`` the last of its stages whose output is at most 16 times
smaller than the input). Every detection depends on it, whatever level it is made from, and
``benchmarks/kinds.py`` measured it best among the layers that are: on a Faster R-CNN trained on
synthetic shapes, the eight gradient and eigen methods put on average 0.46 of a map's energy
inside the detection's own box there against 0.36 at the last stage (stride 32), and HiResCAM's
peak fell inside the box for 1.00 of the detections against 0.80. (The finest pyramid level did
better still, 0.57, only because all those boxes were small enough to be made from it: a larger
box gets a flat map there.)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.model import Model, Wrapped
from camlens.models.windows import (
    head_layers,
    head_logits,
    pyramid_blocks,
    pyramid_inners,
    pyramid_pooled,
)
from camlens.modes import eval_mode

TORCHVISION_DETECTION = {
    "fasterrcnn_resnet50_fpn": "backbone.body.layer3",
    "fasterrcnn_resnet50_fpn_v2": "backbone.body.layer3",
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.12",
    "retinanet_resnet50_fpn": "backbone.body.layer3",
    "fcos_resnet50_fpn": "backbone.body.layer3",
    "ssdlite320_mobilenet_v3_large": "backbone.features.0",
}
"""Name -> the automatic layer: the backbone's last stage of stride 16, which every pyramid level
(and SSDlite's every head) is built from (see the module's "Layers")."""

STRIDE = 16
"""The automatic layer's stride: the last backbone stage whose output is this much smaller."""

DETECTION_SIZES = {"ssdlite320_mobilenet_v3_large": 320}
"""The input size of the detectors whose ``min_size`` is not 800."""
DETECTION_SIZE = 800

ROW = 6
"""A detection row: ``x0, y0, x1, y1, score, label``."""

NOT_DETECTED = -1
"""The label of the rows that pad an image's detections to the batch's largest count."""


@functools.lru_cache(maxsize=1)
def coco_labels() -> tuple[str, ...]:
    """COCO's 91 labels in the order of torchvision's detectors (``__background__`` first, the
    unused ids as ``N/A``): torchvision's weights' ``meta["categories"]``."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


class DetectionNet(Wrapped):
    """``inner`` (a detector with torchvision's format) giving one tensor ``[N, K, 6]`` of rows
    ``(x0, y0, x1, y1, score, label)`` for a batch ``x`` ``[N, 3, H, W]`` of images in [0, 1]:
    each image's detections sorted by score, padded to the batch's largest ``K`` with rows of
    score 0 and label -1. Boxes in ``x``'s pixels, clipped to it; the scores keep their graph, so
    a score can be differentiated. Its layers are named as in ``inner``
    (:class:`~camlens.models.model.Wrapped`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _two_stage(self.inner):
            return two_stage_rows(self.inner, x)
        family = _single_stage(self.inner)
        if family is not None:
            return single_stage_rows(self.inner, x, family)
        return detection_rows(self.inner(list(x.unbind(0))), x)


def _two_stage(net: nn.Module) -> bool:
    """Whether ``net`` is a torchvision Faster R-CNN (no mask or keypoint head), whose rows
    :func:`two_stage_rows` gives."""
    if "torchvision" not in sys.modules:
        return False
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = getattr(net, "roi_heads", None)
    return (
        isinstance(net, GeneralizedRCNN)
        and isinstance(heads, RoIHeads)
        and not heads.has_mask()
        and not heads.has_keypoint()
    )


def two_stage_rows(net: Any, x: torch.Tensor) -> torch.Tensor:
    """A torchvision Faster R-CNN's detections of ``x`` as rows ``[N, K, 6]``, the same as its
    own forward pass gives, computed so that a backward pass is cheap: the box head scores every
    proposal without a graph, the detections are chosen from those scores as torchvision does
    (:func:`_chosen`), and then the head scores again, with the graph, only the proposals the
    detections come from (within :func:`graded`, only those an explainer differentiates). A
    detection's score depends on its proposal's features alone, so the backward pass of N
    detections reads their proposals' features, not the thousand of the RPN. When the explainer
    differentiates at layers before the feature pyramid (:func:`graded`), those features come
    from the region of its level each proposal samples (:mod:`camlens.models.windows`), where
    that pays, so that the backward pass does not run the level's convolution back over the
    whole level."""
    images, _ = net.transform(list(x.unbind(0)))
    blocks = _windowed(net)
    if blocks is not None:
        features, inners = pyramid_inners(net, images.tensors)
    else:
        features, inners = net.backbone(images.tensors), None
    if isinstance(features, torch.Tensor):
        features = {"0": features}
    proposals, _ = net.rpn(images, features)
    heads = net.roi_heads
    sizes = images.image_sizes
    with torch.no_grad():
        pooled = heads.box_roi_pool(features, proposals, sizes)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        chosen = _chosen(heads, logits, regression, proposals, sizes)
    boxes = [c[0] for c in chosen]
    labels = [c[1] for c in chosen]
    scores = torch.cat([c[3] for c in chosen])
    graded = _graded(chosen) if torch.is_grad_enabled() else []
    if sum(len(g) for g in graded):  # those rows scored again, with the graph
        rows = [proposals[i][c[2][g]] for i, (c, g) in enumerate(zip(chosen, graded, strict=True))]
        if blocks is not None and inners is not None:
            pooled = pyramid_pooled(net, blocks, inners, rows)
        else:
            pooled = heads.box_roi_pool(features, rows, sizes)
        logits, _ = heads.box_predictor(heads.box_head(pooled))
        wanted = torch.cat([c[1][g] for c, g in zip(chosen, graded, strict=True)])
        again = torch.softmax(logits, -1).gather(1, wanted[:, None])[:, 0]
        starts = [0, *itertools.accumulate(len(c[1]) for c in chosen)][:-1]
        where = torch.cat([g + start for g, start in zip(graded, starts, strict=True)])
        # the values of the pass without a graph, the gradients of this one: the rows are then
        # ordered as the graded ones were chosen, ties included (a smaller batch through the
        # box head can differ in the last bits and reorder equal scores)
        again = again + (scores[where] - again).detach()
        scores = scores.index_put((where,), again)
    originals = [(int(x.shape[-2]), int(x.shape[-1]))] * len(x)
    out = [
        {"boxes": b, "labels": k, "scores": s}
        for b, k, s in zip(boxes, labels, scores.split([len(b) for b in boxes]), strict=True)
    ]
    return detection_rows(net.transform.postprocess(out, sizes, originals), x)


def _chosen(
    heads: Any,
    logits: torch.Tensor,
    regression: torch.Tensor,
    proposals: list[torch.Tensor],
    sizes: list[tuple[int, int]],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """torchvision's ``RoIHeads.postprocess_detections``, step for step, keeping for each
    detection the proposal it comes from: per image (boxes, labels, proposal rows, scores)."""
    from torchvision.ops import boxes as box_ops

    classes = logits.shape[-1]
    counts = [len(p) for p in proposals]
    decoded = heads.box_coder.decode(regression, proposals)
    probabilities = torch.softmax(logits, -1)
    out = []
    for boxes, scores, size, count in zip(
        decoded.split(counts, 0), probabilities.split(counts, 0), sizes, counts, strict=True
    ):
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        labels = torch.arange(classes, device=logits.device).view(1, -1).expand_as(scores)
        rows = torch.arange(count, device=logits.device).view(-1, 1).expand_as(scores)
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels, rows = labels[:, 1:].reshape(-1), rows[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)
        keep = keep[: heads.detections_per_img]
        out.append((boxes[keep], labels[keep], rows[keep], scores[keep]))
    return out


_GRADED: contextvars.ContextVar[tuple[float, int | None, tuple[str, ...]] | None] = (
    contextvars.ContextVar("camlens_graded_detections", default=None)
)


@contextlib.contextmanager
def graded(min_score: float, detections: int | None, layers: Sequence[str] = ()) -> Iterator[None]:
    """Within it (in this thread), a detector's pass records the graph of the scores of its
    ``detections`` best detections scored at least ``min_score`` only (all: None), the ones an
    explainer will differentiate: the others' scores are constants. Outside, every detection's
    score has its graph. ``layers``: those the explainer differentiates at; when all are in the
    backbone's body, before the feature pyramid, a Faster R-CNN's pyramid levels get no graph
    and its explained boxes are scored from windows of them (:func:`two_stage_rows`)."""
    token = _GRADED.set((min_score, detections, tuple(layers)))
    try:
        yield
    finally:
        _GRADED.reset(token)


def _graded(
    chosen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> list[torch.Tensor]:
    """Per image, the places of the detections whose score gets a graph (:func:`graded`)."""
    limit = _GRADED.get()
    out = []
    for _, _, _, scores in chosen:
        places = torch.arange(len(scores), device=scores.device)
        if limit is not None:
            least, count, _ = limit
            order = scores.argsort(descending=True, stable=True)
            places = order[scores[order] >= least][:count]
        out.append(places)
    return out


def _windowed(net: Any) -> list[list[nn.Module]] | None:
    """A Faster R-CNN's pyramid blocks (:func:`~camlens.models.windows.pyramid_blocks`) when its
    explained boxes are to be scored from windows of the levels: within :func:`graded`, at
    layers all in the backbone's body (a layer of the pyramid, or after it, needs the levels' own
    graph). Not a question of the pass's gradient mode: an explainer's pass switches gradients on
    at its layer, within the backbone (:class:`~camlens.taps.Taps`)."""
    limit = _GRADED.get()
    if limit is None or not limit[2]:
        return None
    body = "backbone.body"
    if not all(name == body or name.startswith(body + ".") for name in limit[2]):
        return None
    return pyramid_blocks(net)


def _single_stage(net: nn.Module) -> str | None:
    """``"retinanet"``, ``"fcos"`` or ``"ssd"`` for torchvision's single-stage detectors (whose
    rows :func:`single_stage_rows` gives), else None."""
    if "torchvision" not in sys.modules:
        return None
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for kind, family in ((RetinaNet, "retinanet"), (FCOS, "fcos"), (SSD, "ssd")):
        if type(net) is kind:  # a subclass may postprocess otherwise
            return family
    return None


def single_stage_rows(net: Any, x: torch.Tensor, family: str) -> torch.Tensor:
    """A torchvision RetinaNet's, FCOS's or SSD's detections of ``x`` as rows ``[N, K, 6]``, the
    same as its own forward pass gives, computed so that a backward pass is cheap: the detections
    are chosen from the head's outputs without a graph, as torchvision does (:func:`_dense_chosen`),
    and then the scores of those an explainer differentiates (:func:`graded`) are computed again
    from the head's outputs, with the graph, at their anchor and class alone (torchvision's own
    postprocessing, differentiated, would spread every detection's gradient over all the anchors
    and classes). A RetinaNet whose head has no normalization scores them again from the window
    of features each reads (:func:`~camlens.models.windows.head_logits`), so that a detection's backward pass does not
    run the head back over every position of every level."""
    images, _ = net.transform(list(x.unbind(0)))
    features = net.backbone(images.tensors)
    if isinstance(features, torch.Tensor):
        features = {"0": features}
    features = list(features.values())
    window = head_layers(net) if family == "retinanet" else None
    with torch.no_grad() if window is not None else contextlib.nullcontext():
        head = net.head(features)
    anchors = net.anchor_generator(images, features)
    sizes = images.image_sizes
    with torch.no_grad():
        detached = {k: v.detach() for k, v in head.items()}
        chosen = _dense_chosen(net, family, detached, anchors, features, sizes)
    scores = torch.cat([c[3] for c in chosen])
    graded = _graded(chosen) if torch.is_grad_enabled() else []
    if sum(len(g) for g in graded):
        again = []
        per_anchor = head["cls_logits"].shape[1] // sum(f[0, 0].numel() for f in features)
        for n, (c, g) in enumerate(zip(chosen, graded, strict=True)):
            places, labels = c[2][g], c[1][g]
            if window is not None:
                logits = head_logits(window, [f[n] for f in features], places, per_anchor)
            else:
                logits = head["cls_logits"][n][places]  # [G, classes]
            if family == "ssd":
                again.append(torch.softmax(logits, -1).gather(1, labels[:, None])[:, 0])
                continue
            score = torch.sigmoid(logits.gather(1, labels[:, None])[:, 0])
            if family == "fcos":
                score = torch.sqrt(score * torch.sigmoid(head["bbox_ctrness"][n][places][:, 0]))
            again.append(score)
        starts = [0, *itertools.accumulate(len(c[1]) for c in chosen)][:-1]
        where = torch.cat([g + start for g, start in zip(graded, starts, strict=True)])
        rescored = torch.cat(again)
        # the values of the pass without a graph (see two_stage_rows), the gradients of this one
        scores = scores.index_put((where,), rescored + (scores[where] - rescored).detach())
    originals = [(int(x.shape[-2]), int(x.shape[-1]))] * len(x)
    counts = [len(c[0]) for c in chosen]
    out = [
        {"boxes": c[0], "labels": c[1], "scores": s}
        for c, s in zip(chosen, scores.split(counts), strict=True)
    ]
    return detection_rows(net.transform.postprocess(out, sizes, originals), x)


def _dense_chosen(
    net: Any,
    family: str,
    head: dict[str, torch.Tensor],
    anchors: list[torch.Tensor],
    features: list[torch.Tensor],
    sizes: list[tuple[int, int]],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """torchvision's ``postprocess_detections`` of RetinaNet, FCOS or SSD, step for step,
    keeping for each detection the anchor it comes from (its row in the head's outputs): per
    image (boxes, labels, anchors, scores)."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import boxes as box_ops

    logits = head["cls_logits"]
    regression = head["bbox_regression"]
    classes = logits.shape[-1]
    out = []
    if family == "ssd":
        probabilities = torch.softmax(logits, dim=-1)
        for n, size in enumerate(sizes):
            boxes = net.box_coder.decode_single(regression[n], anchors[n])
            boxes = box_ops.clip_boxes_to_image(boxes, size)
            parts: list[list[torch.Tensor]] = [[], [], [], []]
            for label in range(1, classes):
                score = probabilities[n][:, label]
                places = torch.where(score > net.score_thresh)[0]
                score = score[places]
                score, top = score.topk(det_utils._topk_min(score, net.topk_candidates, 0))
                places = places[top]
                parts[0].append(boxes[places])
                parts[1].append(torch.full_like(places, label))
                parts[2].append(places)
                parts[3].append(score)
            out.append(_nms(net, *(torch.cat(p) for p in parts)))
        return out
    per_level = [f.shape[2] * f.shape[3] for f in features]
    per_anchor = logits.shape[1] // sum(per_level)
    counts = [n * per_anchor for n in per_level]
    starts = [0, *itertools.accumulate(counts)][:-1]
    for n, size in enumerate(sizes):
        parts = [[], [], [], []]
        for start, count in zip(starts, counts, strict=True):
            level_logits = logits[n, start : start + count]
            level_anchors = anchors[n][start : start + count]
            level_regression = regression[n, start : start + count]
            if family == "fcos":
                centers = head["bbox_ctrness"][n, start : start + count]
                scores = torch.sqrt(torch.sigmoid(level_logits) * torch.sigmoid(centers)).flatten()
            else:
                scores = torch.sigmoid(level_logits).flatten()
            kept = torch.where(scores > net.score_thresh)[0]
            scores = scores[kept]
            scores, top = scores.topk(det_utils._topk_min(kept, net.topk_candidates, 0))
            kept = kept[top]
            places = torch.div(kept, classes, rounding_mode="floor")
            if family == "fcos":
                boxes = net.box_coder.decode(level_regression[places], level_anchors[places])
            else:
                boxes = net.box_coder.decode_single(level_regression[places], level_anchors[places])
            parts[0].append(box_ops.clip_boxes_to_image(boxes, size))
            parts[1].append(kept % classes)
            parts[2].append(places + start)
            parts[3].append(scores)
        out.append(_nms(net, *(torch.cat(p) for p in parts)))
    return out


def _nms(
    net: Any, boxes: torch.Tensor, labels: torch.Tensor, places: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections torchvision's non-maximum suppression keeps, best first."""
    from torchvision.ops import boxes as box_ops

    keep = box_ops.batched_nms(boxes, scores, labels, net.nms_thresh)[: net.detections_per_img]
    return boxes[keep], labels[keep], places[keep], scores[keep]


def detection_rows(out: Any, x: torch.Tensor) -> torch.Tensor:
    """The rows ``[N, K, 6]`` of a detector's output (a list of dicts with ``boxes``,
    ``labels``, ``scores``) for the batch ``x``, or a :class:`ModelError` saying what it is."""
    if not is_detection_output(out) or len(out) != len(x):
        raise ModelError(
            "a detector gives a list of dicts with boxes, labels and scores, one per image, not "
            f"{_describe(out)}"
        )
    rows = []
    for one in out:
        boxes, scores, labels = one["boxes"], one["scores"], one["labels"]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(labels):
            raise ModelError(
                f"a detector's boxes are [K, 4] with K scores and labels, not boxes "
                f"{tuple(boxes.shape)}, {len(scores)} scores, {len(labels)} labels"
            )
        # clipped to the input, as torchvision's detectors clip theirs: the photo's boxes (clipped
        # to the photo) then match their rows on every pass, whatever the detector gives
        height, width = x.shape[-2:]
        boxes = boxes.to(x.dtype).clamp(min=0).minimum(x.new_tensor([width, height] * 2))
        row = torch.cat([boxes, scores.to(x.dtype)[:, None], labels.to(x.dtype)[:, None]], dim=1)
        order = scores.argsort(descending=True, stable=True)
        rows.append(row[order])
    k = max(len(r) for r in rows)
    pad = x.new_zeros(ROW)
    pad[5] = NOT_DETECTED
    return torch.stack(
        [torch.cat([r, pad.expand(k - len(r), ROW)]) if len(r) < k else r for r in rows]
    )


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, list | tuple) and out and isinstance(out[0], dict):
        return f"{len(out)} dicts with {sorted(out[0])}"
    return type(out).__name__


def is_detection_output(out: Any) -> bool:
    """Whether a forward pass's output is a detector's: a list of dicts with ``boxes``,
    ``labels`` and ``scores``."""
    return (
        isinstance(out, list | tuple)
        and len(out) > 0
        and all(isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in out)
    )


def is_detector(net: nn.Module) -> bool:
    """Whether ``net`` looks like a torchvision detector (one of its detection classes, or a
    module with a ``transform`` that postprocesses detections), to be called on a list of
    images; its output then tells (:func:`is_detection_output`)."""
    if isinstance(net, DetectionNet):
        return True
    if "torchvision" in sys.modules:
        from torchvision.models.detection.fcos import FCOS
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
        from torchvision.models.detection.retinanet import RetinaNet
        from torchvision.models.detection.ssd import SSD

        if isinstance(net, GeneralizedRCNN | RetinaNet | FCOS | SSD):
            return True
    return callable(getattr(getattr(net, "transform", None), "postprocess", None))


def detector_preprocess(net: nn.Module) -> PreprocessConfig | None:
    """The preprocessing of a torchvision detector given as an ``nn.Module``: the photo resized
    to a square of its transform's ``min_size`` (its ``fixed_size`` for SSD), not normalized (its
    transform normalizes, and a square of that size is neither resized nor padded, 32 dividing
    it); None for a module that is not one."""
    transform: Any = getattr(net, "transform", None)
    if not is_detector(net) or not hasattr(transform, "min_size"):
        return None
    fixed = getattr(transform, "fixed_size", None)
    side = int(fixed[0]) if fixed else int(transform.min_size[-1])
    return PreprocessConfig(
        input_size=(side, side), interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )


def detection_model(
    net: nn.Module,
    preprocess: PreprocessConfig,
    labels: Sequence[str] | None,
    name: str,
    *,
    spec: str | None = None,
    weights: os.PathLike[str] | None = None,
    default_layer: str | None = None,
) -> Model:
    """A :class:`Model` of kind ``"detection"`` around ``net`` (``labels``: COCO's 91 when None
    and the detector has 91 classes, else ``class 0``, ``class 1``...). Its automatic layer is
    ``default_layer``, or the last stage of stride 16 of a torchvision-style ``backbone.body``
    (:func:`automatic_stage`)."""
    wrapped = net if isinstance(net, DetectionNet) else DetectionNet(net)
    if labels is None:
        count = num_classes(wrapped)
        coco = coco_labels()
        labels = coco if count in (None, len(coco)) else tuple(f"class {i}" for i in range(count))
    return Model(
        wrapped,
        preprocess,
        tuple(labels),
        name,
        spec=spec,
        weights=None if weights is None else Path(weights),
        default_layer=default_layer or automatic_stage(wrapped),
        linear_heads=lambda net: [],
        kind="detection",
    )


def num_classes(net: nn.Module) -> int | None:
    """The classes of a torchvision detector (None when it is not one camlens knows)."""
    state = {k: v for k, v in net.state_dict().items() if v.ndim > 0}
    try:
        return classes_of(state)
    except ModelError:
        return None


def classes_of(state: dict[str, torch.Tensor]) -> int:
    """The number of classes of a torchvision detector's state dict: Faster R-CNN's
    ``cls_score``, or a dense head's class logits over its anchors per location (RetinaNet,
    FCOS, SSD)."""
    if "roi_heads.box_predictor.cls_score.weight" in state:
        return int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    for logits, boxes in (
        ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),
        (
            "head.classification_head.module_list.0.1.weight",
            "head.regression_head.module_list.0.1.weight",
        ),
    ):
        if logits in state and boxes in state:
            anchors = int(state[boxes].shape[0]) // 4
            return int(state[logits].shape[0]) // max(anchors, 1)
    raise ModelError("the weights have no detection head camlens knows (class logits)")


def automatic_stage(net: nn.Module, probe: int = 128) -> str | None:
    """The last child of a torchvision-style ``backbone.body`` (or SSD's ``backbone.features``)
    whose output is at most :data:`STRIDE` times smaller than its input, found by running the
    children one after the other on a ``probe`` x ``probe`` image in eval mode; the last child
    when they cannot be run so (a body that is not a chain), None without such a body."""
    for parent in ("backbone.body", "backbone.features"):
        try:
            module = net.get_submodule(parent)
        except AttributeError:
            continue
        children = list(module.named_children())
        if not children:
            continue
        chosen = children[-1][0]
        x: Any = torch.zeros(1, 3, probe, probe)
        try:
            with eval_mode(module), torch.inference_mode():
                for name, child in children:
                    x = child(x)
                    if (
                        isinstance(x, torch.Tensor)
                        and x.ndim == 4
                        and probe <= STRIDE * x.shape[-1]
                    ):
                        chosen = name
        except Exception:  # not a chain of stages: its last child
            chosen = children[-1][0]
        return f"{parent}.{chosen}"
    return None


def detection_size(name: str) -> int:
    """The input size (a square's side) of torchvision's detector ``name``: its ``min_size``."""
    return DETECTION_SIZES.get(name, DETECTION_SIZE)


def torchvision_detection(
    name: str, state: dict[str, torch.Tensor] | None, **kwargs: Any
) -> nn.Module:
    """torchvision's detector ``name`` with ``weights=None, weights_backbone=None``, sized to fit
    ``state`` (its classes), whose transform normalizes without resizing or padding (the input
    is the photo at the model's input size). ``kwargs`` go to the builder (``box_score_thresh``,
    ...)."""
    import torchvision

    if state is not None:
        kwargs["num_classes"] = classes_of(state)
    net: nn.Module = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, **kwargs
    )
    exact_transform(net)
    return net


def exact_transform(net: nn.Module) -> None:
    """Makes a torchvision detector's ``GeneralizedRCNNTransform`` normalize only: no resize (its
    boxes are then in the input's pixels as they are) and no padding."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = getattr(net, "transform", None)
    if isinstance(transform, GeneralizedRCNNTransform):
        net.transform = _Exact(transform.image_mean, transform.image_std)


@functools.lru_cache(maxsize=1)
def _exact_class() -> type[nn.Module]:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class Exact(GeneralizedRCNNTransform):  # type: ignore[misc]  # torchvision is untyped
        """Normalizes and batches the images as they are (no resize, no padding)."""

        def __init__(self, mean: list[float], std: list[float]) -> None:
            super().__init__(1, 1, mean, std, size_divisible=1)

        def resize(self, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
            return image, target

    Exact.__module__, Exact.__qualname__ = __name__, "Exact"  # pickled as this module's Exact
    return Exact


def __getattr__(name: str) -> Any:
    """``Exact``, the transform class, made on first use (torchvision is imported then)."""
    if name == "Exact":
        return _exact_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _Exact(mean: list[float], std: list[float]) -> nn.Module:  # a class, made lazily
    return _exact_class()(mean, std)


__all__ = [
    "DETECTION_SIZE",
    "NOT_DETECTED",
    "TORCHVISION_DETECTION",
    "DetectionNet",
    "classes_of",
    "coco_labels",
    "detection_model",
    "detection_rows",
    "detection_size",
    "detector_preprocess",
    "exact_transform",
    "graded",
    "is_detection_output",
    "is_detector",
    "num_classes",
    "torchvision_detection",
]
