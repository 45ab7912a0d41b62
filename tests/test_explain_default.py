"""The explainer on the embedded default model and a photo: identities the papers predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camlens


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_gradcam_equals_cam_up_to_scale(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    """On a GAP -> Linear head, Grad-CAM is CAM / (h w): check with a real backward pass."""
    cam = camlens.Explainer(default_model, method="cam").explain(chelsea, top=3)
    grad = camlens.Explainer(default_model, method="gradcam", use_head_gradients=False).explain(
        chelsea, top=3
    )
    assert [m.class_index for m in cam.maps] == [285, 282, 281]
    for a, b in zip(cam.maps, grad.maps, strict=True):
        assert a.class_index == b.class_index
        assert corr(a.map, b.map) > 0.9999


def test_head_gradients_equal_autograd(default_model: camlens.Model, coffee: np.ndarray) -> None:
    methods = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "gradcam_elementwise"]
    fast = camlens.Explainer(default_model, method=methods).explain(coffee, top=2)
    slow = camlens.Explainer(default_model, method=methods, use_head_gradients=False).explain(
        coffee, top=2
    )
    for a, b in zip(fast.maps, slow.maps, strict=True):
        assert (a.method, a.class_index) == (b.method, b.class_index)
        assert float((a.map - b.map).abs().max()) < 1e-4, a.method


def test_explanation_at_the_photos_own_size(default_model: camlens.Model, tmp_path: Path) -> None:
    from skimage import data

    photo = np.asarray(data.astronaut())[:, :300]  # non-square: 512 high, 300 wide
    result = camlens.Explainer(default_model).explain(photo, classes=["espresso", 285])
    assert result.size == (300, 512)
    assert [m.label for m in result.maps] == ["espresso", "Egyptian cat"]
    full = result.map_at_image(0)
    assert tuple(full.shape) == (512, 300)
    assert float(full.min()) == 0.0 and float(full.max()) == 1.0
    assert tuple(result.map_at_input(0).shape) == (224, 224)
    assert result.overlay(0).size == (300, 512)
    x, y = result.peak(1)
    second = result.map_at_image(1)  # map 1 at the photo's size: its peak is its maximum
    assert 0 <= x < 300 and 0 <= y < 512
    assert float(second[y, x]) == float(second.max()) == 1.0
    report = result.save(tmp_path, "astro")
    saved = np.load(tmp_path / "astro.gradcam.bn2.967.npy")
    assert saved.dtype == np.float32 and saved.shape == (512, 300)
    assert Image.open(tmp_path / "astro.gradcam.bn2.967.png").size == (300, 512)
    assert report.name == "astro.json"


def test_batch_equals_single(
    default_model: camlens.Model, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    ex = camlens.Explainer(default_model, method="gradcampp", batch_size=1)
    batch = camlens.Explainer(default_model, method="gradcampp", batch_size=8).explain(
        [chelsea, coffee], top=2
    )
    for photo, result in zip([chelsea, coffee], batch, strict=True):
        alone = ex.explain(photo, top=2)
        assert alone.predictions[0].class_index == result.predictions[0].class_index
        for a, b in zip(alone.maps, result.maps, strict=True):
            assert float((a.map - b.map).abs().max()) < 1e-5


def test_tensor_inputs_and_predictions(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    from camlens.images import preprocess

    x = preprocess([camlens.load_image(chelsea)], default_model.preprocess)
    results = camlens.Explainer(default_model).explain(x, top=1)
    assert isinstance(results, list) and len(results) == 1
    result = results[0]
    assert result.source == "<image 0>"
    assert result.size == (224, 224)  # no original photo: the input itself
    assert [p.class_index for p in result.predictions][:1] == [285]
    assert len(result.predictions) == 5
    scores = [p.score for p in result.predictions]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(camlens.CamlensError, match=r"\[3, H, W\] or \[N, 3, H, W\]"):
        camlens.Explainer(default_model).explain(torch.zeros(1, 1, 224, 224))


def test_unknown_method_and_layer(default_model: camlens.Model) -> None:
    with pytest.raises(camlens.CamlensError, match="unknown method 'gradcan'"):
        camlens.Explainer(default_model, method="gradcan")
    with pytest.raises(camlens.CamlensError, match=r"no layer named 'bn3'.*bn2"):
        camlens.Explainer(default_model, layer="bn3")
    with pytest.raises(camlens.CamlensError, match="not a spatial map"):
        camlens.Explainer(default_model, layer="classifier")


def test_tensor_inputs_get_their_pictures_on_first_use(
    default_model: camlens.Model, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    """A tensor batch's pictures (the inputs de-normalized) are made only when asked for, and are
    the inputs themselves, pixel for pixel."""
    config = default_model.preprocess
    photos = [Image.fromarray(p).resize((224, 224)) for p in (chelsea, coffee)]
    x = camlens.images.preprocess(photos, config)
    results = camlens.Explainer(default_model, method="cam").explain(x)
    assert all(not isinstance(r._image, Image.Image) for r in results)  # not made yet
    for result, photo in zip(results, photos, strict=True):
        x[:] = 0  # the explanation kept its own input, not a view of the caller's tensor
        assert result.size == (224, 224)
        assert isinstance(result._image, Image.Image)
        back = np.asarray(result.image).astype(int)
        assert np.abs(back - np.asarray(photo).astype(int)).max() <= 1
        assert result.overlay(0).size == (224, 224)
