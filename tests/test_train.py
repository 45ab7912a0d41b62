"""Training CAM-ready heads on a folder: accuracy, where the maps peak, the schedule, Ctrl-C,
fine-tuning, the posts' backbones, bad folders and the `camlens train` command."""

from __future__ import annotations

import importlib
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from pasted import Box, make_pasted_folder
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.images import preprocess
from camlens.models.head import CamNet
from camlens.progress import Event

train_module = importlib.import_module("camlens.train")  # camlens.train is the function
runner = CliRunner()


def quiet_build(*args: Any, **kwargs: Any) -> camlens.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        return camlens.build_cam_model(*args, **kwargs)


def fc_of(model: camlens.Model) -> torch.Tensor:
    return cast(CamNet, model.net).fc.weight.detach().clone()


# --- the default backbone on pasted objects --------------------------------------------------------


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, Box]]:
    root = tmp_path_factory.mktemp("pets")
    return root, make_pasted_folder(root, per_class=20, seed=0)


@pytest.fixture(scope="module")
def trained(pets: tuple[Path, dict[Path, Box]]) -> tuple[camlens.Model, camlens.History]:
    """The default backbone's head on 20 + 20 pasted objects (its time: benchmarks/train_cache.py
    --test-setting)."""
    root, _ = pets
    torch.manual_seed(0)
    model = camlens.build_cam_model(num_classes=2)
    history = camlens.train(model, root, epochs=6, val=0.5, views=2, seed=0)
    return model, history


@pytest.fixture(scope="module")
def val_results(
    trained: tuple[camlens.Model, camlens.History],
) -> list[camlens.Explanation]:
    model, history = trained
    return camlens.Explainer(model, method="cam").explain(history.val_files)


def test_head_learns_the_pasted_objects(
    trained: tuple[camlens.Model, camlens.History],
    val_results: list[camlens.Explanation],
) -> None:
    model, history = trained
    assert model.labels == ("cat", "coffee")  # named after the folders
    assert (history.train_images, history.val_images, history.views) == (20, 20, 2)
    assert history.val_accuracy is not None and history.val_accuracy >= 0.95
    assert history.confusion is not None and [sum(row) for row in history.confusion] == [10, 10]
    assert 1 <= history.best_epoch <= len(history.epochs) <= 6
    assert {r.phase for r in history.epochs} == {"head"}
    assert not model.net.training
    # Independently of the feature cache: the model's own forward pass on the held-out files.
    truth = [model.labels.index(Path(r.source).parent.name) for r in val_results]
    predicted = [r.predictions[0].class_index for r in val_results]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    assert correct / len(truth) == pytest.approx(history.val_accuracy)
    assert sum(history.confusion[i][i] for i in range(2)) == correct


def test_cam_peaks_inside_the_object(
    val_results: list[camlens.Explanation], pets: tuple[Path, dict[Path, Box]]
) -> None:
    _, boxes = pets
    inside = []
    for result in val_results:
        assert result.maps[0].class_index == result.predictions[0].class_index
        x, y = result.peak(0)
        x0, y0, x1, y1 = boxes[Path(result.source)]
        inside.append(x0 <= x < x1 and y0 <= y < y1)
    assert sum(inside) / len(inside) >= 0.9, f"{sum(inside)} of {len(inside)} peaks inside"


@pytest.fixture(scope="module")
def pets_checkpoint(
    trained: tuple[camlens.Model, camlens.History],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    return camlens.save(trained[0], tmp_path_factory.mktemp("checkpoint") / "pets")


def test_save_load_explain_bit_for_bit(
    trained: tuple[camlens.Model, camlens.History], pets_checkpoint: Path
) -> None:
    model, history = trained
    assert pets_checkpoint.name == "pets.camlens"
    loaded = camlens.load_model(str(pets_checkpoint))
    assert loaded.labels == ("cat", "coffee") and loaded.name == str(pets_checkpoint)
    assert loaded.net.training_summary["val_accuracy"] == history.val_accuracy
    files = [history.val_files[0], history.val_files[-1]]  # a cat and a cup
    methods = ["cam", "gradcam"]
    before = camlens.Explainer(model, method=methods).explain(files, top=2)
    after = camlens.Explainer(loaded, method=methods).explain(files, top=2)
    for a, b in zip(before, after, strict=True):
        assert a.predictions == b.predictions
        assert len(a.maps) == len(b.maps) == 4
        for m, n in zip(a.maps, b.maps, strict=True):
            assert (m.class_index, m.method, m.score) == (n.class_index, n.method, n.score)
            assert torch.equal(m.map, n.map)


def test_cli_explains_with_a_checkpoint(
    trained: tuple[camlens.Model, camlens.History], pets_checkpoint: Path, tmp_path: Path
) -> None:
    image = trained[1].val_files[0]
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["explain", image, "--model", str(pets_checkpoint), "--method", "cam", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(next(out.rglob("*.json")).read_text())
    assert report["model"] == str(pets_checkpoint)
    assert report["predictions"][0]["label"] == Path(image).parent.name
    assert report["explanations"][0]["layer"] == "features"


# --- the schedule, on a small and fast backbone ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_pasted_folder(root, per_class=8, size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_model() -> camlens.Model:
    torch.manual_seed(0)
    return quiet_build("torchvision:resnet18", num_classes=2, input_size=64)


def test_training_is_seeded(tiny_model: camlens.Model, tiny_folder: Path) -> None:
    runs = []
    for seed in (3, 3, 4):
        model = train_module.clone_model(tiny_model)
        camlens.train(model, tiny_folder, epochs=2, views=3, seed=seed)
        runs.append(fc_of(model))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], fc_of(tiny_model))


def test_ctrl_c_keeps_the_best_epoch(
    tiny_model: camlens.Model, tiny_folder: Path, tmp_path: Path
) -> None:
    model = train_module.clone_model(tiny_model)
    seen: dict[int, torch.Tensor] = {}

    def interrupt(record: Any) -> None:
        seen[record.epoch] = fc_of(model)
        if record.epoch == 4:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "best.camlens"
    history = camlens.train(
        model,
        tiny_folder,
        epochs=10,
        patience=10,
        lr=0.1,
        callback=interrupt,
        checkpoint=checkpoint,
    )
    assert history.interrupted and len(history.epochs) == 4
    best = history.best
    assert best is not None and best.val_loss is not None
    assert best.val_loss == min(r.val_loss for r in history.epochs if r.val_loss is not None)
    assert torch.equal(fc_of(model), seen[history.best_epoch])
    assert torch.equal(fc_of(camlens.load_model(checkpoint)), seen[history.best_epoch])


def test_early_stopping_on_validation_loss() -> None:
    history = train_module.History(classes=("a", "b"))
    reporter = train_module._Reporter(None)
    task = reporter.task("head", 5)
    trainer = train_module._Trainer(cast(CamNet, None), 2, history, reporter, 2, None)
    labels = torch.tensor([0, 1])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for margin in (1.0, 2.0, 1.5, 1.9, 3.0):  # val loss falls, rises twice: stop after epoch 4
        logits = torch.tensor([[margin, 0.0], [0.0, margin]])
        trainer.end_epoch(
            "head", 0.0, 1.0, logits, labels, optimizer, time.perf_counter(), task, state=dict
        )
        if trainer.stop:
            break
    assert len(history.epochs) == 4 and history.stopped_early
    assert history.best_epoch == 2
    # cross-entropy of logits (m, 0) for class 0: log(1 + exp(-m))
    assert history.epochs[1].val_loss == pytest.approx(math.log1p(math.exp(-2.0)))


def test_fine_tuning_trains_the_last_block_only(
    tiny_model: camlens.Model, tiny_folder: Path
) -> None:
    model = train_module.clone_model(tiny_model)
    net = cast(CamNet, model.net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = camlens.train(
        model, tiny_folder, epochs=1, fine_tune=1, fine_tune_epochs=1, val=0
    )  # no validation: the last epoch's weights are kept
    assert [r.phase for r in history.epochs] == ["head", "fine-tune"]
    assert history.fine_tuned == ["features.layer4"] and history.best_epoch == 2
    after = net.state_dict()
    for key in ("features.layer4.1.conv2.weight", "features.layer4.0.bn1.weight", "fc.weight"):
        assert not torch.equal(after[key], before[key]), key
    frozen = ("features.conv1.weight", "features.layer3.1.conv2.weight", "features.bn1.weight")
    for key in (*frozen, "features.layer4.0.bn1.running_mean"):  # batch norm statistics too
        assert torch.equal(after[key], before[key]), key
    assert all(p.requires_grad for p in net.parameters())  # flags restored


def test_a_separate_validation_folder(tiny_model: camlens.Model, tmp_path: Path) -> None:
    make_pasted_folder(tmp_path / "train", per_class=4, size=64, seed=2)
    make_pasted_folder(tmp_path / "val", per_class=3, size=64, seed=3)
    model = train_module.clone_model(tiny_model)
    history = camlens.train(model, tmp_path / "train", val=tmp_path / "val", epochs=1, views=1)
    assert (history.train_images, history.val_images) == (8, 6)
    assert all(Path(f).is_relative_to(tmp_path / "val") for f in history.val_files)


def test_unreadable_images_are_listed_once_and_skipped(
    tiny_model: camlens.Model, tmp_path: Path
) -> None:
    make_pasted_folder(tmp_path, per_class=4, size=64, seed=4)
    bad = tmp_path / "cat" / "broken.jpg"
    bad.write_bytes(b"plain text, not a picture")
    model = train_module.clone_model(tiny_model)
    events: list[Event] = []
    with pytest.warns(
        UserWarning, match=r"skipped 1 unreadable image\(s\): .*broken.jpg"
    ) as caught:
        history = camlens.train(model, tmp_path, epochs=1, views=1, val=0, progress=events.append)
    assert sum("unreadable" in str(w.message) for w in caught) == 1
    assert history.skipped == [(str(bad), "is not an image Pillow can read")]
    assert history.train_images == 8 and history.best_epoch == 1
    # The same, as progress events: every image counted, the broken one with its problem.
    problems = [e for e in events if e.problem is not None]
    assert [(e.task, e.item, e.problem) for e in problems] == [
        ("features", str(bad), f"{bad}: is not an image Pillow can read (skipped)")
    ]
    assert [(e.task, e.done, e.total) for e in events if e.problem is None][-3:] == [
        ("features", 9, 9),
        ("head epochs", 0, 1),
        ("head epochs", 1, 1),
    ]


def write(path: Path, data: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data:
        path.write_bytes(data)
    else:
        Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


@pytest.mark.parametrize(
    ("layout", "kwargs", "message"),
    [
        ({}, {}, r"empty: no class subfolders"),
        ({"a.jpg": b""}, {}, r"1 images lie directly in the folder"),
        ({"cats/a.jpg": b""}, {}, r"only one class folder \('cats'\)"),
        ({"cats/a.jpg": b"", "dogs/notes.txt": b"x"}, {}, r"dogs: no image files in class folder"),
        (
            {"cats/a.jpg": b"", "cats/b.jpg": b"", "dogs/a.jpg": b"junk", "dogs/b.png": b"junk"},
            {"val": 0},
            r"dogs: no readable training image in class folder 'dogs'",
        ),
        ({"cats/a.jpg": b"", "dogs/a.jpg": b""}, {}, r"only one image; a validation split"),
        ({"cats/a.jpg": b"", "dogs/a.jpg": b""}, {"val": 1.5}, r"between 0 and 1, not 1.5"),
        ({"cats/a.jpg": b"", "dogs/a.jpg": b"", "owls/a.jpg": b""}, {}, r"3 class folders"),
    ],
)
def test_bad_folders(
    tiny_model: camlens.Model,
    tmp_path: Path,
    layout: dict[str, bytes],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name, data in layout.items():
        write(root / name, data)
    model = train_module.clone_model(tiny_model)
    with pytest.raises(camlens.CamlensError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        camlens.train(model, root, epochs=1, **kwargs)


def test_missing_folder_and_wrong_classes(tiny_model: camlens.Model, tiny_folder: Path) -> None:
    with pytest.raises(camlens.CamlensError, match="nowhere: no such folder"):
        camlens.train(tiny_model, "nowhere")
    named = quiet_build("torchvision:resnet18", class_names=["cat", "dog"], input_size=64)
    with pytest.raises(camlens.CamlensError, match=r"'coffee' are not among the model's classes"):
        camlens.train(named, tiny_folder)
    with pytest.raises(camlens.CamlensError, match="train needs a model made by"):
        camlens.train(
            camlens.load_model(torch.nn.Conv2d(3, 2, 1), preprocess=named.preprocess), tiny_folder
        )


# --- training as the write-ups do: classes from file names, SGD with Nesterov momentum ---------------


def kaggle_layout(folder: Path, to: Path) -> Path:
    """The images of ``folder`` (FOLDER/CLASS/*.jpg) in one folder named CLASS.N.jpg, in the same
    order, as Kaggle's cats vs dogs ships them."""
    to.mkdir(parents=True)
    for i, path in enumerate(sorted(folder.rglob("*.jpg"))):
        shutil.copy(path, to / f"{path.parent.name}.{i:03d}.jpg")
    return to


def test_class_from_name() -> None:
    names = ["cat.123.jpg", "dog.7.jpg", "Abyssinian_12.jpg", "american_bulldog-10.png", "car.jpg"]
    classes = ["cat", "dog", "Abyssinian", "american_bulldog", "car"]
    assert [train_module.class_from_name(n) for n in names] == classes
    assert train_module.class_from_name("007.jpg") == "007"  # nothing would be left


def test_classes_from_file_names_train_as_folders_do(
    tiny_model: camlens.Model, tiny_folder: Path, tmp_path: Path
) -> None:
    flat = kaggle_layout(tiny_folder, tmp_path / "train")
    assert not any(p.is_dir() for p in flat.iterdir())
    by_name = train_module.clone_model(tiny_model)
    by_folder = train_module.clone_model(tiny_model)
    settings: dict[str, Any] = {"epochs": 2, "views": 2, "val": 0.25, "seed": 5}
    history = camlens.train(by_name, flat, classes_from="names", **settings)
    camlens.train(by_folder, tiny_folder, **settings)
    assert by_name.labels == by_folder.labels == ("cat", "coffee")
    assert torch.equal(fc_of(by_name), fc_of(by_folder))  # the same images, classes and split
    assert history.settings["classes_from"] == "names"
    cats = sum(Path(f).name.startswith("cat.") for f in history.val_files)
    assert history.confusion is not None and [sum(r) for r in history.confusion] == [cats, 4 - cats]


def test_classes_from_names_on_the_command_line(tiny_folder: Path, tmp_path: Path) -> None:
    flat = kaggle_layout(tiny_folder, tmp_path / "train")
    out = tmp_path / "names.camlens"
    args = ["train", str(flat), "--backbone", "torchvision:resnet18", "--input-size", "64"]
    result = runner.invoke(app, [*args, "--classes-from", "names", "--epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert camlens.load_model(out).labels == ("cat", "coffee")
    refused = runner.invoke(app, [*args, "-o", str(tmp_path / "x")])  # no class subfolders
    assert refused.exit_code == 2 and "images lie directly in the folder" in refused.stderr
    for i in range(4):
        write(tmp_path / "photos" / f"IMG_{i}.jpg")
    one = runner.invoke(app, ["train", str(tmp_path / "photos"), "--classes-from", "names"])
    assert one.exit_code == 2 and "the file names give one class only ('IMG')" in one.stderr


def test_sgd_with_nesterov_momentum_takes_its_first_step(tiny_folder: Path) -> None:
    torch.manual_seed(0)
    model = quiet_build("torchvision:resnet18", num_classes=2, input_size=64, dropout=0.0)
    net = cast(CamNet, model.net)
    w0, b0 = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    # The gradient of the mean cross-entropy over all 16 images, computed apart from camlens.train.
    files = sorted(tiny_folder.rglob("*.jpg"))
    x = preprocess([camlens.load_image(f) for f in files], model.preprocess)
    y = torch.tensor([0 if f.parent.name == "cat" else 1 for f in files])
    with torch.no_grad():
        pooled = net.features(x).mean(dim=(2, 3))
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    gw, gb = torch.autograd.grad(F.cross_entropy(pooled @ w.T + b, y), [w, b])
    history = camlens.train(
        model,
        tiny_folder,
        epochs=1,
        val=0,
        augment=False,
        batch_size=len(files),  # one step
        lr=0.1,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
    )
    assert history.settings["optimizer"] == "sgd" and history.settings["weight_decay"] == 0.0
    # SGD's first step with Nesterov momentum, from an empty buffer: w - lr * (1 + m) * g (plain
    # momentum would step lr * g, AdamW about lr * sign(g)).
    assert torch.allclose(net.fc.weight, w0 - 0.1 * 1.9 * gw, atol=1e-6)
    assert torch.allclose(net.fc.bias, b0 - 0.1 * 1.9 * gb, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd, not 'adam'"),
        ({"momentum": 0.9}, "momentum and nesterov are settings of the sgd optimizer"),
        ({"optimizer": "sgd", "nesterov": True}, "nesterov needs a momentum above 0"),
        ({"optimizer": "sgd", "momentum": 1.5}, r"momentum must be in \[0, 1\)"),
        ({"classes_from": "files"}, "classes_from must be one of folders, names"),
    ],
)
def test_bad_optimizer_settings(
    tiny_model: camlens.Model, tiny_folder: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(camlens.CamlensError, match=message):
        camlens.train(tiny_model, tiny_folder, **settings)
    options = [
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
        for k, v in settings.items()
    ]
    result = runner.invoke(app, ["train", str(tiny_folder), *options])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


# --- the CAM posts' backbones ----------------------------------------------------------------------


def test_vgg16_and_resnet50_backbones_from_weights_files(tiny_folder: Path, tmp_path: Path) -> None:
    import timm
    import torchvision

    torch.manual_seed(0)
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
    features = vgg.features.to_empty(device="cpu")
    for module in features.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()  # random init, without the 120M-weight classifier
    vgg_file = tmp_path / "vgg16_notop.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, vgg_file)
    resnet_file = tmp_path / "resnet50.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet50").state_dict(), str(resnet_file))

    for spec, weights, channels in (
        ("torchvision:vgg16", vgg_file, 512),
        ("timm:resnet50", resnet_file, 2048),
    ):
        model = camlens.build_cam_model(spec, num_classes=2, weights=weights, input_size=64)
        net = cast(CamNet, model.net)
        assert net.config.channels == channels
        backbone = {k: v.clone() for k, v in net.features.state_dict().items()}
        head = fc_of(model)
        history = camlens.train(model, tiny_folder, epochs=1, batch_size=64, views=1)
        assert len(history.epochs) == 1  # one epoch of one step (16 images, batch of 64)
        assert not torch.equal(fc_of(model), head)
        assert all(torch.equal(v, backbone[k]) for k, v in net.features.state_dict().items())
        result = camlens.Explainer(model, method="cam").explain(
            str(next(tiny_folder.rglob("*.jpg")))
        )
        assert result.maps[0].layer == "features"
        assert result.maps[0].map.shape == ((4, 4) if "vgg" in spec else (2, 2))


# --- the command -------------------------------------------------------------------------------------


def test_cli_train(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny.camlens"
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_folder),
            "--backbone",
            "torchvision:resnet18",
            "--input-size",
            "64",
            "--epochs",
            "2",
            "--val",
            "0.25",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.stdout
    assert "confusion matrix" in result.stdout and "coffee" in result.stdout
    assert "has random weights" in result.stderr  # the warning, on one line
    assert out.is_file() and (out.parent / "tiny.training.png").is_file()
    model = camlens.load_model(out)
    assert model.labels == ("cat", "coffee") and model.preprocess.input_size == (64, 64)
    summary = model.net.training_summary
    assert summary["val_images"] == 4 and len(summary["epochs"]) <= 2


def test_cli_train_bad_folder(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    write(tmp_path / "only" / "cats" / "a.jpg")
    result = runner.invoke(app, ["train", str(tmp_path / "only"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "only one class folder ('cats')" in result.stderr
    assert not (tmp_path / "x.camlens").exists()


def test_cli_train_at_a_non_square_size(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tall.camlens"
    args = ["train", str(tiny_folder), "--backbone", "torchvision:resnet18", "--out", str(out)]
    result = runner.invoke(app, [*args, "--input-size", "128x68", "--epochs", "1", "--val", "0"])
    assert result.exit_code == 0, result.output
    model = camlens.load_model(out)
    assert model.preprocess.input_size == (128, 68)  # height x width
    built = quiet_build("torchvision:resnet18", num_classes=2, input_size=(128, 68))
    assert built.preprocess == model.preprocess
    # ResNet's grid: each of 5 stride-2 steps gives floor((n - 1) / 2) + 1 -> 128: 4, 68: 3.
    result_map = camlens.Explainer(model, method="cam").explain(
        str(next(tiny_folder.rglob("*.jpg")))
    )
    assert tuple(result_map.maps[0].map.shape) == (4, 3)
    bad = runner.invoke(app, [*args, "--input-size", "128by68"])
    assert bad.exit_code == 2 and "input size '128by68' is not HEIGHTxWIDTH" in bad.stderr
