"""The HTTP API for the kinds of model: ``/api/model`` says the kind and the explain fields that
go with it; a segmentation model's answer holds its segmentation (the classes present, their
share of the pixels) and per explained class its map, the same as the Python API's, with the
region it was explained over (the class's pixels, a box, an uploaded mask) drawn at
``region.png``; a field that cannot apply to the model's kind is a 422 naming it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import camlens
from camlens.images import PreprocessConfig
from camlens.targets import Segment

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from camlens.serve import create_app


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> camlens.Model:
    """LR-ASPP MobileNetV3 by its spec (VOC's classes), seeded random weights at 128 pixels,
    its low-level classifier's weights scaled by 100 so that its classes vary across a photo
    (several segments)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None
    )
    with torch.no_grad():
        net.classifier.low_classifier.weight *= 100
    weights = tmp_path_factory.mktemp("seg") / "seg.pth"
    torch.save(net.state_dict(), weights)
    model = camlens.load_model("torchvision:lraspp_mobilenet_v3_large", weights=weights)
    model.preprocess = PreprocessConfig(input_size=(128, 128), interpolation="bilinear")
    return model


@pytest.fixture(scope="module")
def seg(segmenter: camlens.Model) -> Iterator[TestClient]:
    with TestClient(create_app(segmenter)) as client:
        yield client


@pytest.fixture(scope="module")
def classifier(default_model: camlens.Model) -> Iterator[TestClient]:
    with TestClient(create_app(default_model)) as client:
        yield client


@pytest.fixture(scope="module")
def picture(chelsea: np.ndarray) -> Image.Image:
    return Image.fromarray(chelsea).resize((180, 120))


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def post(client: TestClient, picture: Image.Image, mask: bytes | None = None, **fields: Any) -> Any:
    files = {"image": ("cat.png", png(picture), "image/png")}
    if mask is not None:
        files["mask"] = ("region.png", mask, "image/png")
    return client.post("/api/explain", files=files, data=fields)


def layer_map(client: TestClient, entry: dict[str, Any]) -> np.ndarray:
    answer = client.get(entry["map"], params={"size": "layer"})
    assert answer.status_code == 200
    return np.load(io.BytesIO(answer.content))


def inside(client: TestClient, entry: dict[str, Any]) -> np.ndarray:
    """The pixels region.png leaves clear (neither dimmed nor drawn: the region's inside, less
    its outline)."""
    answer = client.get(entry["region"])
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert pixels.shape[-1] == 4
    return pixels[..., 3] == 0


def region(client: TestClient, entry: dict[str, Any]) -> np.ndarray:
    """The pixels region.png shows as the region: clear, or its white outline (outside it, the
    photo is dimmed and the outline has a dark edge)."""
    pixels = np.asarray(Image.open(io.BytesIO(client.get(entry["region"]).content)))
    return (pixels[..., 3] == 0) | (pixels == 255).all(axis=-1)


def test_model_says_its_kind(seg: TestClient, classifier: TestClient) -> None:
    body = seg.get("/api/model").json()
    assert body["kind"] == "segmentation"
    assert body["explains"] == ["classes", "top", "region", "mask"]
    assert body["background"] == [0] and body["classes"][0] == "__background__"
    plain = classifier.get("/api/model").json()
    assert plain["kind"] == "classifier" and plain["background"] == []
    assert plain["min_score"] is None and body["min_score"] is None
    assert "versus" in plain["explains"] and "region" not in plain["explains"]


def test_segments_and_their_maps_are_the_python_apis(
    seg: TestClient, segmenter: camlens.Model, picture: Image.Image
) -> None:
    body = post(seg, picture, top="2", methods="gradcam").json()
    expected = camlens.Explainer(segmenter).explain(picture, top=2)
    report = expected.to_dict()
    assert body["segmentation"] == report["segmentation"]
    assert len(body["segmentation"]) > 3
    assert sum(s["share"] for s in body["segmentation"]) == pytest.approx(1, abs=1e-4)
    assert body["predictions"] == report["predictions"]
    assert [m["target"] for m in body["explanations"]] == [
        m["target"] for m in report["explanations"]
    ]
    # top leaves the background out: the two largest other classes
    others = [s["class_index"] for s in body["segmentation"] if s["class_index"] != 0]
    assert [m["class_index"] for m in body["explanations"]] == others[:2]
    for i, entry in enumerate(body["explanations"]):
        assert entry["target"]["kind"] == "segment" and entry["target"]["region"] == "predicted"
        np.testing.assert_allclose(layer_map(seg, entry), expected.maps[i].map.numpy(), atol=1e-5)
        # the region drawn is the class's pixels, the segmentation resized to the photo
        classes = expected.segments.classes  # type: ignore[union-attr]
        resized = torch.nn.functional.interpolate(
            (classes == entry["class_index"])[None, None].float(), size=(120, 180), mode="nearest"
        )[0, 0].numpy()
        drawn = region(seg, entry)
        assert drawn.shape == (120, 180)
        np.testing.assert_array_equal(drawn, resized > 0.5)
        assert inside(seg, entry).sum() < resized.sum()
    # the background, by name
    background = post(seg, picture, classes="0").json()
    assert [m["class_index"] for m in background["explanations"]] == [0]
    small = seg.get(body["explanations"][0]["region"], params={"max_side": 60})
    assert Image.open(io.BytesIO(small.content)).size == (60, 40)


def test_a_region_and_a_mask(
    seg: TestClient, segmenter: camlens.Model, picture: Image.Image, tmp_path: Path
) -> None:
    boxed = post(seg, picture, classes=["cat", "12"], region="30,20,150,80").json()
    box = (30, 20, 150, 80)
    expected = camlens.Explainer(segmenter, targets=[Segment(8, box=box), Segment(12, box=box)])
    want = expected.explain(picture)
    (first, second) = boxed["explanations"]
    assert [first["target"], second["target"]] == [m.target for m in want.maps]
    assert first["target"]["region"] == second["target"]["region"] == [30, 20, 150, 80]
    assert [first["class_index"], second["class_index"]] == [8, 12]
    assert first["explained"] == "cat in 30,20,150,80"
    for entry, m in zip(boxed["explanations"], want.maps, strict=True):
        np.testing.assert_allclose(layer_map(seg, entry), m.map.numpy(), atol=1e-5)
    box = np.zeros((120, 180), dtype=bool)
    box[20:80, 30:150] = True
    np.testing.assert_array_equal(region(seg, first), box)

    mask = np.zeros((120, 180), dtype=np.uint8)
    mask[60:110, 10:70] = 255
    Image.fromarray(mask).save(tmp_path / "region.png")
    masked = post(seg, picture, mask=png(Image.fromarray(mask)), classes="cat").json()
    (entry,) = masked["explanations"]
    want = camlens.Explainer(segmenter, targets=[Segment(8, mask=str(tmp_path / "region.png"))])
    expected_map = want.explain(picture).maps[0]
    np.testing.assert_allclose(layer_map(seg, entry), expected_map.map.numpy(), atol=1e-5)
    assert entry["target"]["region"] == "mask" and entry["target"]["mask"] == "region.png"
    np.testing.assert_array_equal(region(seg, entry), mask > 0)
    # kept with the result: the answer again, the region again
    again = seg.get(masked["url"]).json()
    assert again["explanations"][0]["region"] == entry["region"]


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"versus": "cat"}, "versus", "versus does not apply to"),
        ({"above": "0.1"}, "above", "above does not apply to"),
        ({"output": "3"}, "output", "output does not apply to"),
        ({"scores": "sigmoid"}, "scores", "scores does not apply to"),
        ({"min_score": "0.2"}, "min_score", "min_score does not apply to"),
        ({"detections": "2"}, "detections", "detections does not apply to"),
        ({"region": "0,0,10,10"}, "region", "region needs classes (not top)"),
        ({"region": "0,0,10,10", "top": "1"}, "region", "region needs classes (not top)"),
        ({"region": "0,0,181,10", "classes": "cat"}, "region", "outside the 180x120 photo"),
        ({"region": "10,10,5,20", "classes": "cat"}, "region", "needs 0 <= x0 < x1"),
        ({"region": "a,b", "classes": "cat"}, "region", "a region is x0,y0,x1,y1"),
        ({"region": "0,0,5,5", "classes": "kitten"}, "classes", "kitten"),
    ],
)
def test_what_cannot_apply_to_a_segmentation_model_is_named(
    seg: TestClient, picture: Image.Image, fields: dict[str, str], parameter: str, words: str
) -> None:
    answer = post(seg, picture, **fields)
    assert answer.status_code == 422, answer.text
    assert answer.json()["parameter"] == parameter
    assert words in answer.json()["detail"]


def test_bad_masks_are_named(seg: TestClient, picture: Image.Image) -> None:
    cases = [
        (png(Image.new("L", (180, 120))), 422, "the mask region.png is empty"),
        (png(Image.new("L", (18, 12), 255)), 422, "region.png is 18x12, the photo 180x120"),
        (b"not a picture", 415, "region.png: "),
    ]
    for data, status, words in cases:
        answer = post(seg, picture, mask=data, classes="cat")
        assert (answer.status_code, answer.json()["parameter"]) == (status, "mask"), answer.text
        assert words in answer.json()["detail"]
        assert "/tmp" not in answer.json()["detail"]  # the upload's name, not the server's folder
    both = post(
        seg, picture, mask=png(Image.new("L", (180, 120), 255)), classes="cat", region="0,0,5,5"
    )
    assert (both.status_code, both.json()["parameter"]) == (422, "mask")


@pytest.mark.parametrize("field", ["region", "min_score", "detections"])
def test_what_cannot_apply_to_a_classifier_is_named(
    classifier: TestClient, picture: Image.Image, field: str
) -> None:
    answer = post(classifier, picture, **{field: "1"})
    assert (answer.status_code, answer.json()["parameter"]) == (422, field)
    assert answer.json()["detail"].startswith(f"{field} does not apply to ")
    assert "a classifier model: it explains classes" in answer.json()["detail"]
    masked = post(classifier, picture, mask=png(Image.new("L", (180, 120), 255)))
    assert (masked.status_code, masked.json()["parameter"]) == (422, "mask")


def test_a_classifiers_map_has_no_region(classifier: TestClient, picture: Image.Image) -> None:
    body = post(classifier, picture).json()
    assert body["segmentation"] is None and body["explanations"][0]["region"] is None
    answer = classifier.get(f"{body['url']}/maps/0/region.png")
    assert (answer.status_code, answer.json()["parameter"]) == (404, "index")


# --- a detector ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> camlens.Model:
    """Faster R-CNN MobileNetV3 (FPN) by its spec, seeded random weights at 320 pixels, its box
    classifier's weights scaled by 100 (a random one scores every box below torchvision's own
    threshold of 0.05: no detection)."""
    import dataclasses

    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None
    )
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.weight *= 100
    weights = tmp_path_factory.mktemp("det") / "det.pth"
    torch.save(net.state_dict(), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = camlens.load_model("torchvision:fasterrcnn_mobilenet_v3_large_fpn", weights=weights)
    model.preprocess = dataclasses.replace(model.preprocess, input_size=(320, 320))
    return model


@pytest.fixture(scope="module")
def det(detector: camlens.Model) -> Iterator[TestClient]:
    from camlens.serve import ServeSettings

    with TestClient(create_app(detector, ServeSettings(max_maps=4))) as client:
        yield client


def test_detections_and_their_maps_are_the_python_apis(
    det: TestClient, detector: camlens.Model, picture: Image.Image
) -> None:
    model = det.get("/api/model").json()
    assert model["kind"] == "detection" and model["explains"] == ["min_score", "detections"]
    assert model["min_score"] == 0.5 and model["background"] == []
    assert model["classes"][:2] == ["__background__", "person"]
    # Eigen-CAM: this random detector's gradients are ~1e-11 (its Grad-CAM maps are flat, as
    # torchvision's own backward gives them)
    body = post(det, picture, min_score="0", detections="2", methods="eigencam").json()
    explainer = camlens.Explainer(detector, min_score=0, detections=2, method="eigencam")
    expected = explainer.explain(picture)
    report = expected.to_dict()
    assert body["detections"] == report["detections"] and len(body["detections"]) > 2
    assert body["segmentation"] is None
    assert len(body["explanations"]) == 2
    for entry, m, found in zip(
        body["explanations"], expected.maps, body["detections"], strict=False
    ):
        # each map's target is its detection: box, label, score
        assert (
            entry["target"]
            == m.target
            == {
                "kind": "detection",
                "box": found["box"],
                "label": found["class_index"],
                "score": found["score"],
            }
        )
        assert entry["region"] is None
        assert not entry["flat"]
        np.testing.assert_allclose(layer_map(det, entry), m.map.numpy(), atol=1e-5)
    # at the default minimum of 0.5: none, and no map (not an error)
    none = post(det, picture).json()
    assert (none["detections"], none["explanations"]) == ([], [])


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"top": "2"}, "top", "top does not apply to"),
        ({"classes": "cat"}, "classes", "it explains its detections"),
        ({"region": "0,0,5,5"}, "region", "region does not apply to"),
        ({"versus": "cat"}, "versus", "versus does not apply to"),
        ({"min_score": "1.5"}, "min_score", "min_score must be a number in [0, 1]"),
        ({"detections": "0"}, "detections", "detections must be at least 1, not 0"),
        ({"detections": "5"}, "detections", "5 maps asked for (detections x methods x layers)"),
        (
            {"detections": "3", "methods": "gradcam,eigencam"},
            "detections",
            "6 maps asked for",
        ),
    ],
)
def test_what_cannot_apply_to_a_detector_is_named(
    det: TestClient, picture: Image.Image, fields: dict[str, str], parameter: str, words: str
) -> None:
    answer = post(det, picture, **fields)
    assert (answer.status_code, answer.json()["parameter"]) == (422, parameter), answer.text
    assert words in answer.json()["detail"]


def test_a_detector_explains_as_many_detections_as_max_maps_allows(
    det: TestClient, picture: Image.Image
) -> None:
    """No detections field: the best max_maps // (methods x layers) of them (here 4 // 2)."""
    body = post(det, picture, min_score="0", methods="eigencam,gradcam").json()
    assert len(body["detections"]) > 2
    explained = [(m["method"], m["target"]["box"]) for m in body["explanations"]]
    boxes = [d["box"] for d in body["detections"][:2]]
    assert sorted(explained) == sorted((m, b) for m in ("eigencam", "gradcam") for b in boxes)
