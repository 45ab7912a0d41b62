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

AdapterRule = Callable[[str, nn.Module, object], LayerAdapter | None]
"""``rule(layer_name, module, output) -> adapter``, or None where the output is no spatial map
(the layer cannot be explained). ``output`` is the layer's raw output on one probe pass."""


def default_rule(name: str, module: nn.Module, output: object) -> LayerAdapter | None:
    """A 4-D tensor is a convolutional ``[N, C, H, W]`` map; anything else is not a spatial map."""
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return CONV
    return None
