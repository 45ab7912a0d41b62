"""A network whose modules are in mixed modes (training, but with frozen batch norms, as when
fine-tuning) gets its own mix back from every library call that switches modes: localize's crop
classifier, the metrics' probabilities, the head builder's probe and training. During the call
the modules run in eval mode, which the outputs show (dropout in train mode would change them)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pasted import make_pasted_folder
from PIL import Image
from torch import nn

import camlens
from camlens.images import PreprocessConfig, preprocess
from camlens.localize import classify_crops, crop_box
from camlens.metrics import class_probabilities
from camlens.models.head import feature_channels
from camlens.modes import eval_mode, keep_modes
from camlens.types import Box


def modes(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def make_mixed(net: nn.Module) -> list[bool]:
    """Train mode everywhere but in the batch norms; returns the modes."""
    net.train()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return modes(net)


def record(net: nn.Module) -> list[bool]:
    """The mode of every module each time it runs (forward pre-hooks on all of them)."""
    seen: list[bool] = []
    for module in net.modules():
        module.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    return seen


def small_model() -> camlens.Model:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    return camlens.load_model(net, preprocess=PreprocessConfig(input_size=(16, 16)))


def eval_probabilities(model: camlens.Model, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the network in eval mode, computed here (and the mix set again after)."""
    model.net.eval()
    with torch.no_grad():
        out = torch.softmax(model.net(x), dim=1)
    make_mixed(model.net)
    return out


def test_eval_mode_and_keep_modes() -> None:
    net = small_model().net
    before = make_mixed(net)
    assert any(before) and not all(before)
    with eval_mode(net), eval_mode(net):  # nested: the outer one restores
        assert not any(modes(net))
    assert modes(net) == before
    with keep_modes(net):
        net.eval()
        net[3].train()
    assert modes(net) == before


def test_classify_crops_keeps_the_mix() -> None:
    model = small_model()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    boxes = [Box(0, 0, 20, 20), Box(10, 5, 48, 40)]
    x = preprocess([crop_box(image, b) for b in boxes], model.preprocess)
    expected = eval_probabilities(model, x)
    before = modes(model.net)
    seen = record(model.net)
    found = classify_crops(model, image, boxes)
    assert modes(model.net) == before
    assert seen and not any(seen)
    score, index = expected.max(dim=1)
    assert [p.class_index for p in found] == index.tolist()
    assert [p.score for p in found] == pytest.approx(score.tolist(), rel=1e-6)


def test_class_probabilities_keep_the_mix() -> None:
    model = small_model()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = eval_probabilities(model, x)
    before = modes(model.net)
    got = class_probabilities(model, x, [0, 2, 1])
    assert modes(model.net) == before
    np.testing.assert_allclose(got, expected[[0, 1, 2], [0, 2, 1]].double().numpy(), rtol=1e-6)


def test_feature_channels_keeps_the_mix() -> None:
    features = small_model().net[:4]
    before = make_mixed(features)
    seen = record(features)
    assert feature_channels(features, PreprocessConfig(input_size=(16, 16)), "small") == 4
    assert modes(features) == before
    assert seen and not any(seen)


def test_training_gives_the_mix_back(tmp_path: Path) -> None:
    make_pasted_folder(tmp_path, per_class=3, size=64, seed=5)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        model = camlens.build_cam_model("torchvision:resnet18", num_classes=2, input_size=64)
    net = model.net
    before = make_mixed(net)
    seen = record(net.features)  # the backbone runs only to fill the feature cache
    history = camlens.train(model, tmp_path, epochs=2, views=1, val=0)
    assert len(history.epochs) == 2
    assert modes(net) == before
    assert seen and not any(seen)


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "scorecam"])
def test_building_an_explainer_probes_in_eval_mode(method: str) -> None:
    """Building an Explainer runs the network on a probe (its layers, the head, the memory one
    pass takes): in eval mode, so a model left in train mode keeps its modes and its batch-norm
    statistics (Ablation-CAM's and Score-CAM's probe moved them, and the maps of a thread
    explaining meanwhile with them)."""
    model = small_model()
    net = model.net
    net.train()
    before = modes(net)
    statistics = [net[1].running_mean.clone(), net[1].running_var.clone()]
    seen = record(net)
    camlens.Explainer(model, method=method)  # the automatic layer: the layers probed too
    camlens.Explainer(model, method=method, layer="2")
    assert modes(net) == before
    assert seen and not any(seen)
    torch.testing.assert_close(net[1].running_mean, statistics[0], rtol=0, atol=0)
    torch.testing.assert_close(net[1].running_var, statistics[1], rtol=0, atol=0)
