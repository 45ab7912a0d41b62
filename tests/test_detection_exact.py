"""Detection targets on a tiny detector small enough to follow by hand: torchvision's output
format (a list of dicts with ``boxes``, ``labels``, ``scores``) from a 3x3 convolution, a ReLU
(the layer explained) and a 3x3 convolution giving two classes' logits per location; every
location whose sigmoid score is at least 0.5 is a detection with a fixed 4x4 box around it.
Everything camlens gives is checked against values computed here in float64 loops: the forward
pass, each detection's score (the row of its label whose box overlaps it most, IoU >= 0.5, else
0), Grad-CAM by the chain rule, Ablation-CAM with detections that stay, move to a neighbouring
location (followed by IoU) or vanish (score 0), Eigen-CAM by numpy's SVD, and a photo with no
detection."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_targets import camlens_maps
from torch import nn

import camlens
from camlens.images import PreprocessConfig, preprocess
from camlens.scoring import TargetPlan
from camlens.targets import Detection

H = W = 8  # the input; both convolutions keep its size
THRESHOLD = 0.9  # the tiny detector's own score threshold (torchvision's box_score_thresh)
LABELS = ("__background__", "circle", "square")
CONFIG = PreprocessConfig(input_size=(H, W), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SEED = 233  # 5 detections of both labels; ablating a channel keeps, moves or loses them


class TinyDetector(nn.Module):
    """``A = ReLU(conv3x3(x))`` [3, 8, 8] (``relu``), ``z = conv3x3(A)`` [2, 8, 8] (``head``),
    ``s = sigmoid(z)``, weights drawn from N(0, 0.5^2); each ``(l, i, j)`` with ``s >= threshold`` is a detection of label
    ``l + 1`` with the box ``(j - 1.5, i - 1.5, j + 2.5, i + 2.5)`` clipped to the image (as
    torchvision's detectors clip theirs; ``clip=False``: not), in no particular order. Called, as torchvision's
    detectors are, on a list of ``[3, H, W]`` images."""

    def __init__(self, threshold: float = THRESHOLD, seed: int = SEED, clip: bool = True) -> None:
        super().__init__()
        self.clip = clip
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(3, 2, 3, padding=1)
        self.threshold = threshold
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():  # scores spread over (0, 1), not all near 0.5
                p.copy_(0.5 * torch.randn(p.shape, generator=g))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        x = torch.stack(list(images))
        s = torch.sigmoid(self.head(self.relu(self.conv(x))))
        out = []
        for one in s:
            label, i, j = (one >= self.threshold).nonzero(as_tuple=True)
            boxes = torch.stack([j - 1.5, i - 1.5, j + 2.5, i + 2.5], dim=1).to(one.dtype)
            if self.clip:
                boxes = torch.stack([boxes[:, 0::2].clamp(0, W), boxes[:, 1::2].clamp(0, H)], 2)
            out.append({"boxes": boxes.flatten(1), "labels": label + 1, "scores": one[label, i, j]})
        return out


# --- by hand (float64, loops) ----------------------------------------------------------------

Found = tuple[float, int, tuple[float, float, float, float]]  # score, label, box


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 3x3 convolution with zero padding 1: ``out[o, i, j] = b[o] + sum_c,u,v w[o, c, u, v]
    x[c, i + u - 1, j + v - 1]``."""
    outs, ins = weight.shape[:2]
    h, w = x.shape[1:]
    out = np.zeros((outs, h, w))
    for o in range(outs):
        for i in range(h):
            for j in range(w):
                total = bias[o]
                for c in range(ins):
                    for u in range(3):
                        for v in range(3):
                            p, q = i + u - 1, j + v - 1
                            if 0 <= p < h and 0 <= q < w:
                                total += weight[o, c, u, v] * x[c, p, q]
                out[o, i, j] = total
    return out


def params(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
    assert conv.bias is not None
    return conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()


def features(net: TinyDetector, x: torch.Tensor) -> np.ndarray:
    """The ReLU's output A [3, 8, 8] of one image x [3, 8, 8]."""
    return np.maximum(conv3x3(x.double().numpy(), *params(net.conv)), 0)


def sigmoid_scores(net: TinyDetector, a: np.ndarray) -> np.ndarray:
    """The scores s [2, 8, 8] of features ``a``."""
    return 1 / (1 + np.exp(-conv3x3(a, *params(net.head))))


def detect(net: TinyDetector, a: np.ndarray) -> list[Found]:
    """The detections of features ``a``, best first."""
    s = sigmoid_scores(net, a)
    found = [
        (float(s[k, i, j]), k + 1, box_of(i, j))
        for k in range(2)
        for i in range(H)
        for j in range(W)
        if s[k, i, j] >= net.threshold
    ]
    return sorted(found, key=lambda d: -d[0])


def box_of(i: int, j: int) -> tuple[float, float, float, float]:
    return (max(j - 1.5, 0), max(i - 1.5, 0), min(j + 2.5, W), min(i + 2.5, H))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def matched(found: list[Found], box: tuple[float, ...], label: int) -> float:
    """A detection's score on a pass that found ``found``: the score of the detection of its label
    whose box overlaps ``box`` most, if that IoU is at least 0.5; else 0."""
    same = [(iou(box, b), s) for s, k, b in found if k == label]
    if not same:
        return 0.0
    overlap, score = max(same, key=lambda t: t[0])
    return score if overlap >= 0.5 else 0.0


def minmax(m: np.ndarray) -> np.ndarray:
    """ReLU, then min-max to [0, 1]."""
    m = np.maximum(m, 0)
    return (m - m.min()) / (m.max() - m.min())


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> TinyDetector:
    return TinyDetector().eval()


@pytest.fixture(scope="module")
def model(net: TinyDetector) -> camlens.Model:
    return camlens.load_model(net, preprocess=CONFIG, labels=LABELS)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def x(photo: np.ndarray) -> torch.Tensor:
    """The photo as the detector's input: pixels / 255, no normalization."""
    return torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def found(net: TinyDetector, x: torch.Tensor) -> list[Found]:
    out = detect(net, features(net, x[0]))
    scores = [s for s, _, _ in out]
    assert len(out) == 5 and {k for _, k, _ in out} == {1, 2}, out
    assert len(set(scores)) == len(scores)  # no tie: the order is the scores'
    return out


def targets_of(found: list[Found]) -> list[Any]:
    return [Detection(box, label, score) for score, label, box in found]


# --- the detector and its rows ---------------------------------------------------------------


def test_the_tiny_detector_is_a_detector(
    model: camlens.Model, x: torch.Tensor, photo: np.ndarray, found: list[Found]
) -> None:
    assert model.kind == "detection"
    assert model.labels == LABELS
    # the input is the photo / 255
    assert torch.equal(preprocess([Image.fromarray(photo)], model.preprocess), x)
    with torch.no_grad():
        rows = model.net(x)
    assert rows.shape == (1, len(found), 6)  # x0, y0, x1, y1, score, label; best first
    expected = [[*box, score, label] for score, label, box in found]
    np.testing.assert_allclose(rows[0].double().numpy(), expected, rtol=1e-6, atol=1e-6)


# --- the score of a detection on a pass ------------------------------------------------------


def test_matching_by_label_and_iou_on_rows_by_hand(model: camlens.Model) -> None:
    """The target box is (0, 0, 4, 4), label 1. Each case is the rows of a pass and the score
    expected: the row of label 1 that overlaps it most, counted at IoU >= 0.5."""
    target = Detection((0, 0, 4, 4), 1)

    def row(box: tuple[float, ...], score: float, label: int) -> list[float]:
        return [*box, score, label]

    cases = [
        ("the same box", [row((0, 0, 4, 4), 0.9, 1)], 0.9),
        ("moved by one pixel: IoU 12/20", [row((1, 0, 5, 4), 0.7, 1)], 0.7),
        ("IoU exactly 0.5 counts", [row((0, 0, 4, 2), 0.6, 1)], 0.6),
        ("IoU 7/16 < 0.5: lost", [row((0, 0, 3.5, 2), 0.6, 1)], 0.0),
        ("moved by two pixels: IoU 8/24", [row((2, 0, 6, 4), 0.8, 1)], 0.0),
        ("the same box, another label", [row((0, 0, 4, 4), 0.9, 2)], 0.0),
        (
            "another label overlaps more: the row of its own label counts",
            [row((0, 0, 4, 4), 0.9, 2), row((1, 0, 5, 4), 0.4, 1)],
            0.4,
        ),
        (
            "the row that overlaps most, not the best scored",
            [row((1, 0, 5, 4), 0.9, 1), row((0, 0, 4, 3.9), 0.2, 1)],
            0.2,
        ),
        (
            "a padding row (label -1, score 0) never counts",
            [row((0, 0, 4, 4), 0.8, 1), row((0, 0, 4, 4), 0.0, -1)],
            0.8,
        ),
        ("only padding rows", [row((0, 0, 4, 4), 0.0, -1)], 0.0),
    ]
    plan = TargetPlan(model, [target])
    base = torch.tensor([[row((0, 0, 4, 4), 0.5, 1)]])
    goals = plan.goals(base, [[target]])
    assert float(goals.values[0, 0]) == pytest.approx(0.5)
    for words, rows, expected in cases:
        found: list[Found] = [(r[4], int(r[5]), (r[0], r[1], r[2], r[3])) for r in rows]
        assert matched(found, target.box, 1) == pytest.approx(expected), words  # the hand rule
        score = goals.score(torch.tensor([rows]), torch.tensor([0]))
        assert float(score[0, 0]) == pytest.approx(expected), words
    nothing = goals.score(torch.zeros(1, 0, 6), torch.tensor([0]))  # a pass with no detection
    assert nothing.tolist() == [[0.0]]


# --- methods, by hand ------------------------------------------------------------------------


def gradcam_by_hand(net: TinyDetector, a: np.ndarray, detection: Found) -> np.ndarray:
    """Detection at location (i0, j0) of class l: ``s = sigmoid(z[l, i0, j0])``, so
    ``ds/dA[k, p, q] = s (1 - s) V[l, k, p - i0 + 1, q - j0 + 1]`` inside the 3x3 window (and the
    image), 0 elsewhere; ``alpha_k`` is its mean over the 8x8 locations, Grad-CAM
    ``ReLU(sum_k alpha_k A_k)``."""
    score, label, box = detection
    l = label - 1  # noqa: E741
    i0, j0 = next((i, j) for i in range(H) for j in range(W) if box_of(i, j) == box)
    weight = params(net.head)[0]
    grad = np.zeros_like(a)
    for k in range(a.shape[0]):
        for p in range(H):
            for q in range(W):
                u, v = p - i0 + 1, q - j0 + 1
                if 0 <= u < 3 and 0 <= v < 3:
                    grad[k, p, q] = score * (1 - score) * weight[l, k, u, v]
    alpha = grad.mean(axis=(1, 2))
    return (alpha[:, None, None] * a).sum(axis=0)


def test_gradcam_of_each_detection_by_hand(
    model: camlens.Model, net: TinyDetector, x: torch.Tensor, found: list[Found]
) -> None:
    """The five detections' maps in one call (one batched backward), each against the chain
    rule; their scores are the detector's."""
    a = features(net, x[0])
    maps, capture = camlens_maps(model, x, "relu", "gradcam", [targets_of(found)])
    goals = capture.goals([targets_of(found)])
    np.testing.assert_allclose(goals.values[0].numpy(), [s for s, _, _ in found], rtol=1e-5)
    for j, detection in enumerate(found):
        expected = minmax(gradcam_by_hand(net, a, detection))
        np.testing.assert_allclose(maps[0, j].numpy(), expected, atol=1e-5, err_msg=str(j))
    alone, _ = camlens_maps(model, x, "relu", "gradcam", [targets_of(found)[2:3]])
    assert torch.allclose(alone[0, 0], maps[0, 2], atol=1e-6)  # batched = alone


def test_ablationcam_by_hand_keeps_follows_or_loses_each_detection(
    model: camlens.Model, net: TinyDetector, x: torch.Tensor, found: list[Found]
) -> None:
    """Ablation-CAM: ``w_k = (s - s_k) / s`` with ``s_k`` the detection's score when channel
    ``k`` of A is zeroed: the pass's detection of its label overlapping it most (the same box,
    or a neighbour's whose IoU is 12/20 = 0.6), or 0 when none overlaps it by 0.5 or more."""
    a = features(net, x[0])
    maps, _ = camlens_maps(model, x, "relu", "ablationcam", [targets_of(found)])
    outcomes = []
    for j, (score, label, box) in enumerate(found):
        w = np.zeros(3)
        for k in range(3):
            ablated = a.copy()
            ablated[k] = 0
            after = detect(net, ablated)
            # no score within float32's reach of the threshold: the same detections as camlens's
            assert np.abs(sigmoid_scores(net, ablated) - THRESHOLD).min() > 1e-3
            s_k = matched(after, box, label)
            same = any(b == box and lab == label for _, lab, b in after)
            outcomes.append("lost" if s_k == 0 else "kept" if same else "followed")
            w[k] = (score - s_k) / score
        expected = minmax((w[:, None, None] * a).sum(axis=0))
        np.testing.assert_allclose(maps[0, j].numpy(), expected, atol=1e-5, err_msg=str(j))
    assert {"kept", "followed", "lost"} <= set(outcomes), outcomes  # each case is exercised


def test_eigencam_is_the_features_first_component_for_every_detection(
    model: camlens.Model, net: TinyDetector, x: torch.Tensor, found: list[Found]
) -> None:
    """Eigen-CAM needs no target: every detection gets A's first principal component (locations
    x channels, centred), the same map, up to the sign camlens fixes (the component correlates
    positively with the channels' mean)."""
    a = features(net, x[0])
    flat = a.reshape(3, -1).T
    flat = flat - flat.mean(axis=0)
    projection = (flat @ np.linalg.svd(flat, full_matrices=False)[2][0]).reshape(H, W)
    mean = a.mean(axis=0)
    if ((projection - projection.mean()) * (mean - mean.mean())).sum() < 0:
        projection = -projection
    maps, _ = camlens_maps(model, x, "relu", "eigencam", [targets_of(found)])
    for j in range(len(found)):
        np.testing.assert_allclose(maps[0, j].numpy(), minmax(projection), atol=1e-5)


# --- through the Explainer -------------------------------------------------------------------


def test_explainer_explains_the_detections_above_min_score(
    model: camlens.Model, net: TinyDetector, photo: np.ndarray, x: torch.Tensor, found: list[Found]
) -> None:
    least = (found[1][0] + found[2][0]) / 2  # the two best are above it
    result = camlens.Explainer(model, method="gradcam", layer="relu", min_score=least).explain(
        photo
    )
    assert result.detections is not None
    assert [(d.class_index, d.box) for d in result.detections] == [
        (label, pytest.approx(box)) for _, label, box in found[:2]
    ]
    a = features(net, x[0])
    assert len(result.maps) == 2
    for m, (score, label, box) in zip(result.maps, found, strict=False):
        assert m.target is not None and m.target["kind"] == "detection"
        assert m.target["label"] == label and m.target["box"] == pytest.approx(box)
        assert m.score == pytest.approx(score, rel=1e-5)
        expected = minmax(gradcam_by_hand(net, a, (score, label, box)))
        np.testing.assert_allclose(m.map.numpy(), expected, atol=1e-5)
    first = camlens.Explainer(model, method="gradcam", layer="relu", min_score=0, detections=1)
    (m,) = first.explain(photo).maps
    assert m.target is not None and m.target["box"] == pytest.approx(found[0][2])


def test_no_detection_is_a_result_without_maps(model: camlens.Model, photo: np.ndarray) -> None:
    """No detection at all (the detector finds none: rows [1, 0, 6]) and none above
    ``min_score``: a result with zero detections and no map, a warning that says so, a report."""
    blind = camlens.load_model(TinyDetector(threshold=1.01), preprocess=CONFIG, labels=LABELS)
    with torch.no_grad():
        assert blind.net(torch.zeros(1, 3, H, W)).shape == (1, 0, 6)
    cases = [(blind, 0.0), (model, 0.99)]
    for detector, least in cases:
        ex = camlens.Explainer(detector, method=["gradcam", "eigencam"], min_score=least)
        with pytest.warns(UserWarning, match="no detection"):
            result = ex.explain(photo)
        assert result.detections == [] and result.maps == []
        report = result.to_dict()
        assert report["detections"] == [] and not report.get("explanations"), report


def test_a_batch_where_one_photo_has_no_detection(
    model: camlens.Model, photo: np.ndarray, found: list[Found]
) -> None:
    dark = np.zeros_like(photo)  # x = 0: A = ReLU(bias) everywhere
    ex = camlens.Explainer(model, method="gradcam", layer="relu", min_score=found[0][0] - 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dark photo's "no detection"
        dark_alone = ex.explain(dark)
        assert dark_alone.detections == []  # checked here: the premise
        results = ex.explain([photo, dark])
    assert [len(r.maps) for r in results] == [1, 0]
    assert results[1].detections == []
    solo = ex.explain(photo)
    assert torch.allclose(results[0].maps[0].map, solo.maps[0].map, atol=1e-6)


def test_boxes_past_the_image_are_clipped_and_still_matched(photo: np.ndarray) -> None:
    """A detector whose boxes go past the image (``clip=False``): its rows are clipped to the
    input, as the photo's detections are to the photo, so each detection's map is of its own
    score. (Unclipped rows against clipped photo boxes: the detection at the corner, box
    (5.5, 5.5, 9.5, 9.5) in an 8x8 image, overlapped its own row by 6.25/16 < 0.5 and scored 0.)"""
    loose = camlens.load_model(TinyDetector(clip=False), preprocess=CONFIG, labels=LABELS)
    x = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert bool((loose.net.inner([x[0]])[0]["boxes"] > W).any())  # the premise
        rows = loose.net(x)
    assert float(rows[..., :4].min()) >= 0 and float(rows[..., :4].max()) <= W
    result = camlens.Explainer(loose, method="gradcam", layer="relu", min_score=0).explain(photo)
    assert result.detections is not None and len(result.maps) == len(result.detections) == 5
    for d, m in zip(result.detections, result.maps, strict=True):
        assert m.score == pytest.approx(d.score, abs=1e-6) and not m.flat
