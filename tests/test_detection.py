"""Detection models (camlens.models.detection): a detector with torchvision's output format as a
Model of kind "detection", the Detection target and its matching score, the options min_score
and detections, one map per detection. Seeded random-weight detectors at a small input size
(their scores are low: min_score 0, or box_score_thresh 0 to keep every detection)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens.config import ExplainConfig
from camlens.errors import CamlensError, ClassError, FlatMapWarning
from camlens.images import PreprocessConfig
from camlens.methods import METHODS
from camlens.models.detection import (
    DetectionNet,
    coco_labels,
    detection_model,
    torchvision_detection,
)
from camlens.scoring import box_iou, match_detections
from camlens.targets import Detection, TargetError, target_from_dict

SIZE = 160
RAW = PreprocessConfig(
    input_size=(SIZE, SIZE), interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
)


@pytest.fixture(scope="module")
def frcnn() -> camlens.Model:
    torch.manual_seed(0)
    net = torchvision_detection(
        "fasterrcnn_mobilenet_v3_large_fpn",
        None,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=100,
    ).eval()
    return detection_model(net, RAW, None, "frcnn")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_detection_target_round_trip() -> None:
    d = Detection((10, 20, 110, 220.5), 1, 0.9)
    assert d.to_dict() == {
        "kind": "detection",
        "box": [10.0, 20.0, 110.0, 220.5],
        "label": 1,
        "score": 0.9,
    }
    assert target_from_dict(d.to_dict()) == d
    with pytest.raises(TargetError, match="x0 < x1"):
        Detection((10, 20, 5, 30), 1)
    with pytest.raises(TargetError, match="4 finite numbers"):
        Detection((10, 20, float("nan"), 30), 1)


def test_options_are_checked() -> None:
    with pytest.raises(CamlensError, match="min_score") as caught:
        ExplainConfig(min_score=1.5)
    assert caught.value.option == "min_score"
    with pytest.raises(CamlensError, match="detections must be at least 1"):
        ExplainConfig(detections=0)
    with pytest.raises(CamlensError, match="min_score must be a number in"):
        camlens.Explainer(min_score=-0.1)
    config = ExplainConfig(min_score=0.25, detections=3)
    assert ExplainConfig.from_json(config.to_json()) == config


def test_rows_and_kind(frcnn: camlens.Model) -> None:
    assert frcnn.kind == "detection"
    assert frcnn.labels == coco_labels() and len(frcnn.labels) == 91
    assert isinstance(frcnn.net, DetectionNet)
    assert dict(frcnn.net.named_modules())["backbone.body.16"] is not None
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        rows = frcnn.net(x)
        raw = frcnn.net.inner(list(x))
    assert rows.ndim == 3 and rows.shape[0] == 2 and rows.shape[2] == 6
    for b in range(2):
        k = len(raw[b]["scores"])
        assert torch.all(rows[b, :k, 4][:-1] >= rows[b, :k, 4][1:])  # sorted by score
        assert torch.all(rows[b, k:, 5] == -1) and torch.all(rows[b, k:, 4] == 0)  # padding
        order = raw[b]["scores"].argsort(descending=True, stable=True)
        torch.testing.assert_close(rows[b, :k, :4], raw[b]["boxes"][order])


def test_matching_follows_label_and_iou() -> None:
    rows = torch.tensor(
        [
            [
                [0, 0, 10, 10, 0.9, 1],
                [0, 0, 10, 10, 0.8, 2],
                [1, 1, 11, 11, 0.7, 2],
                [0, 0, 0, 0, 0, -1],
            ]
        ],
        dtype=torch.float,
    )
    boxes = torch.tensor([[[1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]]], dtype=torch.float)
    labels = torch.tensor([[2, 1, 1]])
    best, matched = match_detections(rows, boxes, labels)
    assert best.tolist() == [[2, 0, 0]] and matched.tolist() == [[True, True, False]]
    assert box_iou(boxes, rows[..., :4])[0, 0, 0] == pytest.approx(81 / 119)


def test_a_map_per_detection(frcnn: camlens.Model, photo: Image.Image) -> None:
    ex = camlens.Explainer(frcnn, method="gradcam", min_score=0.0, detections=3)
    result = ex.explain(photo)
    assert result.detections is not None and len(result.detections) >= 3
    assert [m.target for m in result.maps] == [d.target().to_dict() for d in result.detections[:3]]
    for m, d in zip(result.maps, result.detections, strict=False):
        assert m.class_index == d.class_index and m.score == pytest.approx(d.score, abs=1e-5)
        assert not m.flat
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120  # the photo's pixels
    assert result.stats.backward_passes == 1
    assert len({m.tag for m in result.maps}) == 3
    report = result.to_dict()
    assert report["explanations"][0]["target"]["kind"] == "detection"
    assert len(report["detections"]) == len(result.detections)


def test_no_detection_is_no_map(frcnn: camlens.Model, photo: Image.Image) -> None:
    ex = camlens.Explainer(frcnn, method="gradcam", min_score=1.0)
    with pytest.warns(FlatMapWarning, match="no detection scored at least 1"):
        result = ex.explain(photo)
    assert result.detections == [] and result.maps == []


def test_wrong_targets(frcnn: camlens.Model) -> None:
    with pytest.raises(ClassError, match="class index 500"):
        camlens.Explainer(frcnn, targets=[Detection((0, 0, 10, 10), 500)])
    with pytest.raises(TargetError, match="is a detector"):
        camlens.Explainer(frcnn, targets=[camlens.targets.Contrast(1, (2,))])
    with pytest.raises(TargetError, match="explains a detector"):
        camlens.Explainer(targets=[Detection((0, 0, 10, 10), 1)])
    for option in ({"classes": [1]}, {"top": 2}, {"above": 0.5}):
        with pytest.raises(
            TargetError, match="is a detector: it explains its detections"
        ) as caught:
            camlens.Explainer(frcnn, **option)
        assert caught.value.option == next(iter(option))
    with pytest.raises(TargetError, match="detections chooses a detector's detections"):
        camlens.Explainer(detections=2)


def test_loads_by_spec_with_a_weights_file(tmp_path) -> None:
    torch.manual_seed(0)
    net = torchvision_detection("ssdlite320_mobilenet_v3_large", None, num_classes=5)
    path = tmp_path / "ssd.pth"
    torch.save(net.state_dict(), path)
    model = camlens.load_model("torchvision:ssdlite320_mobilenet_v3_large", weights=path)
    assert model.kind == "detection" and model.labels == tuple(f"class {i}" for i in range(5))
    assert model.preprocess.input_size == (320, 320) and model.preprocess.std == (1.0, 1.0, 1.0)
    assert model.default_layer == "backbone.features.0" and model.weights == path
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.net.state_dict()[key], value)


def test_layers_command_says_the_kind(tmp_path) -> None:
    from typer.testing import CliRunner

    from camlens.cli import app

    torch.manual_seed(0)
    path = tmp_path / "ssd.pth"
    torch.save(torchvision_detection("ssdlite320_mobilenet_v3_large", None).state_dict(), path)
    spec = "torchvision:ssdlite320_mobilenet_v3_large"
    result = CliRunner().invoke(app, ["layers", "--model", spec, "--weights", str(path)])
    assert result.exit_code == 0, result.output
    assert "kind: detection; classes: 91" in result.output
    assert "automatic target layer of" in result.output and "backbone.features.0" in result.output


def test_candidate_layers(frcnn: camlens.Model) -> None:
    from camlens.layers import auto_layer, spatial_layers

    names = [info.name for info in spatial_layers(frcnn)]
    assert {
        "backbone.body.16",
        "backbone.fpn.layer_blocks.0",
        "backbone.fpn.layer_blocks.1",
    } <= set(names)
    assert not any(n.startswith(("rpn.", "roi_heads.")) for n in names)  # shared by the levels
    assert auto_layer(frcnn) == "backbone.body.12"  # the last of stride 16


@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_mobilenet_v3_large_fpn",
        "ssdlite320_mobilenet_v3_large",
        "fasterrcnn_resnet50_fpn",
    ],
)
def test_the_automatic_layer_is_the_last_stage_of_stride_16(name: str) -> None:
    """The table of torchvision's detectors agrees with the rule any detector gets: the last
    stage whose output is at most 16 times smaller than the input (measured by a probe)."""
    from camlens.models.detection import TORCHVISION_DETECTION, DetectionNet, automatic_stage

    net = DetectionNet(torchvision_detection(name, None).eval())
    assert automatic_stage(net) == TORCHVISION_DETECTION[name]
    layer = net.get_submodule(TORCHVISION_DETECTION[name])
    seen: list[torch.Size] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        net(torch.rand(1, 3, 160, 160))
    handle.remove()
    assert seen[0][-1] == 160 // 16  # stride 16 in the real pass too


class TinyDetector(nn.Module):
    """A detector-shaped network in torchvision's format: three fixed boxes (fractions of the
    image), box k scored by the sigmoid of the mean of feature channel k over its box, minus 1."""

    BOXES = ((0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.9), (0.0, 0.5, 0.4, 1.0))

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)
        )
        with torch.no_grad():  # positive weights: positive features, each score rising with them
            for p in self.backbone.parameters():
                p.abs_()

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        x = torch.stack(list(images))
        features = self.backbone(x)
        height, width = x.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=x.dtype)
        boxes = torch.tensor(self.BOXES, dtype=x.dtype) * scale
        out = []
        for f in features:
            scores = []
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                scores.append(torch.sigmoid(f[k, y0:y1, x0:x1].mean() - 1))
            out.append(
                {"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": torch.stack(scores)}
            )
        return out


@pytest.fixture(scope="module")
def tiny() -> camlens.Model:
    torch.manual_seed(0)
    raw = PreprocessConfig(
        input_size=(48, 48), interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    return camlens.load_model(TinyDetector().eval(), preprocess=raw)


def test_any_detector_module(tiny: camlens.Model) -> None:
    assert tiny.kind == "detection" and tiny.labels == coco_labels()
    from camlens.layers import auto_layer

    assert auto_layer(tiny) == "backbone"  # the last spatial layer (a container ending in it)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cam"])
def test_every_method_but_cam(tiny: camlens.Model, photo: Image.Image, method: str) -> None:
    ex = camlens.Explainer(tiny, method=method, min_score=0.0)
    result = ex.explain(photo)
    assert len(result.maps) == 3 and not any(m.flat for m in result.maps)
    boxes = [m.target["box"] for m in result.maps]
    assert boxes == [list(d.box) for d in result.detections]
    if METHODS[method].needs == "scores":  # scored by each detection's matching score
        assert result.stats.perturbation_passes > 0
    if method != "eigencam":  # eigencam: the same map for every detection
        assert not torch.equal(result.maps[0].map, result.maps[1].map)


def test_cam_is_refused(tiny: camlens.Model) -> None:
    with pytest.raises(camlens.errors.MethodError, match="is a detector"):
        camlens.Explainer(tiny, method="cam")


def test_batched_gradients_equal_one_by_one(tiny: camlens.Model, photo: Image.Image) -> None:
    ex = camlens.Explainer(tiny, method="gradcam", min_score=0.0)
    together = ex.explain(photo)
    assert together.stats.backward_passes == 1
    for m in together.maps:
        alone = camlens.Explainer(tiny, method="gradcam", targets=[m.target]).explain(photo)
        torch.testing.assert_close(alone.maps[0].map, m.map)


def test_only_the_explained_detections_keep_a_graph(
    frcnn: camlens.Model, photo: Image.Image
) -> None:
    """A Faster R-CNN's pass keeps the graph of the detections explained only; their maps are
    those of a pass where every detection has it (a target given explicitly)."""
    ex = camlens.Explainer(frcnn, method="gradcam", min_score=0.0, detections=2)
    fast = ex.explain(photo)
    full = camlens.Explainer(
        frcnn, method="gradcam", targets=[m.target for m in fast.maps]
    ).explain(photo)
    for a, b in zip(fast.maps, full.maps, strict=True):
        torch.testing.assert_close(a.map, b.map)


def test_a_flip_mirrors_the_detections(tiny: camlens.Model) -> None:
    from camlens.scoring import TargetPlan

    plan = TargetPlan(tiny, [])
    d = Detection((10, 20, 30, 60), 1, 0.7)
    assert plan.mirrored([[d]], [(100, 80)]) == [[Detection((70, 20, 90, 60), 1, 0.7)]]


def test_a_detection_scaled_to_the_input(tiny: camlens.Model) -> None:
    """A photo of 96x96 explained at 48x48: the detections' boxes are in the photo's pixels,
    matched in the input's."""
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), np.uint8))
    result = camlens.Explainer(tiny, min_score=0.0).explain(photo)
    found = sorted(list(d.box) for d in result.detections)
    assert found == sorted([round(v * 96, 2) for v in box] for box in TinyDetector.BOXES)
    assert all(
        m.value == pytest.approx(d.score, abs=1e-5)
        for m, d in zip(result.maps, result.detections, strict=True)
    )


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("fasterrcnn_mobilenet_v3_large_fpn", 160),
        ("ssdlite320_mobilenet_v3_large", 160),
        ("retinanet_resnet50_fpn", 128),
        ("fcos_resnet50_fpn", 128),
    ],
)
def test_rows_are_the_detectors_own(name: str, size: int) -> None:
    """DetectionNet computes torchvision's detectors' detections itself (so that only the
    detections explained keep a graph): the same boxes, scores and labels as their own forward
    pass, with and without the graph, all of them or within ``graded``."""
    from camlens.models.detection import detection_rows, graded

    torch.manual_seed(0)
    options: dict[str, float] = {"score_thresh": 0.0}
    if "rcnn" in name:
        options = {"box_score_thresh": 0.0, "rpn_post_nms_top_n_test": 200}
    net = torchvision_detection(name, None, **options).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = detection_rows(net(list(x)), x)
        torch.testing.assert_close(DetectionNet(net)(x), expected, rtol=0, atol=0)
    with graded(0.0, 3):
        rows = DetectionNet(net)(x)
    assert rows.requires_grad
    torch.testing.assert_close(rows.detach(), expected, rtol=0, atol=1e-6)


def test_another_input_size(frcnn: camlens.Model, photo: Image.Image) -> None:
    """input_size replaces the detector's own (its box head's Linear layers read pooled boxes,
    not the grid: any size is fine); the detections are in the photo's pixels all the same."""
    ex = camlens.Explainer(frcnn, min_score=0.0, detections=1, input_size=(96, 128))
    result = ex.explain(photo)
    assert result.input_size == (96, 128) and len(result.maps) == 1
    x0, y0, x1, y1 = result.detections[0].box
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120


def test_test_time_augmentation(frcnn: camlens.Model, photo: Image.Image) -> None:
    """Flipped and rescaled passes explain the same detections (mirrored, scaled), merged."""
    ex = camlens.Explainer(frcnn, min_score=0.0, detections=2, smooth="tta", tta_scales=(1.0, 1.25))
    result = ex.explain(photo)
    assert result.stats.forward_passes == 4 and len(result.maps) == 2
    assert [m.target for m in result.maps] == [d.target().to_dict() for d in result.detections[:2]]


def test_a_batch_with_and_without_detections(tiny: camlens.Model, tmp_path) -> None:
    """An image with no detection above min_score gets no map beside one with three, in one
    batch; both reports are written."""
    dark = Image.new("RGB", (64, 64), (0, 0, 0))
    bright = Image.new("RGB", (64, 64), (255, 255, 255))
    with torch.no_grad():
        rows = tiny.net(torch.stack([torch.zeros(3, 48, 48), torch.ones(3, 48, 48)]))
    least = float((rows[0, :, 4].max() + rows[1, :, 4].min()) / 2)
    assert rows[0, :, 4].max() < least < rows[1, :, 4].min()
    ex = camlens.Explainer(tiny, min_score=least)
    with pytest.warns(FlatMapWarning, match="<image 0>: no detection scored at least"):
        none, three = ex.explain([dark, bright])
    assert none.detections == [] and none.maps == []
    assert len(three.detections) == 3 and len(three.maps) == 3
    assert not any(m.flat for m in three.maps)
    report = json.loads(three.save(tmp_path / "three").read_text())
    assert [e["target"]["box"] for e in report["explanations"]] == [
        d["box"] for d in report["detections"]
    ]
    assert len({e["overlay"] for e in report["explanations"]}) == 3
    assert json.loads(none.save(tmp_path / "none").read_text())["detections"] == []


def test_a_torchvision_detector_given_as_a_module() -> None:
    """A torchvision detector of one's own (its transform kept as it is) is preprocessed as it
    expects: a square of its min_size, not normalized; no warning about preprocessing."""
    import warnings

    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = camlens.load_model(net)
    assert model.kind == "detection" and model.labels == ("class 0", "class 1", "class 2")
    assert model.preprocess.input_size == (320, 320) and model.preprocess.mean == (0.0, 0.0, 0.0)
    assert type(net.transform).__name__ == "GeneralizedRCNNTransform"  # left as found


def test_the_config_rebuilds_the_same_maps(tiny: camlens.Model, photo: Image.Image) -> None:
    ex = camlens.Explainer(tiny, method=["gradcam", "eigencam"], min_score=0.1, detections=2)
    again = camlens.Explainer.from_config(ExplainConfig.from_json(ex.config.to_json()), model=tiny)
    assert (again.config.min_score, again.config.detections) == (0.1, 2)
    a, b = ex.explain(photo), again.explain(photo)
    assert len(a.maps) == 4 and a.detections == b.detections
    for m, n in zip(a.maps, b.maps, strict=True):
        assert m.target == n.target and torch.equal(m.map, n.map)


def test_a_detector_loaded_by_name_pickles(frcnn: camlens.Model) -> None:
    import pickle

    net = pickle.loads(pickle.dumps(frcnn.net.inner))
    assert type(net.transform).__name__ == "Exact"
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(DetectionNet(net)(x), frcnn.net(x))


@pytest.mark.parametrize(
    ("name", "layer", "size", "windowed"),
    [
        ("fasterrcnn_mobilenet_v3_large_fpn", "backbone.body.16", 160, False),  # coarse levels
        ("fasterrcnn_resnet50_fpn", "backbone.body.layer2", 192, True),
        ("fasterrcnn_resnet50_fpn_v2", "backbone.body.layer3", 224, True),  # through batch norms
        ("fasterrcnn_resnet50_fpn_v2", "backbone.fpn.layer_blocks.0", 224, False),  # a level
        ("ssdlite320_mobilenet_v3_large", "backbone.features.0", 160, False),  # every head reads it
        ("retinanet_resnet50_fpn", "backbone.body.layer3", 160, False),  # scored on head windows
    ],
)
def test_the_gradient_is_that_of_the_detectors_own_score(
    name: str, layer: str, size: int, windowed: bool
) -> None:
    """The gradient of a detection's score at a layer, from DetectionNet's pass that scores
    only the graded detections again, equals the one through torchvision's own forward pass;
    a Faster R-CNN's scored from windows of its pyramid's levels (its levels computed without a
    graph) at a layer before them, where the levels are fine enough for windows to pay."""
    from camlens.models.detection import graded

    torch.manual_seed(0)
    options: dict[str, float] = {"score_thresh": 0.0}
    if "rcnn" in name:
        options = {"box_score_thresh": 0.0, "rpn_post_nms_top_n_test": 200}
    net = torchvision_detection(name, None, **options).eval()
    x = torch.rand(1, 3, size, size)
    kept: list[torch.Tensor] = []
    levels: list[bool] = []  # whether the pyramid's last level has a graph

    def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.detach().requires_grad_(True)
        kept.append(output)
        return output

    handles = [net.get_submodule(layer).register_forward_hook(keep)]
    if "rcnn" in name:
        last = net.backbone.fpn.layer_blocks[-1]
        handles.append(last.register_forward_hook(lambda m, i, o: levels.append(o.requires_grad)))
    try:
        own = net(list(x))[0]["scores"]
        with graded(0.0, 3, [layer]):
            rows = DetectionNet(net)(x)
    finally:
        for handle in handles:
            handle.remove()
    if "rcnn" in name:
        assert levels == [True, not windowed]
    for j in range(3):
        (expected,) = torch.autograd.grad(own[j], kept[0], retain_graph=True)
        (found,) = torch.autograd.grad(rows[0, j, 4], kept[1], retain_graph=True)
        largest = float(expected.abs().max())
        assert largest > 0
        torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4 * largest)


def test_retinanet_logits_from_windows_are_the_heads() -> None:
    """A RetinaNet's explained detections are scored again from the window of features their
    logit reads (its head's five 3 x 3 convolutions: 11 x 11): at every row of every level,
    corners and edges included, the same logits as its head over the whole maps."""
    from camlens.models.windows import head_layers, head_logits

    torch.manual_seed(0)
    net = torchvision_detection("retinanet_resnet50_fpn", None).eval()
    layers = head_layers(net)
    assert layers is not None and sum(isinstance(m, nn.Conv2d) for m in layers) == 5
    features = [torch.randn(1, 256, h, w) for h, w in ((12, 9), (6, 5), (3, 3), (2, 2), (1, 1))]
    with torch.no_grad():
        whole = net.head.classification_head(features)[0]  # [rows, classes]
        per_anchor = whole.shape[0] // sum(f[0, 0].numel() for f in features)
        assert per_anchor == 9
        places = torch.arange(whole.shape[0])
        found = head_logits(layers, [f[0] for f in features], places, per_anchor)
    torch.testing.assert_close(found, whole, rtol=1e-4, atol=1e-5)


def test_a_normalized_head_is_scored_whole() -> None:
    """A head that normalizes over the map (RetinaNet v2's GroupNorm) has no window: its
    detections are scored from the whole head."""
    import torchvision

    from camlens.models.windows import head_layers

    net = torchvision.models.get_model(
        "retinanet_resnet50_fpn_v2", weights=None, weights_backbone=None
    )
    assert head_layers(net) is None


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_boxes_pooled_from_windows_are_the_poolers(name: str) -> None:
    """A Faster R-CNN's explained boxes pooled from the region of their level each samples give
    the features its MultiScaleRoIAlign gives from the whole levels: boxes of every level, from
    a third of a pixel to the whole image, on the edges and in the corners; and the same
    gradients with respect to the pyramid's inner maps, box by box."""
    from camlens.models.windows import pyramid_blocks, pyramid_pooled

    torch.manual_seed(0)
    net = torchvision_detection(name, None).eval()
    blocks = pyramid_blocks(net)
    assert blocks is not None
    height, width = 896, 640  # every level of the ResNet's pyramid gets boxes
    strides = [4, 8, 16, 32] if "resnet" in name else [16, 32]
    inners = [torch.randn(1, 256, height // s, width // s, requires_grad=True) for s in strides]
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(80, 2, generator=generator) * torch.tensor([width, height])
    side = torch.rand(80, 2, generator=generator) ** 2 * torch.tensor([width, height]) + 0.3
    edges = torch.tensor([[width, height]], dtype=torch.float)
    boxes = torch.cat([corner, torch.minimum(corner + side, edges)], 1)
    extremes = [[0, 0, width, height], [0, 0, 3, 3], [width - 5, height - 5, width, height]]
    extremes += [[0, 0, width, 10], [10.5, 3.25, 10.8, 3.5], [300, 0, 620, 896]]
    rows = [torch.cat([boxes, torch.tensor(extremes, dtype=torch.float)])]
    levels = {
        str(i): net.backbone.fpn.get_result_from_layer_blocks(inner, i)
        for i, inner in enumerate(inners)
    }
    pooler = net.roi_heads.box_roi_pool
    expected = pooler(levels, rows, [(height, width)])
    assert len(set(pooler.map_levels(rows).tolist())) == len(inners)
    found = pyramid_pooled(net, blocks, inners, rows)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    for box in (0, len(rows[0]) - 4, len(rows[0]) - 1):  # one box's gradient: the others' none
        seed = torch.zeros_like(found)
        seed[box] = torch.randn(found.shape[1:], generator=generator)
        wanted = torch.autograd.grad(expected, inners, seed, retain_graph=True, allow_unused=True)
        got = torch.autograd.grad(found, inners, seed, retain_graph=True, allow_unused=True)
        for w, g in zip(wanted, got, strict=True):
            if g is None:
                assert w is None or not w.any()
            else:
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        assert any(g is not None for g in got)
