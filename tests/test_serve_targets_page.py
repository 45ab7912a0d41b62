"""The explorer page's targets in a real Chromium against a real ``camlens serve``: "versus" (the
contrast of the class shown with another, its caption and value, and back to the plain map), a
multi-label (sigmoid) model's independent bars with the threshold line and the threshold that asks
with ``above``, and a reference photo whose similarity is explained. The harness (the browser,
the screenshots) is test_serve_browser's."""

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
from test_serve_browser import PHONE, SENT_FORMS, Shots, page, page_width, pytestmark, server

import camlens
from camlens.models.scores import set_scores

__all__ = ["page", "pytestmark", "server"]  # the fixtures and marks of the browser tests

TAGS = ["cat", "fur", "cup", "table", "grass", "sky"]


@pytest.fixture(scope="module")
def tags_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A multi-label model: six tags scored by sigmoid, from a small seeded ResNet-18."""
    folder = tmp_path_factory.mktemp("tags")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: expected here
        model = camlens.build_cam_model("torchvision:resnet18", class_names=TAGS, input_size=64)
    set_scores(model, "sigmoid")
    path = camlens.save(model, folder / "tags.camlens")
    with camlens_serve(["--model", str(path)], log=folder / "serve.log") as (url, _):
        yield url


def photo(tmp_path: Path, array: np.ndarray, name: str) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, quality=95)
    return path


def dropped(page: Any, array: np.ndarray) -> Any:
    """A DataTransfer holding ``array`` as cat.png, as a drop from the desktop gives it."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return page.evaluate_handle(
        """(bytes) => { const data = new DataTransfer();
          data.items.add(new File([new Uint8Array(bytes)], "cat.png", { type: "image/png" }));
          return data; }""",
        list(buffer.getvalue()),
    )


def test_versus_and_reference(
    server: str, page: Any, tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.add_init_script(SENT_FORMS)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{server}/#/explore?above=0.3")  # a threshold is for a multi-label model
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#message")).to_have_text(
        "Not applied from the address (unknown here): above=0.3"
    )
    expect(page.locator("#above-field")).to_be_hidden()
    page.set_input_files("#file", str(photo(tmp_path, chelsea, "chelsea.jpg")))
    predictions = page.locator(".prediction")
    expect(predictions).to_have_count(5)
    expect(page.locator("#predictions")).to_have_attribute("data-scores", "softmax")
    stage = page.locator("#stage")
    caption = stage.locator("figcaption")
    expect(caption.locator("strong")).to_have_text("Egyptian cat")
    plain = str(stage.locator("img.heat").get_attribute("src"))

    # versus the second prediction: the contrast map, its caption and value, asked with versus
    versus = page.locator(".versus-button")
    expect(versus.nth(0)).to_be_disabled()  # the class shown is not compared with itself
    versus.nth(1).click()
    expect(caption.locator("strong")).to_have_text("Egyptian cat versus tiger cat")
    expect(caption.locator(".value")).to_contain_text("logit difference +")
    expect(versus.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(versus.nth(1)).to_be_focused()  # drawn again, the button keeps the keyboard's focus
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    assert stage.locator("img.heat").get_attribute("src") != plain
    sent = page.evaluate("window.sentForms.at(-1)")
    assert sent["classes"] == "285" and sent["versus"] == "282" and "top" not in sent
    # the value shown is the server's, y_A - y_B of the two logits
    answer = httpx.post(
        f"{server}/api/explain",
        files={"image": ("chelsea.jpg", (tmp_path / "chelsea.jpg").read_bytes(), "image/jpeg")},
        data={"classes": "285", "versus": "282"},
        timeout=60,
    ).json()
    (contrast,) = answer["explanations"]
    expect(caption.locator(".value")).to_have_text(f"logit difference +{contrast['value']:.2f}")
    with page.expect_download() as download:
        page.click("#download-map")
    assert download.value.suggested_filename == "chelsea.gradcam.bn2.285-vs-282.npy"
    shots.take(page, "versus")
    # side by side: every method's contrast map, under the comparison's caption
    page.keyboard.press("c")
    expect(page.locator(".card")).to_have_count(4)
    expect(page.locator(".compare-title strong")).to_have_text("Egyptian cat versus tiger cat")
    expect(page.locator(".card img.heat").last).to_have_js_property("naturalWidth", 451)
    shots.take(page, "versus-compare")
    page.keyboard.press("c")
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    expect(caption.locator("strong")).to_have_text("Egyptian cat versus tiger cat")
    assert page_width(page) == 390
    shots.take(page, "versus-phone-dark")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.emulate_media(color_scheme="light")

    # another class chosen keeps the comparison; typed through the label search, any class
    predictions.nth(2).click()
    expect(caption.locator("strong")).to_have_text("tabby versus tiger cat")
    page.keyboard.press("v")  # the keyboard's way to the versus search
    expect(page.locator("#versus-query")).to_be_focused()
    page.keyboard.type("lynx")
    page.keyboard.press("Enter")
    expect(caption.locator("strong")).to_have_text("tabby versus lynx")
    # back to the plain map
    page.click("#versus-off")
    expect(caption.locator("strong")).to_have_text("tabby")
    expect(page.locator("#versus-off")).to_be_hidden()
    expect(page.locator(".versus-button[aria-pressed=true]")).to_have_count(0)
    assert "versus" not in page.evaluate("window.sentForms.at(-1)")

    # a reference photo: its similarity map, captioned, listed last; then removed
    page.set_input_files("#reference-file", str(photo(tmp_path, coffee, "coffee.jpg")))
    expect(predictions).to_have_count(6)
    expect(predictions.nth(5)).to_have_attribute("aria-pressed", "true")
    expect(predictions.nth(5).locator(".label")).to_have_text("like coffee.jpg")
    expect(caption.locator("strong")).to_have_text("similarity to coffee.jpg")
    expect(caption.locator(".value")).to_contain_text("cosine ")
    expect(predictions.nth(5).locator(".score")).to_contain_text("cos ")
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    expect(page.locator("#reference-shown")).to_contain_text("coffee.jpg")
    assert "top" not in page.evaluate("window.sentForms.at(-1)")
    shots.take(page, "reference")
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    assert page_width(page) == 390
    page.locator("#targets").scroll_into_view_if_needed()
    shots.take(page, "reference-phone-dark")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.emulate_media(color_scheme="light")

    # dropped on its zone, a photo is the reference (not a photo to explain)
    transfer = dropped(page, chelsea)
    page.locator("#reference-drop").dispatch_event("dragover", {"dataTransfer": transfer})
    expect(page.locator("body")).to_have_class("dragging to-reference")
    shots.take(page, "reference-dragging")
    page.locator("#reference-drop").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator("body")).not_to_have_class("dragging to-reference")
    expect(predictions.nth(5).locator(".label")).to_have_text("like cat.png")
    expect(caption.locator("strong")).to_have_text("similarity to cat.png")
    expect(caption.locator(".value")).to_have_text("cosine 1.00")  # the photo against itself
    expect(page.locator("#file-name")).to_have_text("chelsea.jpg")
    page.click("#reference-remove")
    expect(predictions).to_have_count(5)
    expect(predictions.nth(0)).to_have_attribute("aria-pressed", "true")
    expect(caption.locator("strong")).to_have_text("Egyptian cat")
    expect(page.locator("#reference-pick")).to_be_focused()
    # a reference the server cannot read: taken away, with the server's reason beside it
    (tmp_path / "notes.txt").write_text("not a photo")
    page.set_input_files("#reference-file", str(tmp_path / "notes.txt"))
    expect(page.locator("#reference-error")).to_have_text(
        "notes.txt: is not an image Pillow can read"
    )
    expect(page.locator("#reference-shown")).to_be_hidden()

    # several photos: the comparison is of the photo it was asked on, the others show their class
    page.set_input_files("#file", [str(tmp_path / "chelsea.jpg"), str(tmp_path / "coffee.jpg")])
    expect(page.locator(".strip-photo.done")).to_have_count(2)
    versus.nth(1).click()
    expect(caption.locator("strong")).to_have_text("Egyptian cat versus tiger cat")
    page.locator(".strip-photo").nth(1).click()
    expect(caption.locator("strong")).to_have_text("espresso")
    expect(page.locator("#versus-off")).to_be_hidden()
    page.locator(".strip-photo").nth(0).click()
    expect(caption.locator("strong")).to_have_text("Egyptian cat versus tiger cat")


def test_sigmoid_bars_and_threshold(
    tags_server: str, page: Any, tmp_path: Path, chelsea: np.ndarray
) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.add_init_script(SENT_FORMS)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(tags_server)
    page.wait_for_selector("body[data-ready]")
    page.set_input_files("#file", str(photo(tmp_path, chelsea, "chelsea.jpg")))
    predictions = page.locator(".prediction")
    expect(predictions).to_have_count(5)
    expect(page.locator("#predictions")).to_have_attribute("data-scores", "sigmoid")
    expect(page.locator("#above-field")).to_be_visible()
    expect(page.locator("#above-value")).to_have_text("50%")
    scores = [
        float(s.rstrip("%")) / 100 for s in page.locator(".prediction .score").all_inner_texts()
    ]
    assert sum(scores) != pytest.approx(1.0, abs=0.01)  # independent, not a distribution
    # the line at 0.5 on every bar, the bars over it marked
    line = page.evaluate(
        """() => [...document.querySelectorAll('.prediction .bar')].map((bar) => {
          const r = bar.getBoundingClientRect();
          const l = getComputedStyle(bar, '::before');
          return (parseFloat(l.left) + parseFloat(l.width) / 2) / r.width;
        })"""
    )
    assert line == pytest.approx([0.5] * 5, abs=0.01)
    over = page.locator(".prediction.over")
    expect(over).to_have_count(sum(s >= 0.5 for s in scores))
    shots.take(page, "sigmoid")

    # the threshold asks with above: every class over it explained and listed
    page.locator("#above").fill("0.01")  # its input and change events
    expect(page.locator("#busy")).to_be_hidden()
    sent = page.evaluate("window.sentForms.at(-1)")
    # top: at most the server's max_maps (100) over methods x layers (1), and the 6 tags there are
    assert sent["top"] == str(len(TAGS)) and sent["above"] == "0.01"
    expect(page.locator("#above-off")).to_be_visible()
    expect(page.locator("#above-note")).to_contain_text("is explained")
    assert "above=" in page.evaluate("location.hash")
    expect(predictions).to_have_count(len(TAGS))  # the sixth over the threshold, listed too
    expect(page.locator(".prediction.over")).to_have_count(len(TAGS))
    line = page.evaluate(
        """() => { const bar = document.querySelector('.prediction .bar');
          const l = getComputedStyle(bar, '::before');
          return (parseFloat(l.left) + parseFloat(l.width) / 2) / bar.getBoundingClientRect().width; }"""
    )
    assert line == pytest.approx(0.01, abs=0.005)
    for rank in range(len(TAGS)):
        asked = page.evaluate("window.sentForms.length")
        predictions.nth(rank).click()
        expect(page.locator("#stage figcaption strong")).to_have_text(
            predictions.nth(rank).locator(".label").inner_text()
        )
        assert page.evaluate("window.sentForms.length") == asked  # all in one answer
    shots.take(page, "sigmoid-above")
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    assert page_width(page) == 390
    page.locator("#predictions").scroll_into_view_if_needed()
    shots.take(page, "sigmoid-phone-dark")

    # a raw-scored model's predictions are values, not percentages
    written = page.evaluate(
        """async () => {
          const { mountTargets } = await import(new URL("static/targets.js", document.baseURI));
          const answer = { scores: "raw", predictions: [], explanations: [] };
          const view = { model: { classes: ["age"], scores: "raw" }, server: {},
            photo: () => null, result: () => answer, entries: () => [], rank: () => 0 };
          const targets = mountTargets(document.createElement("div"), view);
          return [targets.score(10.630725), targets.score(-0.0123), targets.score(0.5)];
        }"""
    )
    assert written == ["10.6", "-0.0123", "0.500"]

    # a server that explains 4 maps a request, 2 methods: the threshold asks for the best 2 and
    # says so when the answer holds 2
    said = page.evaluate(
        """async () => {
          const { mountTargets } = await import(new URL("static/targets.js", document.baseURI));
          const photo = { result: null };
          let answer = null;
          const panel = document.createElement("div");
          const view = { model: { classes: ["a", "b", "c", "d", "e", "f"], scores: "sigmoid" },
            server: { max_maps: 4 }, photo: () => photo, result: () => answer,
            entries: () => [], rank: () => 0, update: () => {} };
          const targets = mountTargets(panel, view);
          targets.read(new URLSearchParams("above=0.01"), []);
          const methods = ["gradcam", "cam"];
          const options = targets.adjust({ methods, layers: ["bn2"] }, undefined, photo);
          answer = { scores: "sigmoid", predictions: [], explanations: [0, 1].flatMap(
            (c) => methods.map((method) => ({ class_index: c, method, target: null })) ) };
          targets.render();
          const note = panel.querySelector("#above-note").textContent;
          // the 4th prediction, over the threshold but past the best 2: asked for alone
          photo.result = { predictions: [0, 1, 2, 3, 4].map((c) => ({ class_index: c,
            score: 0.9 - c / 10 })) };
          const alone = targets.adjust({ methods, layers: ["bn2"], classes: [3] }, 3, photo);
          answer = { scores: "sigmoid", predictions: [], explanations: methods.map(
            (method) => ({ class_index: 3, method, target: null, score: 0.6 })) };
          targets.render();
          return [options.top, options.above, note, alone,
            targets.matches(answer.explanations[0], 3, answer),
            panel.querySelector("#above-note").textContent];
        }"""
    )
    assert said[:2] == [2, 0.01]
    assert said[2].startswith("The best 2 classes above 1% are explained")
    assert said[3] == {"methods": ["gradcam", "cam"], "layers": ["bn2"], "classes": [3]}
    assert said[4] is True  # its map is the one shown
    assert said[5].startswith("The class shown is past the best 2 above 1%")
