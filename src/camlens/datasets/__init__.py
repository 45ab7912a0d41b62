"""Datasets with ground-truth boxes: readers for Pascal VOC XML and COCO JSON
(:mod:`camlens.datasets.readers`) and the seeded synthetic set (:mod:`camlens.datasets.synthetic`)."""

from camlens.datasets.readers import (
    EDGE_MARGIN,
    Annotated,
    Dataset,
    GroundTruth,
    check_boxes,
    read_coco,
    read_dataset,
    read_voc,
)
from camlens.datasets.synthetic import (
    make_synthetic,
    sample_photos,
    synthetic_image,
    synthetic_scene,
)

__all__ = [
    "EDGE_MARGIN",
    "Annotated",
    "Dataset",
    "GroundTruth",
    "check_boxes",
    "make_synthetic",
    "read_coco",
    "read_dataset",
    "read_voc",
    "sample_photos",
    "synthetic_image",
    "synthetic_scene",
]
