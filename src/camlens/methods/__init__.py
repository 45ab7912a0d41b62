"""The methods camlens knows: name -> kind, function, and paper.

A method is a small function of the target layer's activations ``A`` [N, K, h, w] that returns the
map before the final ReLU and normalization, or (for the perturbation methods) the channel weights
that make it. Its kind says what else it takes, from the :class:`Evidence` of one forward pass
(:class:`camlens.capture.Capture`):

- :class:`HeadMethod`: the head's class weights ``[N, K]`` (CAM);
- :class:`GradientMethod`: the gradients of the class score with respect to the activations
  ``[N, K, h, w]``;
- :class:`ActivationMethod`: nothing else; the map is the same for every class (Eigen-CAM);
- :class:`ScoreMethod`: a :class:`~camlens.methods.perturbation.Scorer` that re-scores masked
  inputs or edited activations, for all requested classes of all images at once; the function
  returns the channel weights ``[N, D, K]`` of the ``D`` classes of each image, and the map is
  ``sum_k w[n, d, k] * A[n, k]``.

Add a method of an existing kind by writing its function, with its formula in the docstring, its
entry in :data:`camlens.options.METHOD_INFO` (name, kind, paper) and its function in
``_FUNCTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import torch

from camlens.methods import cam, eigen, gradient, perturbation
from camlens.methods.perturbation import Scorer
from camlens.options import METHOD_INFO, Needs, method_name
from camlens.scoring import Goals

MapFunction = Callable[..., torch.Tensor]
Wanted = Goals | torch.Tensor
"""What is explained for each image: its ``D`` targets (:class:`~camlens.scoring.Goals`), or
class indices [N, D] standing for those classes."""
Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Per-channel terms [N, K, h, w] -> a map [N, h, w] (principal-component smoothing); the plain
map is their sum over channels."""


class Evidence(Protocol):
    """What methods read from one forward pass over a batch of ``N`` images, for the ``D`` targets
    of each image given by ``index`` (Goals, or class indices [N, D])."""

    def activations(self, layer: str) -> torch.Tensor:
        """The layer's maps [N, K, h, w]."""
        ...

    def class_weights(self, layer: str, index: Wanted) -> torch.Tensor:
        """The rows of the GAP -> Linear head the layer feeds, per target: [N, D, K]."""
        ...

    def gradients(self, layer: str, index: Wanted) -> Sequence[torch.Tensor]:
        """``D`` tensors [N, K, h, w]: the gradient of each rank's target score."""
        ...

    def scorer(self, layer: str, index: Wanted) -> Scorer:
        """Runs masked inputs or edited activations of the layer through the model."""
        ...


def channel_terms(
    fn: Callable[..., torch.Tensor],
    activations: torch.Tensor,
    operand: torch.Tensor,
    **options: Any,
) -> torch.Tensor:
    """The per-channel terms [N, K, h, w] of a separable method's map ``fn(A, operand)`` (one
    that sums over channels terms that each depend on one channel): ``fn`` is run on the ``N * K``
    channels as one-channel images, ``fn(A[n, k], operand[n, k])``, so that
    ``channel_terms(...).sum(1) == fn(A, operand)``. ``operand`` is [N, K] (class weights) or
    [N, K, h, w] (gradients). For Grad-CAM these are ``w_k A_k``, for HiResCAM ``G_k * A_k``."""
    n, k, h, w = activations.shape
    single = fn(
        activations.reshape(n * k, 1, h, w),
        operand.reshape(n * k, 1, *operand.shape[2:]),
        **options,
    )
    return single.reshape(n, k, h, w)


@dataclass(frozen=True)
class Method:
    """A method: ``fn`` and what it needs (its kind, the subclass), with its paper.

    ``title``: the name people write (``"Grad-CAM++"``), for pages and pictures.
    ``options`` are passed to ``fn`` as keyword arguments (see :meth:`with_options`).
    ``separable``: the map is a sum over channels of terms that each depend on one channel only
    (true of CAM, the Grad-CAM family and the score-weighted methods), so the per-channel terms,
    the "weighted activations" that principal-component smoothing needs, are well defined.
    """

    needs: ClassVar[Needs]

    name: str
    fn: MapFunction
    paper: str
    summary: str
    separable: bool = True
    title: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def with_options(self, **options: Any) -> Method:
        """The same method with keyword arguments for its function, for instance
        ``get_method("scorecam").with_options(mask_align_corners=True)``."""
        return replace(self, options=MappingProxyType({**self.options, **options}))

    def maps(
        self, evidence: Evidence, layer: str, index: Wanted, reduce: Reduce | None = None
    ) -> torch.Tensor:
        """The maps [N, D, h, w] of the classes ``index`` [N, D] at ``layer``, before ReLU and
        normalization; ``reduce`` replaces the sum over channels of a separable method's terms."""
        raise NotImplementedError

    def _per_rank(
        self,
        activations: torch.Tensor,
        operands: Sequence[torch.Tensor],
        reduce: Reduce | None,
    ) -> torch.Tensor:
        """``fn(A, operand_j)`` for each rank ``j``, stacked [N, D, h, w]."""
        maps = []
        for operand in operands:
            if reduce is not None and self.separable:
                maps.append(reduce(channel_terms(self.fn, activations, operand, **self.options)))
            else:
                maps.append(self.fn(activations, operand, **self.options))
        return torch.stack(maps, dim=1)


@dataclass(frozen=True)
class HeadMethod(Method):
    """``fn(activations, class_weights [N, K]) -> [N, h, w]``: reads a GAP -> Linear head."""

    needs: ClassVar[Needs] = "head"

    def maps(
        self, evidence: Evidence, layer: str, index: Wanted, reduce: Reduce | None = None
    ) -> torch.Tensor:
        a = evidence.activations(layer)
        weights = evidence.class_weights(layer, index)
        return self._per_rank(a, list(weights.unbind(1)), reduce)


@dataclass(frozen=True)
class GradientMethod(Method):
    """``fn(activations, gradients [N, K, h, w]) -> [N, h, w]``."""

    needs: ClassVar[Needs] = "gradients"

    def maps(
        self, evidence: Evidence, layer: str, index: Wanted, reduce: Reduce | None = None
    ) -> torch.Tensor:
        a = evidence.activations(layer)
        return self._per_rank(a, evidence.gradients(layer, index), reduce)


@dataclass(frozen=True)
class ActivationMethod(Method):
    """``fn(activations) -> [N, h, w]``: no class enters, every class gets the same map."""

    needs: ClassVar[Needs] = "activations"

    def maps(
        self, evidence: Evidence, layer: str, index: Wanted, reduce: Reduce | None = None
    ) -> torch.Tensor:
        raw: torch.Tensor = self.fn(evidence.activations(layer), **self.options)
        return raw[:, None].expand(-1, index.shape[1], -1, -1)


@dataclass(frozen=True)
class ScoreMethod(Method):
    """``fn(activations, scorer) -> channel weights [N, D, K]``; the map is
    ``sum_k w[n, d, k] * A[n, k]`` (or, with ``reduce``, the reduction of those terms)."""

    needs: ClassVar[Needs] = "scores"

    def maps(
        self, evidence: Evidence, layer: str, index: Wanted, reduce: Reduce | None = None
    ) -> torch.Tensor:
        a = evidence.activations(layer)
        weights = self.fn(a, evidence.scorer(layer, index), **self.options).to(a.dtype)
        if reduce is not None and self.separable:
            terms = [weights[:, j, :, None, None] * a for j in range(index.shape[1])]
            return torch.stack([reduce(t) for t in terms], dim=1)
        return torch.einsum("ndk,nkhw->ndhw", weights, a)


_FUNCTIONS: dict[str, MapFunction] = {
    "cam": cam.cam,
    "gradcam": gradient.gradcam,
    "gradcampp": gradient.gradcampp,
    "xgradcam": gradient.xgradcam,
    "hirescam": gradient.hirescam,
    "gradcam_elementwise": gradient.gradcam_elementwise,
    "layercam": gradient.layercam,
    "scorecam": perturbation.scorecam,
    "sscam": perturbation.sscam,
    "iscam": perturbation.iscam,
    "ablationcam": perturbation.ablationcam,
    "eigencam": eigen.eigencam,
    "eigengradcam": eigen.eigengradcam,
}
_KINDS: dict[str, type[Method]] = {
    kind.needs: kind for kind in (HeadMethod, GradientMethod, ActivationMethod, ScoreMethod)
}

METHODS: dict[str, Method] = {
    info.name: _KINDS[info.needs](
        info.name,
        _FUNCTIONS[info.name],
        info.paper,
        info.summary,
        separable=info.separable,
        title=info.title,
    )
    for info in METHOD_INFO
}
"""Every method by name, in the order of :data:`camlens.options.METHOD_INFO` (which holds their
names, kinds, papers and spellings without importing torch)."""


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive; a few spellings are accepted:
    :data:`camlens.options.ALIASES`)."""
    return METHODS[method_name(name)]


__all__ = [
    "METHODS",
    "ActivationMethod",
    "Evidence",
    "GradientMethod",
    "HeadMethod",
    "Method",
    "ScoreMethod",
    "channel_terms",
    "get_method",
]
