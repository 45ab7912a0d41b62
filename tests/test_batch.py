"""The batch runner: the output layout (no two inputs share a name), per-file problems, atomic
reports that a failing run never replaces, and the gradients of many classes in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.batch import explain_files, output_stem
from camlens.cli import app
from camlens.progress import Event

runner = CliRunner()


@pytest.fixture
def same_stems(tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray) -> list[Path]:
    """``in/photo.tiff`` (the cat) beside ``in/photo.webp`` (the coffee)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(chelsea).save(folder / "photo.tiff")
    Image.fromarray(coffee).save(folder / "photo.webp", quality=95)
    return [folder / "photo.tiff", folder / "photo.webp"]


def test_same_stem_other_extension_never_overwrites(
    same_stems: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("explain", "localize"):
        out = tmp_path / command
        result = runner.invoke(app, [command, "in/photo.tiff", "in/photo.webp", "--out", str(out)])
        assert result.exit_code == 0, result.output
    cat = json.loads((tmp_path / "explain/in/photo.tiff.json").read_text())
    cup = json.loads((tmp_path / "explain/in/photo.webp.json").read_text())
    assert cat["image"] == "in/photo.tiff" and cat["predictions"][0]["class_index"] == 285
    assert cup["image"] == "in/photo.webp" and cup["predictions"][0]["label"] == "espresso"
    assert not (tmp_path / "explain/in/photo.json").exists()
    lines = (tmp_path / "localize/boxes.jsonl").read_text().splitlines()
    pictures = [json.loads(line)["picture"] for line in lines]
    assert pictures == ["in/photo.tiff.boxes.png", "in/photo.webp.boxes.png"]
    # alone, each still gets the name with its extension: a later run never overwrites either
    assert output_stem(Path("in/photo.tiff"), Path("o")) == Path("o/in/photo.tiff")


def test_a_failing_run_keeps_earlier_results(
    photo_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    good = runner.invoke(app, ["localize", "a/0.jpg", "--out", str(out)])
    assert good.exit_code == 0, good.output
    before = (out / "boxes.jsonl").read_text()
    assert "Egyptian cat" in before
    bad = runner.invoke(app, ["localize", "typo.jpg", "--out", str(out)])
    assert bad.exit_code == 2
    assert "typo.jpg: no such file" in bad.stderr
    assert (out / "boxes.jsonl").read_text() == before
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--alpha", "-0.5"], "alpha must be a number in [0, 1]"),
        (["--cmap", "jett"], "unknown colormap 'jett'"),
        (["--top", "0"], "top must be at least 1"),
        (["--device", "banana"], "unknown device 'banana'"),
        (["--device", "cuda"], "device 'cuda' is not available"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--threshold", "2"], "threshold 2.0 is outside [0, 1)"),
    ],
)
def test_options_are_checked_before_anything_is_written(
    photo_files: list[Path], tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "o"
    result = runner.invoke(app, ["explain", *map(str, photo_files), "--out", str(out), *options])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_output_places_are_checked_first(photo_files: list[Path], tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    result = runner.invoke(app, ["explain", str(photo_files[0]), "--out", str(a_file)])
    assert result.exit_code == 2
    assert f"--out {a_file} is a file, not a folder" in result.stderr
    result = runner.invoke(app, ["explain", str(photo_files[0]), "--out", "/proc/x"])
    assert result.exit_code == 2 and "--out /proc/x cannot be created" in result.stderr
    folder = tmp_path / "grid.png"
    folder.mkdir()
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["explain", str(photo_files[0]), "--out", str(out), "--grid", str(folder)]
    )
    assert result.exit_code == 2 and f"--grid {folder} is a folder" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_bracketed_names_print_as_they_are(
    tmp_path: Path, chelsea: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(chelsea).save(tmp_path / "[cat] photo.jpg")
    (tmp_path / "[").mkdir()
    Image.fromarray(chelsea).save(tmp_path / "[" / "x].jpg")  # its path reads [/x].jpg
    (tmp_path / "[bold]broken.jpg").write_text("no")
    result = runner.invoke(app, ["explain", "[cat] photo.jpg", "[/x].jpg", "[bold]broken.jpg"])
    assert result.exit_code == 2
    assert "[cat] photo.jpg: Egyptian cat" in result.stdout
    assert "[/x].jpg: Egyptian cat" in result.stdout
    assert "[bold]broken.jpg" in result.stderr


def test_runner_reports_each_file(
    default_model: camlens.Model, photo_files: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    events: list[Event] = []
    explainer = camlens.Explainer(default_model, batch_size=2)
    files = [photo_files[0], bad, photo_files[1]]
    done = list(explain_files(files, explainer, tmp_path / "o", progress=events.append))
    assert [d.path for d in done] == files
    assert done[1].problem is not None and "bad.png" in done[1].problem
    assert done[0].report is not None and done[2].report is not None
    images = [e for e in events if e.task == "images"]
    assert [(e.done, e.total) for e in images] == [(1, 3), (2, 3), (3, 3)]
    assert [e.problem is not None for e in images] == [False, True, False]


def test_batched_gradients_equal_one_backward_per_class(resnet18: camlens.Model) -> None:
    """Five classes from one batched backward pass equal five separate autograd.grad calls."""
    explainer = camlens.Explainer(
        resnet18, method=["gradcam", "gradcampp", "hirescam"], layer="layer3", batch_size=4
    )
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    results = explainer.explain(x, top=5)
    assert results[0].stats.backward_passes == 1
    layer = resnet18.net.layer3
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        logits = resnet18.net(x)
    finally:
        handle.remove()
    top = logits.topk(5, dim=1).indices
    for j in range(5):
        score = logits.gather(1, top[:, j : j + 1]).sum()
        (grad,) = torch.autograd.grad(score, kept[0], retain_graph=True)
        weights = grad.mean(dim=(2, 3))
        expected = torch.relu(torch.einsum("nk,nkhw->nhw", weights, kept[0].detach()))
        for n, result in enumerate(results):
            m = result.maps[3 * j]
            assert (m.method, m.class_index) == ("gradcam", int(top[n, j]))
            e = expected[n] - expected[n].min()
            e = e / e.max()
            assert float((m.map - e).abs().max()) < 1e-4
