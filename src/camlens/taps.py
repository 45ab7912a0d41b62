"""Taps: forward hooks on target layers that keep their outputs and are always removed."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from camlens.adapters import AdapterRule, LayerAdapter, default_rule
from camlens.errors import LayerError

LayerSpec = str | nn.Module


def resolve_layer(net: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """A layer given by dotted name (``"layer4"``, ``"features.29"``) or by module -> (name, module)."""
    if isinstance(layer, str) and layer:
        try:  # a walk down the dotted path: no scan of the whole model on every call
            return layer, net.get_submodule(layer)
        except AttributeError:
            pass  # not there: the scan below says so, with close names
    modules = dict(net.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name or "(model)", module
        raise LayerError(
            f"the {type(layer).__name__} module given as layer is not part of the model"
        )
    if layer in modules and layer != "":
        return layer, modules[layer]
    close = difflib.get_close_matches(layer, [n for n in modules if n], n=5)
    hint = f"; close names: {', '.join(close)}" if close else "; see `camlens layers`"
    raise LayerError(f"the model has no layer named {layer!r}{hint}")


class Taps:
    """Context manager that records the outputs of ``layers`` during forward passes.

    >>> with Taps(net, ["layer4"]) as taps:      # doctest: +SKIP
    ...     logits = net(x)
    ...     a = taps.activations["layer4"]        # [N, K, h, w]

    ``adapter``, the model's :data:`~camlens.adapters.AdapterRule`, says how each layer's output
    becomes the ``[N, K, h, w]`` maps kept in ``activations`` (channels-last maps and tokens are
    rearranged); ``outputs`` and ``adapters`` keep each layer's raw output and its adapter, which
    put edited maps back into the layer's own layout (the Ablation-CAM replay).

    Each hook keeps the layer's output tensor and passes a clone on to the rest of the network, so
    an in-place operation downstream (a ``ReLU(inplace=True)`` after a conv) cannot change the stored
    activations, and gradients with respect to them stay well defined. Hooks are removed on exit,
    also when the forward pass raised; exceptions are never swallowed.

    ``gradients=True`` prepares for ``torch.autograd.grad(score, taps.activations[...])``: run the
    forward pass under ``torch.no_grad()`` and the first tapped layer to finish switches gradient
    recording on, so the autograd graph covers only the part of the network after the target
    layers (the part a backward pass to them needs), with no graph, memory or parameter gradients
    for the layers before. A stored activation that does not require grad becomes a leaf that does.
    The model's parameters and their ``requires_grad`` flags are not touched.
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[LayerSpec],
        *,
        gradients: bool = False,
        adapter: AdapterRule = default_rule,
    ) -> None:
        self.net = net
        self.gradients = gradients
        self.rule = adapter
        self.layers = [resolve_layer(net, layer) for layer in layers]
        self.activations: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.adapters: dict[str, LayerAdapter] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layers]

    def __enter__(self) -> Taps:
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            adapter = self.rule(name, module, output)
            if adapter is None:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise LayerError(
                    f"layer {name!r} ({type(module).__name__}) gives {shape}, not a spatial map "
                    "[N, C, H, W]; choose a conv layer (see `camlens layers`)"
                )
            maps = adapter.to_maps(output)
            if self.gradients:
                torch.set_grad_enabled(True)  # restored by the caller's no_grad() on exit
                if not maps.requires_grad:
                    maps = maps.detach().requires_grad_(True)
            self.activations[name] = maps
            self.outputs[name] = output
            self.adapters[name] = adapter
            passed = adapter.from_maps(maps, output)
            if passed.untyped_storage().data_ptr() == maps.untyped_storage().data_ptr():
                passed = passed.clone()  # the network gets its own copy of the kept maps
            return passed

        return hook
