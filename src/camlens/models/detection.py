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

**Methods.** Every gradient method (``gradcam``, ``gradcampp``, ``xgradcam``, ``layercam``,
``hirescam``, ...) and Eigen-CAM (no gradient: the first principal component of the
activations, the same map for every detection) apply; the gradients of N detections come from one
forward pass and one batched backward. The perturbation methods (Score-CAM, Ablation-CAM, ...)
score their masked or ablated passes with the matching score, at the price of one detector pass
per mask (slow at 800 pixels). CAM does not apply: a detector has no GAP -> Linear head.

**Layers.** The candidate layers are the modules a forward pass runs once per image (the
backbone's stages and blocks, the feature pyramid's levels ``backbone.fpn.layer_blocks.0..3`` and
RetinaNet's and FCOS's ``p6``/``p7``; heads shared between pyramid levels are not); the
automatic layer of each model loaded by name is in :data:`TORCHVISION_DETECTION`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.model import Model

TORCHVISION_DETECTION = {
    "fasterrcnn_resnet50_fpn": "backbone.body.layer4",
    "fasterrcnn_resnet50_fpn_v2": "backbone.body.layer4",
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.16",
    "retinanet_resnet50_fpn": "backbone.body.layer4",
    "fcos_resnet50_fpn": "backbone.body.layer4",
    "ssdlite320_mobilenet_v3_large": "backbone.features.1",
}
"""Name -> the automatic layer (provisional: the backbone's last stage, the features every
pyramid level is built from)."""

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


class DetectionNet(nn.Module):
    """``net`` (a detector with torchvision's format) giving one tensor ``[N, K, 6]`` of rows
    ``(x0, y0, x1, y1, score, label)`` for a batch ``x`` ``[N, 3, H, W]`` of images in [0, 1]:
    each image's detections sorted by score, padded to the batch's largest ``K`` with rows of
    score 0 and label -1. Boxes in ``x``'s pixels; the scores keep their graph, so a score can be
    differentiated. ``net``'s children are this module's, under the same names."""

    inner: nn.Module

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.__dict__["inner"] = net  # not a child: its children are ours
        for name, child in net.named_children():
            self.add_module(name, child)
        self.training = net.training  # the mode it was given in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return detection_rows(self.inner(list(x.unbind(0))), x)

    def train(self, mode: bool = True) -> DetectionNet:
        super().train(mode)
        self.inner.training = mode
        return self


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
        row = torch.cat(
            [boxes.to(x.dtype), scores.to(x.dtype)[:, None], labels.to(x.dtype)[:, None]], dim=1
        )
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
    ``default_layer``, or the last stage of a torchvision-style ``backbone.body``."""
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
        default_layer=default_layer or _last_stage(wrapped),
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


def _last_stage(net: nn.Module) -> str | None:
    """The last child of a torchvision-style ``backbone.body`` (or SSD's ``backbone.features``)."""
    for parent in ("backbone.body", "backbone.features"):
        try:
            module = net.get_submodule(parent)
        except AttributeError:
            continue
        names = [n for n, _ in module.named_children()]
        if names:
            return f"{parent}.{names[-1]}"
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

    return Exact


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
    "exact_transform",
    "is_detection_output",
    "is_detector",
    "num_classes",
    "torchvision_detection",
]
