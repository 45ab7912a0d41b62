"""Detection in the report and on the command line: ``energy_in_box`` (the share of a map's sum
inside its own detection's box, checked by hand), the detection's box drawn on its overlay and all
detections on ``STEM.detections.png``, file names unique per target, and ``camlens explain`` /
``camlens summary`` of a Faster R-CNN (MobileNetV3 FPN) with seeded random weights saved to a
file, run through the real ``camlens`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens import render
from camlens.errors import CamlensError
from camlens.explanation import ClassMap, Explanation, file_tails
from camlens.maps import box_mask, energy_in_boxes
from camlens.metrics import energy_pointing_game
from camlens.types import Box, Prediction

# --- energy inside a box, by hand ----------------------------------------------------------------


def test_energy_in_boxes_by_hand() -> None:
    m = np.zeros((4, 6))
    m[1, 1] = 3.0  # inside the box below
    m[2, 2] = 1.0  # inside
    m[0, 5] = 4.0  # outside
    box = (1, 1, 3, 3)  # columns 1..2, rows 1..2
    assert energy_in_boxes(m, [box]) == pytest.approx(4 / 8)
    assert energy_in_boxes(torch.tensor(m, dtype=torch.float32), [box]) == pytest.approx(0.5)
    assert energy_in_boxes(m, [box, (5, 0, 6, 1)]) == pytest.approx(1.0)  # union of two
    assert energy_in_boxes(m, [box, box]) == pytest.approx(0.5)  # an overlap counts once
    # pixel centers: x1 = 2.4 keeps column 1 only (center 1.5), so [2, 2] drops out
    assert energy_in_boxes(m, [(0.6, 0.6, 2.4, 2.4)]) == pytest.approx(3 / 8)
    assert energy_in_boxes(m, [(-5, -5, 60, 40)]) == pytest.approx(1.0)  # clipped to the map
    assert energy_in_boxes(m, [(10, 10, 20, 20)]) == 0.0  # outside the map
    assert energy_in_boxes(np.zeros((4, 6)), [box]) == 0.0  # a flat map: no energy, no NaN
    assert box_mask((4, 6), [box]).sum() == 4
    # the energy-based pointing game is the same sum
    rng = np.random.default_rng(0)
    noise = rng.random((30, 40))
    boxes = [Box(3.2, 4.7, 20.5, 17.1), Box(15, 10, 39, 29)]
    assert energy_pointing_game(noise, boxes) == energy_in_boxes(noise, boxes)
    with pytest.raises(CamlensError, match=r"\[x0, y0, x1, y1\]"):
        energy_in_boxes(m, [(1, 2, 3)])
    with pytest.raises(CamlensError, match="height, width"):
        energy_in_boxes(np.zeros((2, 3, 4)), [box])


def detection_map(
    box: tuple[float, float, float, float],
    score: float,
    grid: torch.Tensor,
    label: int = 1,
    name: str = "person",
) -> ClassMap:
    """A map of a detection as the explainer gives it: its target is the detection's dict."""
    target = {"kind": "detection", "box": list(box), "label": label, "score": score}
    return ClassMap(label, name, score, "gradcam", "backbone.body", grid, target=target)


def test_a_detection_map_reports_its_energy_in_box(tmp_path: Path) -> None:
    photo = Image.new("RGB", (40, 20), (90, 90, 90))
    grid = torch.zeros(2, 4)  # one cell per 10x10 pixels of the photo
    grid[0, 0] = 1.0
    maps = [
        detection_map((0, 0, 20, 10), 0.9, grid),  # the map's peak is inside
        detection_map((20, 10, 40, 20), 0.6, grid, label=3, name="car"),  # far from it
        ClassMap(1, "person", 0.9, "gradcam", "backbone.body", grid),  # a plain class: no energy
    ]
    result = Explanation("street.png", photo, (20, 40), "det", [Prediction(1, "person", 0.9)], maps)
    full = result.map_at_image(0).double()
    expected = float(full[:10, :20].sum() / full.sum())  # the box's pixels, summed by hand
    assert result.at_image(0).energy_in_box == pytest.approx(expected, abs=1e-6)
    assert 0.5 < expected < 1.0  # bilinear upsampling spreads a little outside the box
    far = result.map_at_image(1).double()
    assert result.at_image(1).energy_in_box == pytest.approx(
        float(far[10:, 20:].sum() / far.sum()), abs=1e-6
    )
    report = result.to_dict()
    energies = [e.get("energy_in_box") for e in report["explanations"]]
    assert energies[0] == pytest.approx(expected, abs=1e-6)
    assert energies[1] < 0.1
    assert energies[2] is None  # not a detection
    saved = json.loads(result.save(tmp_path).read_text())
    assert [e.get("energy_in_box") for e in saved["explanations"]] == energies
    # two detections of one image never share a file name
    names = [e["overlay"] for e in saved["explanations"]]
    assert len(set(names)) == 3
    assert names[0] == "street.gradcam.backbone.body.1-det-0-0-20-10.png"


# --- pictures ------------------------------------------------------------------------------------


def test_a_detection_overlay_draws_each_box_in_its_class_color() -> None:
    photo = Image.new("RGB", (200, 120), (128, 128, 128))
    boxes = [(10, 20, 90, 100), (100, 10, 190, 60), (120, 70, 180, 110)]
    picture = render.detection_overlay(photo, boxes, [1, 3, 1], ["person 0.91", "car 0.80", "p"])
    pixels = np.asarray(picture)
    assert picture.size == photo.size
    assert tuple(pixels[60, 10]) == render.class_color(1)  # the left edge of the first box
    assert tuple(pixels[35, 189]) == render.class_color(3)  # the right edge of the second box
    assert tuple(pixels[90, 179]) == render.class_color(1)
    assert render.class_color(1) != render.class_color(3)
    assert tuple(pixels[60, 50]) == (128, 128, 128)  # inside a box: the photo as it was
    assert tuple(np.asarray(photo)[60, 10]) == (128, 128, 128)  # the photo itself untouched
    with pytest.raises(CamlensError, match="3 boxes need as many"):
        render.detection_overlay(photo, boxes, [1, 3], ["a", "b", "c"])
    empty = render.detection_overlay(photo, np.zeros((0, 4)), [], [])
    assert np.array_equal(np.asarray(empty), np.asarray(photo))


def test_a_detection_map_overlay_draws_its_own_box_in_white() -> None:
    photo = Image.new("RGB", (160, 80), (0, 0, 0))
    grid = torch.zeros(2, 4)
    result = Explanation(
        "s.png", photo, (80, 160), "det", [], [detection_map((8, 8, 72, 72), 0.75, grid)]
    )
    pixels = np.asarray(result.overlay(0))
    assert tuple(pixels[40, 8]) == (255, 255, 255)  # the box's left edge
    assert tuple(pixels[40, 71]) == (255, 255, 255)  # its right edge (x1 excluded)
    assert tuple(pixels[40, 100]) != (255, 255, 255)  # outside it: the map's color
    plain = Explanation(
        "s.png", photo, (80, 160), "det", [], [ClassMap(1, "p", 0.7, "g", "l", grid)]
    )
    assert tuple(np.asarray(plain.overlay(0))[40, 8]) != (255, 255, 255)


# --- file names ----------------------------------------------------------------------------------


def test_two_segments_of_one_class_never_share_a_file(tmp_path: Path) -> None:
    """Explanation.save named a map by its class alone: two regions of one class overwrote each
    other's files. It names them as the run writer does, and makes every name unique."""
    photo = Image.new("RGB", (32, 32), (50, 60, 70))
    grid = torch.rand(4, 4)

    def segment(region: object) -> ClassMap:
        target = {"kind": "segment", "classes": [8], "region": region, "pixels": 10}
        return ClassMap(8, "cat", 0.5, "gradcam", "backbone.16", grid.clone(), target=target)

    maps = [segment("predicted"), segment([0, 0, 16, 16]), segment("mask"), segment("mask")]
    result = Explanation("cat.png", photo, (32, 32), "seg", [Prediction(8, "cat", 0.5)], maps)
    report = json.loads(result.save(tmp_path).read_text())
    overlays = [e["overlay"] for e in report["explanations"]]
    assert overlays == [
        "cat.gradcam.backbone.16.8.png",
        "cat.gradcam.backbone.16.8-box-0-0-16-16.png",
        "cat.gradcam.backbone.16.8-mask.png",
        "cat.gradcam.backbone.16.8-mask-2.png",
    ]
    assert all((tmp_path / name).is_file() for name in overlays)
    assert all((tmp_path / e["map"]).is_file() for e in report["explanations"])
    assert file_tails(maps)[3] == ".gradcam.backbone.16.8-mask-2"
