"""Targets other than a softmax class, on the tiny hand-built network of test_methods_exact.py:
each target kind with each method kind against values computed here by the chain rule and the
papers' formulas in loops; the checks that refuse bad targets; one batched backward for several."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_methods_exact import GRADIENT_METHODS, H, Tiny, W, expected_raw, normalized
from torch import nn

import camlens
from camlens.capture import Capture, Settings, find_targets
from camlens.errors import CamlensError, ClassError, MethodError
from camlens.images import PreprocessConfig
from camlens.maps import normalize
from camlens.methods import get_method
from camlens.models.scores import set_scores
from camlens.modes import eval_mode
from camlens.replay import plan_replay
from camlens.scoring import TargetPlan
from camlens.targets import (
    Binary,
    ClassScore,
    Contrast,
    Function,
    Output,
    Similarity,
    TargetError,
    as_target,
    target_from_dict,
)

CONFIG = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def tiny() -> camlens.Model:
    return camlens.load_model(Tiny(), preprocess=CONFIG, labels=["a", "b"])


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4x4 RGB picture whose pixels (0..255 -> /255, mean 0 std 1) are the reference input."""
    g = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def ref_input(path: Path) -> torch.Tensor:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


# --- by hand -------------------------------------------------------------------------------------


def forward_by_hand(net: Tiny, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Both layers' activations, the pre-ReLU ``z`` of the top layer, the pooled features ``u``
    (the input of fc, the default embedding) and the logits, in float64 with explicit loops."""
    with torch.no_grad():
        a = F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)).double().numpy()
    v = net.conv2.weight.detach().double().numpy()[:, :, 0, 0]
    b = net.conv2.bias.detach().double().numpy()
    wfc = net.fc.weight.detach().double().numpy()
    bfc = net.fc.bias.detach().double().numpy()
    n, k, h, w = a.shape
    z = np.zeros((n, 3, h, w))
    for i in range(n):
        for m in range(3):
            z[i, m] = sum(v[m, kk] * a[i, kk] for kk in range(k)) + b[m]
    r = np.maximum(z, 0)
    u = r.mean(axis=(2, 3))
    y = u @ wfc.T + bfc
    return {"feat": a, "top": r, "z": z, "u": u, "y": y, "v": v, "wfc": wfc}


def grads_from_pooled(f: dict[str, np.ndarray], du: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients at both layers of a score whose gradient with respect to the pooled features
    ``u`` [N, 3] is ``du``: ``d/d top = du / (h w)``, ``d/d feat = sum_m du_m / (h w) [z>0] V``."""
    n, k, h, w = f["feat"].shape
    g_top = np.zeros((n, 3, h, w))
    g_feat = np.zeros((n, k, h, w))
    for i in range(n):
        for m in range(3):
            g_top[i, m] = du[i, m] / (h * w)
            for kk in range(k):
                g_feat[i, kk] += du[i, m] / (h * w) * (f["z"][i, m] > 0) * f["v"][m, kk]
    return {"top": g_top, "feat": g_feat}


def cosine_grad(u: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos(u_i, r) and its gradient with respect to u_i: r/(|u||r|) - cos u/|u|^2."""
    cos = np.zeros(len(u))
    grad = np.zeros_like(u)
    for i in range(len(u)):
        nu, nr = np.linalg.norm(u[i]), np.linalg.norm(r)
        cos[i] = u[i] @ r / (nu * nr)
        grad[i] = r / (nu * nr) - cos[i] * u[i] / nu**2
    return cos, grad


# --- running camlens below the Explainer ---------------------------------------------------------


def camlens_maps(
    model: camlens.Model,
    x: torch.Tensor,
    layer: str,
    method: str,
    chosen: list[list[object]],
    *,
    head_gradients: bool = True,
) -> tuple[torch.Tensor, Capture]:
    """Normalized maps [N, D, h, w] of ``chosen`` targets per image, and the capture."""
    plan = TargetPlan(model, [t for ts in chosen for t in ts])
    (target,) = find_targets(model, [layer])
    target = replace(
        target,
        replay=plan_replay(model.net, target.name, target.module, target.adapter, target.head),
    )
    m = get_method(method)
    with eval_mode(model.net):
        capture = Capture(
            model,
            [target],
            x,
            gradients=[layer] if m.needs == "gradients" else [],
            settings=Settings(head_gradients=head_gradients),
            plan=plan,
        )
        goals = capture.goals(chosen)
        raw = m.maps(capture, layer, goals)
    maps = torch.stack([normalize(raw[:, j].detach())[0] for j in range(raw.shape[1])], dim=1)
    return maps, capture


# --- hand-computed, gradient methods -------------------------------------------------------------


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("layer", ["feat", "top"])
def test_contrast_output_and_callable_equal_hand_computed(
    tiny: camlens.Model, x: torch.Tensor, method: str, layer: str
) -> None:
    f = forward_by_hand(tiny.net, x)  # type: ignore[arg-type]
    wfc = f["wfc"]
    # a callable that is not linear: 2 y0 - y1^2, whose gradient in u is 2 W0 - 2 y1 W1
    nonlinear = Function(lambda y: 2 * y[:, 0] - y[:, 1] ** 2, "curve")
    du = {
        "contrast": np.repeat((wfc[0] - wfc[1])[None], len(x), 0),
        "output": np.repeat(wfc[1][None], len(x), 0),
        "curve": 2 * wfc[0][None] - 2 * f["y"][:, 1:2] * wfc[1][None],
    }
    chosen: list[list[object]] = [[Contrast(0, (1,)), Output(1), nonlinear]] * len(x)
    for head_gradients in (True, False):
        maps, capture = camlens_maps(tiny, x, layer, method, chosen, head_gradients=head_gradients)
        assert capture.backward_passes == (0 if head_gradients and layer == "top" else 1) or (
            capture.backward_passes == 1
        )  # the callable needs a backward pass; the three ranks share it
        for j, kind in enumerate(["contrast", "output", "curve"]):
            g = grads_from_pooled(f, du[kind])[layer]
            for i in range(len(x)):
                want = normalized(expected_raw(method, f[layer][i], g[i]))
                np.testing.assert_allclose(maps[i, j].numpy(), want, atol=1e-5)


def test_similarity_equals_hand_computed(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    f = forward_by_hand(tiny.net, x)  # type: ignore[arg-type]
    r = forward_by_hand(tiny.net, ref_input(reference))["u"][0]  # type: ignore[arg-type]
    cos, du = cosine_grad(f["u"], r)
    for layer in ("feat", "top"):
        maps, capture = camlens_maps(tiny, x, layer, "gradcam", [[Similarity(str(reference))]] * 2)
        goals = capture.goals([[Similarity(str(reference))]] * 2)
        assert goals.values is not None
        np.testing.assert_allclose(goals.values[:, 0].numpy(), cos, atol=1e-6)
        g = grads_from_pooled(f, du)[layer]
        for i in range(len(x)):
            want = normalized(expected_raw("gradcam", f[layer][i], g[i]))
            np.testing.assert_allclose(maps[i, 0].numpy(), want, atol=1e-5)


def test_binary_positive_and_negative_equal_hand_computed(x: torch.Tensor) -> None:
    net = Tiny()
    net.fc = nn.Linear(3, 1)
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    model = camlens.load_model(net, preprocess=CONFIG)
    assert model.scores == "sigmoid"  # one output: sigmoid unless told otherwise
    f = forward_by_hand(net, x)
    w0 = net.fc.weight.detach().double().numpy()[0]
    for positive in (True, False):
        maps, _ = camlens_maps(model, x, "top", "gradcam", [[Binary(positive)]] * 2)
        sign = 1 if positive else -1
        g = grads_from_pooled(f, np.repeat(sign * w0[None], 2, 0))["top"]
        for i in range(2):
            want = normalized(expected_raw("gradcam", f["top"][i], g[i]))
            np.testing.assert_allclose(maps[i, 0].numpy(), want, atol=1e-5)


# --- CAM: only where the target is linear in the head --------------------------------------------


def test_cam_of_a_contrast_reads_the_difference_of_head_rows(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    f = forward_by_hand(tiny.net, x)  # type: ignore[arg-type]
    maps, _ = camlens_maps(tiny, x, "top", "cam", [[Contrast(1, (0,))]] * 2)
    for i in range(2):
        raw = sum((f["wfc"][1, k] - f["wfc"][0, k]) * f["top"][i, k] for k in range(3))
        np.testing.assert_allclose(maps[i, 0].numpy(), normalized(raw), atol=1e-5)
    with pytest.raises(MethodError, match="linear in a GAP -> Linear head"):
        camlens_maps(tiny, x, "top", "cam", [[Similarity(str(reference))]] * 2)


# --- perturbation methods score their passes with the target -------------------------------------


def minmax(m: torch.Tensor) -> torch.Tensor:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else torch.zeros_like(m)


def test_scorecam_of_a_contrast_and_a_similarity_equal_hand_computed(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    net = tiny.net
    r = torch.from_numpy(forward_by_hand(net, ref_input(reference))["u"][0])  # type: ignore[arg-type]

    def pooled(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net.pool(net.top(net.conv2(net.feat(net.conv1(inp))))).flatten(1).double()

    chosen: list[list[object]] = [[Contrast(0, (1,)), Similarity(str(reference))]] * 2
    maps, _ = camlens_maps(tiny, x, "top", "scorecam", chosen)
    a = torch.from_numpy(forward_by_hand(net, x)["top"])  # type: ignore[arg-type]
    for i in range(2):
        contrast, similar = [], []
        for k in range(3):
            mask = minmax(a[i, k])  # the layer is at the input's size: no upsampling
            u = pooled(x[i : i + 1] * mask.float())[0]
            with torch.no_grad():
                y = net.fc(u.float()[None])[0].double()
            contrast.append(float(y[0] - y[1]))
            similar.append(float(u @ r / (u.norm() * r.norm())))
        for j, scores in enumerate([contrast, similar]):
            w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            raw = sum(w[k] * a[i, k] for k in range(3))
            np.testing.assert_allclose(maps[i, j].numpy(), normalized(raw.numpy()), atol=1e-5)


def test_ablationcam_of_a_contrast_equals_hand_computed(
    tiny: camlens.Model, x: torch.Tensor
) -> None:
    f = forward_by_hand(tiny.net, x)  # type: ignore[arg-type]
    maps, _ = camlens_maps(tiny, x, "top", "ablationcam", [[Contrast(1, (0,))]] * 2)
    wfc, u, top = f["wfc"], f["u"], f["top"]
    for i in range(2):
        base = (wfc[1] - wfc[0]) @ u[i]  # the biases cancel in the contrast
        weights = []
        for k in range(3):
            ablated = u[i].copy()
            ablated[k] = 0
            weights.append((base - (wfc[1] - wfc[0]) @ ablated) / base)
        raw = sum(weights[k] * top[i, k] for k in range(3))
        np.testing.assert_allclose(maps[i, 0].numpy(), normalized(raw), atol=1e-5)


# --- several targets, one backward ---------------------------------------------------------------


def test_several_targets_of_any_kinds_share_one_backward(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    kinds: list[object] = [
        ClassScore(0),
        Contrast(0, (1,)),
        Output(1),
        Similarity(str(reference)),
        Function(lambda y: y[:, 0] * y[:, 1], "product"),
    ]
    together, capture = camlens_maps(tiny, x, "feat", "gradcam", [kinds] * 2)
    assert capture.backward_passes == 1
    for j, kind in enumerate(kinds):
        alone, _ = camlens_maps(tiny, x, "feat", "gradcam", [[kind]] * 2)
        torch.testing.assert_close(together[:, j], alone[:, 0], atol=1e-6, rtol=0)


def test_next_contrast_and_top_contrast_follow_the_predictions(
    tiny: camlens.Model, x: torch.Tensor
) -> None:
    plan = TargetPlan(tiny, [Contrast(next=1)])
    logits = tiny.net(x).detach()
    goals = plan.goals(logits, [[Contrast(next=1)]] * 2)
    for i in range(2):
        top, second = logits[i].argsort(descending=True).tolist()
        assert goals.explained[i][0].data == {"kind": "contrast", "classes": [top, second]}
        assert goals.values is not None
        assert float(goals.values[i, 0]) == pytest.approx(float(logits[i, top] - logits[i, second]))
        assert goals.explained[i][0].words == f"{tiny.labels[top]} versus {tiny.labels[second]}"


# --- checks --------------------------------------------------------------------------------------


def test_targets_round_trip_through_json() -> None:
    targets = [
        ClassScore("tiger cat"),
        Contrast("tiger cat", ("Egyptian cat", 281)),
        Contrast(next=3),
        Binary(False),
        Output(2),
        Similarity("ref.jpg", "layer4"),
    ]
    for t in targets:
        assert target_from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert as_target(285) == ClassScore(285)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Contrast(282, (282,)), "versus itself"),
        (lambda: Contrast("Tiger_Cat", ("tiger cat",)), "versus itself"),
        (lambda: Contrast(282), "give the classes to compare with"),
        (lambda: Contrast(282, (1,), next=2), "not both"),
        (lambda: Output(-1), "whole number >= 0"),
        (lambda: target_from_dict({"kind": "callable"}), "never unpickled"),
        (lambda: target_from_dict({"kind": "cosine"}), "unknown target kind 'cosine'"),
        (lambda: target_from_dict({"kind": "output", "idx": 1}), "unknown key"),
        (lambda: Function(len).to_dict(), "cannot be written as JSON"),
    ],
)
def test_bad_targets_are_refused_naming_the_problem(make: object, match: str) -> None:
    with pytest.raises(CamlensError, match=match):
        make()  # type: ignore[operator]


def test_targets_the_model_cannot_give_are_refused(tiny: camlens.Model, tmp_path: Path) -> None:
    with pytest.raises(ClassError, match="out of range"):
        TargetPlan(tiny, [ClassScore(5)])
    with pytest.raises(ClassError, match="versus itself"):
        TargetPlan(tiny, [Contrast("a", (0,))])
    with pytest.raises(TargetError, match=r"output 2 is out of range: .* has 2 outputs"):
        TargetPlan(tiny, [Output(2)])
    with pytest.raises(TargetError, match=r"one-output head; .* has 2 outputs"):
        TargetPlan(tiny, [Binary()])
    with pytest.raises(TargetError, match="reference cannot be read"):
        TargetPlan(tiny, [Similarity(str(tmp_path / "missing.jpg"))])
    with pytest.raises(TargetError, match="no layer named 'nope'"):
        TargetPlan(tiny, [Similarity(str(tmp_path / "missing.jpg"), "nope")])
    with pytest.raises(ClassError, match="next 2 needs 3 classes"):
        TargetPlan(tiny, [Contrast(next=2)])


def test_a_callable_giving_the_wrong_shape_is_named(tiny: camlens.Model, x: torch.Tensor) -> None:
    with pytest.raises(TargetError, match=r"'whole' gave \(2, 2\) for 2 images"):
        camlens_maps(tiny, x, "top", "gradcam", [[Function(lambda y: y, "whole")]] * 2)


# --- the model's scoring -------------------------------------------------------------------------


def test_scores_are_set_at_load_and_checked(x: torch.Tensor) -> None:
    model = camlens.load_model(Tiny(), preprocess=CONFIG, scores="sigmoid")
    logits = model.net(x).detach()
    torch.testing.assert_close(model.predict(logits), torch.sigmoid(logits))
    raw = camlens.load_model(Tiny(), preprocess=CONFIG, scores="raw")
    torch.testing.assert_close(raw.predict(logits), logits)
    with pytest.raises(TargetError, match="scores must be one of softmax, sigmoid, raw"):
        camlens.load_model(Tiny(), preprocess=CONFIG, scores="tanh")
    probabilities = nn.Sequential(Tiny(), nn.Softmax(dim=1))
    with pytest.raises(TargetError, match="already probabilities"):
        camlens.load_model(probabilities, preprocess=CONFIG, scores="sigmoid")
    one = Tiny()
    one.fc = nn.Linear(3, 1)
    with pytest.raises(TargetError, match="one output: softmax of one output is always 1"):
        camlens.load_model(one, preprocess=CONFIG, scores="softmax")


def test_checkpoints_keep_the_scoring(tmp_path: Path) -> None:
    import warnings

    from camlens.models.checkpoint import read_header

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        model = camlens.build_cam_model(
            "torchvision:resnet18", class_names=["cat", "dog", "owl"], input_size=64
        )
    set_scores(model, "sigmoid")
    path = camlens.save(model, tmp_path / "tags.camlens")
    assert read_header(path).scores == "sigmoid"
    loaded = camlens.load_model(path)
    assert loaded.scores == "sigmoid"
    assert camlens.load_model(path, scores="raw").scores == "raw"  # what the caller says wins


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_sigmoid_heads_give_logits_and_sigmoid_scoring(tmp_path: Path) -> None:
    from camlens.models.keras import import_keras

    keras = import_keras()  # on the torch backend
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    km = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid", name="tags")(h))
    path = tmp_path / "tags.keras"
    km.save(path)
    (tmp_path / "tags.keras.json").write_text(json.dumps({"mode": "raw"}))
    model = camlens.load_model(path)
    assert model.scores == "sigmoid"
    x = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        logits = model.net(x)
    expected = np.asarray(keras.ops.convert_to_numpy(km(x.permute(0, 2, 3, 1))))
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), expected, atol=1e-5)
    (tmp_path / "tags.keras.json").write_text(json.dumps({"mode": "raw", "scores": "raw"}))
    assert camlens.load_model(path).scores == "raw"
    (tmp_path / "tags.keras.json").write_text(json.dumps({"mode": "raw", "scores": "odds"}))
    with pytest.raises(TargetError, match="scores must be one of"):
        camlens.load_model(path)


# --- through the Explainer and its config ----------------------------------------------------------


def test_the_explainer_runs_the_targets_of_its_config(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    f = forward_by_hand(tiny.net, x)  # type: ignore[arg-type]
    ex = camlens.Explainer(
        tiny, method="gradcam", layer="feat", targets=[Contrast("b", ("a",)), Output(0)]
    )
    assert ex.config.targets == (Contrast("b", ("a",)), Output(0))
    results = ex.explain(x)
    for i, result in enumerate(results):
        contrast, output = result.maps
        assert contrast.target == {"kind": "contrast", "classes": [1, 0]}
        assert contrast.explained == "b versus a" and contrast.class_index == 1
        assert contrast.value == pytest.approx(f["y"][i, 1] - f["y"][i, 0], abs=1e-5)
        assert output.target == {"kind": "output", "index": 0}
        g = grads_from_pooled(f, np.repeat((f["wfc"][1] - f["wfc"][0])[None], 2, 0))["feat"]
        want = normalized(expected_raw("gradcam", f["feat"][i], g[i]))
        np.testing.assert_allclose(contrast.map.numpy(), want, atol=1e-5)
        entry = result.to_dict()["explanations"][0]
        assert entry["target"] == {"kind": "contrast", "classes": [1, 0]}
        assert entry["explained"] == "b versus a"
    assert ex.config.to_dict()["targets"][0] == {"kind": "contrast", "class": "b", "versus": ["a"]}
    again = camlens.Explainer.from_config(ex.config, tiny).explain(x)
    assert torch.equal(again[0].maps[0].map, results[0].maps[0].map)


def test_cam_is_left_out_for_a_similarity_and_callables_stay_out_of_json(
    tiny: camlens.Model, x: torch.Tensor, reference: Path
) -> None:
    with pytest.warns(UserWarning, match="cam left out: CAM applies where the target is linear"):
        ex = camlens.Explainer(
            tiny, method=["cam", "gradcam"], layer="top", targets=[Similarity(str(reference))]
        )
    assert ex.config.methods == ("gradcam",)
    assert ex.explain(x[0]).maps[0].target == {
        "kind": "similarity",
        "reference": str(reference),
        "layer": None,
    }
    with pytest.raises(MethodError, match="not to the callable 'f'"):
        camlens.Explainer(tiny, method="cam", layer="top", targets=[Function(len, "f")])
    ex = camlens.Explainer(tiny, layer="top", targets=[Function(lambda y: y[:, 0], "first")])
    assert ex.explain(x[0]).maps[0].explained == "first"
    with pytest.raises(TargetError, match="cannot be written as JSON"):
        ex.config.to_json()


def test_above_explains_every_class_scored_at_least_that(x: torch.Tensor) -> None:
    model = camlens.load_model(Tiny(), preprocess=CONFIG, labels=["a", "b"], scores="sigmoid")
    logits = model.net(x).detach()
    probs = torch.sigmoid(logits)
    threshold = float(probs.flatten().sort().values[1])  # some images have one class, some two
    results = camlens.Explainer(model, layer="top", above=threshold).explain(x)
    for i, result in enumerate(results):
        wanted = sorted(
            (c for c in range(2) if probs[i, c] >= threshold), key=lambda c: -probs[i, c]
        )
        assert [m.class_index for m in result.maps] == wanted
        assert [p.score for p in result.predictions] == pytest.approx(
            sorted(probs[i].tolist(), reverse=True)
        )
        assert result.to_dict()["scores"] == "sigmoid"
    with pytest.warns(UserWarning, match="no class scored at least 2"):
        assert camlens.Explainer(model, layer="top", above=2.0).explain(x[0]).maps == []
    # with top: at most top of them, the best first (here the best of the images that have two)
    assert max(len(r.maps) for r in results) == 2
    capped = camlens.Explainer(model, layer="top", above=threshold, top=1).explain(x)
    for result, full in zip(capped, results, strict=True):
        assert [m.class_index for m in result.maps] == [m.class_index for m in full.maps][:1]
    with pytest.raises(ClassError, match="give one of classes, top, targets"):
        camlens.ExplainConfig(classes=(0,), above=0.5)
    with pytest.raises(ClassError, match="not targets and above"):
        camlens.ExplainConfig(top=2, above=0.5, targets=({"kind": "output", "index": 0},))
