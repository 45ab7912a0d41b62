"""The pieces of ``benchmarks/kinds.py`` (the segmentation model and the detector trained on
synthetic shapes, and where their maps fall) at tiny sizes: the data, a training step of each
model, the scores of the maps on hand-made cases, and camlens explaining both models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kinds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kinds", ROOT / "benchmarks" / "kinds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kinds"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sets(kinds: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    root = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)  # a noise photo: the sample photos take seconds to load
    noise = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    train, test = kinds.make_sets(root, 4, 2, 64, seed=0, backgrounds=[noise])
    return kinds.read_items(train), kinds.read_items(test)


def test_the_items_hold_masks_boxes_and_labels(kinds: ModuleType, sets: tuple[list, list]) -> None:
    train, test = sets
    assert len(train) == 4 and len(test) == 2
    for it in train + test:
        assert it.image.shape == (3, 64, 64) and 0 <= float(it.image.min()) <= 1
        assert len(it.boxes) == len(it.labels) == 2
        for (x0, y0, x1, y1), k in zip(it.boxes, it.labels, strict=True):
            assert 1 <= k < len(kinds.CLASSES)
            ys, xs = np.nonzero(it.mask == k)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_a_flip_mirrors_image_mask_and_boxes(kinds: ModuleType, sets: tuple[list, list]) -> None:
    it = sets[0][0]
    gen = torch.Generator().manual_seed(0)
    flipped = [kinds._flip([it], torch.tensor([0]), gen)[0] for _ in range(8)]
    mirrored = [f for f in flipped if f.boxes != it.boxes]
    assert 0 < len(mirrored) < 8  # about half
    f = mirrored[0]
    assert torch.equal(f.image, it.image.flip(-1)) and (f.mask == it.mask[:, ::-1]).all()
    for (x0, y0, x1, y1), k in zip(f.boxes, f.labels, strict=True):
        ys, xs = np.nonzero(f.mask == k)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_tally_scores_maps_by_hand(kinds: ModuleType) -> None:
    inside = np.zeros((4, 4), dtype=bool)
    inside[1:3, 1:3] = True
    t = kinds.Tally()
    peak_in = np.zeros((4, 4))
    peak_in[1, 2] = 3.0
    peak_in[0, 0] = 1.0  # energy 3 / 4 inside
    t.add(peak_in, inside, flat=False)
    peak_out = np.zeros((4, 4))
    peak_out[3, 3] = 2.0
    peak_out[2, 2] = 1.0  # energy 1 / 3 inside, the peak outside
    t.add(peak_out, inside, flat=False)
    t.add(np.zeros((4, 4)), inside, flat=True, label="cross")  # a miss, nothing inside
    assert t.row() == {
        "maps": 3,
        "pointing": 1 / 3,
        "energy": (3 / 4 + 1 / 3) / 3,
        "flat": 1,
        "flat_by_class": {"cross": 1},
    }


def test_detection_quality_matches_by_class_and_iou(kinds: ModuleType) -> None:
    it = kinds.Item(
        Path("x.png"), torch.zeros(3, 8, 8), np.zeros((8, 8)), [(0, 0, 4, 4), (4, 4, 8, 8)], [1, 2]
    )
    found = [
        [
            {"box": [0, 0, 4, 4], "label": 1, "score": 0.9},  # found
            {"box": [0, 0, 4, 3], "label": 1, "score": 0.8},  # the same object again: false
            {"box": [4, 4, 8, 8], "label": 3, "score": 0.7},  # the wrong class: false
        ]
    ]
    q = kinds.detection_quality(found, [it])
    assert q == {
        "objects": 2,
        "found": 1,
        "recall": 0.5,
        "false_detections": 2,
        "mean_iou_found": 1.0,
    }


def test_segmentation_trains_and_is_explained(kinds: ModuleType, sets: tuple[list, list]) -> None:
    torch.set_num_threads(1)
    train, test = sets
    trained = kinds.train_segmenter(train, 2, batch=2, log=lambda _: None)
    net = trained.net
    assert trained.steps == 2 and all(np.isfinite(trained.losses))
    # The frozen stem kept its ImageNet weights, and the batch norms their statistics.
    fresh = kinds.stages()
    assert torch.equal(net.backbone.stem[0].weight, fresh.stem[0].weight)
    assert torch.equal(net.backbone.stage3[0].bn1.running_mean, fresh.stage3[0].bn1.running_mean)
    assert not torch.equal(net.backbone.stage3[0].conv_dw.weight, fresh.stage3[0].conv_dw.weight)
    predicted = kinds.predicted_masks(net, test)
    assert predicted.shape == (2, 64, 64)
    quality = kinds.segmentation_quality(predicted, test)
    assert 0 <= quality["mean_iou"] <= 1
    # Explain every true class as if the model predicted it everywhere it is.
    model = kinds.segmentation_camlens_model(net, 64)
    truth = np.stack([it.mask for it in test])
    table, counts = kinds.explain_segments(
        model, test, truth, ["gradcam", "eigencam"], ["backbone.stage4", "classifier.cbr"]
    )
    assert counts["objects"] == counts["explained"] == 4
    assert sorted(table) == [
        (m, layer)
        for m in ("eigencam", "gradcam")
        for layer in ("backbone.stage4", "classifier.cbr")
    ]
    for t in table.values():
        row = t.row()
        assert row["maps"] == 4 and 0 <= row["pointing"] <= 1 and 0 <= row["energy"] <= 1
    lines = kinds.table_rows(table, ["gradcam", "eigencam"], ["backbone.stage4", "classifier.cbr"])
    assert len(lines) == 2 + 4 and lines[2].startswith("| gradcam | `backbone.stage4` | 4 |")


def test_the_detector_trains_and_is_explained(kinds: ModuleType, sets: tuple[list, list]) -> None:
    torch.set_num_threads(1)
    train, test = sets
    trained = kinds.train_detector(train, 2, 64, batch=2, log=lambda _: None)
    net = trained.net
    assert trained.steps == 2 and all(np.isfinite(trained.losses))
    fresh = kinds.stages()
    assert torch.equal(net.backbone.body.stem[0].weight, fresh.stem[0].weight)
    assert not torch.equal(
        net.backbone.body.stage3[0].conv_dw.weight, fresh.stage3[0].conv_dw.weight
    )
    # Barely trained: its detections score about 1 / 5; explain those of 0.05 and more.
    found = kinds.detections(net, test, 0.05)
    assert sum(map(len, found)) > 0
    model = kinds.detection_camlens_model(net, 64)
    assert model.kind == "detection"
    layers = ["backbone.body.stage4", "backbone.fpn.layer_blocks.1"]
    table, counts = kinds.explain_detections(
        model, test, ["gradcam", "eigencam"], layers, min_score=0.05, best=2
    )
    # One map per detection, method and layer: the 2 best of each image.
    assert counts["detections"] == sum(min(len(f), 2) for f in found)
    assert sorted(table) == [(m, layer) for m in ("eigencam", "gradcam") for layer in layers]
    for t in table.values():
        assert t.maps == counts["detections"]
    picture = kinds.sheet(model, test[0], ["gradcam", "eigencam"], layers, min_score=0.05)
    assert picture.mode == "RGB" and min(picture.size) > 2 * 200  # 2 x 2 tiles of 200 px, titled


def test_trained_models_are_kept_and_reused(kinds: ModuleType, tmp_path: Path) -> None:
    args = kinds.parser().parse_args(["--models", str(tmp_path), "--seg-steps", "3"])
    calls = []

    def train() -> object:
        calls.append(1)
        torch.manual_seed(len(calls))
        return kinds.Trained(torch.nn.Linear(2, 2), 1.5, 3, [0.5, 0.25])

    first = kinds.trained(args, "segmentation", lambda: torch.nn.Linear(2, 2), train)
    again = kinds.trained(args, "segmentation", lambda: torch.nn.Linear(2, 2), train)
    assert calls == [1] and (tmp_path / "segmentation.pt").is_file()
    assert torch.equal(again.net.weight, first.net.weight)
    assert (again.seconds, again.steps, again.losses) == (1.5, 3, [0.5, 0.25])
    other = kinds.parser().parse_args(["--models", str(tmp_path), "--seg-steps", "4"])
    kinds.trained(other, "segmentation", lambda: torch.nn.Linear(2, 2), train)
    assert calls == [1, 1]  # other settings: trained again


def test_a_run_is_rendered_from_its_figures(kinds: ModuleType) -> None:
    row = {"maps": 4, "pointing": 0.5, "energy": 0.25, "flat": 0}
    flat = {"maps": 4, "pointing": 0.0, "energy": 0.0, "flat": 4, "flat_by_class": {"cross": 4}}
    out = {
        "settings": vars(kinds.parser().parse_args(["--test", "2", "--threads", "1"])),
        "seconds": 12.0,
        "load_average": [1.0, 2.0],
        "detection": {
            "training_seconds": 9.0,
            "steps": 2,
            "final_loss": 1.0,
            "quality": {
                "objects": 4,
                "found": 3,
                "recall": 0.75,
                "false_detections": 1,
                "mean_iou_found": 0.8,
            },
            "detections": 4,
            "uniform_energy": 0.1,
            "roi_levels": {"0": 4},
            "explain_seconds": 3.0,
            "automatic_layer": "b",
            "table": {"gradcam @ a": row, "gradcam @ b": flat},
            "by_layer": [
                {"layer": "a", "pointing": 0.5, "energy": 0.25},
                {"layer": "b", "pointing": 0.0, "energy": 0.0},
            ],
        },
    }
    text = "\n".join(kinds.markdown(out))
    assert "`PYTHONPATH=src python benchmarks/kinds.py --test 2 --threads 1`" in text
    assert "3 of 4 objects found" in text
    assert (
        "| energy inside | `a` | `b` (auto) |\n|---|---:|---:|\n| gradcam | **0.25** | 0.00 |"
        in text
    )
    assert "| gradcam | `b` (automatic) | 4 | 0.000 | 0.000 | 4 |" in text
    assert "- gradcam @ b: 4 of 4 (cross 4)" in text
