"""Targets against a model: :class:`TargetPlan` checks a model's targets once (classes that
exist, outputs in range, the reference images' embeddings), and gives for each batch the
:class:`Goals`, the ``D`` targets of each of its ``N`` images as one function of the model's output
that the methods differentiate (gradients) or evaluate on their masked or ablated passes (scores).

Linear targets (a class, a contrast, a binary head's sign, a raw output) are a weight tensor
``W`` [N, D, outputs]: the score of rank ``j`` of image ``n`` is ``W[n, j] . y[n]``; their gradient
is one backward pass seeded with ``W`` (as a class's is with a one-hot row), and CAM reads the
head's rows ``W @ head.weight``. Similarity and callables are functions of the output (and of the
embedding), differentiated through."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens.errors import CamlensError, ClassError, LayerError
from camlens.images import load_image, preprocess
from camlens.models import Model
from camlens.modes import eval_mode
from camlens.taps import RUNS, hooked, resolve_layer
from camlens.targets import (
    Binary,
    ClassScore,
    Contrast,
    Function,
    Output,
    Similarity,
    TargetError,
    VersusTrue,
    as_target,
)


@dataclass(frozen=True)
class Explained:
    """What one map explains, in words and as data (``{"kind": "contrast", "classes": [282,
    285]}``), with the class it is about (the first class of a class or contrast target, else
    None) for the reports' ``class_index`` and ``label``."""

    data: dict[str, Any]
    words: str
    class_index: int | None


class Embedding:
    """The features a similarity compares: the input of the model's last linear layer (its
    pooled features, ``layer=None``) or ``layer``'s output averaged over its locations. Recorded
    by :meth:`tap` during forward passes."""

    def __init__(self, model: Model, layer: str | None) -> None:
        self.layer = layer
        if layer is None:
            linears = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise TargetError(
                    f"similarity: {model.name} has no linear classifier whose input would be its "
                    "embedding: name a layer (embedding=LAYER, --embedding)"
                )
            self.name = linears[-1][0]
            self.module: nn.Module = linears[-1][1]
            self.before = True
        else:
            try:
                self.name, self.module = resolve_layer(model.net, layer)
            except LayerError as exc:
                raise TargetError(f"similarity: {exc}") from None
            self.before = False
        self.describe = (
            f"the input of {self.name!r}" if self.before else f"the output of {self.name!r}"
        )

    @contextlib.contextmanager
    def tap(self, into: list[torch.Tensor]) -> Iterator[None]:
        """Appends each forward pass's embedding [N, E] to ``into`` for the duration."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            value = inputs[0] if self.before else output
            if not isinstance(value, torch.Tensor) or value.ndim < 2:
                raise TargetError(
                    f"similarity: {self.describe} is not a tensor [N, ...] an embedding can be "
                    "read from; name another layer"
                )
            into.append(value.mean(dim=(2, 3)) if value.ndim == 4 else value.flatten(1))

        with hooked([(self.module, hook)]):
            yield


ScoreFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class Goals:
    """The ``D`` targets of each of ``N`` images: ``weights`` [N, D, outputs] for the linear
    ones (zero rows elsewhere), ``functions`` ``(images, rank, fn)`` for the others (the images
    [I] whose rank ``rank`` is that target), where ``fn(outputs [M, C], embeddings [M, E] or
    None) -> [M]``; ``explained[n][j]`` says what each
    is, ``depth[n]`` how many ranks image ``n`` really has (the others repeat its last)."""

    weights: torch.Tensor
    functions: list[tuple[torch.Tensor, int, ScoreFn]]
    explained: list[list[Explained]]
    embedding: Embedding | None = None
    values: torch.Tensor | None = field(default=None, repr=False)

    @property
    def linear(self) -> bool:
        """Every target is a fixed linear combination of the outputs."""
        return not self.functions

    @property
    def shape(self) -> tuple[int, int]:
        n, d = self.weights.shape[:2]
        return int(n), int(d)

    @classmethod
    def classes(cls, index: torch.Tensor, outputs: int, labels: Sequence[str] = ()) -> Goals:
        """The class scores ``y[index[n, j]]`` of ``index`` [N, D] (top-k or given classes)."""
        n, d = index.shape
        weights = torch.zeros(n, d, outputs, device=index.device)
        weights.scatter_(2, index[:, :, None], 1.0)
        explained = [[_class_explained(int(c), labels) for c in row] for row in index.tolist()]
        return cls(weights, [], explained)

    def score(
        self, outputs: torch.Tensor, rows: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scores [M, D] of output rows ``outputs`` [M, C] that belong to the images ``rows``
        [M] (differentiable)."""
        weights = self.weights[rows].to(outputs.dtype)
        out = torch.einsum("mc,mdc->md", outputs, weights)
        if not self.functions:
            return out
        out = out.clone()
        for images, rank, fn in self.functions:
            chosen = torch.isin(rows, images).nonzero()[:, 0]
            if len(chosen) == 0:
                continue
            emb = embeddings[chosen] if embeddings is not None else None
            value = fn(outputs[chosen], emb)
            out[chosen, rank] = value.to(out.dtype)
        return out


def _class_explained(c: int, labels: Sequence[str]) -> Explained:
    label = labels[c] if c < len(labels) else f"class {c}"
    return Explained({"kind": "class", "classes": [c]}, label, c)


class TargetPlan:
    """The targets of an explainer, checked against ``model`` once: class names and indices
    exist, a contrast is not of a class with itself, an output index is in range, a binary target
    has a one-output model, a reference image can be read (its embedding is computed here, once).
    Each problem is a :class:`~camlens.targets.TargetError` (or ClassError) naming it."""

    def __init__(
        self, model: Model, targets: Sequence[Any], *, max_pixels: int | None = None
    ) -> None:
        self.model = model
        self.targets = tuple(as_target(t) for t in targets)
        self._references: dict[tuple[str, str | None], torch.Tensor] = {}
        self._embeddings: dict[str | None, Embedding] = {}
        outputs = model.num_classes
        for t in self.targets:
            if isinstance(t, ClassScore):
                model.class_index(t.cls)
            elif isinstance(t, Contrast):
                first = None if t.cls is None else model.class_index(t.cls)
                others = [model.class_index(v) for v in t.versus]
                if first is not None and first in others:
                    raise ClassError(
                        f"contrast: class {t.cls!r} ({first}) versus itself explains nothing"
                    )
                if t.next is not None and t.next >= outputs:
                    raise ClassError(
                        f"contrast: next {t.next} needs {t.next + 1} classes; {model.name} has "
                        f"{outputs}"
                    )
                if outputs < 2:
                    raise ClassError(f"contrast: {model.name} has one output, nothing to contrast")
            elif isinstance(t, Output):
                if t.index >= outputs:
                    raise TargetError(
                        f"output {t.index} is out of range: {model.name} has {outputs} outputs "
                        f"(0..{outputs - 1})"
                    )
            elif isinstance(t, Binary):
                if outputs != 1:
                    raise TargetError(
                        f"binary positive/negative explains a one-output head; {model.name} has "
                        f"{outputs} outputs: explain a class instead"
                    )
            elif isinstance(t, Similarity):
                self._reference(t, max_pixels)
            elif isinstance(t, VersusTrue):
                self._check_truth(t)
        kinds = {t.layer for t in self.targets if isinstance(t, Similarity)}
        if len(kinds) > 1:
            raise TargetError(
                "similarity targets of one call compare one embedding: give them the same layer"
            )

    def _check_truth(self, target: VersusTrue) -> int | None:
        """The true class of ``target`` as an index (None: unknown), checked against the model."""
        model = self.model
        if model.scores == "raw" or model.num_classes < 2:
            raise TargetError(
                f"versus true contrasts the top-1 class with the true class; {model.name} "
                f"{'has raw outputs, not classes' if model.scores == 'raw' else 'has one output'}"
            )
        return None if target.truth is None else model.class_index(target.truth)

    def with_top1(self, chosen: Sequence[Sequence[Any]], top1: Sequence[int]) -> list[list[Any]]:
        """``chosen`` (per image, targets or class indices) with each :class:`VersusTrue` made
        what it explains for the image whose top-1 class is ``top1[n]``: that class, then, when
        the true class is known and is another, the contrast of the two."""
        out: list[list[Any]] = []
        for ts, first in zip(chosen, top1, strict=True):
            row: list[Any] = []
            for t in ts:
                if not isinstance(t, VersusTrue):
                    row.append(t)
                    continue
                truth = self._check_truth(t)
                row.append(int(first))
                if truth is not None and truth != first:
                    row.append(Contrast(int(first), (truth,)))
            out.append(row)
        return out

    @property
    def linear(self) -> bool:
        """Every target of the plan is linear in the outputs (CAM and head gradients apply)."""
        return not any(isinstance(t, Similarity | Function) for t in self.targets)

    @property
    def nonlinear_words(self) -> str:
        """The targets that are not linear, in words."""
        return ", ".join(
            f"the similarity to {Path(t.reference).name}"
            if isinstance(t, Similarity)
            else f"the callable {t.name!r}"
            for t in self.targets
            if isinstance(t, Similarity | Function)
        )

    @property
    def embedding(self) -> Embedding | None:
        """The embedding the similarity targets read (None without one)."""
        return next(iter(self._embeddings.values()), None)

    def _reference(self, target: Similarity, max_pixels: int | None) -> torch.Tensor:
        key = (target.reference, target.layer)
        if key in self._references:
            return self._references[key]
        if target.layer not in self._embeddings:
            self._embeddings[target.layer] = Embedding(self.model, target.layer)
        embedding = self._embeddings[target.layer]
        try:
            photo = load_image(
                Path(target.reference), **({} if max_pixels is None else {"max_pixels": max_pixels})
            )
        except CamlensError as exc:
            raise TargetError(f"similarity: the reference cannot be read: {exc}") from None
        x = preprocess([photo], self.model.preprocess).to(self.model.device)
        found: list[torch.Tensor] = []
        with (
            eval_mode(self.model.net),
            RUNS.shared(),
            torch.inference_mode(),
            embedding.tap(found),
        ):
            self.model.net(x)
        if not found:
            raise TargetError(
                f"similarity: {embedding.describe} is not run by {self.model.name}'s forward pass; "
                "name a layer it runs"
            )
        vector = found[-1][0].float()
        if not bool(torch.isfinite(vector).all()) or float(vector.norm()) == 0:
            raise TargetError(
                f"similarity: the reference {target.reference}'s embedding is zero or not finite: "
                "nothing to compare with"
            )
        self._references[key] = vector
        return vector

    def goals(
        self,
        outputs: torch.Tensor,
        chosen: Sequence[Sequence[Any]],
        embeddings: torch.Tensor | None = None,
    ) -> Goals:
        """The goals of ``chosen[n]`` (targets, or class indices) for each image of a batch whose
        outputs are ``outputs`` [N, C] (they decide ``Contrast(next=K)`` and a contrast of the
        top-1); each list is padded with its last target."""
        model = self.model
        n, c = outputs.shape
        depth = max(len(ts) for ts in chosen)
        weights = torch.zeros(n, depth, c, device=outputs.device, dtype=outputs.dtype)
        grouped: dict[tuple[int, Any], tuple[list[int], ScoreFn]] = {}
        explained: list[list[Explained]] = []
        order = outputs.argsort(dim=1, descending=True, stable=True)
        for b, ts in enumerate(chosen):
            row: list[Explained] = []
            for j in range(depth):
                t = as_target(ts[min(j, len(ts) - 1)])
                if isinstance(t, ClassScore):
                    k = model.class_index(t.cls)
                    weights[b, j, k] = 1
                    row.append(_class_explained(k, model.labels))
                elif isinstance(t, Contrast):
                    first = int(order[b, 0]) if t.cls is None else model.class_index(t.cls)
                    if t.next is not None:
                        rest = [int(i) for i in order[b].tolist() if int(i) != first][: t.next]
                    else:
                        rest = [model.class_index(v) for v in t.versus]
                    if first in rest:
                        raise ClassError(
                            f"contrast: class {first} ({model.labels[first]}) versus itself "
                            "explains nothing"
                        )
                    weights[b, j, first] = 1
                    weights[b, j, rest] = -1 / len(rest)
                    names = [model.labels[i] for i in rest]
                    versus = names[0] if len(names) == 1 else "the mean of " + ", ".join(names)
                    row.append(
                        Explained(
                            {"kind": "contrast", "classes": [first, *rest]},
                            f"{model.labels[first]} versus {versus}",
                            first,
                        )
                    )
                elif isinstance(t, Output):
                    weights[b, j, t.index] = 1
                    row.append(
                        Explained({"kind": "output", "index": t.index}, f"output {t.index}", None)
                    )
                elif isinstance(t, Binary):
                    weights[b, j, 0] = 1 if t.positive else -1
                    side = "positive" if t.positive else "negative"
                    row.append(
                        Explained(
                            {"kind": "binary", "positive": t.positive},
                            f"{model.labels[0]}: {side}",
                            0 if t.positive else None,
                        )
                    )
                elif isinstance(t, Similarity):
                    reference = self._reference(t, None)
                    grouped.setdefault((j, t), ([], _cosine(reference)))[0].append(b)
                    row.append(
                        Explained(
                            {"kind": "similarity", "reference": t.reference, "layer": t.layer},
                            f"similarity to {Path(t.reference).name}",
                            None,
                        )
                    )
                elif isinstance(t, Function):
                    grouped.setdefault((j, t), ([], _calling(t)))[0].append(b)
                    row.append(Explained({"kind": "callable", "name": t.name}, t.name, None))
                elif isinstance(t, VersusTrue):
                    raise TargetError(
                        "versus true is made per image by TargetPlan.with_top1 before its goals"
                    )
            explained.append(row)
        functions = [
            (torch.tensor(images, device=outputs.device), j, fn)
            for (j, _), (images, fn) in grouped.items()
        ]
        goals = Goals(weights, functions, explained, self.embedding)
        similar = any(isinstance(t, Similarity) for ts in chosen for t in map(as_target, ts))
        if similar and embeddings is None:
            raise TargetError("similarity: the forward pass recorded no embedding")
        with torch.no_grad():
            goals.values = goals.score(outputs, torch.arange(n, device=outputs.device), embeddings)
        if goals.values.shape != (n, depth):
            raise TargetError(
                f"the targets gave scores {tuple(goals.values.shape)}, not {(n, depth)}"
            )
        return goals


def _cosine(reference: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def similarity(outputs: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        if embeddings is None:
            raise TargetError("similarity: no embedding was recorded for these passes")
        ref = reference.to(embeddings.device, embeddings.dtype)
        if embeddings.shape[1] != ref.shape[0]:
            raise TargetError(
                f"similarity: the embedding has {embeddings.shape[1]} features, the reference's "
                f"{ref.shape[0]}"
            )
        return F.cosine_similarity(embeddings, ref[None], dim=1)

    return similarity


def _calling(target: Function) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def call(outputs: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        try:
            value = target.fn(outputs)
        except Exception as exc:  # the user's function: its failure named, in one line
            raise TargetError(
                f"the callable target {target.name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(value, torch.Tensor) or value.shape != (len(outputs),):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TargetError(
                f"the callable target {target.name!r} gave {shape} for {len(outputs)} images: it "
                "must give one score per image, a tensor [N]"
            )
        if not bool(torch.isfinite(value).all()):
            raise TargetError(f"the callable target {target.name!r} gave NaN or infinite scores")
        return value

    return call


__all__ = ["Embedding", "Explained", "Goals", "TargetPlan"]
