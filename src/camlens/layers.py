"""Finding target layers: the spatial layers of a model, the automatic choice, and a CAM head."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from camlens.errors import LayerError, MethodError
from camlens.models.model import Model
from camlens.modes import eval_mode
from camlens.taps import RUNS, hooked

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
    shape: tuple[int, ...]  # the maps' shape for one input image, [K, h, w]
    adapter: str = "conv"  # how the output becomes maps (see camlens.adapters)


def probe_input(model: Model, batch: int = 1) -> torch.Tensor:
    """A fixed pseudo-random input of the model's size (seeded, so results repeat)."""
    height, width = model.preprocess.input_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, height, width, generator=generator).to(model.device)


def spatial_layers(model: Model) -> list[LayerInfo]:
    """Every module whose output its model's adapter rule (:mod:`camlens.adapters`) turns into
    maps [N, K, h, w] with h * w > 1, in the order their forward passes finish (a container after
    its children), found with one probe forward pass."""
    seen: dict[str, LayerInfo] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            adapter = model.adapter(name, module, output)
            if adapter is None:
                return
            maps = adapter.to_maps(output)
            if maps.ndim == 4 and maps.shape[2] * maps.shape[3] > 1:
                seen.pop(name, None)  # re-insert: the last call's position counts
                seen[name] = LayerInfo(
                    name, type(module).__name__, tuple(maps.shape[1:]), adapter.describe()
                )

        return hook

    hooks = [
        (module, record(name))
        for name, module in model.net.named_modules()
        if name and not isinstance(module, _NOT_FEATURES)
    ]
    with hooked(hooks), RUNS.shared(), torch.inference_mode():
        model.net(probe_input(model))
    return list(seen.values())


def warn_if_broken(model: Model) -> bool:
    """Whether ``model`` gives finite scores on the probe input; a warning naming the model when
    it does not (NaN weights, say: nothing can be explained with it, though its layers can be
    listed)."""
    with eval_mode(model.net), RUNS.shared(), torch.inference_mode():
        logits = model.net(probe_input(model))
    if isinstance(logits, torch.Tensor) and not bool(torch.isfinite(logits).all()):
        warnings.warn(
            f"{model.name} gives NaN or infinite scores on a test input: the model or its "
            "weights are broken",
            stacklevel=2,
        )
        return False
    return True


def auto_layer(model: Model, layers: list[LayerInfo] | None = None) -> str:
    """The automatic target layer: the last module to produce a spatial feature map (pooling and
    dropout excluded; a container that ends in that module is chosen, as its forward finishes
    last), unless that map is the previous one pooled down to half its grid.

    The exception is a rule on the shapes, not on the architecture: when the last layer's output
    has the channels of the layer that finished just before it on a grid half as large in each
    direction (``floor`` or ``ceil`` of ``n / 2``), an operation camlens does not tap, a final
    pooling, made it, and the layer before it is chosen. That pooling adds no feature, and it
    would cost the map half its resolution: VGG16's ``features`` ends in a max pooling from 14x14
    to 7x7, so the choice is ``features.29``, the ReLU after conv5_3 at 14x14, which is Keras's
    ``block5_conv3`` (a Keras conv layer's output includes its activation), the layer of the CAM
    and Grad-CAM write-ups on VGG. Other networks keep their last stage: ``bn2`` in
    EfficientNet, ``layer4`` in ResNet (their last stage's children have its grid), and a model
    from :func:`camlens.build_cam_model`, whose backbone has no final pooling, ``features``."""
    layers = spatial_layers(model) if layers is None else layers
    if not layers:
        raise LayerError(
            f"{model.name} has no layer with a spatial output (no conv layer): "
            "class activation maps need one"
        )
    if len(layers) > 1 and _pooled_to_half(layers[-2].shape, layers[-1].shape):
        return layers[-2].name
    return layers[-1].name


def _pooled_to_half(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """``after`` [C, H, W] has the channels of ``before`` on a grid half as large each way."""
    if len(before) != 3 or len(after) != 3 or before[0] != after[0]:
        return False
    return all(
        a in (b // 2, (b + 1) // 2) and b >= 2 for b, a in zip(before[1:], after[1:], strict=True)
    )


@dataclass(frozen=True)
class CamHead:
    """A GAP -> Linear head fed by ``layer``: ``logits = linear(mean_ij A) `` (``name`` is the
    Linear's)."""

    layer: str
    name: str
    weight: torch.Tensor  # [classes, channels]


def find_cam_head(
    model: Model, layer: str, activations: torch.Tensor, logits: torch.Tensor
) -> CamHead | None:
    """The Linear layer that turns the global average of ``activations`` into ``logits``, if any.

    Checked numerically, not by architecture: a Linear qualifies when ``linear(A.mean((2, 3)))``
    equals the model's logits on the probe input. Then CAM is exact and the gradient of every logit
    with respect to ``A`` is ``W[c] / (h * w)``, known without a backward pass.
    """
    if not bool(torch.isfinite(logits).all() and torch.isfinite(activations).all()):
        return None  # nothing to compare: the caller says that the model is broken
    pooled = activations.mean(dim=(2, 3))
    channels = activations.shape[1]
    for name, module in reversed(list(model.net.named_modules())):
        if isinstance(module, nn.Linear) and module.in_features == channels:
            with torch.inference_mode():
                out = module(pooled)
            if out.shape == logits.shape and torch.allclose(
                out, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()) + 1e-6
            ):
                return CamHead(layer, name, module.weight.detach())
    return None


def describe_head(model: Model, layer: str, channels: int) -> str:
    """Why CAM does not apply: names the last Linear layer found and what it takes."""
    linears = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return f"{model.name} has no Linear layer"
    name, last = linears[-1]
    return (
        f"{model.name} has no global-average-pooling -> Linear head after {layer!r}: its last "
        f"Linear {name!r} takes {last.in_features} features, {layer!r} gives {channels} channels"
        + ("" if last.in_features != channels else " but other layers lie between them")
    )


def require_cam_head(head: CamHead | None, model: Model, layer: str, channels: int) -> CamHead:
    if head is None:
        raise MethodError(
            f"CAM needs a GAP -> Linear head: {describe_head(model, layer, channels)}; "
            "use a gradient method such as gradcam instead, or build a CAM-ready model with "
            "camlens.build_cam_model and train its head (camlens.train, `camlens train`)"
        )
    return head
