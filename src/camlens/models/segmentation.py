"""Segmentation models: networks whose output is per-pixel logits ``[N, classes, H, W]`` (or a
dict whose ``out`` is, as torchvision's segmentation models give, with an ``aux`` output that is
not explained). :class:`SegmentationNet` makes such a network give the tensor itself, keeping its
layers' names; a :class:`~camlens.models.Model` of kind ``"segmentation"`` holds it. What is
explained of it is a :class:`~camlens.targets.Segment`: a class's logits summed over a region."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.model import Model, Wrapped

#: torchvision's segmentation models (VOC's 21 classes, built with ``weights=None``).
TORCHVISION_SEGMENTATION = {
    "fcn_resnet50": "backbone.layer4",
    "fcn_resnet101": "backbone.layer4",
    "deeplabv3_resnet50": "backbone.layer4",
    "deeplabv3_resnet101": "backbone.layer4",
    "deeplabv3_mobilenet_v3_large": "backbone.16",
    "lraspp_mobilenet_v3_large": "backbone.16",
}
"""Name -> the automatic layer: the backbone's last stage (the features the head reads)."""

VOC_LABELS = (
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""Pascal VOC's 21 classes, in the order of torchvision's VOC-trained segmentation models."""

BACKGROUND = ("__background__", "background")
"""Labels of a background class, left out of ``top`` unless asked for by name."""

#: torchvision's segmentation transforms: the photo resized to 520 pixels (no crop).
SEGMENTATION_SIZE = 520


class SegmentationNet(Wrapped):
    """``inner`` giving its logits ``[N, classes, H, W]``: a dict's ``out`` (``aux`` dropped);
    its layers named as in ``inner`` (:class:`~camlens.models.model.Wrapped`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segmentation_logits(self.inner(x))


def segmentation_logits(out: Any) -> torch.Tensor:
    """The logits ``[N, classes, H, W]`` of a segmentation network's output (a tensor, or a dict
    with ``out``), or a :class:`ModelError` saying what it is."""
    if isinstance(out, dict):
        if "out" not in out:
            raise ModelError(
                f"a segmentation model's dict output needs an 'out' entry; it has {sorted(out)}"
            )
        out = out["out"]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"a segmentation model gives logits [N, classes, H, W], not {shape}")
    return out


def is_segmentation_output(out: Any) -> bool:
    """Whether a forward pass's output is a segmentation model's: a dict with ``out`` or a
    tensor ``[N, classes, H, W]`` with at least 2 classes and 2 pixels (a classifier's
    ``[N, classes, 1, 1]`` is not)."""
    if isinstance(out, dict):
        out = out.get("out")
    return (
        isinstance(out, torch.Tensor)
        and out.ndim == 4
        and out.shape[1] >= 2
        and out.shape[2] * out.shape[3] > 1
    )


def segmentation_model(
    net: nn.Module,
    preprocess: PreprocessConfig,
    labels: tuple[str, ...] | None,
    name: str,
    *,
    spec: str | None = None,
    weights: os.PathLike[str] | None = None,
    default_layer: str | None = None,
) -> Model:
    """A :class:`Model` of kind ``"segmentation"`` around ``net`` (its classes counted by a probe
    pass when ``labels`` is None: ``class 0``, ``class 1``...)."""
    wrapped = net if isinstance(net, SegmentationNet) else SegmentationNet(net)
    if labels is None:
        height, width = preprocess.input_size
        wrapped.eval()
        with torch.inference_mode():
            out = wrapped(torch.zeros(1, 3, height, width))
        labels = tuple(f"class {i}" for i in range(out.shape[1]))
    return Model(
        wrapped,
        preprocess,
        labels,
        name,
        spec=spec,
        weights=None if weights is None else Path(weights),
        default_layer=default_layer,
        kind="segmentation",
    )


def torchvision_segmentation(name: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """torchvision's segmentation network ``name`` with ``weights=None, weights_backbone=None``,
    sized to fit ``state`` (its classes, and its ``aux`` head when the file has one)."""
    import torchvision

    kwargs: dict[str, Any] = {}
    if state is not None:
        convs = [
            v
            for k, v in state.items()
            if k.startswith("classifier.") and k.endswith("weight") and v.ndim == 4
        ]
        if not convs:
            raise ModelError(f"the weights have no classifier convolution: not a {name} state dict")
        kwargs["num_classes"] = int(convs[-1].shape[0])
        if not name.startswith("lraspp"):
            kwargs["aux_loss"] = any(k.startswith("aux_classifier.") for k in state)
    net: nn.Module = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, **kwargs
    )
    return net


def background_classes(model: Model) -> set[int]:
    """The classes of ``model`` named as a background (:data:`BACKGROUND`)."""
    return {i for i, label in enumerate(model.labels) if label.casefold() in BACKGROUND}


__all__ = [
    "BACKGROUND",
    "TORCHVISION_SEGMENTATION",
    "VOC_LABELS",
    "SegmentationNet",
    "background_classes",
    "is_segmentation_output",
    "segmentation_logits",
    "segmentation_model",
    "torchvision_segmentation",
]
