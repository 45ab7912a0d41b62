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

Add a method of an existing kind by writing its function, with its formula in the docstring, and
one entry in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

import torch

from camlens.errors import MethodError
from camlens.methods import cam, eigen, gradient, perturbation
from camlens.methods.perturbation import Scorer
from camlens.scoring import Goals

MapFunction = Callable[..., torch.Tensor]
Wanted = Goals | torch.Tensor
"""What is explained for each image: its ``D`` targets (:class:`~camlens.scoring.Goals`), or
class indices [N, D] standing for those classes."""
Needs = Literal["head", "gradients", "activations", "scores"]
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


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        HeadMethod(
            "cam",
            cam.cam,
            "Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
            "weights of a GAP -> Linear head times the activations; one forward pass, no gradient",
            title="CAM",
        ),
        GradientMethod(
            "gradcam",
            gradient.gradcam,
            "Selvaraju et al. 2017, Grad-CAM",
            "channel weights = spatial mean of the gradients",
            title="Grad-CAM",
        ),
        GradientMethod(
            "gradcampp",
            gradient.gradcampp,
            "Chattopadhyay et al. 2018, Grad-CAM++",
            "channel weights = positive gradients weighted by second-order alphas",
            title="Grad-CAM++",
        ),
        GradientMethod(
            "xgradcam",
            gradient.xgradcam,
            "Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM)",
            "channel weights = gradients averaged with the normalized activations as weights",
            title="XGrad-CAM",
        ),
        GradientMethod(
            "hirescam",
            gradient.hirescam,
            "Draelos & Carin 2020, HiResCAM",
            "gradient times activation per pixel, summed over channels, then ReLU (the "
            "element-wise recipe of the Keras Grad-CAM write-ups)",
            title="HiResCAM",
        ),
        GradientMethod(
            "gradcam_elementwise",
            gradient.gradcam_elementwise,
            "Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise)",
            "ReLU of each gradient-activation product, then summed over channels (the ReLU "
            "before the sum: not the write-ups' recipe, which is hirescam)",
            title="Grad-CAM elementwise",
        ),
        GradientMethod(
            "layercam",
            gradient.layercam,
            "Jiang et al. 2021, LayerCAM",
            "positive gradients times activations, element-wise, summed over channels",
            title="LayerCAM",
        ),
        ScoreMethod(
            "scorecam",
            perturbation.scorecam,
            "Wang et al. 2020, Score-CAM",
            "channel weights = softmax over channels of the class score of the input masked by "
            "each channel",
            title="Score-CAM",
        ),
        ScoreMethod(
            "sscam",
            perturbation.sscam,
            "Wang, Naidu et al. 2020, SS-CAM: Smoothed Score-CAM",
            "Score-CAM with the masked scores averaged over noisy masks",
            title="SS-CAM",
        ),
        ScoreMethod(
            "iscam",
            perturbation.iscam,
            "Naidu et al. 2020, IS-CAM: Integrated Score-CAM",
            "Score-CAM with the masked scores averaged over a path of growing masks",
            title="IS-CAM",
        ),
        ScoreMethod(
            "ablationcam",
            perturbation.ablationcam,
            "Desai & Ramaswamy 2020, Ablation-CAM",
            "channel weights = relative drop of the class score when the channel is zeroed",
            title="Ablation-CAM",
        ),
        ActivationMethod(
            "eigencam",
            eigen.eigencam,
            "Muhammad & Yeasin 2020, Eigen-CAM",
            "first principal component of the activations (no class, sign fixed)",
            separable=False,
            title="Eigen-CAM",
        ),
        GradientMethod(
            "eigengradcam",
            eigen.eigengradcam,
            "Eigen-CAM on gradient x activation (pytorch-grad-cam's EigenGradCAM)",
            "first principal component of gradient times activation (sign fixed)",
            separable=False,
            title="EigenGrad-CAM",
        ),
    ]
}

ALIASES = {
    "grad-cam": "gradcam",
    "gradcam++": "gradcampp",
    "grad-cam++": "gradcampp",
    "xgrad-cam": "xgradcam",
    "layer-cam": "layercam",
    "hires-cam": "hirescam",
    "gradcamelementwise": "gradcam_elementwise",
    "score-cam": "scorecam",
    "ss-cam": "sscam",
    "is-cam": "iscam",
    "ablation-cam": "ablationcam",
    "eigen-cam": "eigencam",
    "eigengrad-cam": "eigengradcam",
}


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive; a few spellings are accepted)."""
    key = name.strip().lower().replace(" ", "")
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in METHODS:
        raise MethodError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[key]


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
