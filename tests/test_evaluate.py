"""Evaluation end to end: a small GAP -> Linear CNN trained here on the synthetic set must localize
its held-out objects with CAM and Grad-CAM; the commands `evaluate`, `localize` and `explain
--boxes` keep their contract and report bad ground truth without stopping."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.datasets import Dataset, make_synthetic, read_dataset
from camlens.evaluate import evaluate
from camlens.localize import boxes_from_map
from camlens.metrics import gt_known_localization, iou, pointing_hit
from camlens.models.synthetic import SYNTHETIC_CLASSES
from camlens.progress import Event

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[camlens.Model, Dataset]:
    """400 training images (seed 0), 100 held-out ones (seed 1), and the model trained on the
    first, with one thread (about 10 s on an idle CPU; more threads only lose on a shared one)."""
    from camlens.train import train_synthetic_model

    root = tmp_path_factory.mktemp("synthetic")
    train = make_synthetic(root / "train", 400, seed=0)
    held_out = make_synthetic(root / "val", 100, seed=1)
    model = train_synthetic_model(train, seed=0, threads=1)
    assert model.labels == SYNTHETIC_CLASSES
    return model, read_dataset(held_out)


def test_the_trained_synthetic_cnn_loads_back(
    synthetic: tuple[camlens.Model, Dataset], tmp_path: Path
) -> None:
    model, held_out = synthetic
    assert (model.name, model.spec, model.weights) == ("synthetic", "synthetic", None)
    torch.save(model.net.state_dict(), tmp_path / "model.pt")  # as `camlens synthetic --train`
    loaded = camlens.load_model(model.spec, weights=tmp_path / "model.pt")
    assert loaded.labels == model.labels and loaded.preprocess == model.preprocess
    x = camlens.images.preprocess(
        [camlens.load_image(i.image) for i in held_out.items[:4]], model.preprocess
    )
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def center_blob_scores(data: Dataset) -> tuple[float, float]:
    """Pointing game and GT-known localization of a Gaussian at the image center (sigma 15%)."""
    pointing = located = 0
    for item in data.items:
        width, height = Image.open(item.image).size
        yy, xx = np.mgrid[0:height, 0:width]
        blob = np.exp(
            -(((xx + 0.5 - width / 2) / (0.15 * width)) ** 2) / 2
            - (((yy + 0.5 - height / 2) / (0.15 * height)) ** 2) / 2
        )
        truth = [o.box for o in item.objects]
        pointing += pointing_hit(blob, truth)
        located += gt_known_localization(boxes_from_map(blob)[0], truth)
    return pointing / len(data), located / len(data)


@pytest.mark.slow
def test_cam_and_gradcam_localize_held_out_objects(
    synthetic: tuple[camlens.Model, Dataset],
) -> None:
    model, held_out = synthetic
    report = evaluate(model, held_out, ["cam", "gradcam"], faithfulness=False)
    assert report.evaluated == 100 and report.problems == []
    print({m: {k: v for k, v in row.items() if v is not None} for m, row in report.rows.items()})
    for method in ("cam", "gradcam"):
        row = report.rows[method]
        assert row["pointing_game"] is not None and row["pointing_game"] >= 0.9
        assert row["top1_loc"] is not None and row["top1_loc"] >= 0.7
        # The aggregate, recomputed here from the per-image boxes and the ground truth.
        records = [r for r in report.per_image if r["method"] == method]
        truth = {str(item.image): item.objects[0] for item in held_out.items}
        hits = [
            r["predicted"]["label"] == truth[r["image"]].label
            and r["top1_box"] is not None
            and iou(r["top1_box"], truth[r["image"]].box) >= 0.5
            for r in records
        ]
        assert row["top1_loc"] == pytest.approx(np.mean(hits))
        assert row["top5_loc"] is not None and row["top5_loc"] >= row["top1_loc"]
    # The objects are large (40-70% of the side), so a map that ignores the image, a blob at the
    # center, passes the pointing game too; its boxes, though, are wrong most of the time.
    blind_pointing, blind_loc = center_blob_scores(held_out)
    assert blind_pointing >= 0.9
    assert report.rows["cam"]["gt_known_loc"] >= blind_loc + 0.4  # type: ignore[operator]
    # On a GAP -> Linear head Grad-CAM is CAM up to a positive scale: the same boxes.
    same = {k: v for k, v in report.rows["cam"].items() if v is not None}
    assert report.rows["gradcam"] == pytest.approx(
        same | {k: None for k in report.rows["cam"] if k not in same}
    )


@pytest.mark.slow
def test_faithfulness_report_table_and_plot(
    synthetic: tuple[camlens.Model, Dataset], tmp_path: Path
) -> None:
    model, held_out = synthetic
    report = evaluate(
        model, held_out, ["gradcam", "layercam"], limit=6, steps=8, road_percentages=(0.2, 0.5, 0.8)
    )
    assert report.evaluated == 6
    for method in ("gradcam", "layercam"):
        row = report.rows[method]
        assert all(row[key] is not None for key in ("average_drop", "deletion_auc", "road_morf"))
        # A map worth its name: deleting its pixels hurts more than inserting them helps late,
        # and removing the most relevant pixels hurts more than removing the least relevant.
        assert row["deletion_auc"] < row["insertion_auc"]  # type: ignore[operator]
        assert row["road_morf"] < row["road_lerf"]  # type: ignore[operator]
        assert 0.0 <= row["average_drop"] <= 100.0  # type: ignore[operator]
        curve = report.curves[method]["deletion"]
        assert len(curve.fractions) == 9 and curve.fractions[0] == 0 and curve.fractions[-1] == 1
    saved = json.loads(report.save(tmp_path / "report.json").read_text())
    assert [m["method"] for m in saved["methods"]] == ["gradcam", "layercam"]
    assert len(saved["per_image"]) == 12
    plot = report.plot(tmp_path / "curves.png")
    assert plot is not None and Image.open(plot).size == (1000, 400)
    text = io.StringIO()
    Console(file=text, width=220).print(report.table())
    assert "gradcam" in text.getvalue() and "layercam" in text.getvalue()
    assert "deletion ↓" in text.getvalue()


# --------------------------------------------------------------------------------------------------
# The commands, on real photos with the default model


@pytest.fixture
def voc_set(tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray) -> Path:
    """Two good images and four kinds of bad ground truth."""
    root = tmp_path / "voc"
    root.mkdir()
    Image.fromarray(chelsea).save(root / "chelsea.jpg", quality=95)
    Image.fromarray(coffee).save(root / "coffee.jpg", quality=95)

    def xml(filename: str, name: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
        return (
            f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height></size><object><name>{name}</name><bndbox>"
            f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            "</bndbox></object></annotation>"
        )

    (root / "chelsea.xml").write_text(
        xml("chelsea.jpg", "Egyptian cat", (120, 20, 340, 300), (451, 300))
    )
    (root / "coffee.xml").write_text(xml("coffee.jpg", "espresso", (70, 40, 500, 330), (600, 400)))
    (root / "ghost.xml").write_text(xml("ghost.jpg", "espresso", (1, 1, 10, 10), (20, 20)))
    (root / "outside.xml").write_text(
        xml("coffee.jpg", "espresso", (500, 300, 700, 390), (600, 400))
    )
    (root / "empty.xml").write_text("")
    (root / "unicorn.xml").write_text(xml("chelsea.jpg", "unicorn", (1, 1, 100, 100), (451, 300)))
    return root


def test_evaluate_command_reports_bad_ground_truth_and_evaluates_the_rest(
    voc_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(voc_set),
            "--method",
            "gradcam",
            "--method",
            "cam",
            "--steps",
            "4",
            "--no-road",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4, errors
    text = "\n".join(errors)
    assert "empty.xml: empty annotation file" in text
    assert "ghost.xml: the image 'ghost.jpg' it names is not there" in text
    assert "lies outside the 600x400 image" in text and "outside.xml" in text
    assert "'unicorn'" in text and "left out" in text
    report = json.loads((out / "evaluation.json").read_text())
    assert report["evaluated"] == 2
    assert [m["method"] for m in report["methods"]] == ["gradcam", "cam"]
    assert report["methods"][0]["classification"] == 1.0  # the cat and the espresso
    assert report["methods"][0]["road_morf"] is None  # --no-road
    assert report["methods"][0]["deletion_auc"] is not None
    assert (out / "deletion_insertion.png").is_file()
    assert "gradcam" in result.stdout
    # 6 annotation files: 2 left out by their problems (empty, ghost), 2 more by the evaluation
    assert "2 of 6 images evaluated" in " ".join(result.stdout.split())
    assert report["images"] == 6


def test_evaluate_reports_progress_events(default_model: camlens.Model, voc_set: Path) -> None:
    events: list[Event] = []
    report = evaluate(default_model, voc_set, "cam", faithfulness=False, progress=events.append)
    assert {e.task for e in events} == {"images"} and {e.total for e in events} == {4}
    assert [e.problem for e in events if e.problem is not None] == report.problems
    assert len(report.problems) == 4
    finished = [e for e in events if e.problem is None]
    assert [e.done for e in finished] == [1, 2, 3, 4]
    read = read_dataset(voc_set)
    assert sorted(str(e.item) for e in finished) == sorted(str(i.image) for i in read.items)


def test_evaluate_command_refuses_unusable_input(tmp_path: Path) -> None:
    empty = tmp_path / "gt.json"
    empty.write_text("")
    result = runner.invoke(app, ["evaluate", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"camlens: {empty}: empty annotation file"
    result = runner.invoke(app, ["evaluate", str(empty), "--threshold", "2"])
    assert result.exit_code == 2 and "outside [0, 1)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_localize_command_writes_json_lines_and_pictures(
    photo_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.png").write_text("not an image")
    result = runner.invoke(
        app, ["localize", "a/0.jpg", "bad.png", "b/0.jpg", "--top", "3", "--out", "out"]
    )
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "bad.png" in result.stderr
    lines = (tmp_path / "out" / "boxes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["image"] for r in records] == ["a/0.jpg", "b/0.jpg"]
    for record, label in zip(records, ["Egyptian cat", "espresso"], strict=True):
        width, height = record["size"]
        assert record["objects"], record
        first = record["objects"][0]
        assert first["label"] == label
        x0, y0, x1, y1 = first["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0 < first["box_score"] <= 1
        assert first["crop"]["label"]  # the crop was re-classified
        picture = Image.open(tmp_path / "out" / record["picture"])
        assert picture.size == (width, height)
    assert records[0]["picture"] == "a/0.boxes.png"  # same stems, kept apart
    # (--no-crops leaves "crop" out: localize_objects without a model, tests/test_localize.py.)


def test_explain_with_boxes(photo_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["explain", str(photo_files[0]), "--boxes", "--threshold", "0.15", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (report_path,) = out.rglob("0.json")
    entry = json.loads(report_path.read_text())["explanations"][0]
    (box,) = entry["boxes"]
    x0, y0, x1, y1 = box["box"]
    assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300
    saved = np.load(report_path.parent / entry["map"])
    # Recomputed from the saved map: the largest region above 0.15 of the maximum.
    assert boxes_from_map(saved, threshold=0.15)[0].to_dict()["box"] == box["box"]
    # (Without --boxes there is no "boxes" field: tests/test_localize.py.)


def test_evaluate_command_with_no_known_class(voc_set: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "unicorn.xml").write_text((voc_set / "unicorn.xml").read_text())
    (only / "chelsea.jpg").write_bytes((voc_set / "chelsea.jpg").read_bytes())
    result = runner.invoke(app, ["evaluate", str(only), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "'unicorn'" in result.stderr
    assert "could be evaluated" in result.stdout
    assert not (tmp_path / "o" / "evaluation.json").exists()  # nothing to write


def test_evaluate_and_localize_take_smoothing_and_fast_modes(voc_set: Path, tmp_path: Path) -> None:
    """The same explanation options as `explain`: --smooth reaches the maps evaluate scores."""
    runs = {}
    for name, extra in (("plain", []), ("tta", ["--smooth", "tta"])):
        out = tmp_path / name
        result = runner.invoke(
            app, ["evaluate", str(voc_set), "--no-faithfulness", "--out", str(out), *extra]
        )
        assert result.exit_code == 2, result.output  # the set's bad ground truth, as above
        runs[name] = json.loads((out / "evaluation.json").read_text())["methods"][0]
    assert runs["plain"]["energy_pointing"] != runs["tta"]["energy_pointing"]
    located = runner.invoke(
        app,
        [
            "localize",
            str(voc_set / "chelsea.jpg"),
            "--method",
            "scorecam",
            "--fast-channels",
            "8",
            "--smooth",
            "pca",
            "--out",
            str(tmp_path / "l"),
        ],
    )
    assert located.exit_code == 0, located.output
    assert "Egyptian cat" in (tmp_path / "l" / "boxes.jsonl").read_text()
