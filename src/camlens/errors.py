"""Errors camlens raises on bad input: each names the thing at fault and the problem.

All derive from :class:`CamlensError` (a ``ValueError``), so callers can catch one type and the
command line can turn any of them into a one-line message and exit status 2. Warnings derive from
:class:`CamlensWarning` (a ``UserWarning``).
"""

from __future__ import annotations


class CamlensError(ValueError):
    """Bad input to camlens: the message names what is wrong and where. ``option``: the option
    at fault, when one is (an :class:`~camlens.config.ExplainConfig` field, say), for front-ends
    that name it apart from the message (the server's ``parameter``)."""

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ImageError(CamlensError):
    """An image that cannot be read or used; ``path`` names it."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class PixelLimitError(ImageError):
    """An image whose header says it has more pixels than the limit (refused before decoding)."""


class ModelError(CamlensError):
    """A model spec, weights file or architecture that camlens cannot use."""


class LayerError(CamlensError):
    """A target layer that does not exist or has no spatial output."""


class MethodError(CamlensError):
    """An unknown method, or a method that does not apply to this model."""


class ClassError(CamlensError):
    """A class index or name the model does not know, or a class list of the wrong length."""


class DatasetError(CamlensError):
    """A dataset camlens cannot use: a ground-truth file, or a training folder (missing, empty,
    one class only, a class with no readable image)."""


class CamlensWarning(UserWarning):
    """Something camlens did that the user should know of, though nothing failed."""


class FlatMapWarning(CamlensWarning):
    """Maps that came out constant (returned as zeros with ``flat=True``): the method found no
    evidence for the class at the layer, or the picture has a single pixel."""
