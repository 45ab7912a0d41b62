"""Loading models: the offline default, specs with local weights files, plain modules, labels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import camlens
from camlens.images import preprocess
from camlens.layers import auto_layer, spatial_layers


def top1(model: camlens.Model, photo: np.ndarray) -> tuple[int, float]:
    x = preprocess([camlens.load_image(photo)], model.preprocess)
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    return int(p.argmax()), float(p.max())


def test_default_model_knows_the_sample_photos(
    default_model: camlens.Model, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    assert default_model.name == "efficientnet_lite0"
    assert default_model.preprocess.input_size == (224, 224)
    assert default_model.preprocess.mean == default_model.preprocess.std == (0.5, 0.5, 0.5)
    index, p = top1(default_model, chelsea)
    assert (index, default_model.labels[index]) == (285, "Egyptian cat")
    assert p == pytest.approx(0.773, abs=0.01)
    index, p = top1(default_model, coffee)
    assert (index, default_model.labels[index]) == (967, "espresso")
    assert p == pytest.approx(0.902, abs=0.01)
    assert not default_model.net.training


def test_automatic_layers(default_model: camlens.Model, resnet18: camlens.Model) -> None:
    assert auto_layer(default_model) == "bn2"
    assert auto_layer(resnet18) == "layer4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = camlens.load_model("torchvision:vgg11")
    assert auto_layer(vgg) == "features.19"  # conv5_2's ReLU at 14x14, before the last max pool
    shapes = {info.name: info.shape for info in spatial_layers(resnet18)}
    assert shapes["layer4"] == (512, 7, 7)
    assert shapes["layer1"] == (64, 56, 56)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_file_round_trip(tmp_path: Path, suffix: str) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(net.state_dict(), path)
    else:
        save_file(net.state_dict(), str(path))
    model = camlens.load_model("torchvision:resnet18", weights=path)
    assert model.num_classes == 7  # read off the weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert model.labels[3] == "class 3"


def test_timm_weights_file_and_labels(tmp_path: Path) -> None:
    import timm

    net = timm.create_model("resnet18", num_classes=3).eval()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    model = camlens.load_model("timm:resnet18", weights=path, labels=labels)
    assert model.labels == ("cat", "dog", "bird")
    assert model.class_index("Dog") == 1
    assert model.preprocess.interpolation == "bicubic"


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("timm:not_a_model", None, "timm has no model named 'not_a_model'"),
        ("torchvision:nope", None, "torchvision has no classification model named 'nope'"),
        ("keras:vgg16", None, "unknown model spec 'keras:vgg16'"),
        ("torchvision:resnet18", "missing.pth", "missing.pth: no such weights file"),
    ],
)
def test_bad_specs(spec: str, weights: str | None, message: str) -> None:
    with pytest.raises(camlens.CamlensError, match=message):
        camlens.load_model(spec, weights=weights)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(camlens.CamlensError, match="does not fit torchvision:resnet18"):
        camlens.load_model("torchvision:resnet18", weights=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(camlens.CamlensError, match="not a state dict camlens can load safely"):
        camlens.load_model("torchvision:resnet18", weights=garbage)


def test_plain_module_warns_about_preprocessing() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.warns(UserWarning, match="no preprocessing given"):
        model = camlens.load_model(net)
    assert model.preprocess.input_size == (224, 224)


def test_class_names(default_model: camlens.Model) -> None:
    assert default_model.class_index("espresso") == 967
    assert default_model.class_index("ESPRESSO") == 967
    assert default_model.class_index("285") == 285
    with pytest.raises(camlens.CamlensError, match=r"did you mean.*'espresso'"):
        default_model.class_index("espreso")
    with pytest.raises(camlens.CamlensError, match="out of range"):
        default_model.class_index(1000)


@pytest.mark.parametrize(
    ("typed", "label"),
    [
        ("cab", "cab, hack, taxi, taxicab"),  # one synonym of the label
        ("Taxi", "cab, hack, taxi, taxicab"),
        ("tiger_cat", "tiger cat"),  # underscores for spaces
        ("egyptian CAT", "Egyptian cat"),
        (
            "gray whale",
            "grey whale, gray whale, devilfish, Eschrichtius gibbosus, Eschrichtius robustus",
        ),
        ("maillot", "maillot"),  # a whole label wins over 639's synonym "maillot"
        ("n02930766", "cab, hack, taxi, taxicab"),  # a WordNet id
    ],
)
def test_class_names_as_people_type_them(
    default_model: camlens.Model, typed: str, label: str
) -> None:
    from timm.data import ImageNetInfo

    index = default_model.class_index(typed)
    assert default_model.labels[index] == label
    assert ImageNetInfo().index_to_description(index) == label
    if typed.startswith("n0"):
        assert ImageNetInfo().index_to_label_name(index) == typed


def test_ambiguous_class_names_list_their_classes(default_model: camlens.Model) -> None:
    # ImageNet's "crane" is a bird (134) and a machine (517): never silently the first
    with pytest.raises(
        camlens.CamlensError,
        match=r"'crane' is ambiguous.*134 'crane' \(n02012849\), 517 'crane' \(n03126707\)",
    ):
        default_model.class_index("crane")
    with pytest.raises(
        camlens.CamlensError, match=r"'Sus_scrofa' is ambiguous.*341 'hog, .*342 'wild boar"
    ):
        default_model.class_index("Sus_scrofa")
    assert default_model.class_index("n02012849") == 134
    with pytest.raises(camlens.CamlensError, match="not one of"):
        default_model.class_index("n99999999")
    own = camlens.Model(
        torch.nn.Identity(), camlens.PreprocessConfig(), ("lion, cat", "lynx, cat"), "own"
    )
    assert own.class_index("lion") == 0 and own.class_index("lynx") == 1
    with pytest.raises(
        camlens.CamlensError,
        match=r"'CAT' is ambiguous in .*: it names 0 'lion, cat', 1 'lynx, cat'; give the index$",
    ):
        own.class_index("CAT")


def test_synthetic_spec_loads_the_benchmark_cnn(tmp_path: Path) -> None:
    from camlens.models.synthetic import SYNTHETIC_CLASSES, SyntheticCNN

    torch.manual_seed(0)
    net = SyntheticCNN(len(SYNTHETIC_CLASSES), width=8).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    model = camlens.load_model("synthetic", weights=tmp_path / "model.pt")
    assert model.labels == SYNTHETIC_CLASSES
    assert model.preprocess.input_size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    with pytest.raises(camlens.CamlensError, match="needs weights="):
        camlens.load_model("synthetic")
