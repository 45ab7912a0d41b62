"""Model families whose layers do not output conv maps: vision transformers and other timm models
whose blocks output tokens ``[N, P + h*w, C]`` or channels-last grids ``[N, H, W, C]``.

:func:`token_family` gives such a :class:`~camlens.models.Model` its adapter rule
(:class:`TimmTokens`) and its automatic target layer; :func:`~camlens.models.load_model` applies it
to every timm model (``"timm:vit_tiny_patch16_224"``, or a timm ``nn.Module`` of your own). On a
convolutional model the rule finds the conv maps the default rule finds.

**The grid.** Tokens are laid out on the patch grid the model's own patch embedding gives
(``patch_embed.grid_size``, from its image size and ``patch_size``), or, inside a stage of a
hierarchical model (Swin), on that stage's grid (the patch grid divided by the stage's reduction
over the patch size, from ``feature_info``). The ``num_prefix_tokens`` tokens that come first
(a ViT's class token, DeiT's class and distillation tokens, register tokens) are dropped. A model
built for any input size (``dynamic_img_size``) and given another size gets the grid of the same
aspect ratio as its own that holds the tokens. A layer whose tokens fit no grid of the model (the
window attention inside a Swin block, whose rows are windows, not images) is no spatial layer.

**The automatic layer.** A ViT or DeiT classifies from its prefix tokens, read after the final
norm: after the last block's attention, nothing moves information from the patch tokens into the
prefix tokens, so the patch tokens of ``blocks[-1]`` and of ``norm`` do not reach the logits at all
(their gradients are exactly zero, and every gradient map there is flat). The last layer where
they do is the input of the last attention, ``blocks[-1].norm1``, the layer pytorch-grad-cam's
documentation also uses; it is the automatic choice for those models (in CaiT and XCiT, whose
class token is computed by class-attention blocks after the patch blocks, the last of those
blocks' ``norm1``). Models that pool their patch tokens (Swin, BEiT, ViTs with
``global_pool="avg"``) keep the usual rule, the last spatial layer (Swin's final ``norm``, which
feeds a GAP -> Linear head, so CAM is exact there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from camlens.adapters import CHANNELS_LAST, CONV, LayerAdapter, Tokens
from camlens.models.model import Model

Grid = tuple[int, int]


def _pair(value: object) -> Grid | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Iterable):
        items = [int(v) for v in value]
        if len(items) == 2 and all(v > 0 for v in items):
            return (items[0], items[1])
    return None


def _ceil_div(grid: Grid, factor: float) -> Grid:
    return (math.ceil(grid[0] / factor - 1e-9), math.ceil(grid[1] / factor - 1e-9))


class TimmTokens:
    """The adapter rule of a timm model with token or channels-last layers.

    For a layer's output: 3-D ``[N, T, C]`` tokens become :class:`~camlens.adapters.Tokens` on the
    grid of the layer's stage, dropping ``num_prefix_tokens`` tokens when ``T`` counts them (else
    none); 4-D outputs are channels-last when their middle axes are the stage's grid (Swin's
    ``[N, H, W, C]``), conv maps when their last two are (the patch embedding's convolution), and
    otherwise as the model's ``output_fmt`` says. Anything else is no spatial map.
    """

    def __init__(self, net: nn.Module) -> None:
        self.prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
        self.channels_last = getattr(net, "output_fmt", "NCHW") == "NHWC"
        self.dynamic = bool(getattr(net, "dynamic_img_size", False))
        embed = getattr(net, "patch_embed", None)
        patch_grid = _pair(getattr(embed, "grid_size", None))
        patch = _pair(getattr(embed, "patch_size", None))
        cfg = getattr(net, "pretrained_cfg", None) or {}
        image = _pair(getattr(embed, "img_size", None)) or _pair(cfg.get("input_size", (3,))[1:])
        self.grids: set[Grid] = {patch_grid} if patch_grid else set()
        self.stages: list[tuple[str, set[Grid]]] = []
        for info in getattr(net, "feature_info", None) or []:
            if not isinstance(info, dict) or not info.get("module") or not info.get("reduction"):
                continue
            reduction = float(info["reduction"])
            grids = set()
            if patch_grid and patch:
                grids.add(_ceil_div(patch_grid, reduction / max(patch)))
            if image:
                grids.add(_ceil_div(image, reduction))
            self.stages.append((str(info["module"]), grids))
            self.grids |= grids

    def grids_of(self, name: str) -> set[Grid]:
        """The grids a layer's output may lie on: its stage's, or any of the model's."""
        for module, grids in self.stages:
            if name == module or name.startswith(module + "."):
                return grids
        return self.grids

    def __call__(self, name: str, module: nn.Module, output: object) -> LayerAdapter | None:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        grids = self.grids_of(name)
        if output.ndim == 3:
            count = int(output.shape[1])
            for prefix in dict.fromkeys((self.prefix, 0)):
                for h, w in sorted(grids):
                    if prefix + h * w == count:
                        return Tokens(prefix, (h, w))
            if self.dynamic:  # another input size: the grid of the model's aspect ratio
                for prefix in dict.fromkeys((self.prefix, 0)):
                    for grid in sorted(grids):
                        scaled = _same_aspect(grid, count - prefix)
                        if scaled is not None:
                            return Tokens(prefix, scaled)
            return None
        if output.ndim == 4:
            last = (int(output.shape[1]), int(output.shape[2])) in grids
            first = (int(output.shape[2]), int(output.shape[3])) in grids
            if last != first:
                return CHANNELS_LAST if last else CONV
            return CHANNELS_LAST if self.channels_last else CONV
        return None


def _same_aspect(grid: Grid, count: int) -> Grid | None:
    """The grid with the aspect ratio of ``grid`` that holds ``count`` cells, if there is one."""
    if count < 1:
        return None
    g = math.gcd(*grid)
    a, b = grid[0] // g, grid[1] // g
    k = math.isqrt(count // (a * b))
    return (a * k, b * k) if (a * k) * (b * k) == count else None


def is_timm_model(net: nn.Module) -> bool:
    """A timm model (its class or a base class comes from timm)."""
    return any(cls.__module__.startswith("timm.") for cls in type(net).__mro__)


def class_token_layer(net: nn.Module) -> str | None:
    """The input of the last attention that reads the patch tokens, ``{blocks}.{last}.norm1``,
    for a model that classifies from its prefix tokens (``global_pool="token"``): ``blocks`` in
    ViT and DeiT, the class-attention blocks (``blocks_token_only``, ``cls_attn_blocks``) in CaiT
    and XCiT. None for other models."""
    if (
        getattr(net, "global_pool", None) != "token"
        or int(getattr(net, "num_prefix_tokens", 0) or 0) < 1
    ):
        return None
    for name in ("blocks_token_only", "cls_attn_blocks", "blocks"):
        blocks = getattr(net, name, None)
        if (
            isinstance(blocks, nn.Sequential | nn.ModuleList)
            and len(blocks)
            and isinstance(getattr(blocks[-1], "norm1", None), nn.Module)
        ):
            return f"{name}.{len(blocks) - 1}.norm1"
    return None


def token_family(model: Model) -> Model:
    """``model`` with the token adapter rule (:class:`TimmTokens`) and its automatic layer
    (:func:`class_token_layer`) when its network is a timm model; others are returned as they
    are. On a convolutional timm model the rule finds conv maps where the default rule does."""
    if is_timm_model(model.net):
        model.adapter = TimmTokens(model.net)
        model.default_layer = class_token_layer(model.net)
    return model
