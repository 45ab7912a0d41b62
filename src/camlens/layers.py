"""Finding target layers: the spatial layers of a model, the automatic choice, and a CAM head."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from camlens.errors import LayerError, MethodError, ModelError
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
    maps [N, K, h, w] with h * w > 1 (one row per input image), in the order their forward passes finish (a container after
    its children), found with one probe forward pass. A detector's layers are those run once
    per pass (a head shared by the pyramid's levels gives no one map of the image)."""
    seen: dict[str, LayerInfo] = {}
    calls: dict[str, int] = {}
    x = probe_input(model)

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            adapter = model.adapter(name, module, output)
            if adapter is None:
                return
            maps = adapter.to_maps(output)
            if maps.ndim == 4 and maps.shape[0] == len(x) and maps.shape[2] * maps.shape[3] > 1:
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
    with hooked(hooks), eval_mode(model.net), RUNS.shared(), torch.inference_mode():
        model.net(x)
    if model.kind == "detection":
        return [info for info in seen.values() if calls[info.name] == 1]
    return list(seen.values())


def every_layer(model: Model) -> list[tuple[str, str, tuple[int, ...]]]:
    """``camlens layers --all``: every named module (a Keras model's layers, as ``model.summary()``
    lists them) that runs on the probe input, in the order their forward passes finish, as
    ``(name, type, output shape for one image)``; an output that is not one tensor has the
    shape ``()``. A Keras model's layers give the shapes Keras knows (``-1`` for a size left
    open). The spatial layers among them are those of :func:`spatial_layers`."""
    keras_layers = getattr(model.net, "names", None)  # a KerasNet: its layers' own shapes
    if isinstance(keras_layers, dict) and keras_layers:
        rows = []
        for name, layer in keras_layers.items():
            try:
                dims = tuple(layer.output.shape[1:])
            except (AttributeError, ValueError):  # a layer used more than once, say
                dims = ()
            rows.append(
                (name, type(layer).__name__, tuple(-1 if n is None else int(n) for n in dims))
            )
        return rows
    seen: dict[str, tuple[str, str, tuple[int, ...]]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            seen.pop(name, None)
            seen[name] = (name, type(module).__name__, tuple(int(n) for n in shape))

        return hook

    hooks = [(module, record(name)) for name, module in model.net.named_modules() if name]
    with hooked(hooks), eval_mode(model.net), RUNS.shared(), torch.inference_mode():
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
    and Grad-CAM write-ups on VGG. A layer that feeds a GAP -> Linear head is kept all the same
    (CAM is exact there). Other networks keep their last stage: ``bn2`` in
    EfficientNet, ``layer4`` in ResNet (their last stage's children have its grid), and a model
    from :func:`camlens.build_cam_model`, whose backbone has no final pooling, ``features``.
    A model family may choose otherwise (``Model.default_layer``: a ViT's ``blocks[-1].norm1``, see
    :mod:`camlens.models.families`)."""
    layers = spatial_layers(model) if layers is None else layers
    if not layers:
        raise LayerError(
            f"{model.name} has no layer with a spatial output (no conv layer): "
            "class activation maps need one"
        )
    if model.default_layer is not None and any(i.name == model.default_layer for i in layers):
        return model.default_layer
    if (
        len(layers) > 1
        and _pooled_to_half(layers[-2].shape, layers[-1].shape)
        and not _feeds_cam_head(model, layers[-1].name)
    ):
        return layers[-2].name
    return layers[-1].name


def _feeds_cam_head(model: Model, name: str) -> bool:
    """Whether layer ``name`` feeds a GAP -> Linear head (then CAM is exact there, and the layer
    is kept even after a pooling: a Keras VGG16 base with GAP -> Dense on top)."""
    return cam_head_of(model, name) is not None


def cam_head_of(model: Model, name: str) -> str | None:
    """The name of the GAP -> Linear head layer ``name`` feeds (its Linear or Dense), or None."""
    module = model.net.get_submodule(name)
    kept: list[torch.Tensor] = []

    def keep(m: nn.Module, inputs: Any, output: Any) -> None:
        adapter = model.adapter(name, m, output)
        if adapter is not None:
            kept.append(adapter.to_maps(output))

    with hooked([(module, keep)]), eval_mode(model.net), RUNS.shared(), torch.inference_mode():
        logits = model.net(probe_input(model))
    head = find_cam_head(model, name, kept[-1], logits) if kept else None
    return None if head is None else head.name


def _pooled_to_half(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """``after`` [C, H, W] has the channels of ``before`` on a grid half as large each way."""
    if len(before) != 3 or len(after) != 3 or before[0] != after[0]:
        return False
    return all(
        a in (b // 2, (b + 1) // 2) and b >= 2 for b, a in zip(before[1:], after[1:], strict=True)
    )


def layers_like_auto(model: Model, layers: list[LayerInfo] | None = None) -> list[str]:
    """``--layer all``: every spatial layer of the same module type as the automatic layer, in
    depth order (the order their forward passes finish): every conv stage's ReLU of a VGG (the
    13 layers the Grad-CAM write-ups show), ``layer1`` .. ``layer4`` of a ResNet, every
    batch-norm-and-activation of an EfficientNet."""
    layers = spatial_layers(model) if layers is None else layers
    chosen = auto_layer(model, layers)
    kind = next(info.kind for info in layers if info.name == chosen)
    return [info.name for info in layers if info.kind == kind]


def at_input_size(model: Model, size: tuple[int, int]) -> Model:
    """``model`` (a copy sharing its network) preprocessing to ``size`` (height, width), once
    :func:`check_input_size` has found that it can classify inputs of that size."""
    check_input_size(model, size)
    return replace(model, preprocess=replace(model.preprocess, input_size=size))


def check_input_size(model: Model, size: tuple[int, int], *, head: bool = True) -> None:
    """A :class:`~camlens.errors.ModelError` unless ``model`` can classify inputs of ``size``
    (height, width) as it does at its own size: its forward pass must run, and (``head=True``)
    its first linear layer must read globally pooled channels (a GAP head, which any size feeds
    alike), not a flattened grid of fixed size (VGG's ``Linear(512 * 7 * 7, 4096)`` reads a 7x7
    grid, which an adaptive pooling would stretch another image size into)."""
    own = tuple(model.preprocess.input_size)
    if tuple(size) == own:
        return
    first: list[int] = []
    last_map: list[int] = []

    def linear(module: nn.Module, inputs: Any, output: Any) -> None:
        if not first and isinstance(module, nn.Linear):
            first.append(module.in_features)

    def spatial(module: nn.Module, inputs: Any, output: Any) -> None:
        if (
            not first
            and isinstance(output, torch.Tensor)
            and output.ndim == 4
            and not isinstance(module, _NOT_FEATURES)
        ):
            last_map[:] = [int(output.shape[1])]

    hooks = [(m, linear if isinstance(m, nn.Linear) else spatial) for m in model.net.modules()]
    height, width = size
    x = torch.zeros(1, 3, height, width, device=model.device)
    try:
        with hooked(hooks), eval_mode(model.net), RUNS.shared(), torch.inference_mode():
            model.net(x)
    except Exception as exc:  # the architecture cannot take this size
        raise ModelError(
            f"{model.name} cannot take {height}x{width} inputs ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); its own size is "
            f"{own[0]}x{own[1]}"
        ) from None
    # a detector's box head reads RoIAlign's fixed grid per box, which any input size feeds alike
    head = head and model.kind != "detection"
    if head and first and last_map and first[0] != last_map[0]:
        raise ModelError(
            f"{model.name} has a fixed-size head (its first linear layer takes {first[0]} "
            f"features, not the {last_map[0]} channels of a global average pooling): at "
            f"{height}x{width} its scores would mean nothing; explain it at its own size "
            f"{own[0]}x{own[1]}, or give it a GAP head (camlens train)"
        )


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
    if not bool(torch.isfinite(logits).all() and torch.isfinite(activations).all()):
        return None  # nothing to compare: the caller says that the model is broken
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
    if model.kind == "detection":
        return (
            f"{model.name} is a detector: its scores come from its detection heads, not from a "
            "GAP -> Linear head (gradient methods and eigencam apply)"
        )
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
