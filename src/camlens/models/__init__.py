"""Models: loading from a spec, labels, preprocessing config."""

from camlens.models.labels import imagenet_labels
from camlens.models.loading import DEFAULT_SPEC, load_model
from camlens.models.model import Model

__all__ = ["DEFAULT_SPEC", "Model", "imagenet_labels", "load_model"]
