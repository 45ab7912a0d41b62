"""`camlens train --tags`: a multi-label head from a CSV of tags, trained with binary
cross-entropy, scored by sigmoid from its checkpoint on; the loss and measures by hand; bad CSVs."""

from __future__ import annotations

import importlib
import json
import math
import re
import time
from pathlib import Path
from typing import cast

import pytest
import torch
from tagged import make_tagged_folder
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.models.head import CamNet

train_module = importlib.import_module("camlens.train")  # camlens.train is the function
runner = CliRunner()


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, frozenset[str]]]:
    root = tmp_path_factory.mktemp("tagged")
    return root, make_tagged_folder(root, 64, seed=0)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, frozenset[str]]:
    """Images never seen in training, not even for early stopping."""
    return make_tagged_folder(tmp_path_factory.mktemp("held-out"), 24, seed=1)


@pytest.fixture(scope="module")
def trained(
    tagged: tuple[Path, dict[Path, frozenset[str]]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The default backbone at 64 px, its head trained on the tags of 48 images (16 validate)."""
    root, _ = tagged
    out = tmp_path_factory.mktemp("model") / "colours.camlens"
    result = runner.invoke(
        app,
        [
            "train", str(root), "--tags", str(root / "tags.csv"), "--input-size", "64",
            "--epochs", "30", "--patience", "10", "--lr", "0.05", "--views", "2",
            "--val", "0.25", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.stdout


@pytest.mark.filterwarnings("ignore::camlens.errors.FlatMapWarning")  # a tag not there: flat
def test_the_head_learns_the_tags(
    trained: tuple[Path, str], held_out: dict[Path, frozenset[str]]
) -> None:
    checkpoint, printed = trained
    model = camlens.load_model(checkpoint)
    assert model.labels == ("blue", "green", "red")  # a tag an output, sorted
    assert model.scores == "sigmoid"  # stored in the checkpoint
    summary = model.net.training_summary
    assert summary["settings"]["loss"] == "sigmoid" and summary["confusion"] is None
    assert (summary["train_images"], summary["val_images"]) == (48, 16)
    # The measures printed are those of the per-tag counts stored.
    counts = summary["tag_counts"]
    right = sum(tp + tn for tp, _, _, tn in counts)
    assert sum(map(sum, counts)) == 16 * 3
    assert summary["val_accuracy"] == pytest.approx(right / 48)
    assert f"per-tag accuracy {right / 48:.3f}" in printed
    f1 = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn, _ in counts]
    assert summary["val_f1"] == pytest.approx(sum(f1) / 3)
    assert f"macro F1 {sum(f1) / 3:.3f}" in printed
    # Independently of training's own bookkeeping: the loaded model's sigmoid scores on images
    # it never saw. Chance is 1/2 per decision, always saying "present" about 0.57.
    results = camlens.Explainer(model).explain([str(p) for p in held_out], top=3)
    decisions = [
        (p.score >= 0.5) == (p.label in held_out[Path(r.source)])
        for r in results
        for p in r.predictions
    ]
    assert len(decisions) == 24 * 3
    accuracy = sum(decisions) / len(decisions)
    assert accuracy >= 0.85, f"per-tag accuracy {accuracy:.3f} on held-out images"
    assert all(0 <= p.score <= 1 for r in results for p in r.predictions)
    # Independent probabilities: several tags of one image above 0.5, never with a softmax.
    assert any(sum(p.score >= 0.5 for p in r.predictions) >= 2 for r in results)


def test_explain_above_reads_sigmoid_from_the_checkpoint(
    trained: tuple[Path, str], held_out: dict[Path, frozenset[str]], tmp_path: Path
) -> None:
    checkpoint, _ = trained
    images = sorted(held_out)[:6]
    result = runner.invoke(
        app,
        ["explain", *map(str, images), "--model", str(checkpoint), "--above", "0.5",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    matches = 0
    for image in images:
        report = json.loads(next(tmp_path.rglob(f"{image.stem}.json")).read_text())
        assert report["scores"] == "sigmoid"  # no --scores given: the checkpoint's
        above = {p["label"] for p in report["predictions"] if p["score"] >= 0.5}
        explained = {e["label"] for e in report["explanations"]}
        assert explained == above or (not above and len(explained) == 1)
        matches += above == held_out[image]
    assert matches >= 4, f"{matches} of 6 images with exactly their tags above 0.5"


def test_loss_and_measures_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    tags = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])

    def bce(x: float, y: float) -> float:  # -y log s(x) - (1 - y) log(1 - s(x))
        s = 1 / (1 + math.exp(-x))
        return -(y * math.log(s) + (1 - y) * math.log(1 - s))

    by_hand = sum(
        bce(x, y)
        for row, t in zip(logits.tolist(), tags.tolist(), strict=True)
        for x, y in zip(row, t, strict=True)
    )
    assert float(train_module._loss(logits, tags)) == pytest.approx(by_hand / 6, rel=1e-6)
    # At 0.5 (logit >= 0): image 0 says blue, red (red wrong); image 1 green, red (both right).
    assert train_module._right(logits, tags).tolist() == pytest.approx([2 / 3, 1.0])
    counts = train_module._tag_counts(logits, tags)
    assert counts == [[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 0]]  # TP, FP, FN, TN per tag
    assert train_module._macro_f1(counts) == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert train_module._macro_f1([[0, 0, 0, 2], [1, 0, 1, 0]]) == pytest.approx(2 / 3)
    # Early stopping and the best epoch on the validation's binary cross-entropy.
    history = train_module.History(classes=("a", "b", "c"))
    reporter = train_module._Reporter(None)
    task = reporter.task("head", 2)
    trainer = train_module._Trainer(cast(CamNet, None), 3, history, reporter, 2, None)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for scale in (1.0, 2.0):
        trainer.end_epoch(
            "head", 0.0, 1.0, logits * scale, tags, optimizer, time.perf_counter(), task, dict
        )
    first = history.epochs[0]
    assert first.val_loss == pytest.approx(by_hand / 6, rel=1e-6)
    assert first.val_accuracy == pytest.approx(5 / 6) and first.val_f1 is not None
    assert history.tag_counts == counts and history.confusion is None


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train", *args])
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("csv", "options", "message"),
    [
        ("file,tags\n000.png,red\nnope.png,blue\n", [], r"line 3: .*nope.png: no such file"),
        ("file,tags\n000.png,red\n001.png,\n", [], r"line 3: no tag for 001.png"),
        ("file,tags\n", [], r"no images listed"),
        ("file,labels\n000.png,red\n", [], r"no 'tags' column"),
        ("", [], r"no 'file' or 'tags' column"),
        ("file,tags\n000.png,red\n000.png,blue\n", [], r"line 3: 000.png is listed twice"),
        ("file,tags\n000.png,red\n001.png,red\n", [], r"1 tag \('red'\); .* at least 2"),
        ("file,tags\nred/a.png,red\n001.png,blue\n", [], r"a folder per class \(red/\)"),
        ("file,tags\n000.png,red\n001.png,blue\n", ["--loss", "softmax"], r"with tags each"),
        ("file,tags\n000.png,red\n001.png,blue\n", ["--classes-from", "names"], r"one or the"),
        ("file,tags\n000.png,red\n001.png,blue\n", ["--val", "other/"], r"a fraction of the"),
    ],
)
def test_bad_tags(tmp_path: Path, csv: str, options: list[str], message: str) -> None:
    make_tagged_folder(tmp_path, 2, csv="unused.csv")
    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "a.png").write_bytes((tmp_path / "000.png").read_bytes())
    (tmp_path / "tags.csv").write_text(csv)
    out = tmp_path / "x.camlens"
    code, err = run(str(tmp_path), "--tags", str(tmp_path / "tags.csv"), *options, "-o", str(out))
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_sigmoid_loss_needs_tags(tmp_path: Path) -> None:
    code, err = run(str(tmp_path), "--loss", "sigmoid")
    assert code == 2 and err.count("\n") == 1 and "needs the tags of each image" in err
    code, err = run(str(tmp_path), "--tags", str(tmp_path / "none.csv"))
    assert code == 2 and "none.csv: no such file" in err


def test_fine_tuning_and_named_outputs_with_tags(
    tagged: tuple[Path, dict[Path, frozenset[str]]], tmp_path: Path
) -> None:
    root, truth = tagged
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        model = camlens.build_cam_model(
            "torchvision:resnet18", class_names=["red", "green", "blue"], input_size=64
        )
    history = camlens.train(
        model, root, tags=root / "tags.csv", epochs=1, fine_tune=1, fine_tune_epochs=1,
        views=1, val=0.25, checkpoint=tmp_path / "tuned.camlens",
    )  # fmt: skip
    assert [r.phase for r in history.epochs] == ["head", "fine-tune"]
    assert all(r.val_f1 is not None for r in history.epochs)
    assert model.labels == ("red", "green", "blue")  # the model's order, not the CSV's
    assert model.scores == "sigmoid"
    assert camlens.load_model(tmp_path / "tuned.camlens").scores == "sigmoid"
    # Each output's counts are those of its own tag: positives in validation per tag.
    held = [Path(f) for f in history.val_files]
    assert history.tag_counts is not None
    for k, tag in enumerate(model.labels):
        tp, _, fn, _ = history.tag_counts[k]
        assert tp + fn == sum(tag in truth[f] for f in held)
