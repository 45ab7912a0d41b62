"""Oracle tests: camlens's maps against the peers' maps, pytorch-grad-cam (PyPI ``grad-cam`` 1.5,
``pytorch_grad_cam``) and torchcam 0.5, on the same model, input, layer and class.

Both sides are compared at the layer's resolution after the same normalization, done here
independently of camlens: ReLU, then min-max to [0, 1] (:func:`relu_minmax`). The peers' raw maps
are reached through their lower-level pieces: pytorch-grad-cam's ``forward`` resizes its output to
the input size with cv2, so we run its own ``ActivationsAndGradients`` and backward pass and call the
method's ``get_cam_image`` (the map before its ReLU, normalization and resizing); torchcam's
extractors give layer-resolution maps already, asked for with ``normalized=False``.

Cases: the default model (EfficientNet-Lite0, layer ``bn2``) on chelsea for its top two classes,
and torchvision ResNet-18 with random weights (seed 0) at ``layer4``. Both layers feed a GAP ->
Linear head, where the gradient is constant over each channel, so camlens can take it from the
head's weights: both ``use_head_gradients=True`` and ``False`` are checked against the peers' real
backward passes. ResNet-18's ``layer3`` (14 x 14, no head after it) adds a case where the gradients
vary over the map, which is what tells Grad-CAM, XGrad-CAM, HiResCAM, LayerCAM and Grad-CAM
element-wise apart.

Where a peer departs from the paper's formula, camlens is not bent: the difference is pinned by a
test that shows it exists and what explains it (Grad-CAM++ in both peers, CAM's ReLU in torchcam).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.images import load_image, preprocess
from camlens.methods.gradient import gradcampp

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOLERANCE = 1e-4

PGC_CLASSES: dict[str, Any] = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "gradcam_elementwise": pgc.GradCAMElementWise,
}
# CAM and the Grad-CAM family, the methods compared here (the score-weighted and principal-component
# methods have their own oracle tests in test_perturbation.py and test_eigen.py).
FAMILY = ["cam", *PGC_CLASSES]
TORCHCAM_CLASSES: dict[str, Any] = {
    "gradcam": tcm.GradCAM,
    "gradcampp": tcm.GradCAMpp,
    "xgradcam": tcm.XGradCAM,
    "layercam": tcm.LayerCAM,
    "cam": tcm.CAM,
}
# The Linear layer of each GAP -> Linear head, for torchcam's CAM.
FC_LAYER = {"bn2": "classifier", "layer4": "fc"}


def relu_minmax(raw: np.ndarray | torch.Tensor) -> np.ndarray:
    """ReLU, then min-max to [0, 1], of one map [h, w] (float64, written here on its own)."""
    m = np.maximum(np.asarray(raw, dtype=np.float64), 0.0)
    span = m.max() - m.min()
    assert span > 0, "a constant map cannot be compared"
    return (m - m.min()) / span


def max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@dataclass
class Case:
    """A model, an input [1, 3, H, W], a layer and a class; results are computed once and kept."""

    model: camlens.Model
    x: torch.Tensor
    layer: str
    cls: int
    has_head: bool
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def module(self) -> nn.Module:
        return dict(self.model.net.named_modules())[self.layer]

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def ours(self, method: str, use_head_gradients: bool) -> np.ndarray:
        """camlens's map for ``method`` (all methods come from one explain call per setting)."""

        def run() -> dict[str, np.ndarray]:
            methods = [m for m in FAMILY if self.has_head or m != "cam"]
            explainer = camlens.Explainer(
                self.model, method=methods, layer=self.layer, use_head_gradients=use_head_gradients
            )
            result = explainer.explain(self.x[0], classes=self.cls)
            assert [m.class_index for m in result.maps] == [self.cls] * len(methods)
            assert not any(m.flat for m in result.maps)
            return {m.method: m.map.numpy() for m in result.maps}

        maps: dict[str, np.ndarray] = self.cached(("ours", use_head_gradients), run)
        return maps[method]

    def pgc_pieces(self, method: str) -> tuple[Any, np.ndarray, np.ndarray]:
        """pytorch-grad-cam's own activations and gradients for the class, from its
        ``ActivationsAndGradients`` hooks and a backward pass of the class score, as its
        ``forward`` does; returns (the method object, A, G)."""

        def run() -> tuple[Any, np.ndarray, np.ndarray]:
            net = self.model.net
            cam = PGC_CLASSES[method](model=net, target_layers=[self.module])
            try:
                outputs = cam.activations_and_grads(self.x)
                net.zero_grad(set_to_none=True)
                ClassifierOutputTarget(self.cls)(outputs[0]).backward()
                a = cam.activations_and_grads.activations[0].numpy()
                g = cam.activations_and_grads.gradients[0].numpy()
            finally:
                cam.activations_and_grads.release()
                net.zero_grad(set_to_none=True)  # leave no parameter gradients on a shared model
            return cam, a, g

        pieces: tuple[Any, np.ndarray, np.ndarray] = self.cached(("pgc", method), run)
        return pieces

    def pgc_raw(self, method: str, scale: float = 1.0) -> np.ndarray:
        """pytorch-grad-cam's map before its ReLU, normalization and resizing; ``scale`` feeds it
        ``(A / scale, G * scale)`` instead of ``(A, G)``."""
        cam, a, g = self.pgc_pieces(method)
        raw = cam.get_cam_image(self.x, self.module, None, a / scale, g * scale, False)
        return np.asarray(raw[0])

    def torchcam(self, method: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """torchcam's raw map (``normalized=False``), with the gradients and activations it used
        (``hook_g``, ``hook_a``; no gradients for CAM)."""

        def run() -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
            net = self.model.net
            kwargs = {"fc_layer": FC_LAYER[self.layer]} if method == "cam" else {}
            with TORCHCAM_CLASSES[method](net, self.layer, **kwargs) as extractor:
                if method == "cam":
                    with torch.no_grad():
                        scores = net(self.x)
                else:
                    scores = net(self.x)
                raw = extractor(class_idx=self.cls, scores=scores, normalized=False)[0][0]
                gradients = extractor.hook_g[0]
                return raw, gradients, extractor.hook_a[0]

        result: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] = self.cached(
            ("torchcam", method), run
        )
        return result


CASE_IDS = [
    "lite0-bn2-top1",
    "lite0-bn2-top2",
    "resnet18-layer4",
    "resnet18-layer3",
    "resnet18-layer3.1.conv2",
]


@pytest.fixture(scope="module")
def cases(
    default_model: camlens.Model, resnet18: camlens.Model, chelsea: np.ndarray
) -> Iterator[dict[str, Case]]:
    photo = load_image(chelsea)
    x_lite = preprocess([photo], default_model.preprocess)
    x_resnet = preprocess([photo], resnet18.preprocess)
    with torch.no_grad():
        lite_top = default_model.net(x_lite)[0].topk(2).indices.tolist()
        resnet_top = int(resnet18.net(x_resnet)[0].argmax())
    assert lite_top[0] == 285  # Egyptian cat: the photo is read and preprocessed as expected
    yield {
        "lite0-bn2-top1": Case(default_model, x_lite, "bn2", lite_top[0], True),
        "lite0-bn2-top2": Case(default_model, x_lite, "bn2", lite_top[1], True),
        "resnet18-layer4": Case(resnet18, x_resnet, "layer4", resnet_top, True),
        "resnet18-layer3": Case(resnet18, x_resnet, "layer3", resnet_top, False),
        "resnet18-layer3.1.conv2": Case(resnet18, x_resnet, "layer3.1.conv2", resnet_top, False),
    }
    # the peers removed their hooks and left no parameter gradients on the shared models
    for model in (default_model, resnet18):
        for module in model.net.modules():
            assert not module._forward_hooks and not module._backward_hooks
        assert all(p.grad is None for p in model.net.parameters())


def _oracle_params() -> list[Any]:
    params = []
    for case_id in CASE_IDS:
        head_case = not case_id.startswith("resnet18-layer3")
        for peer, classes in (("pytorch-grad-cam", PGC_CLASSES), ("torchcam", TORCHCAM_CLASSES)):
            for method in classes:
                if method == "gradcampp":
                    continue  # both peers differ from the paper: pinned below
                if method == "cam" and not head_case:
                    continue
                settings = [True, False] if head_case and method != "cam" else [head_case]
                for head in settings:
                    params.append(
                        pytest.param(
                            case_id, method, peer, head, id=f"{case_id}-{method}-{peer}-head{head}"
                        )
                    )
    return params


@pytest.mark.parametrize(("case_id", "method", "peer", "use_head_gradients"), _oracle_params())
def test_same_map_as_peer(
    cases: dict[str, Case], case_id: str, method: str, peer: str, use_head_gradients: bool
) -> None:
    case = cases[case_id]
    ours = case.ours(method, use_head_gradients)
    raw = case.pgc_raw(method) if peer == "pytorch-grad-cam" else case.torchcam(method)[0]
    theirs = relu_minmax(raw)
    assert ours.shape == theirs.shape
    assert max_diff(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_maps_are_not_degenerate(cases: dict[str, Case], case_id: str) -> None:
    """The comparisons above mean something: every map has structure (not flat, not one hot spot),
    and where the gradients vary over the map the methods really differ from one another.

    Grad-CAM element-wise and LayerCAM coincide where the activations are non-negative (after a
    ReLU: ``ReLU(G * A) = ReLU(G) * A`` when ``A >= 0``), which holds at ``layer3``; the conv output
    ``layer3.1.conv2`` has negative activations and tells them apart."""
    case = cases[case_id]
    maps = {m: case.ours(m, True) for m in FAMILY if case.has_head or m != "cam"}
    for name, m in maps.items():
        assert m.shape in {(7, 7), (14, 14)}
        assert float((m > 0.05).mean()) > 0.1, name
        assert len(np.unique(m.round(4))) > m.size // 2, name
    if case.has_head:
        return
    _, a, _ = case.pgc_pieces("gradcam")
    names = list(maps)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if {first, second} == {"gradcam_elementwise", "layercam"} and a.min() >= 0:
                assert max_diff(maps[first], maps[second]) < TOLERANCE
            else:
                assert max_diff(maps[first], maps[second]) > 1e-2, (first, second)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_gradcampp_pytorch_grad_cam_eps(cases: dict[str, Case], case_id: str) -> None:
    """pytorch-grad-cam's Grad-CAM++ adds ``eps = 1e-6`` to the denominator of alpha,
    ``G^2 / (2 G^2 + sum_ab A * G^3 + eps)``. Gradients of a logit at these layers are ~1e-3 (so
    ``2 G^2`` ~ 1e-6): the eps is as large as the term it guards, and the map moves by several
    percent. camlens follows the paper (eq. 19) with no eps.

    Pinned: the maps differ by more than 1e-2. Feeding pytorch-grad-cam ``(A / s, G * s)`` leaves the
    paper's map unchanged (alpha is invariant, the weights scale by s, the activations by 1 / s, as
    checked on camlens's own function) but divides the eps's weight by s^2: with s = 1000 its map
    equals camlens's to 1e-4. So the eps is the whole difference.
    """
    case = cases[case_id]
    ours = case.ours("gradcampp", False)
    assert max_diff(ours, relu_minmax(case.pgc_raw("gradcampp"))) > 1e-2
    assert max_diff(ours, relu_minmax(case.pgc_raw("gradcampp", scale=1e3))) < TOLERANCE
    _, a, g = case.pgc_pieces("gradcampp")
    a_t, g_t = torch.from_numpy(a), torch.from_numpy(g)
    ours_scaled = gradcampp(a_t / 1e3, g_t * 1e3)[0]
    assert max_diff(ours, relu_minmax(gradcampp(a_t, g_t)[0])) < TOLERANCE
    assert max_diff(ours, relu_minmax(ours_scaled)) < TOLERANCE


def test_masked_in_place_division_is_lost() -> None:
    """The mechanism behind torchcam's Grad-CAM++ (next test): boolean-mask indexing returns a
    copy, so ``t[mask].div_(d)`` divides the copy and leaves ``t`` as it was."""
    t = torch.ones(3)
    t[torch.tensor([True, False, True])].div_(2.0)
    assert torch.equal(t, torch.ones(3))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_gradcampp_torchcam_alpha_is_not_divided(cases: dict[str, Case], case_id: str) -> None:
    """torchcam 0.5's ``GradCAMpp._get_weights`` sets ``alpha = G^2`` and divides it in place with
    ``alpha[idx][mask].div_(denominator[mask] + eps)``: the mask makes a copy, so the division is
    lost and its weights are ``w_k = sum_ij G^2 * ReLU(G)`` instead of the paper's
    ``sum_ij alpha * ReLU(G)`` with ``alpha = G^2 / (2 G^2 + sum_ab A * G^3)``. (Its intended
    denominator, ``2 G^2 + sum_ab A * G^3`` summed as ``sum_ab (A * G^3)``, would differ from eq. 19
    too where G varies over the map, and has an eps of 1e-8.)

    Pinned, on torchcam's own activations and gradients: its map equals the map with undivided
    alpha to 1e-4 and differs from camlens's by more than 1e-2, while camlens's formula on those
    same tensors gives camlens's map (so the inputs agree and only the formula differs).
    """
    case = cases[case_id]
    raw, g, a = case.torchcam("gradcampp")
    assert g is not None
    undivided = torch.einsum("nk,nkhw->nhw", (g.pow(2) * g.clamp(min=0)).sum(dim=(2, 3)), a)[0]
    ours = case.ours("gradcampp", False)
    theirs = relu_minmax(raw)
    assert max_diff(theirs, relu_minmax(undivided)) < TOLERANCE
    assert max_diff(theirs, ours) > 1e-2
    assert max_diff(relu_minmax(gradcampp(a, g)[0]), ours) < TOLERANCE
    assert max_diff(case.ours("gradcampp", True), ours) < TOLERANCE


def test_torchcam_cam_has_no_relu(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    """torchcam's CAM documents ``ReLU(sum_k w_k A_k)`` but its extractor leaves ``_relu`` False
    (only the gradient extractors switch it on), so its normalized map is the min-max of the raw
    map, negatives included: where the class has evidence against it, the background is lifted off
    zero. camlens applies the ReLU, as Zhou et al. and every other method here do.

    Pinned on chelsea for "espresso" (a class with negative CAM values; the top classes' maps are
    positive everywhere, so the oracle test above cannot see this): torchcam's own normalized map
    equals the plain min-max of its raw map and differs from camlens's by more than 1e-2, and with
    the ReLU the two agree to 1e-4."""
    x = preprocess([load_image(chelsea)], default_model.preprocess)
    espresso = default_model.class_index("espresso")
    with tcm.CAM(default_model.net, "bn2", fc_layer="classifier") as extractor:
        with torch.no_grad():
            default_model.net(x)
        raw = extractor(class_idx=espresso, normalized=False)[0][0].clone()
        shipped = extractor(class_idx=espresso)[0][0]
    assert float(raw.min()) < 0 < float(raw.max())
    ours = camlens.Explainer(default_model, method="cam", layer="bn2").explain(
        x[0], classes=espresso
    )
    ours_map = ours.maps[0].map.numpy()
    plain = (raw - raw.min()) / (raw.max() - raw.min())
    assert max_diff(shipped, plain) < TOLERANCE
    assert max_diff(shipped, ours_map) > 1e-2
    assert max_diff(relu_minmax(raw), ours_map) < TOLERANCE


def test_peers_read_a_layer_output_changed_in_place(
    resnet18: camlens.Model, chelsea: np.ndarray
) -> None:
    """In a ResNet block, ``out = self.bn2(out); out += identity; out = self.relu(out)`` changes
    ``bn2``'s output in place after the layer has run. Both peers keep that very tensor (detached,
    same storage), so at ``bn2`` they read the block's output (residual added, ReLU applied) instead
    of ``bn2``'s. camlens's taps pass a clone on to the rest of the network and keep the true output.

    Pinned at ``layer3.1.bn2``: each peer's activations equal the block ``layer3.1``'s output, not
    ``bn2``'s (which has negative values the block's ReLU output cannot have), and camlens's equal
    ``bn2``'s, checked against a plain recomputation ``bn2(conv2(...))`` with no hooks at all."""
    from camlens.taps import Taps

    net = resnet18.net
    x = preprocess([load_image(chelsea)], resnet18.preprocess)
    block = net.layer3[1]
    with torch.no_grad():
        before = net.layer3[0](net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        true_bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(before)))))
        true_block = block(before)
        with Taps(net, ["layer3.1.bn2"]) as taps:
            net(x)
    assert max_diff(taps.activations["layer3.1.bn2"], true_bn2) < 1e-5
    assert float(true_bn2.min()) < -1

    cam = pgc.GradCAM(model=net, target_layers=[block.bn2])
    try:
        cam.activations_and_grads(x)
        pgc_a = cam.activations_and_grads.activations[0]
    finally:
        cam.activations_and_grads.release()
    with tcm.GradCAM(net, "layer3.1.bn2") as extractor:
        with torch.no_grad():
            net(x)
        torchcam_a = extractor.hook_a[0]
    for peer_a in (pgc_a, torchcam_a):
        assert max_diff(peer_a, true_block) < 1e-5
        assert max_diff(peer_a, true_bn2) > 1
