"""What every method's output goes through: ReLU and normalization to [0, 1] (min-max, or division
by the maximum as the CAM write-ups do), then upsampling; and the share of a map inside boxes
(:func:`energy_in_boxes`), which the energy-based pointing game and a detection's
``energy_in_box`` both read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from camlens.errors import CamlensError
from camlens.types import Box

BoxLike = Box | Sequence[float]

# A map whose range is below this fraction of its largest magnitude is treated as constant.
CONSTANT_TOLERANCE = 1e-6

Normalization = Literal["minmax", "max"]
"""How a map is brought to [0, 1]: ``minmax`` (the default) or ``max`` (see :func:`normalize`)."""


def normalize(
    maps: torch.Tensor, *, relu: bool = True, mode: Normalization = "minmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU, then min-max to [0, 1], each map of ``maps`` [N, h, w] on its own.

    ``mode="max"``: ReLU, then divide by the maximum, ``M / max M`` (the write-ups'
    ``heatmap / np.max(heatmap)``): where the ReLU cut nothing the map's minimum stays above 0,
    where min-max would stretch it to 0. Needs ``relu=True``.

    ``relu=False`` keeps the sign: plain min-max of the raw map, ``(M - min M) / (max M - min M)``
    (what ``cv2.normalize(M, None, 0, 1, NORM_MINMAX)`` gives), so a map that is negative
    everywhere (a class with no positive evidence at that layer) still shows where it is least
    negative, and 0 is no longer "no evidence".

    Returns ``(normalized, flat)``: ``flat[n]`` is True where map ``n`` was constant (all zero after
    the ReLU, say) or not finite; such a map is returned as zeros, never NaN.
    """
    if mode == "max" and not relu:
        raise ValueError("normalize mode 'max' needs the ReLU (relu=True)")
    if relu:
        maps = maps.clamp(min=0)
    flat_maps = maps.flatten(1)
    low = flat_maps.amin(dim=1)
    high = flat_maps.amax(dim=1)
    span = high - low
    finite = torch.isfinite(flat_maps).all(dim=1)
    flat = ~finite | ~(span > CONSTANT_TOLERANCE * high.abs())  # constant: flat in either mode
    if mode == "max":
        low, span = torch.zeros_like(low), high
    safe_span = torch.where(flat, torch.ones_like(span), span)
    out = (maps - low[:, None, None]) / safe_span[:, None, None]
    out = torch.where(flat[:, None, None], torch.zeros_like(out), out)
    return out.clamp(0, 1), flat


def upsample(
    maps: torch.Tensor, size: tuple[int, int], *, mode: Normalization = "minmax"
) -> torch.Tensor:
    """Bilinear resize of maps [..., h, w] in [0, 1] to ``size`` (height, width), renormalized so
    that each map again spans [0, 1] (interpolation can lower the peak a little); a map that is all
    zero stays zero. ``mode``: the maps' normalization (:func:`normalize`), kept: ``max`` maps are
    divided by their new maximum only."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    big = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)[:, 0]
    low = big.flatten(1).amin(dim=1)[:, None, None]
    if mode == "max":
        low = torch.zeros_like(low)
    high = big.flatten(1).amax(dim=1)[:, None, None]
    span = high - low
    big = torch.where(span > 0, (big - low) / torch.where(span > 0, span, 1), torch.zeros_like(big))
    return big.reshape(*lead, *size)


# --------------------------------------------------------------------------------------------------
# A map inside boxes (the box convention of :mod:`camlens.types`)


def box_xyxy(box: BoxLike) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a :class:`~camlens.types.Box` or of four numbers."""
    if isinstance(box, Box):
        return box.xyxy
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise CamlensError(f"a box is [x0, y0, x1, y1], not {list(box)}")
    return values  # type: ignore[return-value]


def pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """The pixels whose centers lie in [lo, hi]: ``ceil(lo - 0.5) .. floor(hi - 0.5)``
    (for whole numbers ``lo .. hi - 1``)."""
    return math.ceil(lo - 0.5), math.floor(hi - 0.5)


def box_mask(shape: tuple[int, int], boxes: Sequence[BoxLike]) -> npt.NDArray[np.bool_]:
    """A [height, width] mask of the pixels whose centers lie in any of ``boxes``."""
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = box_xyxy(box)
        px0, px1 = pixel_span(x0, x1)
        py0, py1 = pixel_span(y0, y1)
        px0, py0 = max(px0, 0), max(py0, 0)
        if px1 >= px0 and py1 >= py0:
            mask[py0 : py1 + 1, px0 : px1 + 1] = True
    return mask


def energy_in_boxes(
    map2d: torch.Tensor | npt.NDArray[np.floating], boxes: Sequence[BoxLike]
) -> float:
    """The share of a map's sum inside ``boxes`` (their union: an overlap counts once), the
    pixels whose centers lie in a box::

        sum_{(i,j) in boxes} M(i, j) / sum_{(i,j)} M(i, j)

    0 for a map whose sum is not positive (a flat map holds no energy anywhere). Sums in float64.
    """
    values = torch.as_tensor(map2d).detach().to("cpu", torch.float64)
    if values.ndim != 2:
        raise CamlensError(f"a map is [height, width], not of shape {list(values.shape)}")
    total = float(values.sum())
    if not total > 0.0:
        return 0.0
    inside = torch.from_numpy(box_mask((values.shape[0], values.shape[1]), boxes))
    return float(values[inside].sum()) / total
