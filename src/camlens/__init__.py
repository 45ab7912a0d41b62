"""camlens: where a convolutional classifier looks when it decides (CAM and the Grad-CAM family).

The names below are imported on first use (``camlens.Explainer`` loads torch then), so that
``import camlens.config`` and the ``camlens`` command's help and option checks start at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType  # not `import types`: camlens.types, once imported, is bound here
from typing import TYPE_CHECKING, Any

from camlens.version import __version__

# name -> the module that defines it
_LAZY = {
    "ExplainConfig": "camlens.config",
    "CamlensError": "camlens.errors",
    "Explainer": "camlens.explain",
    "ClassMap": "camlens.explanation",
    "Explanation": "camlens.explanation",
    "grid": "camlens.explanation",
    "PreprocessConfig": "camlens.images",
    "load_image": "camlens.images",
    "add_boxes": "camlens.localize",
    "boxes_from_map": "camlens.localize",
    "localize_objects": "camlens.localize",
    "METHODS": "camlens.methods",
    "Model": "camlens.models",
    "build_cam_model": "camlens.models",
    "load_model": "camlens.models",
    "save": "camlens.models",
    "History": "camlens.train",
    "train": "camlens.train",
    "Box": "camlens.types",
    "Prediction": "camlens.types",
}

if TYPE_CHECKING:
    from camlens.config import ExplainConfig
    from camlens.errors import CamlensError
    from camlens.explain import Explainer
    from camlens.explanation import ClassMap, Explanation, grid
    from camlens.images import PreprocessConfig, load_image
    from camlens.localize import add_boxes, boxes_from_map, localize_objects
    from camlens.methods import METHODS
    from camlens.models import Model, build_cam_model, load_model, save
    from camlens.train import History, train
    from camlens.types import Box, Prediction


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if importlib.util.find_spec(f"camlens.{name}") is not None:  # camlens.images, ...
            return importlib.import_module(f"camlens.{name}")
        raise AttributeError(f"module 'camlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: the next access is a plain attribute
    return value


class _Package(ModuleType):
    """``camlens`` itself: importing the submodule ``camlens.train`` binds it as the package's
    attribute ``train``, which would hide the function ``camlens.train``; the export is kept."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and _LAZY.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "METHODS",
    "Box",
    "CamlensError",
    "ClassMap",
    "ExplainConfig",
    "Explainer",
    "Explanation",
    "History",
    "Model",
    "Prediction",
    "PreprocessConfig",
    "__version__",
    "add_boxes",
    "boxes_from_map",
    "build_cam_model",
    "grid",
    "load_image",
    "load_model",
    "localize_objects",
    "save",
    "train",
]
