"""Taps: forward hooks on target layers that keep their outputs, see only their own thread's
passes, and are always removed."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import nn

from camlens.adapters import AdapterRule, LayerAdapter, default_rule
from camlens.errors import LayerError

LayerSpec = str | nn.Module
Hook = Callable[[nn.Module, Any, Any], Any]


def resolve_layer(
    net: nn.Module, layer: LayerSpec, aliases: Mapping[str, str] | None = None
) -> tuple[str, nn.Module]:
    """A layer given by dotted name (``"layer4"``, ``"features.29"``), by one of the model's
    ``aliases`` (other names -> dotted names: :meth:`camlens.models.Model.layer_names`, such as
    ``"block5_conv3"`` in a VGG) or by module -> (its dotted name, module)."""
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
    aliases = aliases or {}
    if layer in aliases:
        return aliases[layer], modules[aliases[layer]]
    close = difflib.get_close_matches(str(layer), [n for n in modules if n] + list(aliases), n=5)
    hint = f"; close names: {', '.join(close)}" if close else "; see `camlens layers`"
    raise LayerError(f"the model has no layer named {layer!r}{hint}")


def local_hook(module: nn.Module, hook: Hook) -> torch.utils.hooks.RemovableHandle:
    """``module.register_forward_hook(hook)``, but the hook acts only on forward passes run by the
    thread that registered it: one model can serve several threads, each with its own hooks, and
    no thread sees (or changes) another's pass."""
    owner = threading.get_ident()

    def mine(m: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return hook(m, inputs, output)

    return module.register_forward_hook(mine)


@contextmanager
def hooked(hooks: Sequence[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """The hooks (thread-local, see :func:`local_hook`) on their modules for the duration; removed
    on exit, also when the body raised."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(local_hook(module, hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class RunLock:
    """Forward passes share it; tracing a network with ``torch.fx`` takes it alone.

    ``torch.fx`` patches ``nn.Module.__call__`` for the whole process while it traces, so a forward
    pass run by another thread at that moment would be traced instead of run. camlens holds this
    lock shared around its own passes and alone around tracing. It is re-entrant for the thread
    that holds it alone (tracing may check its result with a forward pass)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            while self._writer is not None and self._writer != me:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                raise RuntimeError("RunLock.exclusive is not re-entrant")
            while self._writer is not None or self._readers:
                self._condition.wait()
            self._writer = me
        try:
            yield
        finally:
            with self._condition:
                self._writer = None
                self._condition.notify_all()


RUNS = RunLock()
"""The process's :class:`RunLock`: every forward pass camlens runs holds it shared."""


class Taps:
    """Context manager that records the outputs of ``layers`` during the forward passes of the
    thread that entered it.

    >>> with Taps(net, ["layer4"]) as taps:      # doctest: +SKIP
    ...     logits = net(x)
    ...     a = taps.activations["layer4"]        # [N, K, h, w]

    Each layer's output goes through the adapter that ``adapter``, the model's rule, gives it (see
    :mod:`camlens.adapters`; by default a convolutional map, taken as it is; the one used is kept
    in ``adapters[name]``: a token layer's grid follows the input's size) and is kept as
    ``activations[name]`` ``[N, K, h, w]``, with the raw output in ``outputs[name]``. The rest of
    the network gets the adapter's ``from_maps`` of the kept maps, copied where it would share
    their memory (a conv map, a permuted channels-last one), so an in-place
    operation downstream (a ``ReLU(inplace=True)`` after a conv) cannot change them, and gradients
    with respect to them are well defined. Hooks are removed on exit, also when the forward pass
    raised; exceptions are never swallowed.

    ``gradients=True`` prepares for ``torch.autograd.grad(score, taps.activations[...])``: run the
    forward pass under ``torch.no_grad()`` and the first tapped layer to finish switches gradient
    recording on (for this thread), so the autograd graph covers only the part of the network
    after the target layers, with no graph, memory or parameter gradients for the layers before.
    Kept maps that do not require grad become leaves that do. The model's parameters and their
    ``requires_grad`` flags are not touched.
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[LayerSpec],
        *,
        gradients: bool = False,
        adapter: AdapterRule = default_rule,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.net = net
        self.gradients = gradients
        self.rule = adapter
        self.layers = [resolve_layer(net, layer, aliases) for layer in layers]
        self.activations: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.adapters: dict[str, LayerAdapter] = {}
        self._hooked: Any = None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layers]

    def __enter__(self) -> Taps:
        self._hooked = hooked([(module, self._hook(name)) for name, module in self.layers])
        self._hooked.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hooks, self._hooked = self._hooked, None
        if hooks is not None:
            hooks.__exit__(exc_type, exc, tb)

    def _hook(self, name: str) -> Hook:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            adapter = self.rule(name, module, output)
            if adapter is None or not isinstance(output, torch.Tensor):
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
