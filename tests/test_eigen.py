"""Eigen-CAM and EigenGrad-CAM: the projection against numpy's SVD, a rank-one case by hand, the
sign rule, bit-identical maps across runs and batch positions, and pytorch-grad-cam up to sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from camlens.maps import normalize, upsample
from camlens.methods.eigen import eigencam, eigengradcam, first_component
from camlens.taps import Taps


def numpy_projection(features: np.ndarray) -> np.ndarray:
    """Per image: locations x channels, centred over locations, projected on the top right
    singular vector (sign as numpy leaves it)."""
    out = []
    for f in features.astype(np.float64):
        x = f.reshape(f.shape[0], -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        out.append((x @ vt[0]).reshape(f.shape[1:]))
    return np.array(out)


@pytest.mark.parametrize("shape", [(3, 16, 3, 4), (2, 5, 6, 7)])  # L <= K, and L > K
def test_projection_equals_svd_up_to_sign(shape: tuple[int, int, int, int]) -> None:
    f = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = first_component(f).numpy()
    ref = numpy_projection(f.numpy())
    for n, (p, r) in enumerate(zip(ours, ref, strict=True)):
        sign = np.sign((p * r).sum())
        assert np.abs(p - sign * r).max() < 1e-10
        mean = f[n].mean(dim=0).numpy()  # the sign rule: positive correlation with it
        assert ((p - p.mean()) * (mean - mean.mean())).sum() > 0


def test_rank_one_by_hand() -> None:
    """F[k, l] = v_k p_l + c_k: centred, X = (p - mean p) v^T, whose first component gives
    (p - mean p) * |v|; the channel mean is mean(v) p + const, so the sign follows mean(v)."""
    p = torch.tensor([0.0, 1.0, 3.0, 2.0, 5.0, 4.0], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for v in (torch.tensor([1.0, 2.0, 2.0]), torch.tensor([-1.0, -2.0, -2.0])):
        f = (v.double()[:, None] * p[None, :] + c[:, None]).reshape(1, 3, 2, 3)
        expected = (p - p.mean()) * 3.0 * torch.sign(v.mean())  # |v| = 3
        assert torch.allclose(first_component(f).flatten(), expected, atol=1e-12)


def test_sign_flips_with_the_features() -> None:
    f = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(first_component(-f), -first_component(f), atol=1e-6)


def test_sign_when_the_mean_says_nothing() -> None:
    """Channels u and -u: the channel mean is zero everywhere, so the largest entry of the
    projection is made positive."""
    u = torch.tensor([[0.0, 1.0], [-3.0, 0.5]])
    for s in (1.0, -1.0):
        f = torch.stack([s * u, -s * u])[None]
        p = first_component(f)[0]
        assert float(p.flatten()[p.abs().argmax()]) > 0
        expected = (u - u.mean()) * np.sqrt(2)
        expected = expected * torch.sign(expected.flatten()[expected.abs().argmax()])
        assert torch.allclose(p, expected, atol=1e-6)


def test_constant_and_nan_features_give_flat_maps() -> None:
    f = torch.ones(3, 4, 2, 2)
    f[1] = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(0))
    f[2, 0, 0, 0] = torch.nan
    _, flat = normalize(eigencam(f))
    assert flat.tolist() == [True, False, True]


def test_bit_identical_across_runs_and_batch_positions() -> None:
    g = torch.Generator().manual_seed(9)
    f = torch.randn(1, 64, 7, 7, generator=g).clamp(min=0)
    others = torch.randn(4, 64, 7, 7, generator=g).clamp(min=0)
    alone = eigencam(f)[0]
    for position in range(5):
        batch = torch.cat([others[:position], f, others[position:]])
        assert torch.equal(eigencam(batch)[position], alone)
    assert torch.equal(eigencam(f)[0], alone)


def test_explainer_bit_identical(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    """The same photo at positions 0 and 2 of a batch, and in a second run: the same bits.
    (Across batch sizes the network's own forward pass may differ in the last bits: oneDNN
    chooses its convolution kernels by batch size.)"""
    from skimage import data

    coffee = np.asarray(data.coffee())
    explainer = camlens.Explainer(default_model, method="eigencam")
    first = explainer.explain([chelsea, coffee, chelsea], top=2)
    again = explainer.explain([chelsea, coffee, chelsea], top=2)
    assert torch.equal(first[0].maps[0].map, first[2].maps[0].map)
    assert torch.equal(first[0].maps[0].map, again[0].maps[0].map)
    assert torch.equal(first[0].maps[0].map, first[0].maps[1].map)  # no class: one map


@pytest.mark.parametrize(
    ("model_name", "layer"), [("default_model", "bn2"), ("resnet18", "layer4")]
)
def test_equals_pytorch_grad_cam_up_to_sign(
    model_name: str, layer: str, request: pytest.FixtureRequest, chelsea: np.ndarray
) -> None:
    from pytorch_grad_cam import EigenCAM, EigenGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model: camlens.Model = request.getfixturevalue(model_name)
    result = camlens.Explainer(model, method=["eigencam", "eigengradcam"], layer=layer).explain(
        chelsea
    )
    c = result.maps[0].class_index
    x = camlens.images.preprocess([result.image], model.preprocess)
    module = dict(model.net.named_modules())[layer]
    with Taps(model.net, [layer]) as taps, torch.inference_mode():
        model.net(x)
    a = taps.activations[layer]
    theirs_raw = get_2d_projection(a.numpy())[0]
    ours_raw = eigencam(a)[0].numpy()
    sign = np.sign((ours_raw * theirs_raw).sum())
    assert np.abs(ours_raw - sign * theirs_raw).max() < 1e-4 * np.abs(theirs_raw).max()

    others = [normalize(-eigencam(a))[0][0], _other_sign(model, layer, x, c)]
    for ours, peer, other in zip(result.maps, [EigenCAM, EigenGradCAM], others, strict=True):
        with peer(model=model.net, target_layers=[module]) as cam:
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        candidates = [upsample(ours.map, x.shape[-2:]), upsample(other, x.shape[-2:])]
        best = min(float(np.abs(m.numpy() - theirs).max()) for m in candidates)
        assert best < 1e-4, peer.__name__
    model.net.zero_grad(set_to_none=True)  # EigenGradCAM's backward pass filled them


def _other_sign(model: camlens.Model, layer: str, x: torch.Tensor, c: int) -> torch.Tensor:
    """EigenGrad-CAM's map with the opposite sign (the peer's may be either), from gradient x
    activation by autograd."""
    with Taps(model.net, [layer], gradients=True) as taps, torch.no_grad():
        logits = model.net(x)
    a = taps.activations[layer]
    (g,) = torch.autograd.grad(logits[0, c], a)
    flipped, _ = normalize(-eigengradcam(a.detach(), g))
    return flipped[0]
