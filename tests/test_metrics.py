"""Metrics on hand-made maps, boxes and tiny models, with answers worked out by hand or computed
here independently (loops, dense solves)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens.errors import CamlensError
from camlens.images import PreprocessConfig
from camlens.metrics import (
    NEIGHBOUR_WEIGHTS,
    Curve,
    average_drop,
    blur,
    box_iou,
    box_mask,
    confidence_change,
    deletion_insertion,
    energy_pointing_game,
    gt_known_localization,
    increase_in_confidence,
    iou,
    mean_curve,
    noisy_linear_impute,
    plot_curves,
    pointing_distance,
    pointing_hit,
    road,
    top_k_localization,
    trapezoid_auc,
)
from camlens.types import Box

# --------------------------------------------------------------------------------------------------
# Localization


def test_iou_by_hand() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges: no overlap
    assert iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(2 / 6)
    assert iou([0, 0, 10, 10], [2, 2, 7, 7]) == pytest.approx(25 / 100)  # contained
    assert iou(Box(0, 0, 4, 4), Box(2, 2, 6, 6)) == pytest.approx(4 / 28)
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    boxes = [[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6]]
    matrix = box_iou(boxes, boxes[:2])
    assert matrix.shape == (3, 2)
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:2]):
            assert matrix[i, j] == pytest.approx(iou(a, b))
    with pytest.raises(CamlensError):
        iou([0, 0, 1], [0, 0, 1, 1])


def test_localization_accuracy_by_hand() -> None:
    truth = [(3, Box(0, 0, 10, 10)), (7, Box(20, 20, 30, 30))]
    right_box = Box(0, 0, 10, 10)
    half = Box(0, 0, 10, 20)  # IoU with the truth of class 3: 100 / 200 = 0.5 exactly
    assert top_k_localization([(3, right_box)], truth, 1)
    assert top_k_localization([(3, half)], truth, 1)  # >= 0.5 counts
    assert not top_k_localization([(3, Box(0, 0, 10, 21))], truth, 1)  # 100 / 210
    assert not top_k_localization([(7, right_box)], truth, 1)  # right box, wrong class's truth
    assert not top_k_localization([(5, right_box)], truth, 1)  # a class not in the image
    guesses = [(5, right_box), (1, right_box), (7, Box(21, 21, 30, 30)), (3, None)]
    assert not top_k_localization(guesses, truth, 1)
    assert not top_k_localization(guesses, truth, 2)
    assert top_k_localization(guesses, truth, 3)  # class 7, IoU 81 / 100
    assert gt_known_localization(right_box, [Box(0, 0, 10, 10)])
    assert not gt_known_localization(None, [Box(0, 0, 10, 10)])
    assert not gt_known_localization(right_box, [])
    with pytest.raises(CamlensError):
        top_k_localization(guesses, truth, 0)


def peak_at(x: int, y: int, size: tuple[int, int] = (100, 80)) -> np.ndarray:
    m = np.zeros((size[1], size[0]))
    m[y, x] = 1.0
    return m


def test_pointing_game_tolerance_by_hand() -> None:
    box = Box(20, 10, 40, 30)  # pixels x 20..39, y 10..29
    assert pointing_hit(peak_at(30, 20), [box])  # inside
    assert pointing_hit(peak_at(39 + 15, 20), [box])  # 15 pixels right of the last column
    assert not pointing_hit(peak_at(39 + 16, 20), [box])
    assert pointing_hit(peak_at(20 - 15, 20), [box])
    assert not pointing_hit(peak_at(20 - 16, 20), [box])
    assert pointing_hit(peak_at(39 + 9, 29 + 12), [box])  # diagonal: sqrt(81 + 144) = 15
    assert not pointing_hit(peak_at(39 + 12, 29 + 10), [box])  # sqrt(244) = 15.6
    assert pointing_hit(peak_at(39 + 16, 20), [box], tolerance=16)
    assert pointing_distance((39 + 3, 29 + 4), box) == 5.0
    far = Box(90, 70, 95, 75)
    assert pointing_hit(peak_at(92, 60), [box, far])  # near the second box
    assert not pointing_hit(np.zeros((80, 100)), [box])  # a flat map points nowhere
    assert not pointing_hit(peak_at(30, 20), [])


def test_energy_pointing_game_by_hand() -> None:
    m = np.zeros((10, 10))
    m[2:4, 2:4] = 1.0  # 4 inside the box below
    m[8, 8] = 2.0  # 2 outside
    box = Box(2, 2, 4, 4)
    assert energy_pointing_game(m, [box]) == pytest.approx(4 / 6)
    assert energy_pointing_game(m, [box, box]) == pytest.approx(4 / 6)  # the union counts once
    assert energy_pointing_game(m, [box, Box(8, 8, 9, 9)]) == pytest.approx(1.0)
    assert energy_pointing_game(np.zeros((5, 5)), [box]) == 0.0
    # A half-pixel box edge: only pixels whose centre lies inside count.
    assert box_mask((4, 4), [Box(0.6, 0, 2.4, 1)]).sum() == 1  # column 1 only (centre 1.5)
    assert box_mask((4, 4), [Box(0.5, 0, 2.5, 1)]).sum() == 3  # centres 0.5, 1.5, 2.5: edges count


# --------------------------------------------------------------------------------------------------
# Faithfulness on tiny models with known outputs


class Linear2(nn.Module):
    """logit_0 = sum_ij w_ij * mean_c x_cij, logit_1 = 0: p_0 = sigmoid(logit_0)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.fc = nn.Linear(2, 2, bias=False)  # the identity: says there are 2 classes
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x.mean(dim=1) * self.weight).flatten(1).sum(dim=1)
        out: torch.Tensor = self.fc(torch.stack([logit, torch.zeros_like(logit)], dim=1))
        return out


def linear_model(weight: torch.Tensor) -> camlens.Model:
    height, width = weight.shape
    config = PreprocessConfig(input_size=(height, width), mean=(0.0,) * 3, std=(1.0,) * 3)
    return camlens.load_model(Linear2(weight), preprocess=config, labels=["a", "b"])


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_average_drop_and_increase_by_hand() -> None:
    y = [0.8, 0.5, 0.4]
    o = [0.4, 0.6, 0.4]
    # drops: (0.8 - 0.4) / 0.8 = 0.5, 0 (it rose), 0 (equal) -> AD = 100 * 0.5 / 3
    assert average_drop(y, o) == pytest.approx(100 * 0.5 / 3)
    assert increase_in_confidence(y, o) == pytest.approx(100 / 3)
    with pytest.raises(CamlensError):
        average_drop([], [])


def test_confidence_change_masks_the_photo_with_the_map() -> None:
    weight = torch.full((4, 4), 0.25)
    model = linear_model(weight)
    x = torch.ones(2, 3, 4, 4)
    maps = torch.zeros(2, 4, 4)
    maps[0] = 1.0  # keeps everything: O = Y
    maps[1, :2] = 0.5  # half the pixels at half strength: logit 8 * 0.5 * 0.25 = 1
    full, masked = confidence_change(model, x, maps, [0, 0])
    assert full == pytest.approx([sigmoid(4.0)] * 2)
    assert masked == pytest.approx([sigmoid(4.0), sigmoid(1.0)])
    # With ImageNet normalization the masking happens on the photo, not the normalized input.
    config = PreprocessConfig(input_size=(4, 4))
    normalized = camlens.load_model(Linear2(weight), preprocess=config, labels=["a", "b"])
    photo = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(config.mean)[:, None, None]
    std = torch.tensor(config.std)[:, None, None]
    m = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    _, got = confidence_change(normalized, (photo - mean) / std, m, [0])
    expected = ((photo * m - mean) / std).mean(dim=1)[0]
    assert got[0] == pytest.approx(sigmoid(float((expected * weight).sum())), rel=1e-5)


def test_deletion_by_hand() -> None:
    # 2 x 2 input of ones, weights 1, 2, 3, 4; the map ranks the pixels 4 > 3 > 2 > 1 by weight.
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    model = linear_model(weight)
    x = torch.ones(1, 3, 2, 2)
    (curve,) = deletion_insertion(model, x, weight[None] / 4, [0], mode="deletion", steps=4)
    # Deleting (to 0) the most salient first: logits 10, 6, 3, 1, 0.
    assert curve.fractions == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    expected = [sigmoid(v) for v in (10, 6, 3, 1, 0)]
    assert curve.scores == pytest.approx(expected, rel=1e-6)
    area = sum((expected[i] + expected[i + 1]) / 2 * 0.25 for i in range(4))
    assert curve.auc == pytest.approx(area)
    # The reversed map deletes the least salient first: a larger area.
    (worse,) = deletion_insertion(model, x, 1 - weight[None] / 4, [0], mode="deletion", steps=4)
    assert worse.scores == pytest.approx([sigmoid(v) for v in (10, 9, 7, 4, 0)], rel=1e-6)
    assert worse.auc > curve.auc


def test_insertion_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, generator=gen)
    model = linear_model(weight)
    x = torch.randn(2, 3, 6, 5, generator=gen)
    maps = torch.rand(2, 6, 5, generator=gen)
    steps = 6
    curves = deletion_insertion(model, x, maps, [0, 1], mode="insertion", steps=steps, batch_size=5)
    blurred = blur(x)
    for n, curve in enumerate(curves):
        order = sorted(range(30), key=lambda i: -float(maps[n].flatten()[i]))
        for s in range(steps + 1):
            k = round(s * 30 / steps)
            inserted = blurred[n].clone().reshape(3, -1)
            for i in order[:k]:
                inserted[:, i] = x[n].reshape(3, -1)[:, i]
            logit = float((inserted.reshape(3, 6, 5).mean(dim=0) * weight).sum())
            p = sigmoid(logit) if n == 0 else 1 - sigmoid(logit)
            assert curve.scores[s] == pytest.approx(p, rel=1e-5, abs=1e-7)
    # Chunking does not change anything.
    again = deletion_insertion(model, x, maps, [0, 1], mode="insertion", steps=steps, batch_size=64)
    assert all(np.array_equal(a.scores, b.scores) for a, b in zip(curves, again, strict=True))


def test_faithfulness_inputs_are_checked() -> None:
    model = linear_model(torch.ones(4, 4))
    x = torch.ones(2, 3, 4, 4)
    with pytest.raises(CamlensError, match="input size"):
        deletion_insertion(model, x, torch.ones(2, 8, 8), [0, 0])
    with pytest.raises(CamlensError, match="classes"):
        deletion_insertion(model, x, torch.ones(2, 4, 4), [0])
    with pytest.raises(CamlensError, match="mode"):
        deletion_insertion(model, x, torch.ones(2, 4, 4), [0, 0], mode="both")  # type: ignore[arg-type]
    with pytest.raises(CamlensError, match="order"):
        road(model, x, torch.ones(2, 4, 4), [0, 0], order="random")  # type: ignore[arg-type]


def test_trapezoid_and_mean_curve() -> None:
    assert trapezoid_auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert trapezoid_auc([0, 1], [1, 1]) == 1.0
    a = Curve(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    b = Curve(np.array([0.0, 1.0]), np.array([0.0, 0.5]))
    assert mean_curve([a, b]).scores == pytest.approx([0.5, 0.25])
    with pytest.raises(CamlensError):
        mean_curve([a, Curve(np.array([0.0, 0.5, 1.0]), np.zeros(3))])


# --------------------------------------------------------------------------------------------------
# ROAD's noisy linear imputation


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same linear system, written pixel by pixel and solved densely (numpy)."""
    channels, height, width = image.shape
    missing = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: i for i, p in enumerate(missing)}
    a = np.zeros((len(missing), len(missing)))
    b = np.zeros((len(missing), channels))
    for i, (y, x) in enumerate(missing):
        for dy, dx, w in NEIGHBOUR_WEIGHTS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < height and 0 <= nx < width:
                a[i, i] += w
                if removed[ny, nx]:
                    a[i, index[(ny, nx)]] -= w
                else:
                    b[i] += w * image[:, ny, nx]
    out = image.copy()
    solution = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(missing):
        out[:, y, x] = solution[i]
    return out


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    image = torch.arange(9.0).reshape(1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[1, 1] = True
    out = noisy_linear_impute(image, removed, noise=0.0)
    # direct neighbours 1, 3, 5, 7 weigh 1/6, diagonal 0, 2, 6, 8 weigh 1/12 (sum of weights 1)
    assert float(out[0, 1, 1]) == pytest.approx((1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12)
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[0, 0] = True  # a corner: neighbours 1 (1/6), 3 (1/6), 4 (1/12), weights renormalized
    out = noisy_linear_impute(image, removed, noise=0.0)
    assert float(out[0, 0, 0]) == pytest.approx((1 / 6 + 3 / 6 + 4 / 12) / (5 / 12))
    kept = ~removed
    assert torch.equal(out[:, kept], image[:, kept])


def test_imputation_matches_a_dense_solve_and_keeps_linear_images() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 9, 11))
    removed = rng.random((9, 11)) < 0.6
    out = noisy_linear_impute(torch.from_numpy(image), torch.from_numpy(removed), noise=0.0)
    assert out.numpy() == pytest.approx(dense_imputation(image, removed), abs=1e-10)
    # A linear image is its own weighted neighbour mean: imputed exactly, whatever is removed.
    yy, xx = np.mgrid[0:12, 0:15]
    ramp = np.stack([2.0 * xx - yy + 1, 0.5 * yy, -xx])
    block = np.zeros((12, 15), dtype=bool)
    block[3:9, 4:12] = True
    filled = noisy_linear_impute(torch.from_numpy(ramp), torch.from_numpy(block), noise=0.0)
    assert filled.numpy() == pytest.approx(ramp, abs=1e-9)


def test_imputation_noise_and_edge_cases() -> None:
    image = torch.zeros(3, 40, 40)
    removed = torch.zeros(40, 40, dtype=torch.bool)
    removed[5:35, 5:35] = True
    gen = torch.Generator().manual_seed(0)
    out = noisy_linear_impute(image, removed, noise=0.01, generator=gen)
    assert float(out[:, removed].std()) == pytest.approx(0.01, rel=0.05)  # noise on imputed only
    assert torch.equal(out[:, ~removed], image[:, ~removed])
    everything = noisy_linear_impute(
        torch.ones(3, 4, 4), torch.ones(4, 4, dtype=torch.bool), noise=0
    )
    assert torch.equal(everything, torch.zeros(3, 4, 4))
    nothing = noisy_linear_impute(torch.ones(3, 4, 4), torch.zeros(4, 4, dtype=torch.bool))
    assert torch.equal(nothing, torch.ones(3, 4, 4))
    with pytest.raises(CamlensError):
        noisy_linear_impute(torch.ones(3, 4, 4), torch.zeros(5, 5, dtype=torch.bool))


def test_road_removes_the_most_or_least_relevant_pixels() -> None:
    # The class looks only at the pixels in the left half; the map says so.
    weight = torch.zeros(8, 8)
    weight[:, :4] = 0.5
    model = linear_model(weight)
    x = torch.ones(1, 3, 8, 8)
    x[:, :, :, 4:] = -1.0
    saliency = torch.zeros(1, 8, 8)
    saliency[0, :, :4] = torch.linspace(1, 2, 32).reshape(8, 4)
    # 1/8 and 1/4 of the 64 pixels: 8 and 16
    (morf,) = road(model, x, saliency, [0], order="morf", percentages=[0.125, 0.25], noise=0.0)
    (lerf,) = road(model, x, saliency, [0], order="lerf", percentages=[0.125, 0.25], noise=0.0)
    assert morf.fractions == pytest.approx([0.125, 0.25])
    # LeRF removes right-half pixels first: the logit (0.5 * 32 = 16) does not change.
    assert lerf.scores == pytest.approx([sigmoid(16.0)] * 2)
    # MoRF removes left-half pixels: imputed from their neighbours, the logit drops.
    assert morf.scores[1] < morf.scores[0] < sigmoid(16.0)
    expected = noisy_linear_impute(x[0], saliency[0] >= 1.5, noise=0.0)  # the 16 most salient
    logit = float((expected.mean(dim=0) * weight).sum())
    assert morf.scores[1] == pytest.approx(sigmoid(logit), rel=1e-5)
    # Seeded noise: the same call gives the same numbers.
    a = road(model, x, saliency, [0], percentages=[0.3])
    b = road(model, x, saliency, [0], percentages=[0.3])
    assert np.array_equal(a[0].scores, b[0].scores)


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    curve = Curve(np.linspace(0, 1, 5), np.array([1.0, 0.6, 0.3, 0.1, 0.0]))
    path = plot_curves(
        {"deletion": {"gradcam": curve}, "insertion": {"gradcam": curve}}, tmp_path / "c.png"
    )
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (1000, 400)
    with pytest.raises(CamlensError):
        plot_curves({}, tmp_path / "none.png")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 about the peer's code
def test_imputation_equals_pytorch_grad_cams() -> None:
    """The peer's ROAD imputer (pytorch-grad-cam, after the ROAD authors' code), without noise,
    solves the same system: the same values."""
    road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(3, 24, 20, generator=gen)
    removed = torch.rand(24, 20, generator=gen) < 0.7
    theirs = road_module.NoisyLinearImputer(noise=0.0)(image, (~removed).float())
    ours = noisy_linear_impute(image, removed, noise=0.0)
    assert torch.allclose(ours, theirs, atol=1e-5)
