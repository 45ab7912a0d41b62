"""Layer adapters: a layer's raw output turned into the ``[N, K, h, w]`` maps every method reads,
and back.

Methods, smoothing and the Ablation-CAM replay only ever see ``[N, K, h, w]`` activations (``K``
channels on an ``h x w`` grid). Where a layer outputs something else (a Keras layer's channels-last
``[N, h, w, K]``, a vision transformer's tokens ``[N, P + h*w, K]``), its adapter converts at the
tap, here and nowhere else. Both directions are differentiable reshapes, so a gradient taken with
respect to the adapted maps is the gradient with respect to the layer's output, rearranged.

A model chooses the adapter of each of its layers with an :data:`AdapterRule` (``Model.adapter``);
the default rule, :func:`default_rule`, takes a 4-D output to be ``[N, C, H, W]`` (:class:`Conv`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from camlens.errors import LayerError


class LayerAdapter:
    """How a layer's output relates to ``[N, K, h, w]`` maps.

    ``to_maps(output) -> [N, K, h, w]``; ``from_maps(maps, output)`` puts (edited) maps back into
    the layer's own layout, taking whatever the maps do not hold (a transformer's class token) from
    ``output``. ``from_maps(to_maps(o), o)`` equals ``o``.
    """

    name = "adapter"

    def to_maps(self, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for ``camlens layers``: ``conv``, ``channels-last``, ``tokens (1 + 14x14)``."""
        return self.name


@dataclass(frozen=True)
class Conv(LayerAdapter):
    """A convolutional layer's ``[N, C, H, W]`` output, as it is."""

    name = "conv"

    def to_maps(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return maps


CONV = Conv()


@dataclass(frozen=True)
class ChannelsLast(LayerAdapter):
    """A channels-last ``[N, H, W, C]`` map (a Keras layer's, a Swin stage's in timm) as
    ``[N, C, H, W]``: a permutation of the axes, both ways."""

    name = "channels-last"

    def to_maps(self, output: torch.Tensor) -> torch.Tensor:
        return output.permute(0, 3, 1, 2)

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return maps.permute(0, 2, 3, 1)


CHANNELS_LAST = ChannelsLast()


@dataclass(frozen=True)
class Tokens(LayerAdapter):
    """A transformer's tokens ``[N, prefix + h*w, C]`` as ``[N, C, h, w]``.

    The first ``prefix`` tokens (a ViT's class token, DeiT's class and distillation tokens,
    register tokens) belong to no place in the image and are dropped; the patch tokens that follow
    are laid out row by row on the ``grid`` ``(h, w)``, as the patch embedding makes them.
    ``from_maps`` puts the prefix tokens back, taken from ``output``.
    """

    prefix: int
    grid: tuple[int, int]
    name = "tokens"

    def to_maps(self, output: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if output.ndim != 3 or output.shape[1] != self.prefix + h * w:
            raise LayerError(
                f"tokens {tuple(output.shape)} do not fit {self.describe()}: expected "
                f"[N, {self.prefix + h * w}, C]"
            )
        maps: torch.Tensor = output[:, self.prefix :].unflatten(1, (h, w)).permute(0, 3, 1, 2)
        return maps

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        patches = maps.flatten(2).transpose(1, 2)  # [N, h*w, C], row by row
        if not self.prefix:
            return patches
        return torch.cat([output[:, : self.prefix].to(patches.dtype), patches], dim=1)

    def describe(self) -> str:
        h, w = self.grid
        return f"tokens ({self.prefix} + {h}x{w})" if self.prefix else f"tokens ({h}x{w})"


AdapterRule = Callable[[str, nn.Module, object], LayerAdapter | None]
"""``rule(layer_name, module, output) -> adapter``, or None where the output is no spatial map
(the layer cannot be explained). ``output`` is the layer's raw output on one probe pass."""


def default_rule(name: str, module: nn.Module, output: object) -> LayerAdapter | None:
    """A 4-D tensor is a convolutional ``[N, C, H, W]`` map; anything else is not a spatial map."""
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return CONV
    return None
