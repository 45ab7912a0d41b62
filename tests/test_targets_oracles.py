"""Targets against pytorch-grad-cam's (PyPI ``grad-cam``): ``ClassifierOutputTarget``,
``BinaryClassifierOutputTarget``, ``RawScoresOutputTarget``, ``SimilarityToConceptTarget`` and a
contrast written as a callable, on the same model, layer and input; Grad-CAM maps correlate at
0.999 or more at the photo's size. Models: torchvision ResNet-18 and VGG16 with seeded random
weights, and the embedded EfficientNet-Lite0. Also: a contrast's map is not the difference of the
two class maps (the ReLU comes after the weighted sum)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_targets import camlens_maps
from torch import nn

import camlens
from camlens.images import preprocess
from camlens.maps import normalize, upsample
from camlens.models.architectures import torchvision_preprocess
from camlens.targets import Binary, ClassScore, Contrast, Function, Output, Similarity

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    BinaryClassifierOutputTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
)


class SimilarityToConceptTarget:
    """pytorch-grad-cam's similarity target, as its tutorial "Pixel Attribution for embeddings"
    defines it (grad-cam 1.5 ships it in the tutorial, not in the package)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.CosineSimilarity(dim=0)
        return cos(model_output, self.features)


LEAST = 0.999


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def peer_maps(net: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[Any]) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM [N, H, W] at the input's size, one target per image."""
    with pgc.GradCAM(model=net, target_layers=[layer]) as cam:
        out: np.ndarray = cam(input_tensor=x, targets=targets)
    return out


def at_photo(maps: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps [N, h, w] in [0, 1] resized (bilinear) to the photo's (height, width)."""
    t = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    return upsample(t, size).numpy()


def compare(
    model: camlens.Model,
    layer: str,
    x: torch.Tensor,
    ours: list[object],
    theirs: list[Any],
    size: tuple[int, int],
    net: nn.Module | None = None,
) -> list[float]:
    """Correlations of camlens's Grad-CAM of each target with the peer's, at ``size``."""
    found = []
    for mine, peer in zip(ours, theirs, strict=True):
        maps, _ = camlens_maps(model, x, layer, "gradcam", [[mine]])
        peer_net = net if net is not None else model.net
        reference = peer_maps(peer_net, peer_net.get_submodule(layer), x, [peer])
        found.append(correlation(at_photo(maps[:, 0], size), at_photo(reference, size)))
    return found


@pytest.fixture(scope="module")
def photo(chelsea: np.ndarray) -> Image.Image:
    return Image.fromarray(chelsea)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory, coffee: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("like") / "coffee.png"
    Image.fromarray(coffee).save(path)
    return path


def size_of(photo: Image.Image) -> tuple[int, int]:
    return photo.size[1], photo.size[0]


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_resnet18_class_contrast_and_similarity_match_the_peer(
    resnet18: camlens.Model, photo: Image.Image, reference_file: Path, layer: str
) -> None:
    x = preprocess([photo], resnet18.preprocess)
    # the peer's similarity runs a model that gives the embedding: ResNet-18 without its fc
    body = nn.Sequential(*list(resnet18.net.children())[:-1], nn.Flatten()).eval()
    with torch.no_grad():
        ref = preprocess([Image.open(reference_file).convert("RGB")], resnet18.preprocess)
        concept = body(ref)[0]
    for name, module in resnet18.net.named_children():
        if name == layer:
            layer_module = module
    ours: list[object] = [ClassScore(3), Contrast(3, (5,))]
    theirs: list[Any] = [ClassifierOutputTarget(3), lambda out: out[3] - out[5]]
    got = compare(resnet18, layer, x, ours, theirs, size_of(photo))
    maps, _ = camlens_maps(resnet18, x, layer, "gradcam", [[Similarity(str(reference_file))]])
    with pgc.GradCAM(model=body, target_layers=[layer_module]) as cam:
        reference = cam(input_tensor=x, targets=[SimilarityToConceptTarget(concept)])
    got.append(
        correlation(at_photo(maps[:, 0], size_of(photo)), at_photo(reference, size_of(photo)))
    )
    assert min(got) >= LEAST, got


def test_one_output_heads_binary_and_raw_match_the_peer(photo: Image.Image) -> None:
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: expected here
        net = camlens.load_model("torchvision:resnet18").net
    net.fc = nn.Linear(512, 1)
    model = camlens.load_model(net, preprocess=torchvision_preprocess("resnet18"))
    assert model.scores == "sigmoid"
    x = preprocess([photo], model.preprocess)
    got = compare(
        model,
        "layer3",
        x,
        [Binary(True), Binary(False), Output(0)],
        [BinaryClassifierOutputTarget(1), BinaryClassifierOutputTarget(0), RawScoresOutputTarget()],
        size_of(photo),
    )
    assert min(got) >= LEAST, got


@pytest.mark.slow
def test_vgg16_contrast_matches_the_peer(photo: Image.Image) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = camlens.load_model("torchvision:vgg16")
    x = preprocess([photo], model.preprocess)
    got = compare(
        model,
        "features.29",
        x,
        [Function(lambda y: y[:, 7] - y[:, 9], "contrast"), Contrast(7, (9,))],
        [lambda out: out[7] - out[9], lambda out: out[7] - out[9]],
        size_of(photo),
    )
    assert min(got) >= LEAST, got


def test_embedded_model_class_and_contrast_match_the_peer(
    default_model: camlens.Model, photo: Image.Image
) -> None:
    x = preprocess([photo], default_model.preprocess)
    got = compare(
        default_model,
        "blocks.5",
        x,
        [ClassScore(282), Contrast(282, (285,))],
        [ClassifierOutputTarget(282), lambda out: out[282] - out[285]],
        size_of(photo),
    )
    assert min(got) >= LEAST, got


def test_a_contrast_map_is_not_the_difference_of_the_class_maps(
    default_model: camlens.Model, photo: Image.Image
) -> None:
    """Before the ReLU, Grad-CAM is linear in the target: the raw contrast map is the raw map of
    282 minus that of 285. The ReLU comes after that weighted sum, so the shown contrast map is
    ReLU(M_282 - M_285), not ReLU(M_282) - ReLU(M_285): where both classes have evidence the
    difference of the shown maps would cancel what the contrast keeps, and it would show negative
    values (where 285 wins) that a map cannot have."""
    x = preprocess([photo], default_model.preprocess)
    raw: dict[str, torch.Tensor] = {}
    from camlens.capture import Capture, Settings, find_targets
    from camlens.methods import get_method
    from camlens.modes import eval_mode
    from camlens.scoring import TargetPlan

    (target,) = find_targets(default_model, ["blocks.5"])
    plan = TargetPlan(default_model, [])
    with eval_mode(default_model.net):
        capture = Capture(
            default_model, [target], x, gradients=["blocks.5"], plan=plan, settings=Settings()
        )
        goals = capture.goals([[ClassScore(282), ClassScore(285), Contrast(282, (285,))]])
        maps = get_method("gradcam").maps(capture, "blocks.5", goals)[0]
    raw["a"], raw["b"], raw["contrast"] = maps[0], maps[1], maps[2]
    torch.testing.assert_close(raw["contrast"], raw["a"] - raw["b"], atol=1e-5, rtol=1e-4)
    shown = normalize(raw["contrast"][None])[0][0]
    difference = raw["a"].clamp(min=0) - raw["b"].clamp(min=0)
    assert float(difference.min()) < 0  # a difference of maps goes negative: no map does
    as_map = normalize(difference[None])[0][0]
    assert float((shown - as_map).abs().max()) > 0.1
    assert correlation(shown.numpy(), F.relu(difference).numpy()) < 0.999
