"""Smoothing for any method: test-time augmentation (maps of flipped and rescaled inputs, undone
and averaged) and principal-component smoothing (the first principal component of the weighted
activations instead of their sum)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from camlens.explanation import ClassMap
from camlens.maps import normalize
from camlens.methods.eigen import first_component
from camlens.options import SMOOTHERS as SMOOTHERS


def pca_map(terms: torch.Tensor) -> torch.Tensor:
    """Principal-component smoothing of per-channel terms [N, K, h, w] -> [N, h, w]: instead of
    their sum over channels, their projection on the first principal component (as Eigen-CAM does
    with the activations; pytorch-grad-cam's ``eigen_smooth``)::

        M = ReLU(X v_1),   X = terms as [h*w, K], centred over locations

    with the sign fixed so that the map correlates positively with the unsmoothed map
    ``sum_k terms_k`` (see :func:`camlens.methods.eigen.first_component`). It keeps the dominant
    spatial pattern of the terms and drops what only a few channels add."""
    return first_component(terms)


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation: resize the whole input by ``scale`` (bilinear, antialiased when
    shrinking), then mirror it left-right if ``flip``. :meth:`undo` maps a map of the augmented
    input back onto the original's grid."""

    flip: bool = False
    scale: float = 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            size = (
                max(1, round(x.shape[-2] * self.scale)),
                max(1, round(x.shape[-1] * self.scale)),
            )
            x = F.interpolate(
                x, size, mode="bilinear", align_corners=False, antialias=self.scale < 1
            )
        return x.flip(-1) if self.flip else x

    def undo(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Maps [..., h', w'] of the augmented input -> [..., h, w] on the original's grid."""
        if self.flip:
            maps = maps.flip(-1)
        if tuple(maps.shape[-2:]) != tuple(size):
            lead = maps.shape[:-2]
            shrink = maps.shape[-2] > size[0] or maps.shape[-1] > size[1]
            maps = F.interpolate(
                maps.reshape(-1, 1, *maps.shape[-2:]).float(),
                size,
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            ).reshape(*lead, *size)
        return maps

    def __str__(self) -> str:
        return ("flip " if self.flip else "") + f"x{self.scale:g}"


def augmentations(
    flips: bool = True, scales: Sequence[float] = (1.0, 1.25)
) -> tuple[Augmentation, ...]:
    """Every combination of ``scales`` with and without a left-right flip; the identity first."""
    if any(not s > 0 for s in scales):
        raise ValueError(f"test-time augmentation scales must be positive, not {list(scales)}")
    out = [
        Augmentation(flip, scale)
        for scale in scales
        for flip in ((False, True) if flips else (False,))
    ]
    identity = Augmentation()
    return (identity, *[a for a in out if a != identity])


def merge_augmented(
    runs: Sequence[Sequence[Sequence[ClassMap]]], augmented: Sequence[Augmentation]
) -> list[list[ClassMap]]:
    """Test-time augmentation: ``runs[a][b][i]`` is map ``i`` of image ``b`` under augmentation
    ``augmented[a]`` (``augmented[0]`` the identity, whose maps fix the grid and everything but
    the map). Each map is undone (:meth:`Augmentation.undo`), the maps are averaged and the mean is
    scaled to [0, 1] again::

        M = s( (1 / T) sum_t undo_t(M_t) ),   s = min-max (all zero -> flat)
    """
    merged = []
    for b, base_maps in enumerate(runs[0]):
        row = []
        for i, base in enumerate(base_maps):
            size = (int(base.map.shape[-2]), int(base.map.shape[-1]))
            stack = torch.stack(
                [aug.undo(run[b][i].map, size) for aug, run in zip(augmented, runs, strict=True)]
            )
            maps, flat = normalize(stack.mean(dim=0)[None])
            row.append(replace(base, map=maps[0], flat=bool(flat[0])))
        merged.append(row)
    return merged
