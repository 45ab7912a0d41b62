"""The Grad-CAM write-ups' element-wise recipe, computed by hand as they compute it, is `hirescam`.

The Keras write-ups take the target layer's output and the gradient of the class score with respect
to it (channels last), multiply them pixel by pixel, sum over the channels, then apply the ReLU and
divide by the maximum. That is HiResCAM; `gradcam_elementwise` applies the ReLU to each product
before the sum and gives another map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.images import PreprocessConfig

SIZE = 12


def small_net() -> nn.Sequential:
    """conv -> ReLU [target, "1"] -> conv -> ReLU -> max pool -> flatten -> Linear: the head after
    the target is not linear, so the gradient differs from pixel to pixel."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(5 * (SIZE // 2) ** 2, 4),
    ).eval()


def writeup_recipe(net: nn.Sequential, x: torch.Tensor, cls: int) -> np.ndarray:
    """The recipe step by step, with the network split by hand at the target layer."""
    with torch.no_grad():
        conv_out = net[:2](x)
    conv_out.requires_grad_(True)
    score = net[2:](conv_out)[0, cls]
    (grads,) = torch.autograd.grad(score, conv_out)
    conv_out_hwc = conv_out[0].detach().permute(1, 2, 0).double().numpy()  # Keras: [h, w, K]
    grads_hwc = grads[0].permute(1, 2, 0).double().numpy()
    cam = np.sum(grads_hwc * conv_out_hwc, axis=-1)  # per pixel product, summed over channels
    cam = np.maximum(cam, 0)
    return cam / cam.max()


@pytest.mark.parametrize("cls", [0, 1, 2, 3])
def test_the_writeup_recipe_is_hirescam(cls: int) -> None:
    net = small_net()
    config = PreprocessConfig((SIZE, SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model = camlens.load_model(net, preprocess=config, labels=["a", "b", "c", "d"])
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(cls))
    expected = writeup_recipe(net, x, cls)
    assert expected.min() == 0  # the ReLU cut something: min-max and max scaling coincide
    explainer = camlens.Explainer(model, method=["hirescam", "gradcam_elementwise"], layer="1")
    result = explainer.explain(x[0], classes=[cls])
    hires, elementwise = (m.map.double().numpy() for m in result.maps)
    assert [m.method for m in result.maps] == ["hirescam", "gradcam_elementwise"]
    np.testing.assert_allclose(hires, expected, atol=1e-6)
    assert np.abs(elementwise - expected).max() > 0.05  # not the write-ups' recipe
