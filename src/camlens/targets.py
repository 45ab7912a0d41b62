"""Targets: what an explanation explains. A target maps the model's output to one score per image;
every method explains that score (the gradient methods differentiate it, the perturbation methods
score their masked or ablated passes with it, CAM reads a GAP -> Linear head where the score is
linear in the head's outputs).

The kinds (``y`` is the model's output for one image, its logits or raw outputs):

=====================  ======================================================  ===============
target                 score                                                   linear in ``y``
=====================  ======================================================  ===============
``ClassScore(c)``      ``y[c]``: a class's logit (softmax or sigmoid scoring)  yes
``Contrast(a, (b,))``  ``y[a] - mean(y[b] for b in versus)``                   yes
``Contrast(a, next=K)`` ``y[a]`` minus the mean of the next ``K`` predicted    yes
``Binary(positive)``   ``y[0]`` (positive) or ``-y[0]`` (negative): one output yes
``Output(k)``          ``y[k]`` as it is (a regression output)                 yes
``Similarity(ref)``    ``cos(e(x), e(ref))``: the embedding ``e`` before the   no
                       classifier (the input of the last linear layer), or a
                       layer's output averaged over its locations
``Function(fn)``       ``fn(y)``: any callable, from Python only               no
``VersusTrue(t)``      the top-1 ``a``: ``y[a]``, and when ``a`` is not the    yes
                       image's true class ``t``, also ``y[a] - y[t]``
``Segment(c, box)``    a segmentation model's logits of class ``c`` summed     yes
                       over a region: the pixels it assigns to ``c`` (by
                       default), a box or a mask in the photo's pixels
``Detection(box, k)``  a detector's score of the detection of label ``k``      yes, on the
                       whose box overlaps ``box`` most (IoU >= 0.5, else 0)    pass it
                                                                               matches
=====================  ======================================================  ===============

``Contrast`` with ``cls=None`` contrasts the image's top-1 prediction. ``VersusTrue()`` is what
``--versus true`` records in a config: a run over folders named by class gives each image its
own ``VersusTrue(t)`` (:func:`with_truths`); an image with no known class gets its top-1 alone.
This module is plain data
with checks (no torch): a target is checked when made (a contrast of a class with itself, a
negative output index...); what needs the model (a class that does not exist, an output out of
range, a reference that cannot be read) is checked by :mod:`camlens.scoring` when a model takes
it. ``to_dict``/:func:`target_from_dict` are the JSON round trip; a ``Function`` refuses it.

>>> Contrast("tiger cat", ("Egyptian cat",)).to_dict()
{'kind': 'contrast', 'class': 'tiger cat', 'versus': ['Egyptian cat']}
>>> target_from_dict({"kind": "output", "index": 0})
Output(index=0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from camlens.errors import CamlensError, ClassError

Scores = Literal["softmax", "sigmoid", "raw"]
SCORES: tuple[Scores, ...] = ("softmax", "sigmoid", "raw")
"""How a model's outputs become predictions: ``softmax`` over the classes (single-label),
``sigmoid`` of each output (multi-label heads, one-output binary heads) or ``raw`` (regression:
the outputs as they are)."""

ClassRef = int | str


class TargetError(CamlensError):
    """A target that cannot be explained (a bad option, or one this model cannot give)."""


def check_scores(value: Any) -> Scores:
    """``value`` as one of :data:`SCORES` (any case), or a :class:`TargetError` naming them."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in SCORES:
        raise TargetError(f"scores must be one of {', '.join(SCORES)}, not {value!r}")
    return text  # type: ignore[no-any-return]


def _class_ref(value: Any, what: str) -> ClassRef:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ClassError(f"{what}: a class is an index or a name, not {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ClassError(f"{what}: an empty class name")
        if value.isascii() and value.isdigit():
            return int(value)
        return str(value)
    if value < 0:
        raise ClassError(f"{what}: a class index is at least 0, not {value}")
    return int(value)


def _same_class(a: ClassRef, b: ClassRef) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return " ".join(a.replace("_", " ").casefold().split()) == " ".join(
            b.replace("_", " ").casefold().split()
        )
    return a == b


@dataclass(frozen=True)
class ClassScore:
    """A class's score: its logit ``y[c]`` (the model's scoring only changes the predictions)."""

    kind: ClassVar[str] = "class"
    cls: ClassRef

    def __post_init__(self) -> None:
        object.__setattr__(self, "cls", _class_ref(self.cls, "class"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "class": self.cls}


@dataclass(frozen=True)
class Contrast:
    """``y[cls] - mean(y[b] for b in versus)``, or with ``next=K`` minus the mean of the ``K``
    classes predicted right after ``cls``; ``cls=None`` is the image's top-1 prediction. What
    tips the decision from the other classes to ``cls`` (the Finer-CAM idea)."""

    kind: ClassVar[str] = "contrast"
    cls: ClassRef | None = None
    versus: tuple[ClassRef, ...] = ()
    next: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.cls is not None:
            set_(self, "cls", _class_ref(self.cls, "contrast"))
        versus = (self.versus,) if isinstance(self.versus, int | str) else self.versus
        if not isinstance(versus, Sequence):
            raise ClassError(f"contrast: versus is a list of classes, not {versus!r}")
        set_(self, "versus", tuple(dict.fromkeys(_class_ref(v, "versus") for v in versus)))
        if self.next is not None:
            if isinstance(self.next, bool) or not isinstance(self.next, int) or self.next < 1:
                raise ClassError(
                    f"contrast: next is a number of classes, at least 1, not {self.next!r}"
                )
            if self.versus:
                raise ClassError("contrast: give the classes to compare with, or next, not both")
        elif not self.versus:
            raise ClassError("contrast: give the classes to compare with (versus), or next=K")
        if self.cls is not None and any(_same_class(self.cls, v) for v in self.versus):
            raise ClassError(f"contrast: class {self.cls!r} versus itself explains nothing")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "class": self.cls}
        if self.next is not None:
            out["next"] = self.next
        else:
            out["versus"] = list(self.versus)
        if self.cls is None:
            del out["class"]
        return out


@dataclass(frozen=True)
class Binary:
    """A one-output binary head's logit ``y[0]``: ``positive`` explains it, negative ``-y[0]``."""

    kind: ClassVar[str] = "binary"
    positive: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.positive, bool):
            raise TargetError(f"binary: positive is true or false, not {self.positive!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "positive": self.positive}


@dataclass(frozen=True)
class Output:
    """Output ``index`` as it is (a regression head's value)."""

    kind: ClassVar[str] = "output"
    index: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise TargetError(f"output: an output index is a whole number >= 0, not {self.index!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index}


@dataclass(frozen=True)
class Similarity:
    """The cosine similarity between the image's embedding and ``reference``'s (an image file):
    the input of the model's last linear layer (its pooled features), or ``layer``'s output
    averaged over its locations."""

    kind: ClassVar[str] = "similarity"
    reference: str
    layer: str | None = None

    def __post_init__(self) -> None:
        ref = self.reference
        if isinstance(ref, os.PathLike):
            ref = os.fspath(ref)
        if not isinstance(ref, str) or not ref.strip():
            raise TargetError(f"similarity: the reference is an image file, not {self.reference!r}")
        object.__setattr__(self, "reference", ref)
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip()):
            raise TargetError(
                f"similarity: the embedding layer is a layer name, not {self.layer!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reference": self.reference, "layer": self.layer}


@dataclass(frozen=True)
class Function:
    """Any function of the output: ``fn(y [N, outputs]) -> [N]``, one score per image. From
    Python only: it cannot be written as JSON (it is never pickled)."""

    kind: ClassVar[str] = "callable"
    fn: Callable[[Any], Any]
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TargetError(f"callable target: {self.fn!r} is not callable")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "function"))

    def to_dict(self) -> dict[str, Any]:
        raise TargetError(
            f"the callable target {self.name!r} cannot be written as JSON (a Python function is "
            "never pickled): pass it to the Explainer in Python, or use a target kind "
            "(class, contrast, binary, output, similarity)"
        )


@dataclass(frozen=True)
class VersusTrue:
    """The image's top-1 class ``a`` and, when its true class ``truth`` is known and is not
    ``a``, the contrast ``y[a] - y[truth]``: what made the model say ``a`` rather than the
    class it should have said (``--versus true``). ``truth=None`` (as a config records it): the
    top-1 alone, unless the images are given their true classes (:func:`with_truths`, as a
    run over folders named by class does)."""

    kind: ClassVar[str] = "versus_true"
    truth: ClassRef | None = None

    def __post_init__(self) -> None:
        if self.truth is not None:
            object.__setattr__(self, "truth", _class_ref(self.truth, "true class"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.truth is not None:
            out["truth"] = self.truth
        return out


@dataclass(frozen=True)
class Segment:
    """A segmentation model's logits of class ``cls`` summed over a region of its output
    ``y [classes, H, W]``: ``sum over (i, j) in R of y[cls, i, j]``. ``R`` is, by default, the
    pixels the model assigns to ``cls`` (the argmax of its unperturbed forward pass, kept fixed
    while a method perturbs the input); or ``box`` ``(x0, y0, x1, y1)`` in the photo's pixels
    (``x1``, ``y1`` excluded); or ``mask``: a mask image file (its non-zero pixels) or a boolean
    array ``[height, width]`` at the photo's size (from Python only: an array is not written as
    JSON). Output pixels count when the part of the photo they cover meets the box, or is at
    least half in the mask."""

    kind: ClassVar[str] = "segment"
    cls: ClassRef
    box: tuple[int, int, int, int] | None = None
    mask: Any = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "cls", _class_ref(self.cls, "segment"))
        if self.box is not None:
            set_(self, "box", check_box(self.box))
        if self.mask is not None:
            if self.box is not None:
                raise TargetError("segment: give a box or a mask, not both")
            if isinstance(self.mask, os.PathLike):
                set_(self, "mask", os.fspath(self.mask))
            if isinstance(self.mask, str):
                if not self.mask.strip():
                    raise TargetError("segment: the mask is an image file or a boolean array")
            elif getattr(self.mask, "ndim", None) != 2:
                shape = getattr(self.mask, "shape", type(self.mask).__name__)
                raise TargetError(
                    f"segment: a mask is a boolean array [height, width] or an image file, not "
                    f"{shape}"
                )
            elif not bool(self.mask.any()):
                raise TargetError("segment: the mask is empty (no pixel is set)")

    def __hash__(self) -> int:
        mask = self.mask if self.mask is None or isinstance(self.mask, str) else id(self.mask)
        return hash((self.kind, self.cls, self.box, mask))

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Segment)
            and (self.cls, self.box) == (other.cls, other.box)
            and (
                self.mask is other.mask or (isinstance(self.mask, str) and self.mask == other.mask)
            )
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "class": self.cls}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.mask is not None:
            if not isinstance(self.mask, str):
                raise TargetError(
                    "a segment's mask array cannot be written as JSON: save it as an image and "
                    "give its path"
                )
            out["mask"] = self.mask
        return out


@dataclass(frozen=True)
class Detection:
    """A detector's detection: ``box`` ``(x0, y0, x1, y1)`` in the photo's pixels (floats),
    ``label`` its class (an index or a name) and ``score`` what the detector gave it (None when
    given by hand). Its score on a forward pass is that of the pass's detection of the same label
    whose box has the highest IoU with ``box`` (in the input's pixels), counted when that IoU is
    at least 0.5, else 0: detections move a little when a method perturbs the input, and this
    follows them (as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``, without its IoU term).

    >>> Detection((10, 20, 110, 220.5), 1, 0.9).to_dict()
    {'kind': 'detection', 'box': [10.0, 20.0, 110.0, 220.5], 'label': 1, 'score': 0.9}
    """

    kind: ClassVar[str] = "detection"
    box: tuple[float, float, float, float]
    label: ClassRef
    score: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "box", check_detection_box(self.box))
        set_(self, "label", _class_ref(self.label, "detection"))
        if self.score is not None:
            if (
                isinstance(self.score, bool)
                or not isinstance(self.score, int | float)
                or not math.isfinite(self.score)
            ):
                raise TargetError(f"detection: a score is a finite number, not {self.score!r}")
            set_(self, "score", float(self.score))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "box": list(self.box), "label": self.label, "score": self.score}


def check_detection_box(value: Any) -> tuple[float, float, float, float]:
    """A detection's box ``x0, y0, x1, y1`` (a text or 4 finite numbers, in pixels) with
    ``x0 < x1`` and ``y0 < y1``; else a :class:`TargetError` naming it."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(p) for p in parts if not isinstance(p, bool)]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise TargetError(f"a detection's box is x0,y0,x1,y1 (4 finite numbers), not {value!r}")
    x0, y0, x1, y1 = numbers
    if x0 >= x1 or y0 >= y1:
        raise TargetError(
            f"a detection's box x0,y0,x1,y1 needs x0 < x1 and y0 < y1, not {x0},{y0},{x1},{y1}"
        )
    return x0, y0, x1, y1


def check_box(value: Any) -> tuple[int, int, int, int]:
    """A region ``x0,y0,x1,y1`` (a text or 4 numbers) in pixels, ``x0 < x1``, ``y0 < y1``, all
    at least 0; else a :class:`TargetError` naming it."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) and v == int(v) for v in numbers):
        raise TargetError(f"a region is x0,y0,x1,y1 in whole pixels, not {value!r}")
    x0, y0, x1, y1 = (int(v) for v in numbers)
    if min(x0, y0) < 0 or x0 >= x1 or y0 >= y1:
        raise TargetError(
            f"a region x0,y0,x1,y1 needs 0 <= x0 < x1 and 0 <= y0 < y1, not {x0},{y0},{x1},{y1}"
        )
    return x0, y0, x1, y1


Target = (
    ClassScore
    | Contrast
    | Binary
    | Output
    | Similarity
    | Function
    | VersusTrue
    | Segment
    | Detection
)
KINDS: dict[str, type[Any]] = {
    t.kind: t
    for t in (
        ClassScore,
        Contrast,
        Binary,
        Output,
        Similarity,
        Function,
        VersusTrue,
        Segment,
        Detection,
    )
}
LINEAR = ("class", "contrast", "binary", "output", "versus_true", "segment", "detection")
"""The kinds whose score is a fixed linear combination of the outputs."""


def is_linear(target: Target) -> bool:
    return target.kind in LINEAR


def target_from_dict(data: Mapping[str, Any]) -> Target:
    """The target of :meth:`to_dict`'s output, checked; an unknown kind or key is named."""
    if not isinstance(data, Mapping):
        raise TargetError(f"a target is an object with a 'kind', not {data!r}")
    kind = data.get("kind")
    if kind == "callable":
        raise TargetError(
            "a callable target cannot be read from JSON (functions are never unpickled): "
            "pass it to the Explainer in Python"
        )
    fields = {
        "class": {"class": "cls"},
        "contrast": {"class": "cls", "versus": "versus", "next": "next"},
        "binary": {"positive": "positive"},
        "output": {"index": "index"},
        "similarity": {"reference": "reference", "layer": "layer"},
        "versus_true": {"truth": "truth"},
        "segment": {"class": "cls", "box": "box", "mask": "mask"},
        "detection": {"box": "box", "label": "label", "score": "score"},
    }
    if kind not in fields:
        raise TargetError(
            f"unknown target kind {kind!r}: choose one of {', '.join(fields)} (or a Python "
            "callable)"
        )
    names = fields[kind]
    unknown = sorted(str(k) for k in data if k != "kind" and k not in names)
    if unknown:
        raise TargetError(f"{kind} target: unknown key(s) {', '.join(unknown)}")
    args = {
        names[k]: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names
    }
    try:
        target: Target = KINDS[kind](**args)
    except TypeError as exc:
        raise TargetError(f"{kind} target: {exc}") from None
    return target


def as_target(value: Any) -> Target:
    """A target from a target, a mapping (:func:`target_from_dict`), a class index or name, or a
    callable."""
    if isinstance(value, Target):
        return value
    if isinstance(value, Mapping):
        return target_from_dict(value)
    if isinstance(value, int | str) and not isinstance(value, bool):
        return ClassScore(value)
    if callable(value):
        return Function(value)
    raise TargetError(f"not a target: {value!r}")


def from_options(
    classes: Sequence[int | str] | None,
    versus: Sequence[str] | None = None,
    outputs: Sequence[int] | None = None,
    like: str | None = None,
    embedding: str | None = None,
    *,
    truths: bool = False,
) -> tuple[tuple[int | str, ...], tuple[Target, ...]]:
    """``(classes, targets)`` for an ExplainConfig from a front-end's options (the command line's
    ``--class``, ``--versus``, ``--output``, ``--like``, ``--embedding``; the server's form
    fields of the same names): ``versus`` makes each class (or the top-1, with none) a contrast
    with those classes, or with ``next``/``next:K`` the next K predictions; ``versus`` ``true``
    (for a front-end that knows each image's true class, ``truths``) is :class:`VersusTrue`;
    with any target, the plain classes become class targets beside them. Bad combinations are a
    TargetError naming the options."""
    given: list[int | str] = list(classes or ())
    targets: list[Target] = []
    if embedding is not None and like is None:
        raise TargetError("--embedding chooses the features of --like: give --like REF.jpg")
    if versus:
        nexts = [v for v in versus if v.strip().lower().startswith("next")]
        if nexts and len(versus) > 1:
            raise TargetError("--versus next[:K] stands alone: do not mix it with classes")
        if any(v.strip().lower() == "true" for v in versus):
            if not truths:
                raise TargetError(
                    "--versus true needs each image's true class, which only a run over folders "
                    "named by class knows (camlens explain DIR --versus true): give the class "
                    "(--versus CLASS)"
                )
            if len(versus) > 1:
                raise TargetError("--versus true stands alone: do not mix it with classes")
            if given:
                raise TargetError(
                    "--versus true explains each image's top-1 (and the top-1 versus the true "
                    "class): do not give --class with it"
                )
            versus = ()
            targets.append(VersusTrue())
        firsts: list[int | str | None] = list(given) if given else [None]
        for first in firsts if versus else ():
            if nexts:
                text = nexts[0].strip().lower().removeprefix("next").lstrip("[:").rstrip("]")
                if text and not text.isdigit():
                    raise TargetError(f"--versus {nexts[0]}: write next or next:K (K a number)")
                targets.append(Contrast(first, next=int(text) if text else 1))
            else:
                targets.append(Contrast(first, tuple(versus)))
        given = []
    targets.extend(Output(k) for k in outputs or ())
    if like is not None:
        targets.append(Similarity(like, embedding))
    if targets and given:
        targets = [ClassScore(c) for c in given] + targets
        given = []
    return tuple(given), tuple(targets)


def with_truths(
    targets: Sequence[Target], truths: Sequence[int | None]
) -> list[list[Target]] | None:
    """Per image, ``targets`` with :class:`VersusTrue` given that image's true class (the class
    index ``truths[n]``, or None when unknown); None when ``targets`` has no VersusTrue (every
    image explains the same targets)."""
    if not any(isinstance(t, VersusTrue) for t in targets):
        return None
    return [[VersusTrue(k) if isinstance(t, VersusTrue) else t for t in targets] for k in truths]


def check_min_score(value: Any) -> float:
    """``min_score``: a detection score threshold in [0, 1]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise TargetError(
            f"min_score must be a number in [0, 1] (a detection score), not {value!r}"
        )
    return float(value)


def check_above(value: Any) -> float:
    """``--above P``: a score threshold, a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TargetError(f"above must be a finite number (a score), not {value!r}")
    return float(value)


__all__ = [
    "KINDS",
    "LINEAR",
    "SCORES",
    "Binary",
    "ClassScore",
    "Contrast",
    "Detection",
    "Function",
    "Output",
    "Scores",
    "Segment",
    "Similarity",
    "Target",
    "TargetError",
    "VersusTrue",
    "as_target",
    "check_above",
    "check_box",
    "check_detection_box",
    "check_min_score",
    "check_scores",
    "from_options",
    "is_linear",
    "target_from_dict",
    "with_truths",
]
