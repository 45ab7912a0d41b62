"""The target options of `camlens explain` from the shell: --versus, --scores with --above,
--output and --like, on small checkpoints whose scoring is stored in them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.models.scores import set_scores

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(
    tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray, coffee: np.ndarray
) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(chelsea).save(folder / "cat.jpg")
    Image.fromarray(coffee).save(folder / "ref.jpg")
    return folder


def checkpoint(folder: Path, name: str, classes: list[str], scores: str) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        model = camlens.build_cam_model("torchvision:resnet18", class_names=classes, input_size=64)
    set_scores(model, scores)
    return camlens.save(model, folder / f"{name}.camlens")


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_versus_and_like_on_the_default_model(photos: Path, tmp_path: Path) -> None:
    code, text = run(
        "explain", str(photos / "cat.jpg"), "--class", "tiger cat", "--versus", "Egyptian cat",
        "--like", str(photos / "ref.jpg"), "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, text
    report = json.loads(next(tmp_path.rglob("cat.json")).read_text())
    second, third = report["explanations"]  # --class is the first class of the contrast
    assert second["target"] == {"kind": "contrast", "classes": [282, 285]}
    assert second["explained"] == "tiger cat versus Egyptian cat"
    assert second["overlay"] == "cat.gradcam.bn2.282-vs-285.png"
    logits = {p["class_index"]: p for p in report["predictions"]}
    assert 282 in logits and 285 in logits
    assert third["target"]["kind"] == "similarity" and -1 <= third["value"] <= 1
    assert (next(tmp_path.rglob("cat.json")).parent / third["map"]).is_file()


def test_a_multi_label_model_explains_every_class_above(photos: Path, tmp_path: Path) -> None:
    model = checkpoint(tmp_path, "tags", ["cat", "fur", "cup", "table"], "sigmoid")
    code, text = run(
        "explain", str(photos / "cat.jpg"), "--model", str(model), "--above", "0.0",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, text
    report = json.loads(next((tmp_path / "out").rglob("cat.json")).read_text())
    assert report["scores"] == "sigmoid"
    assert len(report["explanations"]) == 4  # every sigmoid score is at least 0
    assert all(0 < p["score"] < 1 for p in report["predictions"])
    assert sum(p["score"] for p in report["predictions"]) != pytest.approx(1.0)
    # --top K bounds --above: the K best of the classes over it
    code, text = run(
        "explain", str(photos / "cat.jpg"), "--model", str(model), "--above", "0.0",
        "--top", "2", "--out", str(tmp_path / "two"),
    )  # fmt: skip
    assert code == 0, text
    two = json.loads(next((tmp_path / "two").rglob("cat.json")).read_text())
    best = [p["class_index"] for p in report["predictions"][:2]]
    assert [e["class_index"] for e in two["explanations"]] == best


def test_a_regression_output_and_bad_options(photos: Path, tmp_path: Path) -> None:
    model = checkpoint(tmp_path, "sizes", ["age", "height"], "raw")
    code, text = run(
        "explain", str(photos / "cat.jpg"), "--model", str(model), "--output", "0",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, text
    report = json.loads(next((tmp_path / "out").rglob("cat.json")).read_text())
    (entry,) = report["explanations"]
    assert entry["target"] == {"kind": "output", "index": 0}
    raw = {p["class_index"]: p["score"] for p in report["predictions"]}
    assert entry["value"] == pytest.approx(raw[0], rel=1e-5)  # the output as it is
    code, text = run("explain", str(photos / "cat.jpg"), "--model", str(model), "--output", "2")
    assert code == 2 and "output 2 is out of range" in text
    code, text = run("explain", str(photos / "cat.jpg"), "--scores", "odds")
    assert code == 2 and "scores must be one of softmax, sigmoid, raw" in text
    code, text = run("explain", str(photos / "cat.jpg"), "--class", "1", "--versus", "1")
    assert code == 2 and "versus itself" in text


def test_the_api_takes_the_same_options(default_model: camlens.Model, photos: Path) -> None:
    from fastapi.testclient import TestClient

    from camlens.serve import create_app

    image = (photos / "cat.jpg").read_bytes()

    def post(client: TestClient, **fields: object) -> object:
        files = {"image": ("cat.jpg", image, "image/jpeg")}
        return client.post("/api/explain", files=files, data=fields)

    with TestClient(create_app(default_model)) as client:
        assert client.get("/api/model").json()["scores"] == "softmax"
        answer = post(client, classes="tiger cat", versus="Egyptian cat")
        assert answer.status_code == 200, answer.text
        (entry,) = answer.json()["explanations"]
        assert entry["target"] == {"kind": "contrast", "classes": [282, 285]}
        assert entry["explained"] == "tiger cat versus Egyptian cat"
        answer = post(client, versus="next:2", output=["3"])
        assert answer.status_code == 200, answer.text
        kinds = [e["target"]["kind"] for e in answer.json()["explanations"]]
        assert kinds == ["contrast", "output"]
        answer = post(client, scores="sigmoid", above="0.999", top="5")  # top: 1000 may score
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["scores"] == "sigmoid" and body["explanations"]
        assert all(p["score"] >= 0.999 for p in body["predictions"][: len(body["explanations"])])
        bad = post(client, classes="tiger cat", versus="tiger cat")
        assert bad.status_code == 422 and "versus itself" in bad.json()["detail"]
        bad = post(client, output="1000")
        assert bad.status_code == 422 and bad.json()["parameter"] == "output"


def test_layers_and_serve_take_scores(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = checkpoint(tmp_path, "plain", ["cat", "cup"], "softmax")
    code, text = run("layers", "--model", str(model))
    assert code == 0, text
    assert "outputs: 2, scored by softmax" in text  # the checkpoint's own
    code, text = run("layers", "--model", str(model), "--scores", "sigmoid")
    assert code == 0, text
    assert "outputs: 2, scored by sigmoid" in text
    code, text = run("layers", "--model", str(model), "--scores", "odds")
    assert code == 2 and "scores must be one of softmax, sigmoid, raw" in text

    import uvicorn
    from fastapi.testclient import TestClient

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **_: served.append(application))
    code, text = run("serve", "--model", str(model), "--scores", "raw", "--port", "0")
    assert code == 0, text
    with TestClient(served[0]) as client:  # type: ignore[arg-type]
        assert client.get("/api/model").json()["scores"] == "raw"
        answer = client.post(
            "/api/explain",
            files={"image": ("cat.jpg", (photos / "cat.jpg").read_bytes(), "image/jpeg")},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"] == "raw"
    code, text = run("serve", "--model", str(model), "--scores", "odds", "--port", "0")
    assert code == 2 and "scores must be one of softmax, sigmoid, raw" in text
    assert len(served) == 1
