"""The plain values that results are made of: a box in a photo's pixels and a prediction.

A leaf module: it imports nothing else of camlens, so every part of the pipeline can use it.

Box coordinates are continuous: pixel ``(i, j)`` (column ``i``, row ``j``) spans
``[i, i + 1) x [j, j + 1)``, so a box ``[x0, y0, x1, y1]`` covers the columns ``x0 .. x1 - 1`` and
the rows ``y0 .. y1 - 1``, its area is ``(x1 - x0) * (y1 - y0)``, and ``[0, 0, W, H]`` is the whole
image.

>>> Box(2, 1, 5, 4).area
9
>>> Box(2, 1, 5, 4, score=0.5).to_dict()
{'box': [2, 1, 5, 4], 'score': 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Box:
    """A box ``[x0, y0, x1, y1]`` in the photo's pixels (see the module docstring for the
    convention) with a ``score``: for a box from a map, the share of the map's mass inside it."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        """``{"box": [x0, y0, x1, y1], "score": s}``, the form the JSON reports use."""
        return {"box": [_number(v) for v in self.xyxy], "score": float(self.score)}


def _number(v: float) -> int | float:
    """An int where the coordinate is whole (boxes from maps always are), else a float."""
    return int(v) if float(v).is_integer() else float(v)


@dataclass(frozen=True)
class Prediction:
    """A class the model predicts for an image: its index, its name and its softmax probability."""

    class_index: int
    label: str
    score: float  # softmax probability


__all__ = ["Box", "Prediction"]


def class_number(text: str) -> int | None:
    """The class index that ``text`` writes (``"285"``, ``" -3 "``: ASCII digits with at most one
    leading ``-``), or None when it is not a number and so may be a class name (``"--5"``,
    ``"²"``, ``"٣"``, ``"1e3"``): the one rule every front-end reads a class text by.

    >>> class_number("285"), class_number("-3"), class_number("--5"), class_number("²")
    (285, -3, None, None)
    """
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    if digits.isascii() and digits.isdigit():
        return int(text)
    return None
