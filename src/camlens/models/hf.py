"""Hugging Face ``transformers`` image classifiers saved with ``save_pretrained``, from a local
folder: ``load_model("hf:path/to/folder")``, ``camlens explain photo.jpg --model hf:path/to/folder``.

The folder holds the model's ``config.json`` and weights, and its image processor's
``preprocessor_config.json``. Nothing is downloaded (``local_files_only``). The model is
``AutoModelForImageClassification``; camlens reads the ``.logits`` of its output, names the classes
by its config's ``id2label`` and preprocesses as its image processor does, except that the whole
photo is resized to the model's input size (no center crop), as everywhere in camlens: its size
(``height`` x ``width``, or ``shortest_edge`` on both sides), resampling filter, rescale factor,
mean and std.

**Layers** keep the model's own module names (``vit.layers.11.layernorm_before``,
``swin.layernorm``, ``convnext.encoder.stages.3``, ``resnet.encoder.stages.3``), and ``camlens
layers`` lists them. Transformers' layers output tokens ``[N, P + h*w, C]``; the token adapter puts
them on the patch grid of the config (``image_size / patch_size``, and for a hierarchical model such
as Swin that grid halved at each stage), dropping the ``P`` prefix tokens of its embeddings (the
class token, DeiT's distillation token, register tokens). Channels-last outputs ``[N, h, w, C]``
(inside ConvNeXt's blocks) are permuted; conv maps are taken as they are.

**The automatic layer** follows the rule for timm's transformers (:mod:`camlens.models.families`):
a model that classifies from its class token (ViT, DeiT, BEiT without mean pooling) gets the input
of its last attention, the last layer's ``layernorm_before``, because after that attention nothing
carries the patch tokens to the class token, and every gradient map there is flat. Others (Swin,
BEiT with mean pooling, the CNNs) keep the general rule: the last spatial layer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.adapters import CHANNELS_LAST, CONV, LayerAdapter, Tokens
from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.model import Model

HF_PREFIX = "hf:"

Grid = tuple[int, int]

# PIL's resampling filters by number (what image processors store in ``resample``)
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


def load_hf(folder: str | os.PathLike[str], weights: object = None) -> Model:
    """The classifier saved in ``folder`` (see the module's docstring), in eval mode."""
    path = Path(folder)
    if weights is not None:
        raise ModelError(f"hf:{path} is a saved model folder with its own weights; drop {weights}")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"hf:{path}: not a folder saved with save_pretrained (no config.json in it)"
        )
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "hf: models need the transformers package: pip install 'camlens[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()  # no "Loading weights" progress bars
    transformers.utils.logging.disable_progress_bar()
    try:
        net = transformers.AutoModelForImageClassification.from_pretrained(
            str(path), local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"hf:{path}: cannot load an image classifier from it ({exc})") from None
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            str(path), local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"hf:{path}: no image processor saved beside the model ({exc}); save one with "
            "AutoImageProcessor.save_pretrained"
        ) from None
    net.__class__ = _logits_class(type(net))
    net.eval()
    config = net.config
    labels = _labels(config)
    preprocess = _preprocess(processor, path)
    spec = f"{HF_PREFIX}{path}"
    name = f"{type(net).__mro__[1].__name__} ({path.name})"
    model = Model(net, preprocess, labels, name, spec=spec)
    model.adapter = HFTokens(net, preprocess.input_size)
    model.default_layer = class_token_layer(net)
    return model


_LOGITS_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _logits_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of the model's class whose ``forward`` takes the normalized batch and returns
    the ``.logits`` of the output (the module and its names stay the model's own)."""
    if cls in _LOGITS_CLASSES:
        return _LOGITS_CLASSES[cls]

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = cls.forward(self, pixel_values=x, return_dict=True)
        logits: torch.Tensor = out.logits
        return logits

    made = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return _LOGITS_CLASSES.setdefault(cls, made)


def _labels(config: Any) -> tuple[str, ...]:
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    count = int(getattr(config, "num_labels", len(id2label)))
    return tuple(id2label.get(i, f"class {i}") for i in range(count))


def _preprocess(processor: Any, path: Path) -> PreprocessConfig:
    size = processor.size
    size = (
        size
        if isinstance(size, dict)
        else {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
    )
    if size.get("height") and size.get("width"):
        input_size = (int(size["height"]), int(size["width"]))
    elif size.get("shortest_edge"):
        input_size = (int(size["shortest_edge"]),) * 2
    else:
        raise ModelError(f"hf:{path}: its image processor gives no input size ({size})")
    resample = getattr(processor, "resample", 2)
    if hasattr(resample, "value") and isinstance(resample.value, int):
        resample = resample.value
    interpolation = _RESAMPLE.get(resample if isinstance(resample, int) else 2, "bilinear")
    scale = 255.0 * (float(processor.rescale_factor) if processor.do_rescale else 1.0)
    if getattr(processor, "do_normalize", False):
        mean = [float(v) for v in processor.image_mean]
        std = [float(v) for v in processor.image_std]
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    return PreprocessConfig(
        input_size=(input_size[0], input_size[1]),
        interpolation=interpolation,
        mean=(mean[0] / scale, mean[1] / scale, mean[2] / scale),
        std=(std[0] / scale, std[1] / scale, std[2] / scale),
    )


def _pair(value: object) -> Grid | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def prefix_tokens(net: nn.Module) -> int:
    """How many tokens come before the patch tokens: the class token, DeiT's distillation token
    and register tokens of the model's embeddings."""
    for name, module in net.named_modules():
        if name.endswith("embeddings") and hasattr(module, "patch_embeddings"):
            count = sum(
                getattr(module, a, None) is not None for a in ("cls_token", "distillation_token")
            )
            registers = getattr(module, "register_tokens", None)
            if isinstance(registers, torch.Tensor):
                count += int(registers.shape[1])
            return count
    return 0


class HFTokens:
    """The adapter rule of a transformers image model: 3-D outputs ``[N, T, C]`` are tokens on one
    of the model's grids (the patch grid, halved at each stage of a hierarchical model) after the
    prefix tokens; 4-D outputs are channels-last when their middle axes are one of the feature
    grids of the input and their last two are not (ConvNeXt's blocks), else conv maps."""

    def __init__(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        config = net.config
        self.prefix = prefix_tokens(net)
        self.grids: set[Grid] = set()
        image = _pair(getattr(config, "image_size", None)) or input_size
        patch = _pair(getattr(config, "patch_size", None))
        if patch is not None:
            first = (image[0] // patch[0], image[1] // patch[1])
            stages = len(getattr(config, "depths", None) or [0])
            for k in range(stages + 1 if stages > 1 else 1):
                self.grids.add((math.ceil(first[0] / 2**k), math.ceil(first[1] / 2**k)))
        self.maps = {
            (math.ceil(input_size[0] / 2**k), math.ceil(input_size[1] / 2**k)) for k in range(7)
        }

    def __call__(self, name: str, module: nn.Module, output: object) -> LayerAdapter | None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        if output.ndim == 3:
            count = int(output.shape[1])
            for prefix in dict.fromkeys((self.prefix, 0)):
                for h, w in sorted(self.grids):
                    if prefix + h * w == count:
                        return Tokens(prefix, (h, w))
            return None
        if output.ndim == 4:
            last = (int(output.shape[1]), int(output.shape[2])) in self.maps
            first = (int(output.shape[2]), int(output.shape[3])) in self.maps
            return CHANNELS_LAST if last and not first else CONV
        return None


def class_token_layer(net: nn.Module) -> str | None:
    """The last layer's ``layernorm_before`` (the input of the last attention) for a model that
    classifies from its class token; None for others (no prefix token, or mean pooling)."""
    if prefix_tokens(net) < 1 or getattr(net.config, "use_mean_pooling", False):
        return None
    found = None
    for name, module in net.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and isinstance(getattr(module[-1], "layernorm_before", None), nn.Module)
        ):
            found = f"{name}.{len(module) - 1}.layernorm_before"
    return found
