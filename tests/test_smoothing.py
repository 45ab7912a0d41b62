"""Smoothing: per-channel terms of every separable method, principal-component smoothing (against
pytorch-grad-cam's eigen_smooth up to sign), and test-time augmentation against maps of the flipped
input computed separately."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from camlens.errors import MethodError
from camlens.maps import normalize, upsample
from camlens.methods import METHODS, channel_terms
from camlens.methods.eigen import first_component
from camlens.methods.perturbation import Scorer, scorecam
from camlens.scoring import Goals
from camlens.smoothing import Augmentation, augmentations, pca_map
from camlens.taps import Taps


@pytest.mark.parametrize(
    "name", [m.name for m in METHODS.values() if m.separable and m.needs in ("head", "gradients")]
)
def test_channel_terms_sum_to_the_map(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64).clamp(min=0)
    method = METHODS[name]
    if method.needs == "head":
        operand = torch.randn(2, 5, generator=g, dtype=torch.float64)
    else:
        operand = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    terms = channel_terms(method.fn, a, operand)
    assert terms.shape == a.shape
    assert torch.allclose(terms.sum(dim=1), method.fn(a, operand), atol=1e-12)


def test_pca_map_sign_follows_the_plain_map() -> None:
    g = torch.Generator().manual_seed(3)
    terms = torch.randn(3, 6, 4, 4, generator=g)
    smoothed = pca_map(terms)
    assert torch.equal(smoothed, first_component(terms))
    plain = terms.sum(dim=1)
    for s, p in zip(smoothed, plain, strict=True):
        assert float(((s - s.mean()) * (p - p.mean())).sum()) > 0


def test_pca_equals_pytorch_grad_cam_eigen_smooth(
    resnet18: camlens.Model, chelsea: np.ndarray
) -> None:
    """Grad-CAM with principal-component smoothing on resnet18's layer4 (head gradients here, a
    backward pass there), up to the sign pytorch-grad-cam leaves to the SVD."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    result = camlens.Explainer(resnet18, method="gradcam", smooth="pca").explain(chelsea)
    ours, c = result.maps[0], result.maps[0].class_index
    x = camlens.images.preprocess([result.image], resnet18.preprocess)
    with Taps(resnet18.net, ["layer4"]) as taps, torch.inference_mode():
        resnet18.net(x)
    a = taps.activations["layer4"]
    weights = resnet18.net.fc.weight[c].detach() / 49  # Grad-CAM's weights on a GAP -> fc head
    flipped, _ = normalize(-first_component(weights[None, :, None, None] * a))
    with GradCAM(model=resnet18.net, target_layers=[resnet18.net.layer4]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)], eigen_smooth=True)[0]
    resnet18.net.zero_grad(set_to_none=True)  # the peer's backward pass filled them
    best = min(
        float(np.abs(upsample(m, (224, 224)).numpy() - theirs).max()) for m in (ours.map, flipped)
    )
    assert best < 1e-4


def test_pca_of_score_weighted_activations(resnet18: camlens.Model, chelsea: np.ndarray) -> None:
    """A "scores" method: the first component of w_k A_k with Score-CAM's weights (fast mode:
    8 channels, masked passes at 56x56, to keep the test short)."""
    explainer = camlens.Explainer(
        resnet18, method="scorecam", smooth="pca", fast_channels=8, fast_resolution=0.25
    )
    result = explainer.explain(chelsea, classes=[3, 5])
    x = camlens.images.preprocess([result.image], resnet18.preprocess)
    with Taps(resnet18.net, ["layer4"]) as taps, torch.inference_mode():
        logits = resnet18.net(x)
    a = taps.activations["layer4"]
    classes = Goals.classes(torch.tensor([[3, 5]]), logits.shape[1])
    scorer = Scorer(resnet18.net, x, logits, classes.score, 2, a, channels=8, resolution=0.25)
    weights = scorecam(a, scorer)
    for d, m in enumerate(result.maps):
        expected, _ = normalize(first_component(weights[:, d, :, None, None] * a))
        assert torch.allclose(m.map, expected[0], atol=1e-5)


def test_tta_flip_by_hand(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    """smooth="tta" with a flip: the mean of the map and the flipped-back map of the flipped
    input (explained separately for the same classes), scaled to [0, 1] again."""
    plain = camlens.Explainer(default_model, method=["gradcam", "eigencam"])
    base = plain.explain(chelsea, top=2)
    x = camlens.images.preprocess([base.image], default_model.preprocess)[0]
    classes = [m.class_index for m in base.maps[::2]]
    mirrored = plain.explain(x.flip(-1), classes=classes)
    smoothed = camlens.Explainer(
        default_model,
        method=["gradcam", "eigencam"],
        smooth="tta",
        tta_scales=(1.0,),  # the identity and its flip
    ).explain(chelsea, top=2)
    assert [m.class_index for m in smoothed.maps] == [m.class_index for m in base.maps]
    for m0, m1, s in zip(base.maps, mirrored.maps, smoothed.maps, strict=True):
        expected, _ = normalize(((m0.map + m1.map.flip(-1)) / 2)[None])
        assert torch.allclose(s.map, expected[0], atol=1e-6), s.method
        assert s.score == m0.score


def test_tta_scales_come_back_to_the_layer_grid(
    default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    result = camlens.Explainer(default_model, smooth="tta", tta_scales=(1.0, 1.25, 0.75)).explain(
        chelsea
    )
    plain = camlens.Explainer(default_model).explain(chelsea)
    assert result.maps[0].map.shape == plain.maps[0].map.shape == (7, 7)
    assert float(result.maps[0].map.max()) == 1.0
    corr = torch.corrcoef(torch.stack([result.maps[0].map.flatten(), plain.maps[0].map.flatten()]))
    assert float(corr[0, 1]) > 0.8  # the same cat, seen at several sizes


def test_augmentations() -> None:
    found = augmentations(scales=(1.25, 1.0))
    assert found[0] == Augmentation()
    assert set(found) == {Augmentation(f, s) for f in (False, True) for s in (1.0, 1.25)}
    ramp = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(Augmentation(flip=True).undo(ramp.flip(-1), (3, 4)), ramp)
    x = torch.randn(2, 3, 8, 8)
    assert Augmentation(scale=1.5).apply(x).shape == (2, 3, 12, 12)
    assert Augmentation(scale=1.5).undo(torch.ones(2, 6, 6), (4, 4)).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        augmentations(scales=(1.0, 0.0))


def test_unknown_smoothing_is_refused(default_model: camlens.Model) -> None:
    with pytest.raises(MethodError, match="unknown smoothing"):
        camlens.Explainer(default_model, smooth="blur")
