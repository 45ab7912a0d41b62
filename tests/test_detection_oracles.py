"""Detection maps against pytorch-grad-cam (PyPI ``grad-cam``): its ``GradCAM`` with
``FasterRCNNBoxScoreTarget``, one call per detection, and its ``EigenCAM``, on torchvision's
Faster R-CNN with seeded random weights, the same weights and input on both sides; camlens's map of
each detection correlates with the peer's at 0.99 or more at the photo's size.

The peer runs torchvision's own detector (its transform resizing by a factor of 1 and padding to
a multiple of 32, which a square of 160 or 256 pixels needs neither of); camlens runs the detector
it loads by name (a transform that neither resizes nor pads) on the photo it resizes itself.

Deliberate differences, pinned here:

- the peer scores a detection ``IoU + score`` of the matching box, camlens ``score``: on the pass
  the gradients are taken of, the detection's own box is there with IoU 1, the IoU's maximum, so
  the IoU term's gradient is zero and Grad-CAM's maps are the same; the scores differ by 1
  (and perturbation methods, which camlens runs and the peer does not for detectors, would weigh
  the IoU's changes);
- the peer takes the box of the highest IoU among all the pass's boxes and gives 0 when its label
  differs; camlens takes the highest IoU among the boxes of the detection's own label (another
  class's box over the same object does not hide it);
- the peer counts an IoU above 0.5, camlens from 0.5 on.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_targets_oracles import at_photo, correlation

import camlens
from camlens.images import PreprocessConfig, preprocess
from camlens.maps import normalize
from camlens.methods.eigen import eigencam
from camlens.taps import Taps
from camlens.targets import Detection

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget  # noqa: E402

LEAST = 0.99
PROPOSALS = 100  # the region proposals kept per image (1000 by default): the same on both sides
KEPT = 10  # detections per image


def camlens_detector(name: str, size: int, score_thresh: float) -> camlens.Model:
    """torchvision's ``name`` by spec, seeded random weights, at ``size`` pixels."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        model = camlens.load_model(f"torchvision:{name}")
    model.preprocess = PreprocessConfig(
        input_size=(size, size), interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)
    )
    model.net.rpn._post_nms_top_n["testing"] = PROPOSALS
    model.net.roi_heads.score_thresh = score_thresh
    model.net.roi_heads.detections_per_img = KEPT
    return model


def peer_detector(name: str, size: int, score_thresh: float, model: camlens.Model) -> Any:
    """torchvision's own ``name`` at ``min_size = max_size = size``, with ``model``'s weights."""
    net = torchvision.models.get_model(
        name,
        weights=None,
        weights_backbone=None,
        min_size=size,
        max_size=size,
        rpn_post_nms_top_n_test=PROPOSALS,
        box_score_thresh=score_thresh,
        box_detections_per_img=KEPT,
    )
    net.load_state_dict(model.net.state_dict())
    return net.eval()


def peer_box(found: dict[str, torch.Tensor], detection: Any, scale: float) -> int:
    """The row of the peer's detections that is camlens's ``detection`` (box in the photo's
    pixels, ``scale`` = input / photo): the same label, IoU > 0.99."""
    box = torch.tensor(detection.box) * torch.tensor([scale[0], scale[1]] * 2)
    iou = torchvision.ops.box_iou(box[None], found["boxes"])[0]
    iou[found["labels"] != detection.class_index] = 0
    best = int(iou.argmax())
    assert float(iou[best]) > 0.99, (detection, float(iou[best]))
    return best


@pytest.fixture(scope="module")
def photo(chelsea: np.ndarray) -> Image.Image:
    return Image.fromarray(chelsea)  # 451 x 300: resized to the model's square


Pair = tuple[camlens.Model, Any]


def pair(name: str, size: int, score_thresh: float) -> Pair:
    model = camlens_detector(name, size, score_thresh)
    return model, peer_detector(name, size, score_thresh, model)


@pytest.fixture(scope="module")
def resnet50() -> Pair:
    """fasterrcnn_resnet50_fpn at 160 pixels: with random weights, detections of several classes
    at scores 0.3-0.5 (torchvision's threshold 0.05)."""
    return pair("fasterrcnn_resnet50_fpn", 160, 0.05)


def compare_gradcam(both: Pair, layers: list[str], count: int, photo: Image.Image) -> list[float]:
    """Correlations at the photo's size of camlens's Grad-CAM of its ``count`` best detections
    at each of ``layers`` with the peer's (one call per detection)."""
    model, peer = both
    size = model.preprocess.input_size[0]
    x = preprocess([photo], model.preprocess)
    with torch.no_grad():
        (found,) = peer(x)
    result = camlens.Explainer(
        model, method="gradcam", layer=layers, min_score=0, detections=count
    ).explain(photo)
    assert result.detections is not None and len(result.detections) == KEPT  # all >= 0
    scale = (size / photo.width, size / photo.height)
    shape = (photo.height, photo.width)
    got = []
    for m in result.maps:
        (detection,) = [d for d in result.detections if d.target().to_dict() == m.target]
        row = peer_box(found, detection, scale)
        target = FasterRCNNBoxScoreTarget([found["labels"][row]], [found["boxes"][row]])
        with pgc.GradCAM(model=peer, target_layers=[peer.get_submodule(m.layer)]) as cam:
            theirs = cam(input_tensor=x, targets=[target])
        assert not m.flat
        got.append(correlation(at_photo(m.map[None], shape), at_photo(theirs, shape)))
    assert len(got) == count * len(layers)
    return got


def test_gradcam_matches_the_peer_on_fasterrcnn_mobilenet(photo: Image.Image) -> None:
    """fasterrcnn_mobilenet_v3_large_fpn at 256 pixels, the backbone's last stage (camlens's
    automatic layer) and the pyramid's finest level. Its random box head scores every class of
    every region 1/88 alike, so the score threshold is 0 (every detection is a region's class 89,
    all of score 0.0114: their boxes tell them apart). 0.999995 or more when written."""
    both = pair("fasterrcnn_mobilenet_v3_large_fpn", 256, 0.0)
    got = compare_gradcam(both, ["backbone.body.16", "backbone.fpn.layer_blocks.0"], 2, photo)
    assert min(got) >= LEAST, got


def test_every_detection_explained_gets_its_gradient_when_scores_tie(photo: Image.Image) -> None:
    """With its class weights x100 (as ``benchmarks/detection.py`` has them), the random
    MobileNet head gives one class of each of its 1000 regions, every one of score 0.0804, the
    100 first kept. camlens scores
    again, with the graph, the proposals of the detections it will explain, and must choose the
    same ones as the rows' order does. (When the scores again differed from the first in their
    last bits, equal scores were reordered: 9 of these 10 maps had no gradient, flat even
    without the ReLU.)"""
    model = camlens_detector("fasterrcnn_mobilenet_v3_large_fpn", 320, 0.05)
    model.net.rpn._post_nms_top_n["testing"] = 1000  # torchvision's own numbers
    model.net.roi_heads.detections_per_img = 100
    with torch.no_grad():
        model.net.roi_heads.box_predictor.cls_score.weight.mul_(100)
    result = camlens.Explainer(
        model, method="gradcam", layer="backbone.body.16", min_score=0, detections=KEPT, relu=False
    ).explain(photo)
    assert result.detections is not None
    assert len({d.score for d in result.detections}) == 1  # the premise: they all tie
    assert [m.flat for m in result.maps] == [False] * KEPT


@pytest.mark.slow  # 10 s on a busy machine: one peer call per map
def test_gradcam_matches_the_peer_on_fasterrcnn_resnet50(
    resnet50: Pair, photo: Image.Image
) -> None:
    """fasterrcnn_resnet50_fpn at ``backbone.body.layer4`` (the automatic layer) and
    ``layer3``: 0.99999 or more when written. (The pyramid's coarser levels give flat maps on
    both sides at 160 pixels: Faster R-CNN pools each region from one level, by its size, and no
    detection's region comes from them, so no gradient reaches them.)"""
    got = compare_gradcam(resnet50, ["backbone.body.layer4", "backbone.body.layer3"], 2, photo)
    assert min(got) >= LEAST, got


def test_eigencam_matches_the_peer_up_to_sign(resnet50: Pair, photo: Image.Image) -> None:
    """Eigen-CAM needs no target: one map, the first principal component of the layer's
    activations, for every detection; the peer's SVD leaves its sign to chance, camlens fixes it
    (:mod:`camlens.methods.eigen`), so the peer's map is camlens's or the other sign's."""
    model, peer = resnet50
    layer = "backbone.body.layer4"
    result = camlens.Explainer(
        model, method="eigencam", layer=layer, min_score=0, detections=2
    ).explain(photo)
    first, second = result.maps
    assert torch.equal(first.map, second.map)  # the same map for every detection
    x = preprocess([photo], model.preprocess)
    with Taps(model.net, [layer]) as taps, torch.inference_mode():
        model.net(x)
    other = normalize(-eigencam(taps.activations[layer]))[0]  # the other sign
    assert result.detections
    d = result.detections[0]
    target = FasterRCNNBoxScoreTarget([d.class_index], [torch.tensor(d.box)])  # not used by it
    with pgc.EigenCAM(model=peer, target_layers=[peer.get_submodule(layer)]) as cam:
        theirs = cam(input_tensor=x, targets=[target])
    shape = (photo.height, photo.width)
    peer_map = at_photo(theirs, shape)
    got = max(
        correlation(at_photo(first.map[None], shape), peer_map),
        correlation(at_photo(other, shape), peer_map),
    )
    assert got >= LEAST, got


# --- the deliberate differences --------------------------------------------------------------


def test_the_peers_iou_term_has_no_gradient_on_the_detections_own_pass(
    resnet50: Pair, photo: Image.Image
) -> None:
    """The peer's score of a detection on the pass that found it is ``1 + score``; the IoU term's
    gradient at the layer is zero there (IoU 1 is its maximum), so the maps agree."""
    model, peer = resnet50
    x = preprocess([photo], model.preprocess)
    layer = peer.get_submodule("backbone.body.layer4")
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: kept.append(output))
    try:
        (found,) = peer(x)
    finally:
        handle.remove()
    for row in range(2):
        box, label, score = found["boxes"][row], found["labels"][row], found["scores"][row]
        value = FasterRCNNBoxScoreTarget([label], [box.detach()])(found)
        assert float(value.detach()) == pytest.approx(1 + float(score.detach()), abs=1e-6)
        (iou_term,) = torch.autograd.grad(value - score, kept[0], retain_graph=True)
        (of_score,) = torch.autograd.grad(score, kept[0], retain_graph=True)
        assert float(of_score.abs().max()) > 0
        assert float(iou_term.abs().max()) <= 1e-6 * float(of_score.abs().max())


def test_matching_differs_from_the_peers_where_pinned() -> None:
    """On hand-made rows: another class's box over the detection hides it from the peer, not
    from camlens; an IoU of exactly 0.5 counts for camlens, not for the peer."""
    from camlens.models.detection import detection_model

    class Rows(torch.nn.Module):  # a detector whose output is never run here
        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            return [
                {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
            ]

    config = PreprocessConfig(input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    model = detection_model(Rows(), config, ("__background__", "a", "b"), "rows")
    from camlens.scoring import TargetPlan

    target = Detection((0, 0, 4, 4), 1)
    goals = TargetPlan(model, [target]).goals(torch.tensor([[[0, 0, 4, 4, 0.5, 1]]]), [[target]])
    cases = [  # rows (x0, y0, x1, y1, score, label); camlens's score; the peer's
        ([[0, 0, 4, 4, 0.9, 2], [1, 0, 5, 4, 0.4, 1]], 0.4, 0.0),
        ([[0, 0, 4, 2, 0.6, 1]], 0.6, 0.0),
        ([[0, 0, 4, 4, 0.7, 1]], 0.7, 1.7),
    ]
    for rows, ours, theirs in cases:
        out = torch.tensor(rows)
        peer_output = {"boxes": out[:, :4], "scores": out[:, 4], "labels": out[:, 5].long()}
        peer_value = FasterRCNNBoxScoreTarget([1], [torch.tensor([0.0, 0, 4, 4])])(peer_output)
        assert float(peer_value) == pytest.approx(theirs)
        assert float(goals.score(out[None], torch.tensor([0]))[0, 0]) == pytest.approx(ours)
