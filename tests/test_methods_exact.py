"""Every method's map on a tiny hand-built network, against values computed independently here:
activations from plain convolutions, gradients derived by hand (chain rule), formulas in loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.images import PreprocessConfig

H = W = 4  # input size; both tapped layers keep it (3x3 conv with padding 1, then 1x1 conv)


class Tiny(nn.Module):
    """x -> conv 3x3 (3->2) -> ReLU [feat] -> conv 1x1 (2->3) -> ReLU [top] -> GAP -> Linear (3->2)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.feat = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 3, 1)
        self.top = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.conv1.bias += 0.5  # keep most units active so the maps are not trivial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.top(self.conv2(self.feat(self.conv1(x))))
        out: torch.Tensor = self.fc(self.pool(y).flatten(1))
        return out


@pytest.fixture(scope="module")
def tiny() -> camlens.Model:
    config = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return camlens.load_model(Tiny(), preprocess=config, labels=["a", "b"])


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3))


def by_hand(net: Tiny, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Activations of both layers, and d logit_c / d activation for each class, by the chain rule."""
    with torch.no_grad():
        a = F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)).double().numpy()
    v = net.conv2.weight.detach().double().numpy()[:, :, 0, 0]  # [3, 2]
    b = net.conv2.bias.detach().double().numpy()
    wfc = net.fc.weight.detach().double().numpy()  # [2 classes, 3]
    n, k, h, w = a.shape
    z = np.zeros((n, 3, h, w))
    for i in range(n):
        for m in range(3):
            z[i, m] = sum(v[m, kk] * a[i, kk] for kk in range(k)) + b[m]
    r = np.maximum(z, 0)
    # y_c = sum_m W[c, m] * mean_ij r[m, i, j] + bias_c
    grad_top = np.zeros((2, n, 3, h, w))  # d y_c / d r = W[c, m] / (h w)
    grad_feat = np.zeros((2, n, k, h, w))  # d y_c / d a = sum_m W[c, m] / (h w) [z > 0] V[m, k]
    for c in range(2):
        for i in range(n):
            for m in range(3):
                grad_top[c, i, m] = wfc[c, m] / (h * w)
                for kk in range(k):
                    grad_feat[c, i, kk] += wfc[c, m] / (h * w) * (z[i, m] > 0) * v[m, kk]
    return {"feat": a, "top": r, "grad_feat": grad_feat, "grad_top": grad_top, "wfc": wfc}


def expected_raw(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The papers' formulas for one map, a and g of shape [K, h, w], in explicit loops."""
    k, h, w = a.shape
    out = np.zeros((h, w))
    if method in ("gradcam", "gradcampp", "xgradcam"):
        weights = np.zeros(k)
        for kk in range(k):
            if method == "gradcam":
                weights[kk] = g[kk].mean()
            elif method == "xgradcam":
                total = a[kk].sum()
                weights[kk] = (a[kk] * g[kk]).sum() / total if total != 0 else 0.0
            else:
                s = a[kk].sum()
                for i in range(h):
                    for j in range(w):
                        gg = g[kk, i, j]
                        den = 2 * gg**2 + s * gg**3
                        alpha = gg**2 / den if den != 0 else 0.0
                        weights[kk] += alpha * max(gg, 0.0)
        for kk in range(k):
            out += weights[kk] * a[kk]
        return out
    for i in range(h):
        for j in range(w):
            for kk in range(k):
                prod = g[kk, i, j] * a[kk, i, j]
                if method == "hirescam":
                    out[i, j] += prod
                elif method == "gradcam_elementwise":
                    out[i, j] += max(prod, 0.0)
                elif method == "layercam":
                    out[i, j] += max(g[kk, i, j], 0.0) * a[kk, i, j]
    return out


def normalized(raw: np.ndarray) -> np.ndarray:
    """ReLU and min-max; a constant map becomes zeros."""
    m = np.maximum(raw, 0)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


GRADIENT_METHODS = [
    "gradcam",
    "gradcampp",
    "xgradcam",
    "hirescam",
    "gradcam_elementwise",
    "layercam",
]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("layer", ["feat", "top"])
@pytest.mark.parametrize("head_gradients", [True, False])
def test_gradient_methods_equal_hand_computed(
    tiny: camlens.Model, x: torch.Tensor, method: str, layer: str, head_gradients: bool
) -> None:
    ref = by_hand(tiny.net, x)  # type: ignore[arg-type]
    ex = camlens.Explainer(tiny, method=method, layer=layer, use_head_gradients=head_gradients)
    results = ex.explain(x, classes=[0, 1])
    assert isinstance(results, list)
    informative = 0
    for i, result in enumerate(results):
        for m in result.maps:
            g = ref[f"grad_{layer}"][m.class_index, i]
            want = normalized(expected_raw(method, ref[layer][i], g))
            np.testing.assert_allclose(m.map.numpy(), want, atol=1e-5)
            assert m.flat == (want.max() == 0)
            informative += not m.flat
    assert informative >= 2  # most of the 4 maps carry information: the test is not vacuous


def test_head_is_found_only_where_the_layer_feeds_it(tiny: camlens.Model) -> None:
    ex = camlens.Explainer(tiny, method="gradcam", layer=["feat", "top"])
    assert ex.heads["feat"] is None
    head = ex.heads["top"]
    assert head is not None and head.name == "fc"
    assert ex.head_gradients == {"top"}


def test_cam_equals_head_weights_times_activations(tiny: camlens.Model, x: torch.Tensor) -> None:
    ref = by_hand(tiny.net, x)  # type: ignore[arg-type]
    results = camlens.Explainer(tiny, method="cam", layer="top").explain(x, classes=[1, 0])
    for i, result in enumerate(results):
        for m in result.maps:
            raw = sum(ref["wfc"][m.class_index, k] * ref["top"][i, k] for k in range(3))
            np.testing.assert_allclose(m.map.numpy(), normalized(raw), atol=1e-5)


def test_cam_on_a_layer_without_head_names_the_head(tiny: camlens.Model) -> None:
    with pytest.raises(camlens.CamlensError, match=r"'fc' takes 3 features, 'feat' gives 2"):
        camlens.Explainer(tiny, method="cam", layer="feat")


def test_constant_map_is_zeros_and_flagged(x: torch.Tensor) -> None:
    net = Tiny()
    with torch.no_grad():
        net.fc.weight[0].zero_()  # class 0 ignores every feature: its map is 0 everywhere
    config = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model = camlens.load_model(net, preprocess=config)
    for method in ["cam", "gradcam", "gradcampp", "xgradcam", "layercam"]:
        result = camlens.Explainer(model, method=method, layer="top").explain(x[0], classes=[0])
        m = result.maps[0]
        assert m.flat
        assert torch.equal(m.map, torch.zeros(H, W))
        assert torch.isfinite(result.map_at_image(0)).all()


def test_model_is_left_as_it_was(x: torch.Tensor) -> None:
    """No parameter gradients, requires_grad flags untouched, train mode restored, no hooks left."""
    net = Tiny()
    net.conv1.weight.requires_grad_(False)  # a partly frozen model
    net.train()
    config = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model = camlens.Model(net, config, ("a", "b"), "tiny")
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    camlens.Explainer(model, method="gradcam", layer="feat").explain(x, top=2)
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert all(p.grad is None for p in net.parameters())
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())


def test_frozen_model_still_gets_gradients(x: torch.Tensor) -> None:
    net = Tiny().requires_grad_(False)
    config = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model = camlens.load_model(net, preprocess=config)
    ref = by_hand(net, x)
    result = camlens.Explainer(model, method="gradcam", layer="feat").explain(x[0], classes=[1])
    want = normalized(expected_raw("gradcam", ref["feat"][0], ref["grad_feat"][1, 0]))
    np.testing.assert_allclose(result.maps[0].map.numpy(), want, atol=1e-5)


def test_hooks_removed_when_forward_raises(tiny: camlens.Model) -> None:
    from camlens.taps import Taps

    net = tiny.net
    with pytest.raises(RuntimeError), Taps(net, ["feat", "top"]):
        net(torch.zeros(1, 5, H, W))  # wrong channel count: conv1 raises
    assert all(not m._forward_hooks for m in net.modules())


def test_several_classes_per_image_and_lengths_checked(
    tiny: camlens.Model, x: torch.Tensor
) -> None:
    ex = camlens.Explainer(tiny, method="gradcam", layer="feat")
    first, second = ex.explain(x, classes=[[0, 1], ["b"]])
    assert [m.class_index for m in first.maps] == [0, 1]
    assert [m.class_index for m in second.maps] == [1]
    with pytest.raises(camlens.CamlensError, match="3 class lists given for 2 images"):
        ex.explain(x, classes=[[0], [1], [0]])
    with pytest.raises(camlens.CamlensError, match="out of range"):
        ex.explain(x, classes=[2])
    with pytest.raises(camlens.CamlensError, match="not both"):
        ex.explain(x, classes=[0], top=2)


def test_several_methods_and_layers_in_one_call(tiny: camlens.Model, x: torch.Tensor) -> None:
    ex = camlens.Explainer(tiny, method=["gradcam", "layercam"], layer=["feat", "top"])
    result = ex.explain(x[0], top=2)
    keys = {(m.layer, m.method, m.class_index) for m in result.maps}
    assert len(result.maps) == len(keys) == 2 * 2 * 2
    single = camlens.Explainer(tiny, method="layercam", layer="feat").explain(x[0], top=2)
    by_key = {(m.layer, m.method, m.class_index): m.map for m in result.maps}
    for m in single.maps:
        assert torch.equal(by_key[("feat", "layercam", m.class_index)], m.map)


def test_model_without_conv_layer_is_refused() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 4))
    config = PreprocessConfig(input_size=(H, W))
    model = camlens.load_model(mlp, preprocess=config)
    with pytest.raises(camlens.CamlensError, match="no layer with a spatial output"):
        camlens.Explainer(model)
    with pytest.raises(camlens.CamlensError, match="not a spatial map"):
        camlens.Explainer(model, layer="1")
