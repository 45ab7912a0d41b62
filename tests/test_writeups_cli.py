"""What readers of the CAM and Grad-CAM write-ups do from the shell: another input size, signed
maps, 3-panel figures, several boxes per class, every conv layer, the console line, and the
person / not-person write-up replayed end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.images import PreprocessConfig

runner = CliRunner()


def report_of(out: Path) -> dict:
    (path,) = out.rglob("*.json")
    return json.loads(path.read_text())


def test_input_size_changes_the_maps_grid(photo_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["explain", str(photo_files[0]), "--input-size", "448x320", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    entry = report_of(out)["explanations"][0]
    assert entry["map_shape"] == [14, 10]  # 448 / 32, 320 / 32: EfficientNet's stride
    assert report_of(out)["predictions"][0]["class_index"] == 285


def test_input_size_refuses_a_fixed_grid_head(photo_files: list[Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["explain", str(photo_files[0]), "--model", "torchvision:vgg16", "--input-size", "448"],
    )
    assert result.exit_code == 2
    assert "fixed-size head" in result.stderr and "Linear" not in result.stdout
    assert "takes 25088 features, not the 512 channels" in result.stderr


class Signed(nn.Module):
    """x -> ReLU(conv 1x1 = the red channel) [feat] -> GAP -> Linear(1, 2) with weights (1, -1):
    class 0's map is the red channel, class 1's is its negative (no positive evidence)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.feat = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.feat(self.conv(x))).flatten(1))
        return out


def two_squares(size: int = 64) -> np.ndarray:
    """A black image with two separate red squares (two "objects" of one class)."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[8:24, 8:24, 0] = 255
    img[40:56, 36:52, 0] = 255
    return img


def signed() -> camlens.Model:
    config = PreprocessConfig(input_size=(64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return camlens.load_model(Signed(), preprocess=config, labels=["red", "not red"])


def test_no_relu_keeps_the_sign_and_flat_maps_are_said() -> None:
    model = signed()
    plain = camlens.Explainer(model, method="cam").explain(two_squares(), classes=[0, 1])
    assert [m.flat for m in plain.maps] == [False, True]  # nothing left of class 1 after ReLU
    signed_maps = camlens.Explainer(model, method="cam", relu=False).explain(
        two_squares(), classes=[0, 1]
    )
    red, not_red = (m.map for m in signed_maps.maps)
    assert not signed_maps.maps[1].flat
    assert torch.allclose(not_red, 1 - red, atol=1e-6)  # min-max of -A is 1 - min-max of A


def test_console_line_and_grid_say_a_map_is_flat() -> None:
    from camlens.cli import console_line
    from camlens.explanation import grid_cells

    result = camlens.Explainer(signed(), method="cam").explain(two_squares(), classes=[0, 1])
    line = console_line(result)
    assert line.startswith("<image 0>: red ") and "| explained: red; not red" in line
    assert "1 flat map, no positive evidence: not red (cam, feat)" in line
    (row,) = grid_cells([result])
    assert "flat map" in row[1].title and "flat map" not in row[0].title


def test_all_boxes_finds_both_squares() -> None:
    from camlens.localize import add_boxes, localize_objects

    result = camlens.Explainer(signed(), method="cam").explain(two_squares(), classes=[0])
    add_boxes(result, mode="all")
    boxes = result.maps[0].boxes
    assert boxes is not None and len(boxes) == 2
    found = localize_objects(result, None, mode="all")
    assert sorted(o.box.xyxy[:2] for o in found.objects) == sorted(b.xyxy[:2] for b in boxes)
    assert len(localize_objects(result, None).objects) == 1


def test_cli_all_boxes_panels_and_console(
    photo_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    result = runner.invoke(
        app,
        ["explain", "a/0.jpg", "--top", "2", "--all-boxes", "--panels", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert len(report["explanations"]) == 2
    for entry in report["explanations"]:
        assert "boxes" in entry and len(entry["boxes"]) >= 1
        panel = Image.open(out / "a" / entry["panel"])
        assert panel.size[0] == 3 * 451 and panel.size[1] > 300  # photo | heatmap | overlay
    line = result.stdout.strip().splitlines()[0]
    assert line.startswith("a/0.jpg: Egyptian cat 0.")
    assert line.count(";") >= 3 and "| explained: Egyptian cat; tiger cat" in line
    boxes = runner.invoke(app, ["localize", "a/0.jpg", "--all-boxes", "--out", str(tmp_path / "l")])
    assert boxes.exit_code == 0, boxes.output


def test_layer_all_gives_every_conv_stage_in_depth_order(
    photo_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(
            app,
            [
                "explain",
                str(photo_files[0]),
                "--model",
                "torchvision:vgg16",
                "--layer",
                "all",
                "--class",
                "285",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    report = report_of(out)
    layers = [e["layer"] for e in report["explanations"]]
    convs = [1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25, 27, 29]  # the ReLU after each 3x3 conv
    assert layers == [f"features.{i}" for i in convs]
    assert [e["map_shape"][0] for e in report["explanations"]] == [224] * 2 + [112] * 2 + [
        56
    ] * 3 + [28] * 3 + [14] * 3
    grid = Image.open(next(out.rglob("*.grid.png")))
    assert grid.size[0] > grid.size[1] / 4  # a picture, wrapped near square


def test_person_not_person_write_up(tmp_path: Path) -> None:
    """Train at 128x68 (128 high, 68 wide) with SGD + Nesterov, explain at 1024x1024 with CAM for
    both classes and 3-panel figures: the map's grid is 1024 / 32 = 32 on each side."""
    from skimage import data

    rng = np.random.default_rng(0)
    person = np.asarray(data.astronaut())
    scenes = [np.asarray(data.coffee()), np.asarray(data.rocket()), np.asarray(data.chelsea())]
    root = tmp_path / "people"
    for cls, sources in (("person", [person]), ("not_person", scenes)):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            src = sources[i % len(sources)]
            top = int(rng.integers(0, src.shape[0] // 4))
            left = int(rng.integers(0, src.shape[1] // 4))
            crop = src[top : top + src.shape[0] * 3 // 4, left : left + src.shape[1] * 3 // 4]
            Image.fromarray(crop).save(root / cls / f"{i}.jpg")
    model = tmp_path / "people.camlens"
    trained = runner.invoke(
        app,
        [
            "train",
            str(root),
            "--input-size",
            "128x68",
            "--optimizer",
            "sgd",
            "--momentum",
            "0.9",
            "--nesterov",
            "--epochs",
            "2",
            "--views",
            "1",
            "--val",
            "0",
            "--out",
            str(model),
        ],
    )
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "o"
    explained = runner.invoke(
        app,
        [
            "explain",
            str(root / "person" / "0.jpg"),
            str(root / "not_person" / "1.jpg"),
            "--model",
            str(model),
            "--input-size",
            "1024x1024",
            "--method",
            "cam",
            "--class",
            "person",
            "--class",
            "not_person",
            "--panels",
            "--out",
            str(out),
        ],
    )
    assert explained.exit_code == 0, explained.output
    reports = [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]
    assert len(reports) == 2
    for report in reports:
        entries = report["explanations"]
        assert [e["label"] for e in entries] == ["person", "not_person"]
        assert all(e["map_shape"] == [32, 32] for e in entries)
        folder = next(out.rglob(Path(report["image"]).stem + ".json")).parent
        assert all((folder / e["panel"]).is_file() for e in entries)
        assert len({e["panel"] for e in entries}) == 2


def test_all_methods_on_a_layer_without_a_head_leave_cam_out(resnet18: camlens.Model) -> None:
    """`--method all` at a layer no GAP -> Linear head reads: CAM is left out with a warning
    naming why, every other method runs; CAM alone there is still refused."""
    with pytest.warns(UserWarning, match="cam left out: .*no global-average-pooling"):
        explainer = camlens.Explainer(
            resnet18, method=["cam", "gradcam", "eigencam"], layer="layer3"
        )
    assert [m.name for m in explainer.methods] == ["gradcam", "eigencam"]
    assert explainer.config.methods == ("gradcam", "eigencam")
    with pytest.raises(camlens.CamlensError, match="CAM needs a GAP -> Linear head"):
        camlens.Explainer(resnet18, method="cam", layer="layer3")


def test_serve_and_input_size_limits(tmp_path: Path) -> None:
    from camlens.config import ExplainConfig

    with pytest.raises(camlens.CamlensError, match="over 64 megapixels"):
        ExplainConfig(input_size=(100000, 100000))
    result = runner.invoke(
        app, ["serve", "--model", "torchvision:vgg16", "--input-size", "448", "--port", "0"]
    )
    assert result.exit_code == 2 and "fixed-size head" in result.stderr
