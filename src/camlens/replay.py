"""Replaying a network from a target layer's output: the logits that edited activations give,
running only the layers after the target layer where the model allows it.

Ablation-CAM needs the class scores of the network with one channel of the target layer zeroed,
once per channel. Everything before the target layer is the same in all those passes, so only the
part after it needs to run. Three ways, the first that reproduces the model's logits is used:

- ``"head"``: the layer feeds a global-average-pooling -> Linear head (found numerically by
  :func:`camlens.layers.find_cam_head`): the replay is that head, ``W mean_ij A + b``.
- ``"graph"``: the network traced with ``torch.fx`` (the target layer kept as one call) and cut at
  the target layer; what follows runs on its own, provided nothing after the layer reads anything
  computed before it (a skip connection around the layer) or the input.
- ``"full"``: the whole network, with a forward hook that replaces the layer's output. Always
  right, no faster than a plain forward pass.

Activations are the layer's ``[N, K, h, w]`` maps; the layer's adapter (:mod:`camlens.adapters`)
puts edited maps back into the layer's own layout before the rest of the network runs.
Tracing happens once per layer (:func:`plan_replay`); each batch then checks that the planned
shortcut reproduces its logits (:func:`build_replay`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx, nn

from camlens.adapters import CONV, LayerAdapter
from camlens.layers import CamHead
from camlens.modes import eval_mode
from camlens.taps import RUNS, hooked

ReplayKind = Literal["head", "graph", "full"]
Tail = Callable[[torch.Tensor], torch.Tensor]  # the layer's raw output -> logits


@dataclass
class Replay:
    """``replay(activations [M, K, h, w], rows [M]) -> logits [M, classes]``: the network's logits
    when the target layer outputs ``activations``; ``rows`` says which input image each row
    belongs to (the ``"full"`` replay runs those inputs, a token layer's adapter takes the tokens
    the maps do not hold from them). ``note`` says why a faster kind was not used.
    """

    kind: ReplayKind
    layer: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    note: str = ""

    def __call__(self, activations: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.fn(activations, rows)


@dataclass(frozen=True)
class ReplayPlan:
    """What can replay ``layer``, found once: its head, and the traced tail of the network after
    it (None, with the reason in ``note``, where the network cannot be cut there)."""

    layer: str
    module: nn.Module
    adapter: LayerAdapter = CONV
    head: CamHead | None = None
    tail: Tail | None = None
    note: str = ""


def plan_replay(
    net: nn.Module,
    layer: str,
    module: nn.Module,
    adapter: LayerAdapter = CONV,
    head: CamHead | None = None,
) -> ReplayPlan:
    """Traces ``net`` and cuts it after ``module`` (see the module docstring), holding
    :data:`camlens.taps.RUNS` alone while tracing. Never raises for a network that cannot be cut:
    the plan then has no tail and says why."""
    try:
        with RUNS.exclusive():
            tail: Tail | None = _graph_tail(net, module)
        note = ""
    except Exception as exc:  # an optional shortcut: any failure means "use the next one"
        tail, note = None, f"graph: {type(exc).__name__}: {exc}"[:300]
    return ReplayPlan(layer, module, adapter, head, tail, note)


def build_replay(
    plan: ReplayPlan,
    net: nn.Module,
    x: torch.Tensor,
    activations: torch.Tensor,
    output: torch.Tensor,
    logits: torch.Tensor,
) -> Replay:
    """The fastest replay of ``plan`` that gives back ``logits`` from ``activations`` (the layer's
    maps on the inputs ``x``; ``output`` its raw output), within the tolerance
    :func:`camlens.layers.find_cam_head` uses. Call in eval mode."""
    adapter = plan.adapter
    notes = [plan.note] if plan.note else []
    candidates: list[tuple[ReplayKind, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = []
    if plan.head is not None:
        candidates.append(("head", _head_replay(plan.head)))
    if plan.tail is not None:
        tail = plan.tail

        def graph(acts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return tail(adapter.from_maps(acts, output[rows]))

        candidates.append(("graph", graph))
    rows = torch.arange(len(x), device=x.device)
    for kind, fn in candidates:
        try:
            with torch.inference_mode():
                out = fn(activations, rows)
        except Exception as exc:  # an optional shortcut: any failure means "use the next one"
            notes.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
            continue
        if _close(out, logits):
            return Replay(kind, plan.layer, fn, "; ".join(notes))
        notes.append(f"{kind}: does not reproduce the model's logits")

    def full(acts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        def replace(_module: nn.Module, _inputs: Any, raw: Any) -> torch.Tensor:
            return adapter.from_maps(acts, raw)

        with hooked([(plan.module, replace)]):
            out: torch.Tensor = net(x[rows])
        return out

    return Replay("full", plan.layer, full, "; ".join(notes))


def _close(out: Any, logits: torch.Tensor) -> bool:
    return (
        isinstance(out, torch.Tensor)
        and out.shape == logits.shape
        and torch.allclose(
            out.float(), logits.float(), rtol=1e-4, atol=1e-4 * float(logits.abs().max()) + 1e-6
        )
    )


def _head_replay(head: CamHead) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``W mean_ij A + b`` from the head's own weights (an ``nn.Linear``'s or a Keras
    ``Dense``'s)."""

    def replay(activations: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pooled = activations.mean(dim=(2, 3)).to(head.weight.dtype)
        return nn.functional.linear(pooled, head.weight, head.bias)

    return replay


class _Tracer(fx.Tracer):
    """The default tracer, with the target layer kept as a single call, and timm's modules and
    functions that do not trace (padding computed from the input's size...) kept whole."""

    def __init__(self, target: nn.Module) -> None:
        leaves: tuple[type, ...] = ()
        functions: tuple[Callable[..., Any], ...] = ()
        if "timm" in sys.modules:  # else the model has no timm module
            try:
                from timm.layers import _fx as timm_fx

                leaves = tuple(timm_fx.get_notrace_modules())
                functions = tuple(timm_fx.get_notrace_functions())
            except (ImportError, AttributeError):  # another timm: plain tracing
                pass
        super().__init__(autowrap_functions=functions)
        self.target = target
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            m is self.target
            or isinstance(m, self.leaves)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _graph_tail(net: nn.Module, module: nn.Module) -> Tail:
    """The part of ``net`` after ``module`` as a ``torch.fx.GraphModule`` that takes the module's
    output; raises ValueError where the network cannot be cut there."""
    tracer = _Tracer(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tracer.trace(net)
    calls = [
        n
        for n in graph.nodes
        if n.op == "call_module" and tracer.root.get_submodule(str(n.target)) is module
    ]
    if len(calls) != 1:
        raise ValueError(f"the layer is called {len(calls)} times in the traced graph")
    cut = calls[0]
    # Nodes whose value depends on the input by a path that does not pass through the layer.
    before: set[fx.Node] = set()
    for node in graph.nodes:
        if node is cut:
            continue
        if node.op == "placeholder" or any(a in before for a in node.all_input_nodes):
            before.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    needed: set[fx.Node] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in needed or node is cut:
            continue
        if node in before:
            raise ValueError(f"{node.name} after the layer reads a value computed before it")
        needed.add(node)
        stack.extend(node.all_input_nodes)
    tail = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: tail.placeholder("activations")}
    for node in graph.nodes:
        if node in needed:
            env[node] = tail.node_copy(node, lambda a: env[a])
    gm = fx.GraphModule(tracer.root, tail)

    def run(raw: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = gm(raw)
        return out

    return run


def forward_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """An estimate of the memory one input row takes in an inference forward pass of ``net``: the
    input plus four times the largest output of any module (the tensors alive at once around the
    largest layer: its input, its output, a residual branch and a temporary), in bytes."""
    largest = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output[:1].numel() * output.element_size())

    hooks = [(m, hook) for m in net.modules()]
    with hooked(hooks), eval_mode(net), RUNS.shared(), torch.inference_mode():
        net(x[:1])
    return int(x[:1].numel() * x.element_size() + 4 * largest)
