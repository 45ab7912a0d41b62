"""camlens: where a convolutional classifier looks when it decides (CAM and the Grad-CAM family)."""

from camlens.checkpoint import save
from camlens.errors import CamlensError
from camlens.explain import Explainer
from camlens.explanation import ClassMap, Explanation, Prediction, grid
from camlens.images import PreprocessConfig, load_image
from camlens.localize import Box, add_boxes, boxes_from_map, localize_objects
from camlens.methods import METHODS
from camlens.models import Model, load_model
from camlens.models.head import build_cam_model
from camlens.train import History, train

__all__ = [
    "METHODS",
    "Box",
    "CamlensError",
    "ClassMap",
    "Explainer",
    "Explanation",
    "History",
    "Model",
    "Prediction",
    "PreprocessConfig",
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
__version__ = "0.1.0"
