"""CAM-ready classifiers: a backbone's last convolutional features, global average pooling, dropout
and one linear layer (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization").

With ``A = features(x)`` of shape [N, K, h, w] the network computes

.. math::

    z_c = \\sum_k W_{ck} \\frac{1}{hw} \\sum_{ij} A_{kij} + b_c,

so the class activation map ``M_c[i, j] = sum_k W_ck A_kij`` averages to the logit (less the bias),
and plain CAM reads it straight from the head's weights. This module holds the network
(:class:`CamNet`), its backbones (the embedded EfficientNet-Lite0, any timm or torchvision
convolutional network) and its spec; :func:`camlens.build_cam_model` (:mod:`camlens.models.build`)
builds one from a backbone and a weights file, and :mod:`camlens.train` trains it on a folder.

The network's modules are always named ``features`` (the backbone, whose output is the CAM layer
that :func:`camlens.layers.auto_layer` picks), ``pool``, ``dropout`` and ``fc`` (the head
:func:`camlens.layers.find_cam_head` finds).

A built network's spec, the string :func:`camlens.load_model` rebuilds it from (given the weights
of the whole network), is its name with what the name leaves out when it is not the default::

    BACKBONE [at HxW] -> GAP [-> Dropout(P)] -> Linear(K, C)

``efficientnet_lite0 -> GAP -> Linear(1280, 2)``, ``torchvision:resnet18 at 64x64 -> GAP ->
Dropout(0.3) -> Linear(512, 3)``: ``at HxW`` when the input size is not the backbone's own,
``Dropout(P)`` when the dropout is not 0.2.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camlens.errors import CamlensError, ModelError
from camlens.images import PreprocessConfig, parse_size
from camlens.models.architectures import (
    DEFAULT_SPEC,
    DEFAULT_TIMM_NAME,
    check_torchvision_name,
    default_network,
    timm_network,
    timm_preprocess,
    torchvision_network,
    torchvision_preprocess,
)
from camlens.modes import eval_mode

BACKBONE_FORMS = (
    f"'{DEFAULT_SPEC}' (the embedded default, offline ImageNet weights), 'timm:NAME' or "
    "'torchvision:NAME' (with weights= a local state dict; random weights without), a Keras "
    "file of a headless base (.keras, .h5) or a .camlens checkpoint"
)
#: The dropout of :func:`camlens.build_cam_model` unless told otherwise (left out of specs).
DEFAULT_DROPOUT = 0.2
_TRANSFORMER = (
    "{} is a vision transformer: its features are tokens, not the [N, C, H, W] map of a "
    "convolutional backbone that CAM needs"
)

# Modules of a torchvision classifier that come after its last convolutional features.
_TORCHVISION_HEADS = frozenset(
    {"avgpool", "fc", "dropout", "classifier", "head", "heads", "AuxLogits", "aux1", "aux2"}
)


@dataclass(frozen=True)
class CamConfig:
    """What it takes to rebuild a :class:`CamNet` (written into checkpoints).

    ``backbone``: the spec (``efficientnet_lite0``, ``timm:NAME``, ``torchvision:NAME``);
    ``channels``: ``K``, the depth of the feature map; ``dropout``: the probability before ``fc``.
    """

    backbone: str
    num_classes: int
    channels: int
    dropout: float


class TimmFeatures(nn.Module):
    """A timm model (its classifier removed) used for ``forward_features`` only: [N, K, h, w]."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body.forward_features(x)  # type: ignore[operator]
        return out


class KerasFeatures(nn.Module):
    """A headless Keras base (``include_top=False``) as a backbone: its ``[N, H, W, K]`` output as
    the ``[N, K, H, W]`` map the head pools. ``net`` is the :class:`~camlens.models.keras.KerasNet`
    (its layers keep their Keras names under ``features.net``)."""

    def __init__(self, net: nn.Module, channels_first: bool) -> None:
        super().__init__()
        self.net = net
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out if self.channels_first or out.ndim != 4 else out.permute(0, 3, 1, 2)


class CamNet(nn.Module):
    """``fc(dropout(GAP(features(x))))``: logits [N, classes] from a normalized batch [N, 3, H, W].

    ``features`` is the backbone (its output is the CAM layer), ``pool`` the global average pooling,
    ``fc`` the ``nn.Linear(K, classes)`` whose weight rows are the CAM class weights.
    ``training_summary`` holds what :func:`camlens.train` recorded (saved in checkpoints).
    """

    def __init__(self, features: nn.Module, config: CamConfig) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.channels, config.num_classes)
        self.training_summary: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The logits from pooled features [N, K]: ``fc(dropout(pooled))``."""
        out: torch.Tensor = self.fc(self.dropout(pooled))
        return out


@dataclass
class Backbone:
    """A feature extractor, and how its state-dict keys relate to those of the full network:
    ``key_in_file = prefix + key_in_features``; keys under ``dropped`` belong to the removed head."""

    features: nn.Module
    preprocess: PreprocessConfig
    prefix: str = ""
    dropped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def target(self) -> nn.Module:
        """The module whose state dict a weights file fills (a timm model inside its wrapper)."""
        return self.features.body if isinstance(self.features, TimmFeatures) else self.features


def describe(config: CamConfig) -> str:
    """The name a built model goes by in reports: ``BACKBONE -> GAP -> Linear(K, C)``."""
    return f"{config.backbone} -> GAP -> Linear({config.channels}, {config.num_classes})"


def skeleton(config: CamConfig) -> tuple[CamNet, PreprocessConfig]:
    """A :class:`CamNet` of ``config``'s architecture with uninitialized or random weights, no
    warning (for loading a whole network's weights, which replace them all), and its backbone's
    own preprocessing."""
    source = make_backbone(config.backbone, filled=True)
    return CamNet(source.features, config), source.preprocess


def feature_channels(features: nn.Module, preprocess: PreprocessConfig, spec: str) -> int:
    """``K``, from one probe forward pass; a :class:`ModelError` unless the output is a spatial
    map [N, K, h, w]."""
    height, width = preprocess.input_size
    try:
        with eval_mode(features), torch.inference_mode():
            out = features(torch.zeros(1, 3, height, width))
    except Exception as exc:  # an input too small for the architecture, for one
        raise ModelError(
            f"{spec}: the backbone fails on a {height}x{width} input ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{spec}: its features are {shape}, not a [N, C, H, W] map: CAM needs a "
            "convolutional backbone"
        )
    if out.shape[2] * out.shape[3] < 2:
        raise ModelError(
            f"{spec}: a {height}x{width} input gives a {out.shape[2]}x{out.shape[3]} feature map, "
            "too small for a map: use a larger input_size"
        )
    return int(out.shape[1])


def cam_spec(config: CamConfig, input_size: tuple[int, int] | None = None) -> str:
    """The spec of a :class:`CamNet` of ``config`` whose input is ``input_size`` (height, width;
    ``None`` for the backbone's own): :func:`describe`, with ``at HxW`` and ``Dropout(P)`` when
    they are not the defaults (see the module docstring). :func:`parse_cam_spec` reads it back."""
    backbone = config.backbone
    if input_size is not None:
        backbone += f" at {input_size[0]}x{input_size[1]}"
    dropout = "" if config.dropout == DEFAULT_DROPOUT else f" -> Dropout({config.dropout!r})"
    return f"{backbone} -> GAP{dropout} -> Linear({config.channels}, {config.num_classes})"


_CAM_SPEC = re.compile(
    r"(?P<backbone>\S+)(?: at (?P<height>\d+)x(?P<width>\d+))? -> GAP"
    r"(?: -> Dropout\((?P<dropout>[-+.\deE]+)\))? -> Linear\((?P<channels>\d+), (?P<classes>\d+)\)"
)


def is_cam_spec(text: str) -> bool:
    """Whether ``text`` looks like a built network's spec (its ``-> GAP ->`` part)."""
    return " -> GAP" in text


def parse_cam_spec(text: str) -> tuple[CamConfig, tuple[int, int] | None]:
    """The config and input size (``None``: the backbone's own) of a spec written by
    :func:`cam_spec`; a :class:`ModelError` saying the form when ``text`` does not have it."""
    match = _CAM_SPEC.fullmatch(text.strip())
    if match is None:
        raise ModelError(
            f"{text!r} is not the spec of a built model: 'BACKBONE [at HxW] -> GAP "
            "[-> Dropout(P)] -> Linear(K, C)', as in 'efficientnet_lite0 -> GAP -> Linear(1280, 2)'"
        )
    dropout = float(match["dropout"]) if match["dropout"] else DEFAULT_DROPOUT
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"{text!r}: dropout must be in [0, 1), not {dropout}")
    size = None
    if match["height"]:
        size = (int(match["height"]), int(match["width"]))
    config = CamConfig(match["backbone"], int(match["classes"]), int(match["channels"]), dropout)
    return config, size


def with_input_size(
    preprocess: PreprocessConfig, size: int | tuple[int, int] | str | None
) -> PreprocessConfig:
    """``preprocess`` with another input size (height, width, or one side for a square);
    unchanged for ``None``."""
    if size is None:
        return preprocess
    try:
        pair = parse_size(size)
    except CamlensError:
        pair = (0, 0)
    if min(pair) < 16:
        raise ModelError(f"input_size must be (height, width) of at least 16 pixels, not {size}")
    return PreprocessConfig(
        (pair[0], pair[1]), preprocess.interpolation, preprocess.mean, preprocess.std
    )


def make_backbone(spec: str, *, filled: bool) -> Backbone:
    """The backbone of ``spec`` (see :data:`BACKBONE_FORMS`). ``filled=True``: every weight is
    about to be loaded from a file, so the default backbone is built without its embedded weights
    and torchvision networks without spending time on initialization; otherwise the default has
    its ImageNet weights and the others random ones."""
    if spec == DEFAULT_SPEC:
        if filled:
            return _timm_backbone(DEFAULT_TIMM_NAME)
        return _timm_backbone(DEFAULT_TIMM_NAME, default_network())
    if spec.startswith("timm:"):
        return _timm_backbone(spec[len("timm:") :])
    if spec.startswith("torchvision:"):
        return _torchvision_backbone(spec[len("torchvision:") :], empty=filled)
    from camlens.models.keras import KERAS_SUFFIXES, load_keras

    if spec.lower().endswith(KERAS_SUFFIXES):
        loaded = load_keras(spec)  # its preprocessing from the JSON beside it, or guessed
        net = loaded.net
        channels_first = bool(getattr(net, "channels_first", False))
        return Backbone(KerasFeatures(net, channels_first), loaded.preprocess)
    raise ModelError(f"unknown backbone {spec!r}: use {BACKBONE_FORMS}")


def _timm_backbone(name: str, body: nn.Module | None = None) -> Backbone:
    if body is None:
        body = timm_network(name)
    classifier = str((getattr(body, "pretrained_cfg", {}) or {}).get("classifier", "classifier"))
    preprocess = timm_preprocess(body)
    body.reset_classifier(0)  # type: ignore[operator]  # the ImageNet classifier goes; forward_features stays as it was
    return Backbone(TimmFeatures(body), preprocess, prefix="", dropped=(classifier + ".",))


def _torchvision_backbone(name: str, *, empty: bool = False) -> Backbone:
    """``empty``: built on the meta device and given uninitialized memory (every weight is about
    to be loaded; this skips, for VGG16, initializing a classifier of 120 million weights)."""
    check_torchvision_name(name)
    if name.startswith(("vit_", "swin_")):
        raise ModelError(_TRANSFORMER.format(f"torchvision:{name}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. inception's note on its init scheme
        if not empty:
            full = torchvision_network(name)
        else:
            with torch.device("meta"):
                full = torchvision_network(name)
    if type(full).__name__ in ("SwinTransformer", "VisionTransformer"):
        raise ModelError(_TRANSFORMER.format(f"torchvision:{name}"))
    source = _torchvision_parts(full, name)
    if empty:
        source.features.to_empty(device="cpu")
        persistent = set(source.features.state_dict())
        if any(n not in persistent for n, _ in source.features.named_buffers()):
            return _torchvision_backbone(name)  # buffers a state dict would not fill: init them
    return source


def _torchvision_parts(full: nn.Module, name: str) -> Backbone:
    preprocess = torchvision_preprocess(name)
    children = dict(full.named_children())
    features: nn.Module
    if isinstance(children.get("features"), nn.Sequential):
        layers = list(children["features"].named_children())
        while layers and isinstance(layers[-1][1], nn.MaxPool2d):  # VGG, AlexNet: keep conv5's grid
            layers.pop()
        modules: OrderedDict[str, nn.Module] = OrderedDict(layers)
        if type(full).__name__ == "DenseNet":  # its forward applies a ReLU after features
            modules["relu"] = nn.ReLU()
        features = nn.Sequential(modules)
        dropped = tuple(f"{n}." for n in children if n != "features")
        return Backbone(features, preprocess, prefix="features.", dropped=dropped)
    if isinstance(children.get("layers"), nn.Sequential):  # MNASNet
        dropped = tuple(f"{n}." for n in children if n != "layers")
        return Backbone(children["layers"], preprocess, prefix="layers.", dropped=dropped)
    kept = OrderedDict((n, m) for n, m in children.items() if n not in _TORCHVISION_HEADS)
    dropped = tuple(f"{n}." for n in children if n not in kept)
    return Backbone(nn.Sequential(kept), preprocess, prefix="", dropped=dropped)


def header_json(config: CamConfig) -> dict[str, Any]:
    """``config`` as JSON-ready values."""
    return {
        "backbone": config.backbone,
        "num_classes": config.num_classes,
        "channels": config.channels,
        "dropout": config.dropout,
    }


def config_from_json(data: Any, where: str) -> CamConfig:
    """The inverse of :func:`header_json`, checking every field."""
    try:
        config = CamConfig(
            backbone=str(data["backbone"]),
            num_classes=int(data["num_classes"]),
            channels=int(data["channels"]),
            dropout=float(data["dropout"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: the header's model description is incomplete ({exc})") from None
    if config.num_classes < 1 or config.channels < 1 or not 0.0 <= config.dropout < 1.0:
        raise ModelError(
            f"{where}: the header's model description is impossible: {config.num_classes} "
            f"classes, {config.channels} channels, dropout {config.dropout} (want at least 1, at "
            "least 1, and [0, 1))"
        )
    return config


__all__ = [
    "BACKBONE_FORMS",
    "Backbone",
    "CamConfig",
    "CamNet",
    "TimmFeatures",
    "cam_spec",
    "describe",
    "feature_channels",
    "make_backbone",
    "parse_cam_spec",
    "skeleton",
]
