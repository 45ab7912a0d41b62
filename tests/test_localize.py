"""Boxes from maps: hand-made maps with known answers, Otsu against scikit-image, NMS, and boxes that
line up with the photo (non-square, EXIF-rotated, very wide) through the whole explain chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens.errors import CamlensError
from camlens.explanation import ClassMap, Explanation
from camlens.images import PreprocessConfig
from camlens.localize import (
    add_boxes,
    boxes_from_map,
    crop_box,
    foreground,
    localize_objects,
    nms,
    otsu_threshold,
    parse_threshold,
    threshold_value,
)
from camlens.types import Box, Prediction


def square_map(height: int = 20, width: int = 30) -> np.ndarray:
    m = np.zeros((height, width))
    m[4:11, 12:20] = 1.0  # rows 4..10, columns 12..19
    return m


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.15, 0.2, 0.5, 0.9, 0.999, "otsu"])
def test_a_square_gives_that_square_at_every_threshold_below_one(threshold: float | str) -> None:
    (box,) = boxes_from_map(square_map(), threshold=threshold)  # type: ignore[arg-type]
    assert box.xyxy == (12, 4, 20, 11)
    assert box.score == 1.0  # all the mass is inside
    assert box.area == 8 * 7


def test_a_tensor_map_gives_the_same_box() -> None:
    (box,) = boxes_from_map(torch.from_numpy(square_map()).float())
    assert box.xyxy == (12, 4, 20, 11)


def test_threshold_is_a_fraction_of_the_maximum() -> None:
    # A ramp 0, 1, ..., 9 along x (max 9): above 0.2 * 9 = 1.8 -> columns 2..9; above 0.5 -> 5..9.
    ramp = np.tile(np.arange(10.0), (3, 1))
    assert threshold_value(ramp, 0.2) == pytest.approx(1.8)
    assert boxes_from_map(ramp, threshold=0.2)[0].xyxy == (2, 0, 10, 3)
    assert boxes_from_map(ramp, threshold=0.5)[0].xyxy == (5, 0, 10, 3)
    # Strictly above: 0.4 * 10 = 4 exactly is not foreground when the max is 10.
    ramp10 = np.tile(np.arange(11.0), (2, 1))
    assert boxes_from_map(ramp10, threshold=0.4)[0].xyxy == (5, 0, 11, 2)
    # score: mass inside / total = (5 + ... + 9) * 3 / (45 * 3)
    assert boxes_from_map(ramp, threshold=0.5)[0].score == pytest.approx(35 / 45)


def test_largest_component_and_all_components() -> None:
    m = np.zeros((10, 12))
    m[1:3, 1:3] = 1.0  # 4 pixels, mass 4
    m[5:9, 6:11] = 0.5  # 20 pixels, mass 10
    m[0, 11] = 1.0  # 1 pixel, mass 1
    total = 4 + 10 + 1
    (largest,) = boxes_from_map(m, threshold=0.2)
    assert largest.xyxy == (6, 5, 11, 9)
    assert largest.score == pytest.approx(10 / total)
    every = boxes_from_map(m, threshold=0.2, mode="all")
    assert [b.xyxy for b in every] == [(6, 5, 11, 9), (1, 1, 3, 3), (11, 0, 12, 1)]  # by score
    assert [b.score for b in every] == pytest.approx([10 / total, 4 / total, 1 / total])
    # min_area is a share of the map: 3 / 120 drops the single pixel, 5 / 120 the 2x2 square too.
    assert len(boxes_from_map(m, threshold=0.2, mode="all", min_area=3 / 120)) == 2
    assert len(boxes_from_map(m, threshold=0.2, mode="all", min_area=5 / 120)) == 1
    # Above 0.6 of the max only the value-1 regions remain: the 2x2 square is now the largest.
    assert boxes_from_map(m, threshold=0.6)[0].xyxy == (1, 1, 3, 3)


def test_pixels_touching_at_a_corner_are_one_component() -> None:
    m = np.zeros((6, 6))
    m[1, 1] = m[2, 2] = m[3, 3] = 1.0
    (box,) = boxes_from_map(m, mode="all")
    assert box.xyxy == (1, 1, 4, 4)


def test_a_zero_map_has_no_boxes() -> None:
    assert boxes_from_map(np.zeros((5, 5))) == []
    assert boxes_from_map(np.zeros((5, 5)), threshold="otsu") == []
    assert not foreground(np.zeros((3, 3))).any()


def test_bad_thresholds_and_maps_are_refused() -> None:
    for bad in (1.0, -0.1, 2):
        with pytest.raises(CamlensError, match="outside"):
            boxes_from_map(square_map(), threshold=bad)
    with pytest.raises(CamlensError, match="otsu"):
        parse_threshold("half")
    assert parse_threshold("0.15") == 0.15
    assert parse_threshold("Otsu") == "otsu"
    with pytest.raises(CamlensError, match="2-D"):
        boxes_from_map(np.zeros((2, 3, 4)))
    with pytest.raises(CamlensError, match="NaN"):
        boxes_from_map(np.full((3, 3), np.nan))
    with pytest.raises(CamlensError, match="mode"):
        boxes_from_map(square_map(), mode="biggest")  # type: ignore[arg-type]


def test_otsu_matches_scikit_image() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.1, 1000)])
    for values in (bimodal, rng.random(500), rng.random((40, 30)) ** 3):
        assert otsu_threshold(values) == pytest.approx(float(threshold_otsu(values)), abs=1e-12)
    # On the bimodal sample it falls between the modes.
    assert 0.3 < otsu_threshold(bimodal) < 0.6


def test_nms_keeps_the_better_of_overlapping_boxes() -> None:
    boxes = [Box(0, 0, 10, 10), Box(1, 1, 11, 11), Box(20, 20, 30, 30), Box(0, 0, 10, 20)]
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(0, 3) = 100 / 200 = 0.5; IoU(1, 3) = 90 / 210 = 0.43
    assert nms(boxes, [0.9, 0.8, 0.1, 0.7], iou_threshold=0.5) == [0, 3, 2]
    assert nms(boxes, [0.9, 0.8, 0.1, 0.7], iou_threshold=0.45) == [0, 2]
    assert nms(boxes, [0.5, 0.9, 0.1, 0.7], iou_threshold=0.5) == [1, 3, 2]
    assert nms([], []) == []
    with pytest.raises(CamlensError):
        nms(boxes, [1.0])


def test_crop_box_widens_to_whole_pixels_and_clips() -> None:
    image = Image.new("RGB", (40, 30))
    assert crop_box(image, Box(2.5, 3.2, 10.1, 12.0)).size == (9, 9)  # columns 2..10, rows 3..11
    assert crop_box(image, Box(-5, -5, 100, 100)).size == (40, 30)
    assert crop_box(image, Box(39.5, 29.5, 39.5, 29.5)).size == (1, 1)


# --------------------------------------------------------------------------------------------------
# Through the explainer: a network whose CAM is known exactly.


class ColourNet(nn.Module):
    """CAM of class "red" = the red channel, of class "green" = the green channel (a 1x1 conv
    picking channels, GAP, identity Linear): maps whose regions are known from the photo."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.features.weight[1, 1] = 1.0
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return out


@pytest.fixture(scope="module")
def colour_model() -> camlens.Model:
    config = PreprocessConfig(input_size=(64, 64), interpolation="bilinear")
    return camlens.load_model(ColourNet(), preprocess=config, labels=["red", "green"])


def photo_with(size: tuple[int, int], squares: dict[str, tuple[int, int, int, int]]) -> Image.Image:
    colours = {"red": (255, 0, 0), "green": (0, 255, 0)}
    image = Image.new("RGB", size, (0, 0, 0))
    for name, (x0, y0, x1, y1) in squares.items():
        image.paste(colours[name], (x0, y0, x1, y1))
    return image


def cell(size: tuple[int, int], input_size: tuple[int, int] = (64, 64)) -> tuple[float, float]:
    """One input pixel in photo pixels (x, y): how far a box may be off after the round trip."""
    return size[0] / input_size[1], size[1] / input_size[0]


def assert_box_close(box: Box, expected: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    tx, ty = cell(size)
    x0, y0, x1, y1 = expected
    assert abs(box.x0 - x0) <= tx + 1 and abs(box.x1 - x1) <= tx + 1, (box, expected)
    assert abs(box.y0 - y0) <= ty + 1 and abs(box.y1 - y1) <= ty + 1, (box, expected)


@pytest.mark.parametrize(
    ("size", "square"),
    [
        ((300, 120), (200, 30, 260, 90)),  # non-square
        ((2000, 100), (300, 20, 700, 80)),  # very wide: the input squashes it 31x horizontally
        ((90, 400), (10, 250, 70, 380)),  # tall
    ],
)
def test_boxes_line_up_with_the_photo(
    colour_model: camlens.Model, size: tuple[int, int], square: tuple[int, int, int, int]
) -> None:
    explanation = camlens.Explainer(colour_model, method="cam").explain(
        photo_with(size, {"red": square}), classes=["red"]
    )
    add_boxes(explanation)
    (box,) = explanation.maps[0].boxes or []
    assert explanation.size == size
    assert_box_close(box, square, size)


def test_boxes_follow_the_exif_orientation(tmp_path: Path, colour_model: camlens.Model) -> None:
    # Upright the photo is 120 wide, 300 tall, with the red square at the top left. Stored as
    # 300 x 120 pixels plus EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    upright = photo_with((120, 300), {"red": (10, 20, 50, 100)})
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: what a camera stores
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    assert Image.open(path).size == (300, 120)
    explanation = camlens.Explainer(colour_model, method="cam").explain(path, classes=["red"])
    assert explanation.size == (120, 300)
    add_boxes(explanation)
    (box,) = explanation.maps[0].boxes or []
    assert_box_close(box, (10, 20, 50, 100), (120, 300))


def test_several_objects_are_boxed_and_their_crops_reclassified(
    colour_model: camlens.Model,
) -> None:
    photo = photo_with((200, 100), {"red": (10, 10, 60, 60), "green": (120, 40, 190, 95)})
    explanation = camlens.Explainer(colour_model, method="cam").explain(photo, top=2)
    found = localize_objects(explanation, colour_model)
    by_label = {o.label: o for o in found.objects}
    assert set(by_label) == {"red", "green"}
    assert_box_close(by_label["red"].box, (10, 10, 60, 60), (200, 100))
    assert_box_close(by_label["green"].box, (120, 40, 190, 95), (200, 100))
    for label, obj in by_label.items():
        assert obj.crop is not None and obj.crop.label == label
        assert obj.crop.score > obj.score  # the crop holds only that colour: more confident
    record = found.to_dict()
    assert record["size"] == [200, 100]
    assert {o["label"] for o in record["objects"]} == {"red", "green"}
    assert all(o["crop"]["label"] == o["label"] for o in record["objects"])
    # min_score drops the less probable class; without a model no crops are classified.
    fewer = localize_objects(explanation, min_score=max(o.score for o in found.objects))
    assert len(fewer.objects) == 1 and fewer.objects[0].crop is None
    picture = found.picture()
    assert picture.size == (200, 100)


def hand_explanation(maps: dict[int, np.ndarray], scores: dict[int, float]) -> Explanation:
    height, width = next(iter(maps.values())).shape
    return Explanation(
        source="hand.png",
        image=Image.new("RGB", (width, height)),
        input_size=(height, width),
        model="hand",
        predictions=[Prediction(c, f"class {c}", s) for c, s in scores.items()],
        maps=[
            ClassMap(c, f"class {c}", scores[c], "cam", "layer", torch.from_numpy(m).float())
            for c, m in maps.items()
        ],
    )


def test_duplicates_across_classes_are_merged() -> None:
    a = np.zeros((20, 20))
    a[2:10, 2:10] = 1.0
    b = np.zeros((20, 20))
    b[3:10, 2:10] = 1.0  # IoU with a: 56 / 64 -> a duplicate
    c = np.zeros((20, 20))
    c[12:18, 12:18] = 1.0
    explanation = hand_explanation({0: a, 1: b, 2: c}, {0: 0.3, 1: 0.5, 2: 0.2})
    found = localize_objects(explanation)
    assert [(o.class_index, o.box.xyxy) for o in found.objects] == [
        (1, (2, 3, 10, 10)),
        (2, (12, 12, 18, 18)),
    ]
    assert len(localize_objects(explanation, iou_threshold=0.95).objects) == 3


def test_boxes_go_into_the_json_and_onto_the_overlay(tmp_path: Path) -> None:
    m = np.zeros((40, 60))
    m[10:30, 20:50] = 1.0
    explanation = hand_explanation({3: m}, {3: 0.9})
    assert "boxes" not in explanation.to_dict()["explanations"][0]  # not localized: no field
    add_boxes(explanation)
    report = json.loads(explanation.save(tmp_path, "hand").read_text())
    entry = report["explanations"][0]
    assert entry["boxes"] == [{"box": [20, 10, 50, 30], "score": 1.0}]
    overlay = np.asarray(Image.open(tmp_path / entry["overlay"]))
    assert overlay.shape == (40, 60, 3)
    assert tuple(overlay[28, 20]) == (0, 255, 0)  # the left edge, in green (the label is above)
    assert tuple(overlay[29, 45]) == (0, 255, 0)  # the bottom edge
    assert tuple(overlay[35, 5]) != (0, 255, 0)  # outside


def test_a_second_object_at_a_few_percent_is_found_by_default() -> None:
    # A cat at 0.6, a cup beside it at 0.017 (the case that 0.05 dropped), a class at 0.004
    # whose map lies elsewhere again: by default the cat and the cup get boxes, the third not.
    cat, cup, other = (np.zeros((30, 60)) for _ in range(3))
    cat[5:25, 3:25] = 1.0
    cup[12:24, 40:52] = 1.0
    other[0:6, 50:60] = 1.0
    explanation = hand_explanation({0: cat, 1: cup, 2: other}, {0: 0.6, 1: 0.017, 2: 0.004})
    found = localize_objects(explanation)
    assert [(o.class_index, o.box.xyxy) for o in found.objects] == [
        (0, (3, 5, 25, 25)),
        (1, (40, 12, 52, 24)),
    ]
    # `camlens localize` has the library's default
    import typer

    from camlens.cli import app
    from camlens.localize import MIN_SCORE

    command = typer.main.get_command(app).commands["localize"]  # type: ignore[attr-defined]
    (option,) = [p for p in command.params if p.name == "min_score"]
    assert option.default == MIN_SCORE == 0.01
