"""The explorer page for the other kinds of model, in a real Chromium against a real ``camlens
serve``: a segmentation model lists its segments (class and share of the pixels) instead of the
top five, and a segment's map shows its pixels outlined; a detector lists its detections (label
and score, with the minimum score a slider) and a detection's map shows its box. The harness
(the browser, the screenshots) is test_serve_browser's."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serving import camlens_serve
from test_serve_browser import PHONE, SENT_FORMS, Shots, page, page_width, pytestmark

__all__ = ["page", "pytestmark"]  # the fixtures and marks of the browser tests

SIZE = "128"
SLOW = 600_000  # ms: a detector's maps, a backward pass's row each, on a busy machine


@pytest.fixture(scope="module")
def seg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LR-ASPP MobileNetV3 with seeded random weights at 128 pixels, its low-level classifier's
    weights scaled by 100 so that the classes it gives vary across a photo (a random LR-ASPP
    gives one class everywhere): several segments, the background among them."""
    import torchvision

    folder = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None
    )
    with torch.no_grad():
        net.classifier.low_classifier.weight *= 100
    torch.save(net.state_dict(), folder / "seg.pth")
    spec = "torchvision:lraspp_mobilenet_v3_large"
    args = ["--model", spec, "--weights", str(folder / "seg.pth"), "--input-size", SIZE]
    with warnings.catch_warnings(), camlens_serve(args, log=folder / "serve.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def det_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Faster R-CNN MobileNetV3 (FPN) with seeded random weights, its box classifier's weights
    scaled by 100 (a random one scores every box below torchvision's own threshold of 0.05, and
    finds nothing), at 320 pixels, on a server that explains 3 maps a request."""
    import torchvision

    folder = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None
    )
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.weight *= 100
    torch.save(net.state_dict(), folder / "det.pth")
    spec = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
    args = [*("--model", spec, "--weights", str(folder / "det.pth")), "--input-size", "320"]
    with camlens_serve([*args, "--max-maps", "3"], log=folder / "serve.log") as (url, _):
        yield url


def download_name(page: Any) -> str:
    """The file name the page gives the map on screen's download."""
    with page.expect_download() as download:
        page.click("#download-map")
    return str(download.value.suggested_filename)


def served_name(url: str, page: Any) -> str:
    """The file name the server gives the same map (its Content-Disposition)."""
    href = str(page.locator("#download-map").get_attribute("href"))
    answer = httpx.get(href if href.startswith("http") else f"{url}{href}", timeout=60)
    return answer.headers["content-disposition"].split('filename="')[1].rstrip('"')


def photo(tmp_path: Path, array: np.ndarray, name: str) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, quality=95)
    return path


def test_segments(seg_server: str, page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.add_init_script(SENT_FORMS)
    page.set_viewport_size({"width": 1280, "height": 800})
    model = httpx.get(f"{seg_server}/api/model").json()
    assert model["kind"] == "segmentation" and model["background"] == [0]
    page.goto(f"{seg_server}/#/explore?min_score=0.2")  # a detector's, not applied here
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#message")).to_have_text(
        "Not applied from the address (unknown here): min_score=0.2"
    )
    expect(page.locator("#empty p.wide-only")).to_contain_text("The model's segments (the classes")
    path = photo(tmp_path, chelsea, "chelsea.jpg")
    page.set_input_files("#file", str(path))
    expect(page.locator("#predictions-title")).to_have_text("Segments")
    # the segments, as the server gives them: every class present, most pixels first
    answer = httpx.post(
        f"{seg_server}/api/explain",
        files={"image": ("chelsea.jpg", path.read_bytes(), "image/jpeg")},
        timeout=60,
    ).json()
    segments = answer["segmentation"]
    assert len(segments) > 5 and segments[0]["share"] > segments[-1]["share"]
    assert 0 in [s["class_index"] for s in segments]  # the background is present
    listed = page.locator(".prediction")
    expect(listed).to_have_count(len(segments))
    expect(listed.locator(".label")).to_have_text([s["label"] for s in segments])
    expect(listed.nth(0).locator(".score")).to_have_text(f"{100 * segments[0]['share']:.1f}%")
    # no versus, threshold or reference: they explain a classifier's classes
    expect(page.locator("#targets")).to_be_hidden()
    expect(page.locator(".versus-button")).to_have_count(0)
    stage = page.locator("#stage")
    caption = stage.locator("figcaption")
    expect(caption.locator("strong")).to_have_text(segments[0]["label"])
    expect(caption.locator(".score")).to_contain_text("of the pixels")
    region = stage.locator("img.region")
    expect(region).to_have_js_property("naturalWidth", 451)
    first = str(region.get_attribute("src"))
    sent = page.evaluate("window.sentForms.at(-1)")
    assert "top" in sent and "min_score" not in sent
    shots.take(page, "segments")
    # the map's download is named as the server names its file
    saved = download_name(page)
    assert (
        saved
        == served_name(seg_server, page)
        == f"chelsea.gradcam.{model['auto_layer']}.{segments[0]['class_index']}.npy"
    )

    # the background: asked for by name (top leaves it out), its own region
    background = [s["class_index"] for s in segments].index(0)
    listed.nth(background).click()
    expect(caption.locator("strong")).to_have_text("__background__")
    expect(region).to_have_js_property("naturalWidth", 451)
    assert region.get_attribute("src") != first
    sent = page.evaluate("window.sentForms.at(-1)")
    assert sent["classes"] == "0" and "top" not in sent
    # the region drawn is the background's pixels: the region PNG's inside is where the
    # server's segmentation says class 0 is (its outline white, the rest dimmed)
    src = str(region.get_attribute("src"))
    png = httpx.get(f"{seg_server}{src}" if src.startswith("/") else src).content
    pixels = np.asarray(Image.open(__import__("io").BytesIO(png)))
    inside = pixels[..., 3] < 90  # neither dimmed (90) nor drawn (200, 255)
    share = inside.mean()
    assert share == pytest.approx(segments[background]["share"], abs=0.08)
    shots.take(page, "segments-background")

    # the last segment, past the top five: asked for alone
    listed.last.click()
    expect(caption.locator("strong")).to_have_text(segments[-1]["label"])
    assert page.evaluate("window.sentForms.at(-1)")["classes"] == str(segments[-1]["class_index"])
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    assert page_width(page) == 390
    shots.take(page, "segments-phone-dark")


def test_detections(det_server: str, page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.add_init_script(SENT_FORMS)
    page.set_viewport_size({"width": 1280, "height": 800})
    assert httpx.get(f"{det_server}/api/model").json()["kind"] == "detection"
    path = photo(tmp_path, chelsea, "chelsea.jpg")
    # Eigen-CAM, the common choice for detectors (this random detector's gradients at its
    # automatic layer are ~1e-11: its Grad-CAM maps are flat, as torchvision's own backward gives)
    page.goto(f"{det_server}/#/explore?method=eigencam")
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#empty p.wide-only")).to_contain_text("The model's detections appear")
    # at the default minimum score of 0.5, nothing: said so, the photo shown alone
    page.set_input_files("#file", str(path))
    expect(page.locator("#predictions-title")).to_have_text("Detections")
    expect(page.locator("#busy")).to_be_hidden(timeout=SLOW)
    stage = page.locator("#stage")
    expect(stage.locator("figcaption")).to_have_text(
        "No detection scored at least 50.0%: lower the minimum score."
    )
    expect(page.locator(".prediction")).to_have_count(0)
    expect(page.locator("#min-score-note")).to_contain_text("No detection scored 50.0% or more")
    sent = page.evaluate("window.sentForms.at(-1)")
    assert sent["min_score"] == "0.5" and sent["detections"] == "3"
    assert "top" not in sent and "classes" not in sent
    shots.take(page, "detections-none")

    # the minimum at 0: the detections, each with its map and its box
    page.locator("#min-score").fill("0")
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#busy")).to_be_hidden(timeout=SLOW)
    assert page.evaluate("window.sentForms.at(-1)")["min_score"] == "0"
    assert "min_score=0" in page.evaluate("location.hash")
    answer = httpx.post(
        f"{det_server}/api/explain",
        files={"image": ("chelsea.jpg", path.read_bytes(), "image/jpeg")},
        data={"min_score": "0", "detections": "3", "methods": "eigencam"},
        timeout=600,
    ).json()
    found = answer["detections"]
    assert len(found) > 3 and len(answer["explanations"]) == 3
    listed = page.locator(".prediction")
    expect(listed).to_have_count(len(found))
    expect(listed.nth(0).locator(".label")).to_have_text(found[0]["label"])
    expect(listed.nth(0).locator(".score")).to_have_text(f"{found[0]['score']:.2f}")
    expect(stage.locator("figcaption strong")).to_have_text(found[0]["label"])
    expect(stage.locator("figcaption .score")).to_have_text(f"score {found[0]['score']:.2f}")
    box = stage.locator("rect.detection")
    expect(box).to_have_count(1)
    drawn = [float(box.get_attribute(a) or "nan") for a in ("x", "y", "width", "height")]
    x0, y0, x1, y1 = found[0]["box"]
    assert drawn == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    saved = download_name(page)
    assert saved == served_name(det_server, page)
    layer = httpx.get(f"{det_server}/api/model").json()["auto_layer"]
    assert saved.startswith(f"chelsea.eigencam.{layer}.{found[0]['class_index']}-det-")
    # the picture: the first detection whose map is not flat
    shown = next(i for i, m in enumerate(answer["explanations"]) if not m["flat"])
    listed.nth(shown).click()
    expect(stage.locator("figcaption .peak-text")).to_be_visible()
    shots.take(page, "detections")

    # another detection: its own map and box, from the same answer
    asked = page.evaluate("window.sentForms.length")
    listed.nth(2).click()
    x0, y0, x1, y1 = found[2]["box"]
    expect(box).to_have_attribute("x", str(x0) if x0 != int(x0) else str(int(x0)))
    drawn = [float(box.get_attribute(a) or "nan") for a in ("x", "y", "width", "height")]
    assert drawn == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    assert page.evaluate("window.sentForms.length") == asked
    # one past the three explained: listed, said not explained
    listed.nth(3).click()
    expect(stage.locator("figcaption")).to_contain_text("this one is listed, not explained")
    shots.take(page, "detections-past")
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    listed.nth(1).click()
    expect(box).to_have_count(1)
    assert page_width(page) == 390
    shots.take(page, "detections-phone-dark")
