"""Every model camlens gives loads back: ``load_model(model.spec, weights=model.weights)``
rebuilds the same network (weights and outputs), preprocessing and labels."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, cast

import pytest
import torch

import camlens
from camlens.models.head import CamNet


def quiet_build(*args: Any, **kwargs: Any) -> camlens.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        return camlens.build_cam_model(*args, **kwargs)


def assert_same_model(original: camlens.Model, loaded: camlens.Model, size: int = 64) -> None:
    """Same spec, weights file, labels, preprocessing, state dict and outputs."""
    assert (loaded.spec, loaded.weights) == (original.spec, original.weights)
    assert loaded.labels == original.labels
    assert loaded.preprocess == original.preprocess
    mine, theirs = original.net.state_dict(), loaded.net.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original.net.eval()(x), loaded.net(x))


def round_trip(model: camlens.Model) -> camlens.Model:
    assert model.spec is not None
    return camlens.load_model(model.spec, weights=model.weights)


def test_the_default_model(default_model: camlens.Model) -> None:
    assert (default_model.spec, default_model.weights) == ("efficientnet_lite0", None)
    assert_same_model(default_model, round_trip(default_model))


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_names_with_a_weights_file(tmp_path: Path, library: str) -> None:
    import timm
    import torchvision

    torch.manual_seed(2)
    if library == "timm":
        net = timm.create_model("resnet18", num_classes=3)
    else:
        net = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = camlens.load_model(f"{library}:resnet18", weights=str(path))
    assert (model.spec, model.weights) == (f"{library}:resnet18", path)
    assert_same_model(model, round_trip(model))


def test_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    built = quiet_build("torchvision:resnet18", class_names=["a", "b"], input_size=64)
    path = camlens.save(built, tmp_path / "r18.camlens")
    model = camlens.load_model(path)
    assert (model.spec, model.weights) == (str(path), None)
    assert_same_model(model, round_trip(model))


def test_the_synthetic_cnn(tmp_path: Path) -> None:
    from camlens.models.synthetic import SYNTHETIC_CLASSES, SyntheticCNN

    torch.manual_seed(0)
    net = SyntheticCNN(len(SYNTHETIC_CLASSES), width=8)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    model = camlens.load_model("synthetic", weights=tmp_path / "model.pt")
    assert (model.spec, model.weights) == ("synthetic", tmp_path / "model.pt")
    assert_same_model(model, round_trip(model))


def test_a_built_model_by_its_spec_then_by_its_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quiet_build(
        "torchvision:resnet18", class_names=["cat", "dog", "owl"], input_size=64, dropout=0.3
    )
    assert model.name == "torchvision:resnet18 -> GAP -> Linear(512, 3)"  # as in reports
    assert model.spec == "torchvision:resnet18 at 64x64 -> GAP -> Dropout(0.3) -> Linear(512, 3)"
    assert model.weights is None  # the head lives in memory only
    with pytest.raises(camlens.CamlensError, match="is a built model: give weights="):
        round_trip(model)

    # The spec with a state dict of the whole network: the same network, classes unnamed.
    whole = tmp_path / "whole.pth"
    torch.save(model.net.state_dict(), whole)
    loaded = camlens.load_model(model.spec, weights=whole)
    assert cast(CamNet, loaded.net).config == cast(CamNet, model.net).config
    assert loaded.labels == ("class 0", "class 1", "class 2")
    assert loaded.name == model.name
    loaded.labels = model.labels
    model.weights = whole
    assert_same_model(model, loaded)

    # save() makes the checkpoint the spec; the built spec loads the checkpoint too.
    path = camlens.save(model, tmp_path / "pets")
    assert (model.spec, model.weights) == (str(path), None)
    assert_same_model(model, round_trip(model))
    by_spec = camlens.load_model(
        "torchvision:resnet18 at 64x64 -> GAP -> Dropout(0.3) -> Linear(512, 3)", weights=path
    )
    assert by_spec.labels == ("cat", "dog", "owl")
    with pytest.raises(
        camlens.CamlensError, match=r"pets.camlens: a checkpoint of .*Linear\(512, 3\)"
    ):
        camlens.load_model("torchvision:resnet18 -> GAP -> Linear(512, 4)", weights=path)


def test_the_name_of_a_built_default_model_loads(tmp_path: Path) -> None:
    """The issue's example: ``efficientnet_lite0 -> GAP -> Linear(1280, 2)``, the name of a model
    built on the default backbone, loads with the whole network's weights."""
    torch.manual_seed(0)
    model = camlens.build_cam_model(num_classes=2)
    assert model.name == model.spec == "efficientnet_lite0 -> GAP -> Linear(1280, 2)"
    path = tmp_path / "whole.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
    loaded = camlens.load_model("efficientnet_lite0 -> GAP -> Linear(1280, 2)", weights=path)
    model.weights = path
    assert_same_model(model, loaded, size=224)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet18 -> GAP -> Linear(x, 2)", r"not the spec of a built model: 'BACKBONE \[at HxW\]"),
        ("nope -> GAP -> Linear(8, 2)", "unknown backbone 'nope'"),
        ("torchvision:resnet18 -> GAP -> Dropout(1.5) -> Linear(512, 2)", r"dropout must be in \["),
    ],
)
def test_bad_built_specs(tmp_path: Path, spec: str, message: str) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2, 8)}, weights)
    with pytest.raises(camlens.CamlensError, match=message):
        camlens.load_model(spec, weights=weights)


def test_weights_of_another_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quiet_build("torchvision:resnet18", num_classes=2, input_size=64)
    path = tmp_path / "w.pth"
    state = model.net.state_dict()
    state["fc.weight"] = torch.zeros(2, 256)
    del state["fc.bias"]
    torch.save(state, path)
    assert model.spec is not None
    with pytest.raises(
        camlens.CamlensError,
        match=r"w.pth: does not fit torchvision:resnet18 at 64x64 -> GAP -> Linear\(512, 2\): "
        r"1 missing \(e.g. fc.bias\), 1 of another shape \(e.g. fc.weight \(2, 256\) instead of "
        r"\(2, 512\)\)",
    ):
        camlens.load_model(model.spec, weights=path)


def test_a_module_of_your_own_has_no_spec() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1))
    model = camlens.load_model(net, preprocess=camlens.PreprocessConfig())
    assert (model.spec, model.weights) == (None, None)
