"""Models: loading from a spec, labels, preprocessing config, CAM-ready heads, checkpoints.

Inside the package, low to high: ``model``, ``labels`` and ``weights`` (reading state dicts and
filling networks); ``architectures`` (timm, torchvision, the embedded default) and ``synthetic``;
``head`` (the GAP -> Linear network and its spec); ``checkpoint`` (``.camlens`` files); ``build``
(:func:`build_cam_model`); ``loading`` (:func:`load_model`, every spec).
"""

from camlens.models.architectures import DEFAULT_SPEC
from camlens.models.build import build_cam_model
from camlens.models.checkpoint import save
from camlens.models.labels import imagenet_labels
from camlens.models.loading import load_model
from camlens.models.model import Model

__all__ = ["DEFAULT_SPEC", "Model", "build_cam_model", "imagenet_labels", "load_model", "save"]
