"""The .camlens checkpoint: safetensors with a JSON header; round trips and damaged files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import camlens
from camlens.models.checkpoint import read_header


def quiet_build(*args: Any, **kwargs: Any) -> camlens.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        return camlens.build_cam_model(*args, **kwargs)


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = quiet_build("torchvision:resnet18", class_names=["cat", "dog", "owl"], input_size=64)
    model.net.training_summary = {"val_accuracy": 0.5, "note": "not trained"}
    return camlens.save(model, tmp_path_factory.mktemp("ckpt") / "r18.camlens")


def test_the_file_is_safetensors_with_a_json_header(resnet18_checkpoint: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(resnet18_checkpoint), framework="pt") as f:
        header = json.loads(f.metadata()["camlens"])
        keys = set(f.keys())
    assert header["format"] == "camlens" and header["version"] == 1
    assert header["model"] == {
        "backbone": "torchvision:resnet18",
        "num_classes": 3,
        "channels": 512,
        "dropout": 0.2,
    }
    assert header["class_names"] == ["cat", "dog", "owl"]
    assert header["preprocess"] == {
        "input_size": [64, 64],
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert header["training"] == {"val_accuracy": 0.5, "note": "not trained"}
    assert {"fc.weight", "fc.bias", "features.conv1.weight", "features.bn1.running_var"} <= keys
    assert read_header(resnet18_checkpoint).class_names == ("cat", "dog", "owl")
    # no leftovers of the atomic write
    assert [p.name for p in resnet18_checkpoint.parent.iterdir()] == ["r18.camlens"]


def test_round_trip_of_the_default_backbone(tmp_path: Path, chelsea: np.ndarray) -> None:
    torch.manual_seed(1)
    model = camlens.build_cam_model(class_names=["a", "b"], dropout=0.3)
    path = camlens.save(model, tmp_path / "default.camlens")
    loaded = camlens.load_model(path)
    assert loaded.preprocess == model.preprocess and loaded.labels == ("a", "b")
    assert loaded.net.config == model.net.config
    original = model.net.state_dict()
    assert loaded.net.state_dict().keys() == original.keys()
    for key, value in loaded.net.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    a = camlens.Explainer(model, method=["cam", "layercam"]).explain(chelsea, top=2)
    b = camlens.Explainer(loaded, method=["cam", "layercam"]).explain(chelsea, top=2)
    assert a.predictions == b.predictions
    for m, n in zip(a.maps, b.maps, strict=True):
        assert (m.class_index, m.method) == (n.class_index, n.method)
        assert torch.equal(m.map, n.map)


def test_truncated_checkpoints(resnet18_checkpoint: Path, tmp_path: Path) -> None:
    data = resnet18_checkpoint.read_bytes()
    for size in (len(data) - 1, len(data) // 2, 100, 5, 0):
        cut = tmp_path / f"cut{size}.camlens"
        cut.write_bytes(data[:size])
        with pytest.raises(camlens.CamlensError, match=rf"cut{size}.camlens: truncated or corrupt"):
            camlens.load_model(cut)


def test_a_checkpoint_from_a_different_backbone(resnet18_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    # a header that names another backbone than the weights are of
    with safe_open(str(resnet18_checkpoint), framework="pt") as f:
        header = json.loads(f.metadata()["camlens"])
    header["model"]["backbone"] = "torchvision:resnet34"
    forged = tmp_path / "forged.camlens"
    save_file(load_file(str(resnet18_checkpoint)), str(forged), {"camlens": json.dumps(header)})
    with pytest.raises(
        camlens.CamlensError,
        match=r"forged.camlens: its weights do not fit the backbone its header names "
        r"\(torchvision:resnet34\): \d+ missing \(e.g. features.layer1.2",
    ):
        camlens.load_model(forged)
    # a checkpoint given as the weights of another backbone
    with pytest.raises(
        camlens.CamlensError,
        match=r"r18.camlens: a checkpoint of backbone 'torchvision:resnet18', not 'timm:resnet18'",
    ):
        quiet_build("timm:resnet18", num_classes=2, weights=resnet18_checkpoint)
    # ...or to a loader that wants a state dict
    with pytest.raises(camlens.CamlensError, match=r"is a camlens checkpoint, not a state dict"):
        camlens.load_model("torchvision:resnet18", weights=str(resnet18_checkpoint))


def test_a_checkpoint_as_backbone_weights(resnet18_checkpoint: Path) -> None:
    original = camlens.load_model(resnet18_checkpoint)
    model = camlens.build_cam_model(
        "torchvision:resnet18", num_classes=2, weights=resnet18_checkpoint, input_size=64
    )
    for key, value in model.net.features.state_dict().items():
        assert torch.equal(value, original.net.features.state_dict()[key])


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.camlens"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(camlens.CamlensError, match="a safetensors file without a camlens header"):
        camlens.load_model(plain)
    text = tmp_path / "text.camlens"
    text.write_text("hello, I am not a checkpoint at all")
    with pytest.raises(camlens.CamlensError, match=r"text\.camlens: truncated or corrupt"):
        camlens.load_model(text)
    with pytest.raises(camlens.CamlensError, match=r"missing\.camlens: no such file"):
        camlens.load_model(tmp_path / "missing.camlens")
    future = tmp_path / "future.camlens"
    header = {"format": "camlens", "version": 99}
    save_file({"w": torch.zeros(2)}, str(future), {"camlens": json.dumps(header)})
    with pytest.raises(camlens.CamlensError, match="format version 99; this camlens reads up to 1"):
        camlens.load_model(future)


def test_only_built_models_are_saved(resnet18: camlens.Model, tmp_path: Path) -> None:
    with pytest.raises(camlens.CamlensError, match="save writes models made by"):
        camlens.save(resnet18, tmp_path / "x.camlens")
    assert not list(tmp_path.iterdir())
