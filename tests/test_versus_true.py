"""`camlens explain DIR --versus true`: each image's top-1, and where the folder's class is not the
top-1, the contrast of the top-1 versus that true class; on a tiny folder tree (the rocket, filed
as a missile, is predicted a drilling platform: the mistake), in both formats, resumed, and as a
Ray actor explains a batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.batch import explain_files
from camlens.cli import app
from camlens.config import ExplainConfig, OutputConfig
from camlens.images import preprocess
from camlens.targets import Contrast, TargetError, VersusTrue, from_options, target_from_dict

RIG, MISSILE, CAT = 540, 657, 285


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray) -> Path:
    """``tree/Egyptian_cat/chelsea.jpg`` (right), ``tree/missile/rocket.jpg`` (wrong: a
    drilling platform, 0.69; missile third, 0.02) and ``tree/misc/coffee.jpg`` (no class)."""
    from skimage import data

    root = tmp_path_factory.mktemp("versus")
    for name, array in (
        ("Egyptian_cat/chelsea.jpg", chelsea),
        ("missile/rocket.jpg", data.rocket()),
        ("misc/coffee.jpg", data.coffee()),
    ):
        path = root / "tree" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(array)).save(path)
    return root


def explain(tree: Path, *args: str) -> tuple[int, str, str]:
    here = os.getcwd()
    os.chdir(tree)  # short paths in the index, as given
    try:
        result = CliRunner().invoke(app, ["explain", "tree", *args])
    finally:
        os.chdir(here)
    return result.exit_code, result.stdout, result.stderr


def reports(out: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.stem: json.loads(p.read_text()) for p in out.rglob("*.json")}


def test_the_top1_and_the_top1_versus_the_true_class(
    tree: Path, default_model: camlens.Model
) -> None:
    code, out, err = explain(tree, "--versus", "true", "--out", "out")
    assert code == 0, out + err
    assert "1 of 3 images explained had no class in their folder's name" in err
    got = reports(tree / "out")
    # right, and without a class: the top-1 alone, as a plain class
    (cat,) = got["chelsea"]["explanations"]
    assert got["chelsea"]["truth"] == {"class_index": CAT, "label": "Egyptian cat"}
    assert cat["class_index"] == CAT and "target" not in cat
    (coffee,) = got["coffee"]["explanations"]
    assert "truth" not in got["coffee"] and "target" not in coffee
    assert coffee["class_index"] == got["coffee"]["predictions"][0]["class_index"]
    # the mistake: its top-1, then the top-1 versus the true class
    rocket = got["rocket"]
    assert rocket["truth"]["class_index"] == MISSILE
    assert rocket["predictions"][0]["class_index"] == RIG
    top1, versus = rocket["explanations"]
    assert top1["class_index"] == RIG and "target" not in top1
    assert versus["target"] == {"kind": "contrast", "classes": [RIG, MISSILE]}
    assert versus["explained"] == "drilling platform, offshore rig versus missile"
    assert versus["overlay"] == "rocket.gradcam.bn2.540-vs-657.png"
    folder = tree / "out" / "tree" / "missile"
    assert (folder / versus["overlay"]).is_file() and (folder / top1["overlay"]).is_file()
    # the value is y_rig - y_missile, as the model's logits say
    photo = camlens.load_image(tree / "tree" / "missile" / "rocket.jpg")
    with torch.no_grad():
        logits = default_model.net(preprocess([photo], default_model.preprocess))[0]
    assert versus["value"] == pytest.approx(float(logits[RIG] - logits[MISSILE]), abs=1e-4)
    # the map is the one `--class 540 --versus 657` gives (another road to the same contrast)
    alone = camlens.Explainer(default_model, targets=[Contrast(RIG, (MISSILE,))])
    expected = alone.explain(tree / "tree" / "missile" / "rocket.jpg").map_at_image(0).numpy()
    saved = np.load(folder / versus["map"])
    assert np.abs(saved - expected).max() < 1e-5
    assert np.abs(saved - np.load(folder / top1["map"])).max() > 0.1  # not the top-1's map
    # the index says the same, and the run's options keep versus true (a resume keeps it)
    lines = (tree / "out" / "index.jsonl").read_text().splitlines()
    rows = {Path(r["image"]).stem: r for r in map(json.loads, lines)}
    assert [e.get("target") for e in rows["rocket"]["explanations"]] == [None, versus["target"]]
    record = json.loads((tree / "out" / ".camlens" / "run").read_text())
    assert record["options"]["explain"]["targets"] == [{"kind": "versus_true"}]
    code, out, err = explain(tree, "--versus", "true", "--out", "out")
    assert code == 0 and "3 already done" in err, out + err
    code, out, err = explain(tree, "--out", "out")
    assert code == 2 and "explain.targets: [{'kind': 'versus_true'}] -> []" in err


def test_the_dataset_format_and_a_ray_actor(tree: Path, default_model: camlens.Model) -> None:
    """--format dataset writes the same targets; an actor of a Ray run, built from the driver's
    config as Ray builds it, writes what the local runner writes, byte for byte."""
    from camlens.distributed import _batch_row, _BatchExplainer, _read_batch
    from camlens.version import __version__

    code, out, err = explain(tree, "--versus", "true", "--format", "dataset", "--out", "ds")
    assert code == 0, out + err
    rocket = reports(tree / "ds")["rocket"]
    assert [e.get("target") for e in rocket["explanations"]] == [
        None,
        {"kind": "contrast", "classes": [RIG, MISSILE]},
    ]
    assert all(e["map"] is None and e["layer_map"] for e in rocket["explanations"])

    files = sorted((tree / "tree").rglob("*.jpg"))
    explainer = camlens.Explainer(default_model, targets=[VersusTrue()], batch_size=3)
    output = OutputConfig(format="dataset")
    local = list(explain_files(files, explainer, tree / "local", output))
    assert [len(d.explanation.maps) for d in local if d.explanation] == [1, 1, 2]
    from camlens.batch import open_run, run_options

    run = open_run(files, tree / "actor", run_options(explainer.config, output, 1), batch_size=3)
    try:
        actor = _BatchExplainer(
            explainer.config.to_json(),
            output.to_json(),
            str(run.out),
            str(run.temp),
            1,
            __version__,
        )
        row = _read_batch(
            _batch_row(0, run.chunks[0]), default_model.preprocess, explainer.max_pixels
        )
        rows = actor.explain(row)
    finally:
        run.finish()
    assert [len(r["explanations"]) for r in rows] == [1, 1, 2]
    for done in local:
        assert done.report is not None
        theirs = tree / "actor" / done.report.relative_to(tree / "local")
        assert theirs.read_bytes() == done.report.read_bytes()
        for entry in json.loads(theirs.read_text())["explanations"]:
            overlay = entry["overlay"]
            assert (theirs.parent / overlay).read_bytes() == (
                done.report.parent / overlay
            ).read_bytes()


def test_the_python_api_and_the_options(default_model: camlens.Model, tree: Path) -> None:
    rocket = tree / "tree" / "missile" / "rocket.jpg"
    ex = camlens.Explainer(default_model, targets=[VersusTrue()])
    assert [m.class_index for m in ex.explain(rocket).maps] == [RIG]  # no true class: top-1
    mistaken = ex.explain(rocket, classes=[[VersusTrue("missile")]])
    assert [(m.class_index, m.target) for m in mistaken.maps] == [
        (RIG, None),
        (RIG, {"kind": "contrast", "classes": [RIG, MISSILE]}),
    ]
    right = ex.explain(rocket, classes=[[VersusTrue(RIG)]])  # the true class is the top-1
    assert [(m.class_index, m.target) for m in right.maps] == [(RIG, None)]
    with pytest.raises(camlens.CamlensError, match="class name 'sparrow' is not one of"):
        ex.explain(rocket, classes=[[VersusTrue("sparrow")]])
    # the config keeps it: JSON and back
    config = ExplainConfig(targets=(VersusTrue(),))
    assert ExplainConfig.from_json(config.to_json()).targets == (VersusTrue(),)
    assert target_from_dict({"kind": "versus_true", "truth": 3}) == VersusTrue(3)
    # the options: where the true class is known (the command line), alone, without --class
    assert from_options(None, ["true"], truths=True) == ((), (VersusTrue(),))
    assert from_options(None, ["TRUE"], [2], truths=True) == (
        (),
        (VersusTrue(), camlens.targets.Output(2)),
    )
    for classes, versus, message in (
        (["cat"], ["true"], "do not give --class with it"),
        (None, ["true", "cat"], "--versus true stands alone"),
    ):
        with pytest.raises(TargetError, match=message):
            from_options(classes, versus, truths=True)
    with pytest.raises(TargetError, match="only a run over folders named by class knows"):
        from_options(None, ["true"])  # the server: one upload, no folder


def test_the_server_refuses_versus_true(default_model: camlens.Model, tree: Path) -> None:
    from fastapi.testclient import TestClient

    from camlens.serve import create_app

    image = (tree / "tree" / "missile" / "rocket.jpg").read_bytes()
    with TestClient(create_app(default_model)) as client:
        answer = client.post(
            "/api/explain",
            files={"image": ("rocket.jpg", image, "image/jpeg")},
            data={"versus": "true"},
        )
    assert answer.status_code == 422 and answer.json()["parameter"] == "versus"
    assert "only a run over folders named by class knows" in answer.json()["detail"]
