"""The names and values camlens's options accept, as plain data with their checks: the methods
(names, spellings, groups, kinds and papers), the smoothings, box thresholds, overlay opacity and
colormaps, the image size limit.

Nothing here imports torch, matplotlib or model code, so :mod:`camlens.config` and the command
line check every option before anything heavy is loaded. The methods' functions live in
:mod:`camlens.methods`, which builds :data:`camlens.METHODS` from :data:`METHOD_INFO`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from camlens.errors import CamlensError, MethodError

Needs = Literal["head", "gradients", "activations", "scores"]


@dataclass(frozen=True)
class MethodInfo:
    """A method as a user sees it: its name, what it needs (its kind), its paper and what it
    does, the name people write (``title``: ``"Grad-CAM++"``, for pages and pictures);
    ``separable`` as in :class:`camlens.methods.Method`."""

    name: str
    needs: Needs
    paper: str
    summary: str
    title: str
    separable: bool = True


METHOD_INFO: tuple[MethodInfo, ...] = (
    MethodInfo(
        "cam",
        "head",
        "Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
        "weights of a GAP -> Linear head times the activations; one forward pass, no gradient",
        "CAM",
    ),
    MethodInfo(
        "gradcam",
        "gradients",
        "Selvaraju et al. 2017, Grad-CAM",
        "channel weights = spatial mean of the gradients",
        "Grad-CAM",
    ),
    MethodInfo(
        "gradcampp",
        "gradients",
        "Chattopadhyay et al. 2018, Grad-CAM++",
        "channel weights = positive gradients weighted by second-order alphas",
        "Grad-CAM++",
    ),
    MethodInfo(
        "xgradcam",
        "gradients",
        "Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM)",
        "channel weights = gradients averaged with the normalized activations as weights",
        "XGrad-CAM",
    ),
    MethodInfo(
        "hirescam",
        "gradients",
        "Draelos & Carin 2020, HiResCAM",
        "gradient times activation per pixel, summed over channels, then ReLU (the "
        "element-wise recipe of the Keras Grad-CAM write-ups)",
        "HiResCAM",
    ),
    MethodInfo(
        "gradcam_elementwise",
        "gradients",
        "Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise)",
        "ReLU of each gradient-activation product, then summed over channels (the ReLU "
        "before the sum: not the write-ups' recipe, which is hirescam)",
        "Grad-CAM elementwise",
    ),
    MethodInfo(
        "layercam",
        "gradients",
        "Jiang et al. 2021, LayerCAM",
        "positive gradients times activations, element-wise, summed over channels",
        "LayerCAM",
    ),
    MethodInfo(
        "scorecam",
        "scores",
        "Wang et al. 2020, Score-CAM",
        "channel weights = softmax over channels of the class score of the input masked by "
        "each channel",
        "Score-CAM",
    ),
    MethodInfo(
        "sscam",
        "scores",
        "Wang, Naidu et al. 2020, SS-CAM: Smoothed Score-CAM",
        "Score-CAM with the masked scores averaged over noisy masks",
        "SS-CAM",
    ),
    MethodInfo(
        "iscam",
        "scores",
        "Naidu et al. 2020, IS-CAM: Integrated Score-CAM",
        "Score-CAM with the masked scores averaged over a path of growing masks",
        "IS-CAM",
    ),
    MethodInfo(
        "ablationcam",
        "scores",
        "Desai & Ramaswamy 2020, Ablation-CAM",
        "channel weights = relative drop of the class score when the channel is zeroed",
        "Ablation-CAM",
    ),
    MethodInfo(
        "eigencam",
        "activations",
        "Muhammad & Yeasin 2020, Eigen-CAM",
        "first principal component of the activations (no class, sign fixed)",
        "Eigen-CAM",
        separable=False,
    ),
    MethodInfo(
        "eigengradcam",
        "gradients",
        "Eigen-CAM on gradient x activation (pytorch-grad-cam's EigenGradCAM)",
        "first principal component of gradient times activation (sign fixed)",
        "EigenGrad-CAM",
        separable=False,
    ),
)
"""Every method, in the order of ``camlens methods``."""

METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHOD_INFO)

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
"""Other spellings of the methods' names (any case; spaces are dropped)."""

METHOD_GROUPS: dict[str, tuple[str, ...]] = {
    "all": METHOD_NAMES,
    "gradients": tuple(m.name for m in METHOD_INFO if m.needs == "gradients"),
    "scores": tuple(m.name for m in METHOD_INFO if m.needs == "scores"),
}
"""Names that stand for several methods: ``all``, ``gradients`` (the Grad-CAM family), ``scores``
(the perturbation methods: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM)."""


def method_name(name: str) -> str:
    """The canonical name of the method called ``name`` (case-insensitive; a few spellings are
    accepted); an unknown name is a :class:`MethodError`."""
    if not isinstance(name, str):
        raise MethodError(f"a method is named by a string, not {name!r}")
    key = name.strip().lower().replace(" ", "")
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in METHOD_NAMES:
        raise MethodError(f"unknown method {name!r}: choose one of {', '.join(METHOD_NAMES)}")
    return key


def resolve_methods(names: str | Iterable[str]) -> tuple[str, ...]:
    """Method names (any accepted spelling, or a group of :data:`METHOD_GROUPS`) -> their canonical
    names, each once, in the order given; an unknown name is a :class:`MethodError`."""
    if isinstance(names, str):
        given = [names]
    elif isinstance(names, Iterable):
        given = list(names)
    else:
        raise MethodError(f"methods are named by strings, not {names!r}")
    if not given:
        raise MethodError("no method given: choose one or more of " + ", ".join(METHOD_NAMES))
    out: list[str] = []
    for name in given:
        if not isinstance(name, str):
            raise MethodError(f"a method is named by a string, not {name!r}")
        key = name.strip().lower()
        group = METHOD_GROUPS.get("gradients" if key == "gradient" else key)
        out.extend(group if group is not None else [method_name(name)])
    return tuple(dict.fromkeys(out))


SMOOTHERS = ("tta", "pca")
"""The smoothings (:mod:`camlens.smoothing`): test-time augmentation, principal component."""

MAX_PIXELS = 64_000_000
"""Default limit on width * height of an image file (64 megapixels, e.g. 8000x8000).

Checked from the file's header before decoding (:func:`camlens.images.load_image`), so a small
file that would decode into gigabytes (a "decompression bomb") is refused cheaply."""

Threshold = float | Literal["otsu"]


def parse_threshold(text: str | float) -> Threshold:
    """A threshold from the command line: a fraction of the map's maximum in [0, 1), or ``otsu``."""
    if isinstance(text, str) and text.strip().lower() == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise CamlensError(
            f"threshold {text!r} is neither a fraction of the map's maximum (0.2, 0.15...) nor 'otsu'"
        ) from None
    return check_threshold(value)


def check_threshold(threshold: Threshold) -> Threshold:
    if threshold == "otsu":
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise CamlensError(f"threshold must be a number in [0, 1) or 'otsu', not {threshold!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise CamlensError(
            f"threshold {threshold} is outside [0, 1): it is a fraction of the map's maximum"
        )
    return float(threshold)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in [0, 1] (the heatmap's opacity), else a CamlensError."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise CamlensError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


COMMON_CMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "gray")
"""Colormaps for heatmaps, all matplotlib's own: accepted without loading matplotlib."""


def check_cmap(cmap: str) -> str:
    """``cmap`` if matplotlib knows the colormap, else a CamlensError with close names. The
    names of :data:`COMMON_CMAPS` (and their reversed ``_r``) are known without importing
    matplotlib."""
    if not isinstance(cmap, str):
        raise CamlensError(f"colormap must be a name (str), got {type(cmap).__name__}")
    if cmap.removesuffix("_r") in COMMON_CMAPS:
        return cmap
    import matplotlib

    if cmap not in matplotlib.colormaps:
        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
        hint = ", ".join(dict.fromkeys([*close, *COMMON_CMAPS]))
        raise CamlensError(f"unknown colormap {cmap!r}; valid ones include {hint}")
    return cmap


def parse_size(size: str | int | Sequence[int]) -> tuple[int, int]:
    """An input size as ``(height, width)`` in pixels, the order of
    :attr:`camlens.images.PreprocessConfig.input_size` (and of a tensor's ``[N, C, H, W]``, and of Keras's
    ``input_shape=(rows, cols, 3)``; PIL's ``image.size`` is the other way round).

    ``size`` is ``"HxW"`` (``"128x68"``: 128 pixels high, 68 wide; ``x`` or ``X``, spaces
    allowed), one number for a square (``"224"``, ``224``), or a ``(height, width)`` pair. Anything
    else, or a side that is not a positive integer, is a :class:`CamlensError` naming it.

    >>> parse_size("128x68"), parse_size(224)
    ((128, 68), (224, 224))
    """
    if isinstance(size, str):
        parts = [p.strip() for p in size.strip().lower().split("x")]
        if len(parts) in (1, 2) and all(p.isascii() and p.isdigit() for p in parts):
            numbers = [int(p) for p in parts]
            pair = (numbers[0], numbers[-1])
            if min(pair) > 0:
                return pair
        raise CamlensError(
            f"input size {size!r} is not HEIGHTxWIDTH in pixels (e.g. 224x224 or 128x68) "
            "nor one positive number"
        )
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise CamlensError(f"input size {size!r} is not (height, width) in pixels nor one number")
    if min(pair) <= 0:
        raise CamlensError(f"input size {size!r}: each side must be a positive number of pixels")
    return pair


def check_localize_options(*, min_score: float, iou_threshold: float) -> None:
    """A :class:`CamlensError` unless ``min_score`` (a class probability) and ``iou_threshold``
    (an overlap) are numbers in [0, 1]."""
    for name, value in (("min_score", min_score), ("iou_threshold", iou_threshold)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.0 <= float(value) <= 1.0
        ):
            raise CamlensError(f"{name} must be a number in [0, 1], not {value!r}")
