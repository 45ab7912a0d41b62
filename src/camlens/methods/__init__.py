"""The methods camlens knows: name -> function, what it needs, and its paper.

A method is a small function of the target layer's activations that returns the map before the
final ReLU and normalization, or (for the perturbation methods) the channel weights that make it.
What else it takes depends on what it ``needs``:

- ``"head"``: the head's class weights ``[N, K]`` (CAM);
- ``"gradients"``: the gradients of the class score with respect to the activations ``[N, K, h, w]``;
- ``"activations"``: nothing else; the map is the same for every class (Eigen-CAM);
- ``"scores"``: a :class:`~camlens.methods.perturbation.Scorer` that re-scores masked inputs or
  edited activations, for all requested classes of all images at once; the function returns the
  channel weights ``[N, D, K]`` of the ``D`` classes of each image, and the map is
  ``sum_k w[n, d, k] * A[n, k]``.

Add one by writing the function with its formula in the docstring and a :class:`Method` entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

import torch

from camlens.errors import MethodError
from camlens.methods import cam, eigen, gradient, perturbation

MapFunction = Callable[..., torch.Tensor]
Needs = Literal["head", "gradients", "activations", "scores"]


@dataclass(frozen=True)
class Method:
    """``needs``: "head" -> ``fn(activations, class_weights [N, K])``;
    "gradients" -> ``fn(activations, gradients [N, K, h, w])``; "activations" -> ``fn(activations)``;
    "scores" -> ``fn(activations, scorer) -> weights [N, D, K]``. ``options`` are passed to ``fn`` as
    keyword arguments (see :meth:`with_options`).

    ``separable``: the map is a sum over channels of terms that each depend on one channel only
    (true of CAM, the Grad-CAM family and the score-weighted methods), so the per-channel terms,
    the "weighted activations" that principal-component smoothing needs, are well defined.
    """

    name: str
    fn: MapFunction
    needs: Needs
    paper: str
    summary: str
    separable: bool = True
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def with_options(self, **options: Any) -> Method:
        """The same method with keyword arguments for its function, for instance
        ``get_method("scorecam").with_options(mask_align_corners=True)``."""
        return replace(self, options=MappingProxyType({**self.options, **options}))


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "cam",
            cam.cam,
            "head",
            "Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
            "weights of a GAP -> Linear head times the activations; one forward pass, no gradient",
        ),
        Method(
            "gradcam",
            gradient.gradcam,
            "gradients",
            "Selvaraju et al. 2017, Grad-CAM",
            "channel weights = spatial mean of the gradients",
        ),
        Method(
            "gradcampp",
            gradient.gradcampp,
            "gradients",
            "Chattopadhyay et al. 2018, Grad-CAM++",
            "channel weights = positive gradients weighted by second-order alphas",
        ),
        Method(
            "xgradcam",
            gradient.xgradcam,
            "gradients",
            "Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM)",
            "channel weights = gradients averaged with the normalized activations as weights",
        ),
        Method(
            "hirescam",
            gradient.hirescam,
            "gradients",
            "Draelos & Carin 2020, HiResCAM",
            "gradient times activation per pixel, summed over channels, then ReLU (the "
            "element-wise recipe of the Keras Grad-CAM write-ups)",
        ),
        Method(
            "gradcam_elementwise",
            gradient.gradcam_elementwise,
            "gradients",
            "Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise)",
            "ReLU of each gradient-activation product, then summed over channels (the ReLU "
            "before the sum: not the write-ups' recipe, which is hirescam)",
        ),
        Method(
            "layercam",
            gradient.layercam,
            "gradients",
            "Jiang et al. 2021, LayerCAM",
            "positive gradients times activations, element-wise, summed over channels",
        ),
        Method(
            "scorecam",
            perturbation.scorecam,
            "scores",
            "Wang et al. 2020, Score-CAM",
            "channel weights = softmax over channels of the class score of the input masked by "
            "each channel",
        ),
        Method(
            "sscam",
            perturbation.sscam,
            "scores",
            "Wang, Naidu et al. 2020, SS-CAM: Smoothed Score-CAM",
            "Score-CAM with the masked scores averaged over noisy masks",
        ),
        Method(
            "iscam",
            perturbation.iscam,
            "scores",
            "Naidu et al. 2020, IS-CAM: Integrated Score-CAM",
            "Score-CAM with the masked scores averaged over a path of growing masks",
        ),
        Method(
            "ablationcam",
            perturbation.ablationcam,
            "scores",
            "Desai & Ramaswamy 2020, Ablation-CAM",
            "channel weights = relative drop of the class score when the channel is zeroed",
        ),
        Method(
            "eigencam",
            eigen.eigencam,
            "activations",
            "Muhammad & Yeasin 2020, Eigen-CAM",
            "first principal component of the activations (no class, sign fixed)",
            separable=False,
        ),
        Method(
            "eigengradcam",
            eigen.eigengradcam,
            "gradients",
            "Eigen-CAM on gradient x activation (pytorch-grad-cam's EigenGradCAM)",
            "first principal component of gradient times activation (sign fixed)",
            separable=False,
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


__all__ = ["METHODS", "Method", "get_method"]
