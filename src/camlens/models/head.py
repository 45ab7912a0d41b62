"""CAM-ready classifiers: a backbone's last convolutional features, global average pooling, dropout
and one linear layer (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization").

With ``A = features(x)`` of shape [N, K, h, w] the network computes

.. math::

    z_c = \\sum_k W_{ck} \\frac{1}{hw} \\sum_{ij} A_{kij} + b_c,

so the class activation map ``M_c[i, j] = sum_k W_ck A_kij`` averages to the logit (less the bias),
and plain CAM reads it straight from the head's weights. :func:`build_cam_model` puts such a head on
the embedded EfficientNet-Lite0, on any timm or torchvision convolutional network (with a local
weights file, or random weights with a warning), and :mod:`camlens.train` trains it on a folder.

The network's modules are always named ``features`` (the backbone, whose output is the CAM layer
that :func:`camlens.layers.auto_layer` picks), ``pool``, ``dropout`` and ``fc`` (the head
:func:`camlens.layers.find_cam_head` finds).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import CamlensError, ModelError
from camlens.images import PreprocessConfig, parse_size
from camlens.models.loading import DEFAULT_SPEC, _read_state_dict, _timm_preprocess
from camlens.models.model import Model

BACKBONE_FORMS = (
    f"'{DEFAULT_SPEC}' (the embedded default, offline ImageNet weights), 'timm:NAME' or "
    "'torchvision:NAME' (with weights= a local state dict; random weights without)"
)
CHECKPOINT_SUFFIX = ".camlens"
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
class _Backbone:
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


def build_cam_model(
    backbone: str | None = None,
    num_classes: int | None = None,
    *,
    weights: str | Path | None = None,
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

    ``num_classes`` (or ``class_names``, which gives it): the head's outputs; :func:`camlens.train`
    names the classes after the folders when no names are given. ``input_size``: (height, width)
    or one side in pixels, or ``"HxW"`` (:func:`camlens.images.parse_size`: ``"128x68"`` is 128
    pixels high and 68 wide), instead of the backbone's own. The head is initialized from
    ``torch``'s current random state (seed it for repeatable results).

    >>> model = build_cam_model("timm:resnet50", num_classes=2, weights="resnet50.safetensors")  # doctest: +SKIP
    >>> camlens.Explainer(model, method="cam")                                                   # doctest: +SKIP
    """
    spec = DEFAULT_SPEC if backbone in (None, "default") else str(backbone)
    labels = _class_names(num_classes, class_names)
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), not {dropout}")
    source = _backbone(spec, weights)
    preprocess = _with_input_size(source.preprocess, input_size)
    channels = feature_channels(source.features, preprocess, spec)
    net = CamNet(source.features, CamConfig(spec, len(labels), channels, float(dropout)))
    net.eval()
    return Model(net, preprocess, labels, describe(net.config)).to(device)


def describe(config: CamConfig) -> str:
    """The name a built model goes by in reports: ``BACKBONE -> GAP -> Linear(K, C)``."""
    return f"{config.backbone} -> GAP -> Linear({config.channels}, {config.num_classes})"


def skeleton(config: CamConfig) -> CamNet:
    """A :class:`CamNet` of ``config``'s architecture with random weights, no warning (for loading
    a checkpoint, whose weights replace them all)."""
    source = _backbone(config.backbone, None, skeleton=True)
    return CamNet(source.features, config)


def feature_channels(features: nn.Module, preprocess: PreprocessConfig, spec: str) -> int:
    """``K``, from one probe forward pass; a :class:`ModelError` unless the output is a spatial
    map [N, K, h, w]."""
    height, width = preprocess.input_size
    was_training = features.training
    features.eval()
    try:
        with torch.inference_mode():
            out = features(torch.zeros(1, 3, height, width))
    except Exception as exc:  # an input too small for the architecture, for one
        raise ModelError(
            f"{spec}: the backbone fails on a {height}x{width} input ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        features.train(was_training)
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


def _with_input_size(
    preprocess: PreprocessConfig, size: int | tuple[int, int] | str | None
) -> PreprocessConfig:
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


def _backbone(spec: str, weights: str | Path | None, *, skeleton: bool = False) -> _Backbone:
    """The backbone of ``spec``: filled from ``weights``, or with its default or random weights
    (random with a warning); ``skeleton=True``: its weights are about to be replaced (no warning,
    and torchvision networks are built without spending time on initialization)."""
    if spec == DEFAULT_SPEC:
        if weights is None and not skeleton:  # a user's build: the embedded ImageNet weights
            from camlens.models.loading import load_model

            return _timm_backbone("tf_efficientnet_lite0", load_model(DEFAULT_SPEC).net)
        if weights is not None and Path(weights).suffix != CHECKPOINT_SUFFIX:
            raise ModelError(
                f"the default backbone has its own weights; to use {weights}, give "
                "'timm:tf_efficientnet_lite0' as the backbone"
            )
        source = _timm_backbone("tf_efficientnet_lite0")
    elif spec.startswith("timm:"):
        source = _timm_backbone(spec[len("timm:") :])
    elif spec.startswith("torchvision:"):
        empty = skeleton or weights is not None
        source = _torchvision_backbone(spec[len("torchvision:") :], empty=empty)
    else:
        raise ModelError(f"unknown backbone {spec!r}: use {BACKBONE_FORMS}")
    if weights is not None:
        _fill_backbone(source, spec, Path(weights))
    elif not skeleton:
        warnings.warn(
            f"backbone {spec} has random weights (no weights= file given): its features are "
            "noise, so a head trained on them learns little and its maps mean nothing; pass "
            "weights= a local state dict of the pretrained network",
            UserWarning,
            stacklevel=3,
        )
    return source


def _timm_backbone(name: str, body: nn.Module | None = None) -> _Backbone:
    import timm

    if body is None:
        if name not in timm.list_models():
            close = timm.list_models(f"*{name}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ModelError(f"timm has no model named {name!r}{hint}")
        body = timm.create_model(name, pretrained=False)
    classifier = str((getattr(body, "pretrained_cfg", {}) or {}).get("classifier", "classifier"))
    preprocess = _timm_preprocess(body)
    body.reset_classifier(0)  # type: ignore[operator]  # the ImageNet classifier goes; forward_features stays as it was
    return _Backbone(TimmFeatures(body), preprocess, prefix="", dropped=(classifier + ".",))


def _torchvision_backbone(name: str, *, empty: bool = False) -> _Backbone:
    """``empty``: built on the meta device and given uninitialized memory (every weight is about
    to be loaded; this skips, for VGG16, initializing a classifier of 120 million weights)."""
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelError(f"torchvision has no classification model named {name!r}")
    if name.startswith(("vit_", "swin_")):
        raise ModelError(_TRANSFORMER.format(f"torchvision:{name}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. inception's note on its init scheme
        if not empty:
            full = torchvision.models.get_model(name, weights=None)
        else:
            with torch.device("meta"):
                full = torchvision.models.get_model(name, weights=None)
    if type(full).__name__ in ("SwinTransformer", "VisionTransformer"):
        raise ModelError(_TRANSFORMER.format(f"torchvision:{name}"))
    source = _torchvision_parts(full, name)
    if empty:
        source.features.to_empty(device="cpu")
        persistent = set(source.features.state_dict())
        if any(n not in persistent for n, _ in source.features.named_buffers()):
            return _torchvision_backbone(name)  # buffers a state dict would not fill: init them
    return source


def _torchvision_parts(full: nn.Module, name: str) -> _Backbone:
    preprocess = _torchvision_preprocess(name)
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
        return _Backbone(features, preprocess, prefix="features.", dropped=dropped)
    if isinstance(children.get("layers"), nn.Sequential):  # MNASNet
        dropped = tuple(f"{n}." for n in children if n != "layers")
        return _Backbone(children["layers"], preprocess, prefix="layers.", dropped=dropped)
    kept = OrderedDict((n, m) for n, m in children.items() if n not in _TORCHVISION_HEADS)
    dropped = tuple(f"{n}." for n in children if n not in kept)
    return _Backbone(nn.Sequential(kept), preprocess, prefix="", dropped=dropped)


def _torchvision_preprocess(name: str) -> PreprocessConfig:
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
        return PreprocessConfig(
            input_size=(size, size),
            interpolation=str(transforms.interpolation.value),
            mean=tuple(transforms.mean),  # type: ignore[arg-type]
            std=tuple(transforms.std),  # type: ignore[arg-type]
        )
    except (ValueError, AttributeError, KeyError, IndexError):
        return PreprocessConfig(interpolation="bilinear")


def _fill_backbone(source: _Backbone, spec: str, path: Path) -> None:
    """Loads the backbone's weights from ``path``: a whole classifier's state dict (its head keys
    are ignored), its features only, or a ``.camlens`` checkpoint with the same backbone."""
    prefix: str
    dropped: tuple[str, ...]
    if path.suffix == CHECKPOINT_SUFFIX:
        from camlens.checkpoint import read_checkpoint

        header, state = read_checkpoint(path)
        if header.config.backbone != spec:
            raise ModelError(
                f"{path}: a checkpoint of backbone {header.config.backbone!r}, not {spec!r}"
            )
        inner = "body." if isinstance(source.features, TimmFeatures) else ""
        prefix, dropped = f"features.{inner}", ("pool.", "dropout.", "fc.")
    else:
        state = _read_state_dict(path)
        prefix, dropped = source.prefix, source.dropped
    target = source.target
    expected = target.state_dict()
    candidates = {k: v for k, v in state.items() if not k.startswith(dropped)}
    picked: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in candidates.items():
        short = key[len(prefix) :] if key.startswith(prefix) else key
        if short in expected:
            picked[short] = tensor
        else:
            unexpected.append(key)
    missing = [k for k in expected if k not in picked]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    wrong = [
        f"{prefix}{k} {tuple(v.shape)} instead of {tuple(expected[k].shape)}"
        for k, v in picked.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
    if problems:
        raise ModelError(f"{path}: does not fit backbone {spec}: " + ", ".join(problems))
    target.load_state_dict(picked, strict=True)


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
    return config


__all__ = [
    "CamConfig",
    "CamNet",
    "build_cam_model",
    "describe",
]
