"""VGG's target layer as the CAM and Grad-CAM write-ups take it: the automatic choice before the
last max pooling, and Keras's layer names (``block5_conv3``) wherever a layer name is accepted."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.images import PreprocessConfig
from camlens.keras_names import keras_names
from camlens.layers import auto_layer, spatial_layers
from camlens.taps import Taps

# Keras's VGG16 (keras.applications.VGG16(include_top=False)): its layers in order and the
# filters of each conv layer, from the Keras model summary.
KERAS_VGG16 = [
    ("block1_conv1", 64),
    ("block1_conv2", 64),
    ("block1_pool", None),
    ("block2_conv1", 128),
    ("block2_conv2", 128),
    ("block2_pool", None),
    ("block3_conv1", 256),
    ("block3_conv2", 256),
    ("block3_conv3", 256),
    ("block3_pool", None),
    ("block4_conv1", 512),
    ("block4_conv2", 512),
    ("block4_conv3", 512),
    ("block4_pool", None),
    ("block5_conv1", 512),
    ("block5_conv2", 512),
    ("block5_conv3", 512),
    ("block5_pool", None),
]
KERAS_VGG19_EXTRA = ["block3_conv4", "block4_conv4", "block5_conv4"]


def vgg(name: str, size: int = 64) -> camlens.Model:
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    return camlens.load_model(net, preprocess=PreprocessConfig((size, size)))


@pytest.fixture(scope="module")
def vgg16() -> camlens.Model:
    return vgg("vgg16")


def test_keras_names_of_vgg16_follow_the_keras_model(vgg16: camlens.Model) -> None:
    names = keras_names(vgg16.net)
    features = vgg16.net.features
    assert list(names) == [n for n, _ in KERAS_VGG16]  # every layer, in Keras's order
    for name, filters in KERAS_VGG16:
        index = int(names[name].removeprefix("features."))
        if filters is None:
            assert isinstance(features[index], nn.MaxPool2d), name
        else:  # the ReLU right after the conv with Keras's filter count
            assert isinstance(features[index], nn.ReLU), name
            assert isinstance(features[index - 1], nn.Conv2d), name
            assert features[index - 1].out_channels == filters, name
    assert names["block5_conv3"] == "features.29" and names["block5_pool"] == "features.30"


def test_keras_names_of_vgg19_and_of_other_networks() -> None:
    with torch.device("meta"):
        vgg19 = torchvision.models.vgg19()
        others = [torchvision.models.vgg16_bn(), torchvision.models.alexnet(), nn.Conv2d(3, 3, 3)]
    names = keras_names(vgg19)
    assert len(names) == len(KERAS_VGG16) + len(KERAS_VGG19_EXTRA)
    assert set(KERAS_VGG19_EXTRA) < set(names)
    # VGG19's features: conv/ReLU pairs, blocks of 2, 2, 4, 4, 4 convs, a max pool after each.
    assert (names["block5_conv3"], names["block5_conv4"]) == ("features.33", "features.35")
    assert names["block5_pool"] == "features.36"
    assert all(keras_names(net) == {} for net in others)


def test_automatic_layer_is_before_the_last_max_pool(vgg16: camlens.Model) -> None:
    shapes = {info.name: info.shape for info in spatial_layers(vgg16)}
    assert shapes["features.29"] == (512, 4, 4) and shapes["features"] == (512, 2, 2)
    assert auto_layer(vgg16) == "features.29"  # = block5_conv3, as the write-ups take it


def test_keras_name_is_a_layer_name_everywhere(vgg16: camlens.Model) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with Taps(vgg16.net, ["block5_conv3"], aliases=vgg16.layer_names()) as taps, torch.no_grad():
        vgg16.net(x)
        expected = vgg16.net.features[:30](x)  # conv5_3 and its ReLU, computed apart
    assert taps.names == ["features.29"]
    assert torch.equal(taps.activations["features.29"], expected)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    by_alias = camlens.Explainer(vgg16, layer="block5_conv3").explain(image, classes=[3])
    by_name = camlens.Explainer(vgg16, layer="features.29").explain(image, classes=[3])
    by_default = camlens.Explainer(vgg16).explain(image, classes=[3])
    assert by_alias.maps[0].layer == by_default.maps[0].layer == "features.29"
    assert torch.equal(by_alias.maps[0].map, by_name.maps[0].map)
    assert torch.equal(by_default.maps[0].map, by_name.maps[0].map)
    with pytest.raises(camlens.CamlensError, match="close names: block5_conv3"):
        camlens.Explainer(vgg16, layer="block5_conv33")


def test_a_built_vgg_model_keeps_its_features_and_the_names() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        model = camlens.build_cam_model("torchvision:vgg11", num_classes=2, input_size=64)
    assert auto_layer(model) == "features"  # no last max pool: the conv5 grid already
    assert keras_names(model.net)["block5_conv2"] == "features.19"
    assert "block5_pool" not in keras_names(model.net)


@pytest.mark.filterwarnings("ignore:.*random weights")
def test_layers_command_shows_the_keras_names() -> None:
    result = CliRunner().invoke(app, ["layers", "--model", "torchvision:vgg11"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "features.19 " in line)
    assert row.split()[:4] == ["*", "features.19", "block5_conv2", "ReLU"]
    assert "automatic target layer of torchvision:vgg11: features.19" in result.stdout
    plain = CliRunner().invoke(app, ["layers"])
    assert "Keras name" not in plain.stdout
