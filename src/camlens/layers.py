"""Finding target layers: the spatial layers of a model, the automatic choice, and a CAM head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from camlens.errors import LayerError, MethodError
from camlens.models.model import Model

# Module types whose output is not a feature map worth explaining, though it may be 4-D.
_NOT_FEATURES = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...]  # the adapted maps' shape for one input image, [C, H, W]
    adapter: str = "conv"  # how the output becomes maps: conv, channels-last, tokens (1 + 14x14)


def probe_input(model: Model, batch: int = 1) -> torch.Tensor:
    """A fixed pseudo-random input of the model's size (seeded, so results repeat)."""
    height, width = model.preprocess.input_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, height, width, generator=generator).to(model.device)


def spatial_layers(model: Model) -> list[LayerInfo]:
    """Every module whose output the model's adapter rule turns into spatial maps [N, C, H, W]
    with H * W > 1 (one row per input image), in the order their forward passes finish (a
    container after its children), found with one probe forward pass."""
    seen: dict[str, LayerInfo] = {}
    handles = []
    x = probe_input(model)

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            adapter = model.adapter(name, module, output)
            if adapter is None:
                return
            maps = adapter.to_maps(output)
            if maps.ndim == 4 and maps.shape[0] == len(x) and maps[0, 0].numel() > 1:
                seen.pop(name, None)  # re-insert: the last call's position counts
                seen[name] = LayerInfo(
                    name, type(module).__name__, tuple(maps.shape[1:]), adapter.describe()
                )

        return hook

    for name, module in model.net.named_modules():
        if name and not isinstance(module, _NOT_FEATURES):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.inference_mode():
            model.net(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


def auto_layer(model: Model, layers: list[LayerInfo] | None = None) -> str:
    """The automatic target layer: the last module to produce a spatial feature map (pooling and
    dropout excluded). For a container that ends in that module the container is chosen, as its
    forward finishes last: ``bn2`` in EfficientNet, ``layer4`` in ResNet, ``features`` (the last conv
    stage, after its max pooling) in VGG16. A model family may choose otherwise
    (``Model.default_layer``: a ViT's ``blocks[-1].norm1``, see :mod:`camlens.models.families`)."""
    layers = spatial_layers(model) if layers is None else layers
    if not layers:
        raise LayerError(
            f"{model.name} has no layer with a spatial output (no conv layer): "
            "class activation maps need one"
        )
    if model.default_layer is not None and any(i.name == model.default_layer for i in layers):
        return model.default_layer
    return layers[-1].name


@dataclass(frozen=True)
class CamHead:
    """A GAP -> Linear head fed by ``layer``: ``logits = W mean_ij A + b`` (``name`` is the
    Linear's)."""

    layer: str
    name: str
    weight: torch.Tensor  # [classes, channels]
    bias: torch.Tensor | None = None  # [classes]


def find_cam_head(
    model: Model, layer: str, activations: torch.Tensor, logits: torch.Tensor
) -> CamHead | None:
    """The Linear layer that turns the global average of ``activations`` into ``logits``, if any.

    Checked numerically, not by architecture: a Linear qualifies when ``linear(A.mean((2, 3)))``
    equals the model's logits on the probe input. Then CAM is exact and the gradient of every logit
    with respect to ``A`` is ``W[c] / (h * w)``, known without a backward pass. The candidates are
    the model's linear layers (``Model.linear_heads``: its ``nn.Linear`` modules, a Keras model's
    ``Dense`` layers), the last first.
    """
    pooled = activations.mean(dim=(2, 3))
    channels = activations.shape[1]
    for head in reversed(model.linear_heads(model.net)):
        if head.weight.ndim == 2 and head.weight.shape[1] == channels:
            with torch.inference_mode():
                out = nn.functional.linear(pooled.to(head.weight.dtype), head.weight, head.bias)
            if out.shape == logits.shape and torch.allclose(
                out, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()) + 1e-6
            ):
                return CamHead(layer, head.name, head.weight, head.bias)
    return None


def describe_head(model: Model, layer: str, channels: int) -> str:
    """Why CAM does not apply: names the last Linear layer found and what it takes."""
    linears = model.linear_heads(model.net)
    if not linears:
        return f"{model.name} has no Linear layer"
    last = linears[-1]
    features = int(last.weight.shape[-1])
    return (
        f"{model.name} has no global-average-pooling -> Linear head after {layer!r}: its last "
        f"Linear {last.name!r} takes {features} features, {layer!r} gives {channels} channels"
        + ("" if features != channels else " but other layers lie between them")
    )


def require_cam_head(head: CamHead | None, model: Model, layer: str, channels: int) -> CamHead:
    if head is None:
        raise MethodError(
            f"CAM needs a GAP -> Linear head: {describe_head(model, layer, channels)}; "
            "use a gradient method such as gradcam instead, or build a CAM-ready model with "
            "camlens.build_cam_model and train its head (camlens.train, `camlens train`)"
        )
    return head
