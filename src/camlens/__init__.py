"""camlens: where a convolutional classifier looks when it decides (CAM and the Grad-CAM family)."""

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
from camlens.version import __version__

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
