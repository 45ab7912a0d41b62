"""Building a CAM-ready classifier from a backbone: :func:`build_cam_model` (see
:mod:`camlens.models.head` for the network and its formula)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from camlens.devices import check_device
from camlens.errors import ModelError
from camlens.models.architectures import DEFAULT_SPEC, DEFAULT_TIMM_NAME
from camlens.models.checkpoint import CHECKPOINT_SUFFIX, read_checkpoint, read_header
from camlens.models.head import (
    Backbone,
    CamConfig,
    CamNet,
    TimmFeatures,
    cam_spec,
    describe,
    feature_channels,
    make_backbone,
    with_input_size,
)
from camlens.models.keras import KERAS_SUFFIXES
from camlens.models.model import Model
from camlens.models.weights import load_state, read_state_dict


def build_cam_model(
    backbone: str | None = None,
    num_classes: int | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    dropout: float = 0.2,
    input_size: int | tuple[int, int] | str | None = None,
    device: str | torch.device = "cpu",
) -> Model:
    """A CAM-ready classifier: ``backbone``'s last convolutional features -> global average pooling
    -> dropout -> ``nn.Linear(K, num_classes)`` (see :mod:`camlens.models.head` for the formula).

    ``backbone``: ``None`` or ``"efficientnet_lite0"`` for the embedded EfficientNet-Lite0 with its
    offline ImageNet weights; ``"timm:NAME"`` (``forward_features``) or ``"torchvision:NAME"`` (VGG
    and AlexNet ``features`` without their last max pooling, so the map keeps the conv5 resolution
    as in the CAM paper; ResNet, RegNet and the like without ``avgpool`` and ``fc``; DenseNet
    ``features`` and its final ReLU; ...), filled from ``weights``: a local state dict
    (.pth/.pt/.bin/.safetensors) of the whole classifier or of its features only (a "no top" file),
    or a ``.camlens`` checkpoint of the same backbone. Without ``weights`` a timm or torchvision
    backbone has random weights, with a warning.

    ``backbone`` may also be a Keras file of a headless base (``.keras``/``.h5``, saved with
    ``include_top=False``; its preprocessing from the JSON beside it, as for
    :func:`camlens.load_model`; the file is read again when the model is loaded back, so keep it
    at the same path) or a ``.camlens`` checkpoint, whose backbone is taken with its trained
    weights and its input size and preprocessing.

    ``num_classes`` (or ``class_names``, which gives it): the head's outputs; :func:`camlens.train`
    names the classes after the folders when no names are given. ``input_size``: (height, width)
    or one side in pixels, or ``"HxW"`` (:func:`camlens.images.parse_size`: ``"128x68"`` is 128
    pixels high and 68 wide), instead of the backbone's own. The head is initialized from
    ``torch``'s current random state (seed it for repeatable results).

    The model's ``spec`` (:func:`camlens.models.head.cam_spec`, its name plus the input size and
    dropout when they are not the defaults) rebuilds it with :func:`camlens.load_model` given the
    weights of the whole network; ``weights`` is ``None`` (the head's weights live in memory only)
    until :func:`camlens.save` writes it, which makes the checkpoint its spec.

    >>> model = build_cam_model("timm:resnet50", num_classes=2, weights="resnet50.safetensors")  # doctest: +SKIP
    >>> camlens.Explainer(model, method="cam")                                                   # doctest: +SKIP
    """
    target = check_device(device)  # before any network is built
    spec = DEFAULT_SPEC if backbone in (None, "default") else str(backbone)
    labels = _class_names(num_classes, class_names)
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), not {dropout}")
    own_size = None
    if spec.endswith(CHECKPOINT_SUFFIX):  # a trained model's backbone, at its input size
        spec, source, own_size = _checkpoint_backbone(Path(spec), weights)
    else:
        source = _backbone(spec, weights)
    preprocess = with_input_size(source.preprocess, input_size)
    channels = feature_channels(source.features, preprocess, spec)
    config = CamConfig(spec, len(labels), channels, float(dropout))
    net = CamNet(source.features, config)
    net.eval()
    own = preprocess.input_size == (own_size or source.preprocess.input_size)
    name = describe(config)
    loadable = cam_spec(config, None if own else preprocess.input_size)
    return Model(net, preprocess, labels, name, spec=loadable).to(target)


def _class_names(num_classes: int | None, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is not None:
        names = tuple(str(n) for n in class_names)
        if num_classes is not None and num_classes != len(names):
            raise ModelError(f"{len(names)} class names given for num_classes={num_classes}")
        if len(set(names)) != len(names):
            raise ModelError(f"class names must differ from each other: {list(names)}")
        num_classes = len(names)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"a classifier needs num_classes >= 2 (or class_names), not {num_classes}")
    return names if class_names is not None else tuple(f"class {i}" for i in range(num_classes))


def _backbone(spec: str, weights: str | os.PathLike[str] | None) -> Backbone:
    """The backbone of ``spec``, filled from ``weights``, or with its default weights, or random
    ones with a warning."""
    path = None if weights is None else Path(weights)
    if spec == DEFAULT_SPEC and path is not None and path.suffix != CHECKPOINT_SUFFIX:
        raise ModelError(
            f"the default backbone has its own weights; to use {path}, give "
            f"'timm:{DEFAULT_TIMM_NAME}' as the backbone"
        )
    if spec.lower().endswith(KERAS_SUFFIXES):
        if path is not None:
            raise ModelError(f"{spec} is a Keras file with its own weights: give no weights file")
        return make_backbone(spec, filled=False)
    source = make_backbone(spec, filled=path is not None)
    if path is not None:
        _fill_backbone(source, spec, path)
    elif spec != DEFAULT_SPEC:
        warnings.warn(
            f"backbone {spec} has random weights (no weights= file given): its features are "
            "noise, so a head trained on them learns little and its maps mean nothing; pass "
            "weights= a local state dict of the pretrained network",
            UserWarning,
            stacklevel=3,
        )
    return source


def _checkpoint_backbone(
    path: Path, weights: str | os.PathLike[str] | None
) -> tuple[str, Backbone, tuple[int, int]]:
    """The backbone of the ``.camlens`` checkpoint ``path`` with its trained weights and the
    checkpoint's preprocessing: (its backbone's spec, the backbone, that backbone's own input
    size)."""
    if weights is not None:
        raise ModelError(
            f"{path} is a checkpoint with its own weights: give no weights file with it"
        )
    header = read_header(path)
    spec = header.config.backbone
    source = make_backbone(spec, filled=True)
    own_size = source.preprocess.input_size
    _fill_backbone(source, spec, path)
    source.preprocess = header.preprocess
    return spec, source, own_size


def _fill_backbone(source: Backbone, spec: str, path: Path) -> None:
    """Loads the backbone's weights from ``path``: a whole classifier's state dict (its head keys
    are ignored), its features only, or a ``.camlens`` checkpoint with the same backbone."""
    prefix: str
    dropped: tuple[str, ...]
    if path.suffix == CHECKPOINT_SUFFIX:
        header, state = read_checkpoint(path)
        if header.config.backbone != spec:
            raise ModelError(
                f"{path}: a checkpoint of backbone {header.config.backbone!r}, not {spec!r}"
            )
        inner = "body." if isinstance(source.features, TimmFeatures) else ""
        prefix, dropped = f"features.{inner}", ("pool.", "dropout.", "fc.")
    else:
        state = read_state_dict(path)
        prefix, dropped = source.prefix, source.dropped
    load_state(
        source.target,
        state,
        f"{path}: does not fit backbone {spec}",
        prefix=prefix,
        ignore=dropped,
    )


__all__ = ["build_cam_model"]
