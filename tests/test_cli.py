"""The `camlens` command: its contract (files, JSON fields, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.batch import output_stem
from camlens.cli import app

runner = CliRunner()


def test_explain_writes_the_contract(
    photo_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        ["explain", "a/0.jpg", "b/0.jpg", "--method", "gradcampp", "--top", "2", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    first = json.loads((out / "a" / "0.json").read_text())
    second = json.loads((out / "b" / "0.json").read_text())  # same stem, not overwritten
    assert first["image"] == "a/0.jpg" and second["image"] == "b/0.jpg"
    assert first["size"] == [451, 300]  # chelsea is 451 x 300
    assert first["model"] == "efficientnet_lite0"
    assert first["predictions"][0]["class_index"] == 285
    assert len(first["predictions"]) == 5
    assert second["predictions"][0]["label"] == "espresso"
    assert len(first["explanations"]) == 2
    entry = first["explanations"][0]
    assert entry.keys() >= {"class_index", "label", "method", "layer", "overlay", "map", "peak"}
    assert (entry["method"], entry["layer"], entry["class_index"]) == ("gradcampp", "bn2", 285)
    overlay = Image.open(out / "a" / entry["overlay"])
    assert overlay.size == (451, 300)
    saved = np.load(out / "a" / entry["map"])
    assert saved.dtype == np.float32 and saved.shape == (300, 451)
    assert saved.min() == 0.0 and saved.max() == 1.0
    x, y = entry["peak"]
    assert saved[y, x] == 1.0


def test_one_bad_file_does_not_stop_the_others(
    photo_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain", "bad.png", "a/0.jpg", "missing.jpg", "--out", str(out)])
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert "bad.png" in errors[0] and "not an image" in errors[0]
    assert "missing.jpg" in errors[1]
    assert (out / "a" / "0.json").exists()
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--layer", "nope"], "no layer named 'nope'"),
        (["--class", "1000"], "class index 1000 is out of range"),
        (["--class", "not a class"], "not one of efficientnet_lite0's 1000 class names"),
        (["--cmap", "nope"], "nope"),
        (["--model", "timm:nope"], "timm has no model named 'nope'"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    photo_files: list[Path], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(photo_files[0]), "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.json"))


def test_explain_class_names_and_grid(
    default_model: camlens.Model, photo_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    grid = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        [
            "explain",
            str(photo_files[1]),
            "-c",
            "espresso",
            "-c",
            "285",
            "--method",
            "cam",
            "--method",
            "layercam",
            "--out",
            str(out),
            "--grid",
            str(grid),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(next(out.rglob("0.json")).read_text())
    assert {(e["method"], e["class_index"]) for e in report["explanations"]} == {
        ("cam", 967),
        ("cam", 285),
        ("layercam", 967),
        ("layercam", 285),
    }
    # the grid of the same maps made through the Python API, pixel for pixel
    explainer = camlens.Explainer(default_model, method=["cam", "layercam"])
    same = explainer.explain(
        [photo_files[1]], classes=["espresso", 285], names=[str(photo_files[1])]
    )
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(camlens.grid(same)))


def test_output_stem_keeps_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("o")
    assert output_stem(Path("a/0.png"), out) == Path("o/a/0")
    assert output_stem(Path("0.png"), out) == Path("o/0")
    assert output_stem(tmp_path / "x" / "1.jpg", out) == Path("o/x/1")
    assert output_stem(Path("/elsewhere/y/2.jpg"), out) == Path("o/elsewhere/y/2")


def test_methods_and_layers() -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]:
        assert name in result.stdout
    assert "Selvaraju" in result.stdout
    result = runner.invoke(app, ["layers"])
    assert result.exit_code == 0
    assert "automatic target layer of efficientnet_lite0: bn2" in result.stdout
    assert "1280x7x7" in result.stdout


def test_exif_rotated_photo_is_explained_upright(
    tmp_path: Path, chelsea: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG stored sideways with EXIF orientation 6: report, overlay and map are upright."""
    stored = Image.fromarray(chelsea).transpose(Image.Transpose.ROTATE_90)  # 300 wide, 451 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain", "sideways.jpg", "--out", "o"])
    assert result.exit_code == 0, result.output
    report = json.loads(Path("o/sideways.json").read_text())
    assert report["size"] == [451, 300]  # upright: as wide as chelsea
    assert report["predictions"][0]["label"] == "Egyptian cat"
    entry = report["explanations"][0]
    assert Image.open(Path("o") / entry["overlay"]).size == (451, 300)
    assert np.load(Path("o") / entry["map"]).shape == (300, 451)


def test_huge_image_is_refused_and_the_rest_explained(
    tmp_path: Path, photo_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_images import blank_png  # pytest puts tests/ on sys.path

    blank_png(tmp_path / "huge.png", 20000, 20000)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain", "huge.png", "a/0.jpg", "--out", "o"])
    assert result.exit_code == 2
    assert "huge.png: is 20000x20000 pixels" in result.stderr
    assert "over the limit of 64.0 megapixels" in result.stderr
    assert Path("o/a/0.json").exists()
