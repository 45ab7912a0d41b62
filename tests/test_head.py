"""The CAM-ready head builder: architecture, weights, the layer and head camlens finds, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import camlens
from camlens.images import preprocess
from camlens.layers import auto_layer, find_cam_head
from camlens.models.head import CamNet, TimmFeatures
from camlens.taps import Taps
from camlens.train import backbone_blocks


def quiet_build(*args: object, **kwargs: object) -> camlens.Model:
    """build_cam_model with the random-weights warning silenced (expected in these tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return camlens.build_cam_model(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_head() -> camlens.Model:
    torch.manual_seed(0)
    return camlens.build_cam_model(num_classes=3, class_names=["a", "b", "c"])


def test_default_backbone_is_the_embedded_model(
    default_head: camlens.Model, default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    net = default_head.net
    assert isinstance(net, CamNet) and isinstance(net.features, TimmFeatures)
    assert default_head.preprocess == default_model.preprocess
    assert default_head.labels == ("a", "b", "c")
    assert default_head.name == "efficientnet_lite0 -> GAP -> Linear(1280, 3)"
    x = preprocess([camlens.load_image(chelsea)], default_model.preprocess)
    # The backbone's output is the default model's bn2 output, to the bit (its ImageNet weights).
    with Taps(default_model.net, ["bn2"]) as taps, torch.inference_mode():
        default_model.net(x)
    with torch.inference_mode():
        features = net.features(x)
    assert features.shape == (1, 1280, 7, 7)
    assert torch.equal(features, taps.activations["bn2"])
    # The timm classifier is gone: the only Linear is ours.
    assert [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)] == ["fc"]
    # logits = W mean_ij(A) + b, by hand
    with torch.inference_mode():
        logits = default_head(x)
    by_hand = features.mean(dim=(2, 3)) @ net.fc.weight.T + net.fc.bias
    torch.testing.assert_close(logits, by_hand, rtol=1e-5, atol=1e-6)


def test_camlens_finds_the_layer_and_the_head(
    default_head: camlens.Model, coffee: np.ndarray
) -> None:
    assert auto_layer(default_head) == "features"
    explainer = camlens.Explainer(default_head, method=["cam", "gradcam"])
    head = explainer.heads["features"]
    assert head is not None and head.name == "fc"
    result = explainer.explain(coffee, classes=[2])
    cam, gradcam = result.maps
    assert (cam.method, cam.layer, cam.class_index) == ("cam", "features", 2)
    # CAM by hand: M = sum_k W_ck A_k, ReLU, min-max
    x = preprocess([camlens.load_image(coffee)], default_head.preprocess)
    with torch.inference_mode():
        a = default_head.net.features(x)[0]
        m = torch.einsum("k,kij->ij", default_head.net.fc.weight[2], a).clamp(min=0)
    m = (m - m.min()) / (m.max() - m.min())
    torch.testing.assert_close(cam.map, m, rtol=0, atol=1e-5)
    # On a GAP -> Linear head Grad-CAM is CAM up to a positive factor: the same normalized map.
    torch.testing.assert_close(gradcam.map, cam.map, rtol=0, atol=1e-5)


def test_head_found_numerically_on_a_random_input(default_head: camlens.Model) -> None:
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with Taps(default_head.net, ["features"]) as taps, torch.inference_mode():
        logits = default_head.net(x)
    head = find_cam_head(default_head, "features", taps.activations["features"], logits)
    assert head is not None and head.name == "fc"


def test_random_backbone_warns() -> None:
    with pytest.warns(UserWarning, match=r"backbone timm:resnet18 has random weights"):
        model = camlens.build_cam_model("timm:resnet18", num_classes=2, input_size=64)
    assert model.preprocess.input_size == (64, 64)
    assert model.net.config.channels == 512


def test_vgg_keeps_the_conv5_grid_and_reads_a_no_top_file(tmp_path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = torchvision.models.vgg11().eval()
    features_only = {f"features.{k}": v for k, v in full.features.state_dict().items()}
    path = tmp_path / "vgg11_notop.safetensors"
    save_file(features_only, str(path))
    model = camlens.build_cam_model("torchvision:vgg11", num_classes=2, weights=path)
    net = model.net
    assert isinstance(net, CamNet)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        a = net.features(x)
        # features without its last max pooling: 64 / 16 = 4, and max-pooling it gives vgg's own
        assert a.shape == (1, 512, 4, 4)
        assert torch.equal(torch.nn.functional.max_pool2d(a, 2), full.features(x))
    assert auto_layer(model) == "features"


def test_resnet_weights_from_a_whole_state_dict(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    full = timm.create_model("resnet18", num_classes=5).eval()
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    model = camlens.build_cam_model("timm:resnet18", num_classes=2, weights=path, input_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model.net.features(x), full.forward_features(x))
    names = [name for name, _ in backbone_blocks(model.net)]
    assert names == [
        "features.body.conv1+bn1",
        "features.body.layer1",
        "features.body.layer2",
        "features.body.layer3",
        "features.body.layer4",
    ]


def test_blocks_of_the_default_backbone(default_head: camlens.Model) -> None:
    names = [name for name, _ in backbone_blocks(default_head.net)]
    assert names[0] == "features.body.conv_stem+bn1"
    assert names[1:8] == [f"features.body.blocks.{i}" for i in range(7)]
    assert names[8] == "features.body.conv_head+bn2"
    # every parameter of the backbone belongs to exactly one block
    owned = [id(p) for _, block in backbone_blocks(default_head.net) for p in block.parameters()]
    assert sorted(owned) == sorted(id(p) for p in default_head.net.features.parameters())


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("keras:vgg16", {}, "unknown backbone 'keras:vgg16'"),
        ("timm:resnet_nope", {}, "timm has no model named 'resnet_nope'"),
        ("torchvision:nope", {}, "torchvision has no classification model named 'nope'"),
        ("torchvision:swin_t", {}, "vision transformer"),
        ("timm:resnet18", {"input_size": 16}, "1x1 feature map, too small"),
        ("timm:resnet18", {"num_classes": 1}, "num_classes >= 2"),
        ("timm:resnet18", {"class_names": ["a", "a"]}, "must differ"),
        ("timm:resnet18", {"num_classes": 3, "class_names": ["a", "b"]}, "2 class names given"),
        ("timm:resnet18", {"weights": "missing.pth"}, "missing.pth: no such weights file"),
        (None, {"weights": "x.pth"}, "the default backbone has its own weights"),
        ("timm:resnet18", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_builds(spec: str | None, kwargs: dict[str, object], message: str) -> None:
    kwargs = {"num_classes": 2, **kwargs} if "class_names" not in kwargs else kwargs
    with pytest.raises(camlens.CamlensError, match=message):
        quiet_build(spec, **kwargs)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(camlens.CamlensError, match=r"r34.pth: does not fit backbone torchvision:"):
        quiet_build("torchvision:resnet18", num_classes=2, weights=path)


def test_token_features_are_refused() -> None:
    from camlens.images import PreprocessConfig
    from camlens.models.head import feature_channels

    tokens = torch.nn.Flatten(2)  # [N, 3, H, W] -> [N, 3, H * W], like a transformer's tokens
    with pytest.raises(camlens.CamlensError, match=r"timm:vit: its features are \[1, 3, 1024\]"):
        feature_channels(tokens, PreprocessConfig(input_size=(32, 32)), "timm:vit")
