"""Capture: one forward pass under taps gives, per target layer, the activations as
``[N, K, h, w]`` maps (through the layer's adapter), the GAP -> Linear head the layer feeds when
there is one, and on demand the gradients of any set of targets (classes, contrasts, outputs,
similarities, callables: all of them in one batched backward pass) or a
:class:`~camlens.methods.perturbation.Scorer` for the perturbation methods. What is explained is
a :class:`~camlens.scoring.Goals` (a tensor of class indices [N, D] stands for those classes).

A :class:`Capture` is what the methods read (it is their :class:`~camlens.methods.Evidence`); it
belongs to one call and one thread. What is found once per model and layers (adapters, heads,
replay plans) is a :class:`Target`, made by :func:`find_targets` on a probe input.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from camlens.adapters import LayerAdapter
from camlens.errors import CamlensError, LayerError, MethodError, ModelError
from camlens.layers import CamHead, find_cam_head, probe_input, require_cam_head
from camlens.methods.perturbation import Scorer
from camlens.models import Model
from camlens.modes import eval_mode
from camlens.progress import Progress
from camlens.replay import Replay, ReplayPlan, build_replay
from camlens.scoring import Goals, TargetPlan
from camlens.taps import RUNS, Hook, LayerSpec, Taps, hooked, resolve_layer

BROKEN = "the model or its weights are broken"


@dataclass(frozen=True)
class Target:
    """A layer to explain, as found on the probe input: its module, the adapter that turns its
    output into maps, the maps' depth ``channels``, the GAP -> Linear head it feeds (or None), and
    the plan to replay the network after it (perturbation methods only)."""

    name: str
    module: nn.Module
    adapter: LayerAdapter
    channels: int
    head: CamHead | None
    replay: ReplayPlan | None = None

    def require_head(self, model: Model) -> CamHead:
        return require_cam_head(self.head, model, self.name, self.channels)


def find_targets(model: Model, layers: Sequence[LayerSpec]) -> list[Target]:
    """The targets of ``layers`` (names or modules), found with one probe forward pass: a
    :class:`~camlens.errors.LayerError` for a layer that does not exist, is not run by the model or
    whose output is no spatial map."""
    aliases = model.layer_names()
    named = [resolve_layer(model.net, layer, aliases) for layer in layers]
    outputs: dict[str, object] = {}

    def keep(name: str) -> Hook:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            outputs[name] = output

        return hook

    with (
        eval_mode(model.net),
        hooked([(module, keep(name)) for name, module in named]),
        RUNS.shared(),
        torch.inference_mode(),
    ):
        logits = model.net(probe_input(model))
    if isinstance(logits, torch.Tensor) and not bool(torch.isfinite(logits).all()):
        raise ModelError(f"{model.name} gives NaN or infinite scores on a test input: {BROKEN}")
    targets = []
    for name, module in named:
        if name not in outputs:
            raise LayerError(f"layer {name!r} is not run by {model.name}'s forward pass")
        output = outputs[name]
        adapter = model.adapter(name, module, output)
        maps = adapter.to_maps(output) if adapter is not None else None  # type: ignore[arg-type]
        if maps is None or maps.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(
                f"layer {name!r} ({type(module).__name__}) gives {shape}, not a spatial map "
                "[N, C, H, W]; choose a conv layer (see `camlens layers`)"
            )
        if maps.shape[2] * maps.shape[3] < 2:
            raise LayerError(
                f"layer {name!r} ({type(module).__name__}) gives {maps.shape[2]}x{maps.shape[3]} "
                "maps: a single location cannot show where; choose a layer with a larger output "
                "(see `camlens layers`)"
            )
        head = find_cam_head(model, name, maps, logits)
        targets.append(Target(name, module, adapter, int(maps.shape[1]), head))  # type: ignore[arg-type]
    return targets


@dataclass(frozen=True)
class Settings:
    """How a capture runs the model beyond its forward pass: ``head_gradients`` takes the gradient
    of a GAP -> Linear head's logits from its weights; the rest is passed to the
    :class:`~camlens.methods.perturbation.Scorer` (``row_bytes``: the memory one input row takes in
    a forward pass)."""

    head_gradients: bool = True
    max_batch_memory: int = 512 * 2**20
    fast_channels: int | None = None
    fast_resolution: float | None = None
    channels_last: bool = True
    row_bytes: int | None = None


class Capture:
    """One forward pass of ``model`` on the batch ``x`` [N, 3, H, W], tapped at ``targets``.

    ``gradients``: the layers (names) whose gradients will be asked for by autograd; the forward
    pass then records the graph after them (only after them). Reading: :meth:`activations`,
    :meth:`class_weights`, :meth:`gradients`, :meth:`scorer` (see
    :class:`~camlens.methods.Evidence`); ``logits`` and ``probs`` [N, classes]; ``passes`` (rows
    the perturbation methods ran through the model) and ``backward_passes`` so far.

    Non-finite input is refused, and a model whose logits are not finite is named in the error.
    Run it in eval mode (:func:`camlens.modes.eval_mode`) holding :data:`camlens.taps.RUNS`
    shared, as :class:`~camlens.explain.Explainer` does for a whole batch.
    """

    def __init__(
        self,
        model: Model,
        targets: Sequence[Target],
        x: torch.Tensor,
        *,
        gradients: Sequence[str] = (),
        settings: Settings | None = None,
        progress: Progress | None = None,
        plan: TargetPlan | None = None,
    ) -> None:
        if not bool(torch.isfinite(x).all()):
            raise CamlensError("the input has NaN or infinite values")
        self.model = model
        self.targets = {t.name: t for t in targets}
        self.x = x
        self.settings = settings or Settings()
        self.progress = progress
        self.passes = 0
        self.backward_passes = 0
        self._autograd = [name for name in self.targets if name in set(gradients)]
        self._gradients: dict[int, tuple[Goals, dict[str, list[torch.Tensor]]]] = {}
        self._replays: dict[tuple[str, bool], Replay] = {}
        self._scorers: list[Scorer] = []
        self._class_goals: dict[tuple[tuple[int, ...], ...], Goals] = {}
        self.plan = plan
        self._embedding = plan.embedding if plan is not None else None
        embeddings: list[torch.Tensor] = []
        net = model.net
        with (
            Taps(
                net, list(self.targets), gradients=bool(self._autograd), adapter=model.adapter
            ) as taps,
            self._embedding.tap(embeddings)
            if self._embedding is not None
            else contextlib.nullcontext(),
        ):
            if self._autograd:
                with torch.no_grad():
                    logits = net(x)
            else:
                with torch.inference_mode():
                    logits = net(x)
        self._logits = logits  # with the graph after the tapped layers, when there is one
        self._maps = taps.activations
        self._outputs = {name: o.detach() for name, o in taps.outputs.items()}
        self._adapters = taps.adapters  # this input's (a token grid follows the input's size)
        self.logits = logits.detach()
        if not bool(torch.isfinite(self.logits).all()):
            raise ModelError(f"{model.name} gives NaN or infinite scores for this input: {BROKEN}")
        self.probs = model.predict(self.logits)
        # the embedding the similarity targets read, with the graph after the tapped layers
        self._embeddings = embeddings[-1] if embeddings else None

    def goals(
        self,
        chosen: Sequence[Sequence[object]],
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> Goals:
        """The :class:`~camlens.scoring.Goals` of ``chosen[n]`` (targets or class indices) for
        each image, from this pass's outputs (a ``TargetPlan`` must have been given, except for
        class indices); ``sizes``: the photos' (width, height), for segments' boxes and masks and
        detections' boxes."""
        if self.plan is None:
            self.plan = TargetPlan(self.model, [])
        embeddings = None if self._embeddings is None else self._embeddings.detach()
        size = (int(self.x.shape[-2]), int(self.x.shape[-1]))
        return self.plan.goals(self.logits, chosen, embeddings, sizes, size)

    def _as_goals(self, wanted: Goals | torch.Tensor) -> Goals:
        """Goals as they are; class indices [N, D] as their classes' goals, made once per set of
        indices (so the methods that ask for the same classes share one backward pass)."""
        if isinstance(wanted, Goals):
            return wanted
        if self.logits.ndim == 4:  # a segmentation model's classes: their segments
            return self.goals(wanted.tolist())
        key = tuple(tuple(int(c) for c in row) for row in wanted.tolist())
        if key not in self._class_goals:
            self._class_goals[key] = Goals.classes(wanted, self.logits.shape[1], self.model.labels)
        return self._class_goals[key]

    # --- Evidence --------------------------------------------------------------------------------

    def activations(self, layer: str) -> torch.Tensor:
        return self._maps[layer].detach()

    def class_weights(self, layer: str, index: Goals | torch.Tensor) -> torch.Tensor:
        """The head's rows for each target, ``W[n, j] @ head.weight`` [N, D, K]: the rows of a
        class's logits, their differences for a contrast. CAM applies only where every target is
        linear in the head's outputs: similarity and callables are a MethodError."""
        goals = self._as_goals(index)
        head = self.targets[layer].require_head(self.model)
        if not goals.linear:
            raise MethodError(
                "CAM applies where the target is linear in a GAP -> Linear head's outputs (a "
                "class, a contrast, an output); a similarity or a callable is not: use a gradient "
                "method such as gradcam"
            )
        dtype = self._maps[layer].dtype
        return (goals.weights.to(head.weight.dtype) @ head.weight).to(dtype)

    def gradients(self, layer: str, index: Goals | torch.Tensor) -> list[torch.Tensor]:
        """The gradient of each rank's target score, ``d s[n, j] / d A[n]``, as ``D`` tensors
        [N, K, h, w]. Where the layer feeds a GAP -> Linear head (and head gradients are on) and
        the targets are linear it is ``(W[n, j] @ head.weight) / (h * w)`` at every location, with
        no backward pass; otherwise every rank of every autograd layer comes from one batched
        backward pass (the first call)."""
        goals = self._as_goals(index)
        target = self.targets[layer]
        if target.head is not None and self.settings.head_gradients and goals.linear:
            a = self._maps[layer]
            h, w = a.shape[-2:]
            rows = self.class_weights(layer, goals) / (h * w)  # [N, D, K]
            return [r[:, :, None, None].expand_as(a) for r in rows.unbind(1)]
        if layer not in self._autograd:
            raise MethodError(
                f"no gradients were recorded for layer {layer!r}"
                + ("" if goals.linear else " (a similarity or callable target needs them)")
            )
        if id(goals) not in self._gradients:
            self._gradients[id(goals)] = (goals, self._backward(goals))
        return self._gradients[id(goals)][1][layer]

    def scorer(self, layer: str, index: Goals | torch.Tensor) -> Scorer:
        goals = self._as_goals(index)
        target = self.targets[layer]
        a = self.activations(layer)
        plan = target.replay
        # an embedding is read from a module's pass: only the whole network's replay runs it
        full = goals.embedding is not None

        def replay() -> Replay:
            if plan is None:
                raise MethodError(f"no replay was planned for layer {layer!r}")
            if (layer, full) not in self._replays:
                chosen = replace(plan, adapter=self._adapters[layer])
                if full:
                    chosen = replace(chosen, head=None, tail=None)
                self._replays[layer, full] = build_replay(
                    chosen,
                    self.model.net,
                    self.x,
                    a,
                    self._outputs[layer],
                    self.logits,
                )
            return self._replays[layer, full]

        scorer = Scorer(
            self.model.net,
            self.x,
            self.logits,
            goals.score,
            goals.shape[1],
            a,
            replay=replay,
            row_bytes=self._row_bytes(),
            max_batch_memory=self.settings.max_batch_memory,
            channels=self.settings.fast_channels,
            resolution=self.settings.fast_resolution,
            channels_last=self.settings.channels_last,
            progress=self.progress,
            embedding=goals.embedding,
        )
        self._scorers.append(scorer)
        return scorer

    # --- what the call cost ----------------------------------------------------------------------

    @property
    def perturbation_passes(self) -> int:
        """Rows the perturbation methods have run through the model (or its replay) so far."""
        return sum(s.passes for s in self._scorers)

    @property
    def replay_kinds(self) -> dict[str, str]:
        """The kind of replay used at each layer so far (``head``, ``graph``, ``full``)."""
        return {name: r.kind for (name, _), r in self._replays.items()}

    # --- internals -------------------------------------------------------------------------------

    def _row_bytes(self) -> int:
        if self.settings.row_bytes is None:
            return 4 * self.x[0].numel() * 8
        height, width = self.model.preprocess.input_size
        return int(self.settings.row_bytes * self.x.shape[-2] * self.x.shape[-1] / (height * width))

    def _backward(self, goals: Goals) -> dict[str, list[torch.Tensor]]:
        """One backward pass for the ``D`` ranks of ``goals`` at every autograd layer: the ranks
        are a batch of gradient outputs (``is_grads_batched``), so the layers after the target
        are read once for all targets (VGG16's 400 MB first linear layer, say). Linear targets
        seed the logits with their weights (a class: a one-hot row, a contrast ``+1, -1``);
        others differentiate their scores ``s`` [N, D], seeded one rank at a time. Falls back to
        one pass per rank where an operation has no batching rule."""
        leaves = [self._maps[name] for name in self._autograd]
        n, depth = goals.shape
        if goals.linear:
            out = self._logits
            seeds = goals.seeds(out)  # [D, N, C] (or [D, N, C, H, W] for segments)
        else:
            embeddings = self._embeddings
            if goals.embedding is not None and embeddings is None:
                raise MethodError("the forward pass recorded no embedding for the similarity")
            if embeddings is not None and embeddings.grad_fn is None:
                raise MethodError(
                    f"similarity: the embedding ({goals.embedding.describe if goals.embedding else ''}) "
                    "comes before the explained layer: its gradient there is zero; choose an "
                    "embedding layer after it"
                )
            out = goals.score(self._logits, torch.arange(n, device=self._logits.device), embeddings)
            seeds = (
                torch.eye(depth, dtype=out.dtype, device=out.device)[:, None, :]
                .expand(depth, n, depth)
                .contiguous()
            )
        self.backward_passes += 1
        if depth == 1:
            grads = torch.autograd.grad(out, leaves, seeds[0], retain_graph=True)
            return {name: [g] for name, g in zip(self._autograd, grads, strict=True)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's "no batching rule, slower" notes
                batched = torch.autograd.grad(
                    out, leaves, seeds, retain_graph=True, is_grads_batched=True
                )
            return {
                name: list(g.unbind(0)) for name, g in zip(self._autograd, batched, strict=True)
            }
        except RuntimeError:  # an operation vmap cannot batch: one pass per rank
            per_rank = [
                torch.autograd.grad(out, leaves, seeds[j], retain_graph=True) for j in range(depth)
            ]
            return {name: [ranks[i] for ranks in per_rank] for i, name in enumerate(self._autograd)}
