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
from camlens.explanation import ClassMap, Detected, Explanation, file_tails
from camlens.maps import box_mask, energy_in_boxes
from camlens.metrics import energy_pointing_game
from camlens.models.detection import coco_labels
from camlens.types import Box, Prediction

COCO = coco_labels()

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
    assert "detections" not in saved and "detections_overlay" not in saved  # no detector's list


def test_save_writes_the_detections_picture(tmp_path: Path) -> None:
    photo = Image.new("RGB", (120, 80), (90, 90, 90))
    found = [
        Detected((10, 10, 60, 50), 1, "person", 0.9),
        Detected((70, 20, 110, 70), 3, "car", 0.6),
    ]
    maps = [detection_map(d.box, d.score, torch.rand(4, 6), d.class_index, d.label) for d in found]
    maps[1].label = "car 0.60 at 70,20,110,70"  # the words the explainer gives a detection
    result = Explanation("s.png", photo, (80, 120), "det", [], maps, detections=found)
    report = json.loads(result.save(tmp_path).read_text())
    assert report["detections"] == [d.to_dict() for d in found]
    assert report["detections_overlay"] == "s.detections.png"
    saved = np.asarray(Image.open(tmp_path / "s.detections.png"))
    assert np.array_equal(saved, np.asarray(result.detection_overlay()))
    assert tuple(saved[30, 10]) == render.class_color(1)
    assert tuple(saved[40, 109]) == render.class_color(3)
    assert result._detection_tag(1) == "car 0.60"  # the class and score, not the words
    empty = Explanation("e.png", photo, (80, 120), "det", [], [], detections=[])
    report = json.loads(empty.save(tmp_path).read_text())
    assert report["detections"] == [] and report["explanations"] == []
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.detections.png")), np.asarray(photo))
    plain = Explanation("p.png", photo, (80, 120), "m", [], [])
    with pytest.raises(CamlensError, match="only a detector's explanation"):
        plain.detection_overlay()


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


# --- the command line ----------------------------------------------------------------------------

SPEC = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
SIDE = 320  # --input-size: the detector at 320 pixels rather than its own 800 (fast)


def make_detector_files(folder: Path) -> Path:
    """In ``folder``: ``street.jpg`` (a photo of a cat, 240x160), ``coffee.jpg`` and ``det.pth``: a seeded
    random Faster R-CNN MobileNetV3 FPN whose detections depend on the photo. At random its
    backbone's activations fade to ~1e-8 (the batch norms expect another scale) and every class
    scores about 1/91, below the detector's own 0.05: here the backbone's batch norms are set to
    the statistics of three photos and the class logits are scaled up, so that the photos get
    detections of several classes with scores that differ."""
    import torchvision
    from skimage import data

    photos = {"street.jpg": data.chelsea(), "coffee.jpg": data.coffee()}
    for name, pixels in photos.items():
        Image.fromarray(pixels).resize((240, 160)).save(folder / name, quality=95)
    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None
    )
    calibration = torch.stack(
        [
            torch.from_numpy(np.array(Image.fromarray(p).resize((SIDE, SIDE)))).permute(2, 0, 1)
            for p in (data.chelsea(), data.coffee(), data.astronaut())
        ]
    )
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for module in net.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain mean of what it sees
    net.backbone.train()
    with torch.no_grad():
        net.backbone((calibration.float() / 255 - mean) / std)
        logits = net.roi_heads.box_predictor.cls_score
        logits.weight *= 25
        logits.bias[[1, 3, 18]] += torch.tensor([3.5, 3.5, 3.0])  # person, car, dog
    torch.save(net.state_dict(), folder / "det.pth")
    return folder


@pytest.fixture(scope="module")
def det_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_detector_files(tmp_path_factory.mktemp("det"))


@pytest.fixture
def det_dir(det_files: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``det_files``, the working folder of the test."""
    monkeypatch.chdir(det_files)
    return det_files


def camlens_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``camlens ARGS`` through the command's own entry point: (exit status, stdout, stderr)."""
    from camlens.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def explain_det(
    capsys: pytest.CaptureFixture[str], folder: Path, out: str, *args: str
) -> tuple[int, str, str]:
    """``camlens explain street.jpg`` with the detector, run in ``folder`` (``det_dir``: the
    report lands at OUT/street.json)."""
    assert Path.cwd() == folder
    return camlens_cli(
        capsys,
        *("explain", "street.jpg", "--model", SPEC),
        *("--weights", "det.pth", "--input-size", str(SIDE), "--out", out, *args),
    )


def test_cli_explains_each_detection(det_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = explain_det(
        capsys,
        det_dir,
        "out",
        *("--min-score", "0", "--detections", "3", "--method", "gradcam", "coffee.jpg"),
    )
    assert code == 0, err
    # coffee.jpg in the same batch: its own detections, its own maps
    other = json.loads((det_dir / "out" / "coffee.json").read_text())
    assert len(other["explanations"]) == 3 and other["detections"] != []
    assert other["explanations"][0]["target"]["box"] == other["detections"][0]["box"]
    report = json.loads((det_dir / "out" / "street.json").read_text())
    found = report["detections"]
    assert len(found) > 3  # the detector's own: every box it gives, best first
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    for d in found:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 160  # the photo's pixels
        assert d["label"] == COCO[d["class_index"]]
    maps = report["explanations"]
    assert len(maps) == 3  # --detections 3: the three best
    for entry, d in zip(maps, found, strict=False):
        assert entry["target"] == {
            "kind": "detection",
            "box": d["box"],
            "label": d["class_index"],
            "score": d["score"],
        }
        assert entry["method"] == "gradcam" and entry["layer"] == "backbone.body.12"
        full = np.load(det_dir / "out" / entry["map"])
        assert full.shape == (160, 240)
        # the share of the map's sum inside its box, from the map written to disk
        assert entry["energy_in_box"] == pytest.approx(energy_in_boxes(full, [d["box"]]), abs=1e-5)
        assert 0.0 <= entry["energy_in_box"] <= 1.0
        overlay = Image.open(det_dir / "out" / entry["overlay"])
        assert overlay.size == (240, 160)
    assert len({e["overlay"] for e in maps}) == 3
    drawn = Image.open(det_dir / "out" / report["detections_overlay"])
    assert report["detections_overlay"] == "street.detections.png" and drawn.size == (240, 160)
    best = "; ".join(f"{d['label']} {d['score']:.3f}" for d in found[:3])
    assert f"street.jpg: {len(found)} detections: {best} | explained: " in out

    listed = camlens_cli(capsys, "summary", str(det_dir / "out"))
    assert listed[0] == 0, listed[2]
    text = " ".join(listed[1].split())
    assert "detections: images with the class" in text
    first = found[0]
    assert f"{first['label']} ({first['class_index']})" in listed[1]
    assert "detections whose maps lie most outside their own box" in text
    least = min(maps + other["explanations"], key=lambda e: e["energy_in_box"])
    assert f"{least['energy_in_box']:.3f}" in text


def test_cli_no_detection_is_a_report_with_none(
    det_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = explain_det(capsys, det_dir, "none", "--min-score", "0.9999")
    assert code == 0, err
    assert "street.jpg: no detection | explained: nothing -> none" in out
    report = json.loads((det_dir / "none" / "street.json").read_text())
    assert report["detections"] == [] and report["explanations"] == []
    lines = [line for line in err.splitlines() if "no detection" in line]
    assert len(lines) == 1 and "street.jpg" in lines[0] and "0.9999" in lines[0]
    assert "Traceback" not in err
    listed = camlens_cli(capsys, "summary", str(det_dir / "none"))
    assert listed[0] == 0, listed[2]
    assert "1 with no detection" in listed[1]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--min-score", "0.3"], "--min-score chooses a detector's detections"),
        (["--detections", "2"], "--detections chooses a detector's detections"),
        (["--min-score", "0.3", "--detections", "2"], "--min-score and --detections choose"),
    ],
)
def test_cli_detector_options_on_a_classifier_exit_2(
    det_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    code, _out, err = camlens_cli(capsys, "explain", "street.jpg", "--out", "cls", *args)
    assert code == 2, err
    assert line in err and "classifier" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (det_dir / "cls" / "street.json").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--class", "unicorn"], "'unicorn' is not one of"),
        (["--class", "car"], "--class chooses classes; this model is a detector"),
        (["--top", "2"], "--top chooses classes; this model is a detector"),
        (["--class", "car", "--region", "1,2,30,40"], "not a segment target"),
    ],
)
def test_cli_classes_on_a_detector_exit_2(
    det_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    """A class the detector does not have, or classes at all (it explains its detections): one
    line, exit status 2, before any image is explained."""
    code, _out, err = explain_det(capsys, det_dir, "classes", *args)
    assert code == 2, err
    assert line in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (det_dir / "classes" / "street.json").exists()


def test_summary_lists_the_detections() -> None:
    from camlens.runs import summarize

    def detected(c: int, score: float) -> dict[str, object]:
        return {"box": [0, 0, 10, 10], "class_index": c, "label": COCO[c], "score": score}

    def row(image: str, found: list[dict[str, object]], energies: list[float]) -> dict[str, object]:
        maps = [
            {
                "label": d["label"],
                "target": {"kind": "detection", "label": d["class_index"]},
                "energy_in_box": e,
                "method": "gradcam",
                "layer": "backbone.body.16",
                "overlay": f"{image}.{n}.png",
            }
            for n, (d, e) in enumerate(zip(found, energies, strict=False))
        ]
        return {"image": image, "predictions": [], "detections": found, "explanations": maps}

    rows = [
        row("a", [detected(1, 0.9), detected(1, 0.7), detected(3, 0.6)], [0.8, 0.4, 0.5]),
        row("b", [detected(3, 0.8)], [0.1]),
        row("c", [], []),
    ]
    result = summarize(rows)
    lines = [
        (d.label, d.images, d.detections, round(d.score, 6), d.energy_in_box)
        for d in result.detections
    ]
    assert lines == [
        ("car", 2, 2, 0.7, pytest.approx(0.3)),
        ("person", 1, 2, 0.8, pytest.approx(0.6)),
    ]
    assert result.undetected == 1
    # the maps least inside their own boxes, least first
    outside = [(n.image, n.label, n.value, n.overlay) for n in summarize(rows, top=2).outside_box]
    assert outside == [
        ("b", "car (gradcam, backbone.body.16)", 0.1, "b.0.png"),
        ("a", "person (gradcam, backbone.body.16)", 0.4, "a.1.png"),
    ]
