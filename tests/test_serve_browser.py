"""The explorer page in a real Chromium (Debian's, driven by Playwright) against a real
``camlens serve``: upload a photo, read the predictions, change class, method and view, use the
keyboard and the downloads, and see a rejected file explained. Screenshots are written to the
test's folder, and also to ``$CAMLENS_SCREENSHOTS`` when it is set."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serving import camlens_serve

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"
    ),
]
# Without the network flags Chromium's own background connections fail on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with camlens_serve(log=log) as (url, _):
        yield url


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1360, "height": 860}, accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.set_default_timeout(60_000)
        yield page
        browser.close()
        # a refused request logs its 415 or 422; nothing else may go wrong
        assert [e for e in errors if "status of 415" not in e and "status of 422" not in e] == []


class Shots:
    """Screenshots in the test's folder, copied to $CAMLENS_SCREENSHOTS if set."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keep = (
            Path(os.environ["CAMLENS_SCREENSHOTS"])
            if os.environ.get("CAMLENS_SCREENSHOTS")
            else None
        )

    def take(self, page: Any, name: str) -> bytes:
        path = self.folder / f"{name}.png"
        data: bytes = page.screenshot(path=str(path))
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.keep / path.name)
        return data


def titles(server: str) -> dict[str, str]:
    """The methods' display names as the page shows them: the server's title, else the name."""
    import httpx

    methods = httpx.get(f"{server}/api/methods").json()["methods"]
    return {m["name"]: m.get("title") or m["name"] for m in methods}


def heat_source(page: Any) -> str:
    return str(page.locator("#stage img.heat").get_attribute("src"))


def test_explore_a_photo(server: str, page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    title = titles(server)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)

    page.goto(server)
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#model-name")).to_contain_text("efficientnet_lite0")
    shots.take(page, "0-empty")

    # upload: five predictions, the first the cat, its map under the photo's name
    page.set_input_files("#file", str(photo))
    predictions = page.locator(".prediction")
    expect(predictions).to_have_count(5)
    expect(predictions.nth(0).locator(".label")).to_have_text("Egyptian cat")
    expect(predictions.nth(0)).to_have_attribute("aria-pressed", "true")
    stage = page.locator("#stage")
    expect(stage.locator("figcaption")).to_contain_text("Egyptian cat")
    expect(stage.locator("figcaption")).to_contain_text(title["gradcam"])
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    first_source = heat_source(page)
    first = shots.take(page, "1-egyptian-cat")

    # the second class: another map, another picture
    predictions.nth(1).click()
    expect(predictions.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(stage.locator("figcaption")).to_contain_text("tiger cat")
    assert heat_source(page) != first_source
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    second = shots.take(page, "2-tiger-cat")
    assert first != second

    # another method: the page asks the server again and shows it
    page.select_option("#method", "layercam")
    expect(stage.locator("figcaption .tag").first).to_have_text(title["layercam"])
    expect(stage.locator("figcaption")).to_contain_text("tiger cat")
    expect(page.locator("#busy")).to_be_hidden()
    shots.take(page, "3-layercam")

    # opacity, boxes and the peak
    page.locator("#alpha").fill("80")
    expect(stage.locator("img.heat")).to_have_css("opacity", "0.8")
    page.keyboard.press("b")
    expect(page.locator("#boxes")).to_be_checked()
    expect(stage.locator("rect.box")).to_have_count(1)
    expect(stage.locator(".peak-text")).to_contain_text("peak (")

    # keyboard: 1 goes back to the first class
    page.keyboard.press("1")
    expect(predictions.nth(0)).to_have_attribute("aria-pressed", "true")
    expect(stage.locator("figcaption")).to_contain_text("Egyptian cat")
    shots.take(page, "4-boxes-opacity")

    # downloads: the overlay as drawn by the server, and the JSON report
    with page.expect_download() as download:
        page.click("#download-overlay")
    overlay = Image.open(download.value.path())
    assert overlay.size == (451, 300) and overlay.format == "PNG"
    assert download.value.suggested_filename == "chelsea.layercam.bn2.285.png"
    with page.expect_download() as download:
        page.click("#download-report")
    report = Path(download.value.path()).read_text()
    assert '"Egyptian cat"' in report and '"layercam"' in report

    # side by side: four methods at the automatic layer
    page.click("#show-compare")
    cards = page.locator(".card")
    expect(cards).to_have_count(4)
    expect(cards.nth(0).locator(".tag").first).to_have_text(title["cam"])
    expect(cards.nth(3).locator(".tag").first).to_have_text(title["layercam"])
    for card in cards.all():
        expect(card.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    shots.take(page, "5-compare")
    cards.nth(1).click()  # opens Grad-CAM alone
    expect(stage.locator("figcaption .tag").first).to_have_text(title["gradcam"])

    # a method the model refuses at a layer: the reason, and the pickers back to what is shown
    page.select_option("#layer", "blocks.5")
    expect(stage.locator("figcaption .tag.layer")).to_have_text("blocks.5")
    page.select_option("#method", "cam")
    message = page.locator("#message")
    expect(message).to_contain_text("CAM needs a GAP -> Linear head")
    expect(page.locator("#method")).to_have_value("gradcam")
    expect(stage.locator("figcaption .tag").first).to_have_text(title["gradcam"])
    shots.take(page, "6-refused-method")

    # a file that is not an image: the server's reason, on the page
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#file", str(notes))
    expect(message).to_be_visible()
    expect(message).to_have_text("notes.txt: is not an image Pillow can read")
    expect(stage.locator("figcaption")).to_contain_text("Egyptian cat")  # the photo stays
    shots.take(page, "7-rejected")


def test_page_works_offline(server: str, page: Any) -> None:
    """Everything the page loads comes from the server itself."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server)
    page.wait_for_selector("body[data-ready]")
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert requested and all(u.startswith(server) or u.startswith("data:") for u in requested)


def in_view(page: Any, selector: str) -> bool:
    """Whether the element is wholly inside the window, as it is scrolled now."""
    return bool(
        page.evaluate(
            """(selector) => {
              const r = document.querySelector(selector).getBoundingClientRect();
              return r.width > 0 && r.top >= 0 && r.left >= 0
                && r.bottom <= innerHeight && r.right <= innerWidth;
            }""",
            selector,
        )
    )


def page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def luminance(page: Any, script: str) -> float:
    """The relative brightness (0..1) of a computed CSS colour."""
    colour = str(page.evaluate(script))
    red, green, blue = (float(v) for v in re.findall(r"[\d.]+", colour)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


PHONE = {"width": 390, "height": 844}


def test_phone(server: str, page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    """At 390x844 every control is reachable and the map comes first, on screen after an upload."""
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    page.set_viewport_size(PHONE)
    page.goto(server)
    page.wait_for_selector("body[data-ready]")
    assert page_width(page) == 390  # the header wrapped the model name instead of overflowing
    for control in ("#help-button", "a.docs", "#pick-empty"):
        assert in_view(page, control), control
    page.click("#help-button")
    expect(page.locator("#help")).to_be_visible()
    assert in_view(page, "#help")
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    shots.take(page, "phone-0-empty")

    # the keyboard reaches the buttons, never the hidden file input
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert "pick-empty" in focused and "file" not in focused
    page.evaluate("document.activeElement.blur()")

    # after an upload the map is on screen without scrolling, above the classes and the settings
    page.set_input_files("#file", str(photo))
    expect(page.locator(".prediction")).to_have_count(5)
    expect(page.locator("#stage img.heat")).to_have_js_property("naturalWidth", 451)
    assert in_view(page, "#stage .frame") and in_view(page, "#stage figcaption")
    tops = [
        page.locator(f".{panel}").bounding_box()["y"]
        for panel in ("stage-panel", "predictions", "controls")
    ]
    assert tops == sorted(tops)
    assert page_width(page) == 390
    shots.take(page, "phone-1-map")

    # compare: the frames of a row line up though their captions wrap differently
    page.click("#show-compare")
    cards = page.locator(".card")
    expect(cards).to_have_count(4)
    for card in cards.all():
        expect(card.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    # a caption three lines long in the first card (a long layer name, say)
    page.evaluate(
        "document.querySelector('.card .peak-text').textContent = 'a caption long enough to wrap "
        "on three lines of a card this narrow'"
    )
    rows: dict[float, list[tuple[float, float]]] = {}
    for card in cards.all():
        box = card.bounding_box()
        caption = card.locator("figcaption").bounding_box()
        frame = card.locator(".frame").bounding_box()
        rows.setdefault(round(box["y"]), []).append((frame["y"], caption["height"]))
    assert len(rows) == 2
    assert any(len({round(h) for _, h in row}) > 1 for row in rows.values())  # they differ
    for row in rows.values():
        assert len({round(y) for y, _ in row}) == 1, rows
    assert page_width(page) == 390
    page.locator("#compare").scroll_into_view_if_needed()
    shots.take(page, "phone-2-compare")

    # dark, as the system asks
    light = luminance(page, "getComputedStyle(document.documentElement).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = luminance(page, "getComputedStyle(document.documentElement).backgroundColor")
    ink = luminance(page, "getComputedStyle(document.documentElement).color")
    assert light > 0.9 and dark < 0.1 and ink > 0.8
    page.click("#show-single")
    page.evaluate("window.scrollTo(0, 0)")
    shots.take(page, "phone-3-dark")


def test_keys_colorbar_address_drop(
    server: str, page: Any, tmp_path: Path, chelsea: np.ndarray
) -> None:
    """A select chosen with the mouse leaves the shortcuts working; the colorbar follows the
    colormap; the settings live in the address; the drop hint hides what is under it."""
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(server)
    page.wait_for_selector("body[data-ready]")

    # the drop hint is opaque: the empty state's text does not show through
    page.evaluate(
        """() => {
          const transfer = new DataTransfer();
          transfer.items.add(new File(["x"], "a.jpg", { type: "image/jpeg" }));
          document.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true,
            cancelable: true }));
        }"""
    )
    expect(page.locator("body")).to_have_class("dragging")
    alpha = page.evaluate(
        "getComputedStyle(document.body, '::after').backgroundColor.match(/[\\d.]+/g)[3] ?? '1'"
    )
    assert float(alpha) >= 0.9
    shots.take(page, "drop-hint")
    page.evaluate("document.body.classList.remove('dragging')")

    page.set_input_files("#file", str(photo))
    expect(page.locator(".prediction")).to_have_count(5)
    colorbar = page.locator(".colorbar img")
    expect(colorbar).to_have_attribute("src", re.compile(r"/static/cmap-jet\.png$"))
    expect(colorbar).to_have_js_property("naturalWidth", 256)

    # the colormap chosen with the mouse: the focus leaves the select, "m" is the next method
    page.click("#cmap")
    page.select_option("#cmap", "viridis")
    expect(colorbar).to_have_attribute("src", re.compile(r"/static/cmap-viridis\.png$"))
    expect(colorbar).to_have_js_property("naturalWidth", 256)
    assert page.evaluate("document.activeElement.id") != "cmap"
    before = page.locator("#method").input_value()
    page.keyboard.press("m")
    expect(page.locator("#method")).not_to_have_value(before)
    expect(page.locator("#cmap")).to_have_value("viridis")
    method = page.locator("#method").input_value()
    expect(page.locator("#stage figcaption .tag").first).to_have_text(titles(server)[method])
    shots.take(page, "viridis")

    # the settings are in the address: a reload (or a link) shows them again
    page.click("#show-compare")
    expect(page).to_have_url(re.compile(rf"#/explore\?method={method}&cmap=viridis&view=compare$"))
    page.reload()
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#method")).to_have_value(method)
    expect(page.locator("#cmap")).to_have_value("viridis")
    expect(page.locator("#show-compare")).to_have_attribute("aria-pressed", "true")
    # what the address names and this server does not have is said, not dropped in silence
    # maps asked for that the answer lacks are named: CAM applies at bn2 (the GAP -> Linear
    # head's input) and not at blocks.5, with the server's reason when it gives one
    page.goto(f"{server}/#/explore?view=compare&compare=cam,gradcam&layers=bn2,blocks.5")
    page.set_input_files("#file", str(photo))
    expect(page.locator(".prediction")).to_have_count(5)
    import httpx

    answer = httpx.post(
        f"{server}/api/explain",
        files={"image": photo.read_bytes()},
        data={"methods": ["cam", "gradcam"], "layers": ["bn2", "blocks.5"], "top": "5"},
    ).json()
    title = titles(server)
    answered = {(m["method"], m["layer"]) for m in answer["explanations"]}
    asked = [("cam", "blocks.5"), ("gradcam", "blocks.5"), ("cam", "bn2"), ("gradcam", "bn2")]
    expect(page.locator(".card")).to_have_count(len([p for p in asked if p in answered]))
    assert ("cam", "blocks.5") not in answered
    left_out = page.locator("#left-out")
    expect(left_out).to_be_visible()
    reasons = {(x["method"], x["layer"]): x["reason"] for x in answer["skipped"]}
    expect(left_out).to_contain_text(f"{title['cam']} at blocks.5: {reasons['cam', 'blocks.5']}")
    for method, layer in asked:
        if (method, layer) in answered:
            expect(left_out).not_to_contain_text(f"{title[method]} at {layer}:")
    shots.take(page, "left-out")

    page.goto(f"{server}/#/explore?method=nomethod&cmap=magma")
    expect(page.locator("#message")).to_have_text(
        "Not applied from the address (unknown here): method=nomethod"
    )
    expect(page.locator("#cmap")).to_have_value("magma")


def test_other_class_and_several_photos(
    server: str, page: Any, tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    Image.fromarray(chelsea).save(tmp_path / "chelsea.jpg", quality=95)
    Image.fromarray(coffee).save(tmp_path / "coffee.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not a photo")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(server)
    page.wait_for_selector("body[data-ready]")
    page.set_input_files("#file", str(tmp_path / "chelsea.jpg"))
    predictions = page.locator(".prediction")
    expect(predictions).to_have_count(5)

    # a class outside the top five, found by a word of its label
    query = page.locator("#class-query")
    query.fill("tench")
    expect(page.locator("#class-options li").first).to_have_text("tench, Tinca tinca0")
    query.press("Enter")
    expect(predictions).to_have_count(6)
    expect(predictions.nth(5)).to_have_attribute("aria-pressed", "true")
    expect(predictions.nth(5).locator(".label")).to_have_text("tench")
    stage = page.locator("#stage")
    expect(stage.locator("figcaption strong")).to_have_text("tench")
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    # a word matches words: "cat" finds the cats first, not "catamaran" or "bullfrog"
    query.fill("cat")
    labels = page.locator("#class-options li").all_inner_texts()
    assert [lab.rstrip("0123456789") for lab in labels[:2]] == ["tiger cat", "Persian cat"]
    page.locator("#class-options li", has_text="Egyptian cat").click()
    expect(predictions.nth(0)).to_have_attribute("aria-pressed", "true")
    expect(stage.locator("figcaption strong")).to_have_text("Egyptian cat")
    shots.take(page, "other-class")

    # several photos: a strip, each explained; a file the server refuses is marked with why
    page.set_input_files(
        "#file", [str(tmp_path / n) for n in ("chelsea.jpg", "coffee.jpg", "notes.txt")]
    )
    strip = page.locator(".strip-photo")
    expect(strip).to_have_count(3)
    expect(page.locator(".strip-photo.done")).to_have_count(2)
    expect(page.locator(".strip-photo.failed")).to_have_count(1)
    expect(strip.nth(2)).to_have_attribute("title", re.compile("is not an image Pillow can read"))
    expect(predictions.nth(0).locator(".label")).to_have_text("Egyptian cat")
    strip.nth(1).click()
    expect(strip.nth(1)).to_have_attribute("aria-current", "true")
    expect(predictions.nth(0).locator(".label")).to_have_text("espresso")
    expect(stage.locator("figcaption strong")).to_have_text("espresso")
    shots.take(page, "several-photos")
    strip.nth(2).click()
    expect(page.locator("#message")).to_contain_text("is not an image Pillow can read")

    # a dropped folder: its images, in name order, the rest counted
    found = page.evaluate(
        """async () => {
          const { imageFiles } = await import(new URL("static/photos.js", document.baseURI));
          const file = (name, type) => ({ isFile: true, isDirectory: false, name,
            file: (ok) => ok(new File(["x"], name, { type })) });
          const folder = (name, children) => ({ isFile: false, isDirectory: true, name,
            createReader() {
              let given = false;
              return { readEntries(ok) { ok(given ? [] : children); given = true; } };
            } });
          const tree = folder("photos", [file("b.jpg", "image/jpeg"), file("notes.txt", "text/plain"),
            folder("more", [file("a.png", "")]), file("a.webp", "image/webp")]);
          const found = await imageFiles({ items: [{ kind: "file", webkitGetAsEntry: () => tree }],
            files: [] });
          return [found.files.map((f) => f.name), found.skipped];
        }"""
    )
    assert found == [["a.webp", "b.jpg", "a.png"], 1]


# The text fields of every form the page posts, in window.sentForms (Chromium does not show a
# multipart body holding a file to the test).
SENT_FORMS = """
window.sentForms = [];
const send = window.fetch;
window.fetch = (input, init = {}) => {
  if (init.body instanceof FormData) {
    window.sentForms.push(Object.fromEntries(
      [...init.body.entries()].filter(([, value]) => typeof value === "string")));
  }
  return send(input, init);
};
"""


def test_perturbation_methods(server: str, page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    """Score-CAM: the fast mode offered with what it trades, sent to the server; a request
    cancelled leaves the map shown and its settings."""
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    page.add_init_script(SENT_FORMS)
    page.goto(f"{server}/#/explore?fast=64")
    page.wait_for_selector("body[data-ready]")
    page.set_input_files("#file", str(photo))
    expect(page.locator(".prediction")).to_have_count(5)
    expect(page.locator("#fast-field")).to_be_hidden()  # Grad-CAM has no masked passes
    stage = page.locator("#stage")
    first = heat_source(page)

    # cancelled: the Grad-CAM map stays, and the method picker says so
    page.select_option("#method", "scorecam")
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#busy-text")).to_contain_text("masked passes")
    page.click("#cancel")
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#message")).to_have_text("Cancelled.")
    expect(page.locator("#method")).to_have_value("gradcam")
    assert heat_source(page) == first

    # the fast mode: offered for Score-CAM, saying what it trades, and sent
    page.select_option("#method", "scorecam")
    expect(page.locator("#fast-field")).to_be_visible()
    expect(page.locator("#fast")).to_have_value("64")
    expect(page.locator("#fast-note")).to_have_text(
        "The 64 of 1280 channels of largest variance: 20× fewer masked passes; the map "
        "approximates the exact one (close, not equal)."
    )
    expect(stage.locator("figcaption .tag").first).to_have_text(
        titles(server)["scorecam"], timeout=120_000
    )
    expect(stage.locator("img.heat")).to_have_js_property("naturalWidth", 451)
    sent = page.evaluate("window.sentForms.at(-1)")
    assert sent["methods"] == "scorecam" and sent["fast_channels"] == "64"
    shots.take(page, "scorecam-fast")


def job_state(server: str, job: str, wanted: str) -> dict[str, Any]:
    """The job as the server reports it, once its state is ``wanted`` (10 s at most)."""
    import time

    import httpx

    deadline = time.monotonic() + 10
    while True:
        found = httpx.get(f"{server}/api/jobs/{job}").json()
        if found["state"] == wanted or time.monotonic() > deadline:
            return dict(found)
        time.sleep(0.2)


def test_progress_cancel_cost_zip(
    server: str, page: Any, tmp_path: Path, chelsea: np.ndarray
) -> None:
    """A Score-CAM request shows the server's progress; Cancel stops it on the server, and so
    does a new request; the cost line says what the answer's stats say; the zip holds the
    report, the photo and each map's overlay and .npy."""
    import io
    import json
    import zipfile

    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    page.add_init_script(SENT_FORMS)
    deletes: list[str] = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    page.goto(server)
    page.wait_for_selector("body[data-ready]")
    with page.expect_response(re.compile(r"/api/explain$")) as response:
        page.set_input_files("#file", str(photo))
    answer = response.value.json()
    expect(page.locator("#stage img.heat")).to_have_js_property("naturalWidth", 451)

    # the cost: the answer's stats (Grad-CAM at bn2: one forward pass, the head's gradients)
    stats = answer["stats"]
    assert stats["forward_passes"] == 1 and stats["perturbation_passes"] == 0
    cost = page.locator("#cost")
    expect(cost).to_be_visible()
    expect(cost).to_contain_text("This answer: 1 forward pass, ")
    expect(cost).to_contain_text(f"{stats['seconds']:.2f} s of model time")
    expect(cost).not_to_contain_text("masked")

    # all of it in a zip
    with page.expect_download() as download:
        page.click("#download-zip")
    assert download.value.suggested_filename == "chelsea.camlens.zip"
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert json.loads(archive.read("report.json"))["id"] == answer["id"]
    names = archive.namelist()
    assert "chelsea.jpg" in names
    for m in answer["explanations"]:
        stem = f"chelsea.{m['method']}.{m['layer']}.{m['class_index']}"
        assert {f"{stem}.png", f"{stem}.npy"} <= set(names)
        assert Image.open(io.BytesIO(archive.read(f"{stem}.png"))).size == (451, 300)

    # Score-CAM of the top 5 (all channels): its progress as the server reports it
    page.select_option("#method", "scorecam")
    progress = page.locator("#progress")
    expect(progress).to_be_visible()
    expect(page.locator("#busy-text")).to_contain_text("Explaining (masked passes)…")
    detail = page.locator("#busy-detail")
    expect(detail).to_have_text(re.compile(r"^\d+ of [\d,]+ masked passes"))
    job = page.evaluate("window.sentForms.at(-1).job")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", job)
    expect(detail).to_contain_text(" left", timeout=60_000)  # an estimate, after a chunk
    assert 0 < float(progress.evaluate("p => p.value")) < 1
    shots.take(page, "progress")
    page.set_viewport_size(PHONE)
    assert in_view(page, "#cancel") and in_view(page, "#busy-detail")
    shots.take(page, "progress-phone")
    page.set_viewport_size({"width": 1360, "height": 860})

    # Cancel: the job is cancelled on the server, the Grad-CAM map stays
    page.click("#cancel")
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#message")).to_have_text("Cancelled.")
    assert any(u.endswith(f"/api/jobs/{job}") for u in deletes)
    stopped = job_state(server, job, "cancelled")
    assert stopped["state"] == "cancelled" and stopped["passes_done"] < stopped["passes_total"]
    expect(page.locator("#method")).to_have_value("gradcam")
    expect(cost).to_contain_text(f"{stats['seconds']:.2f} s of model time")

    # a new request cancels the one before
    page.select_option("#method", "scorecam")
    expect(progress).to_be_visible()
    first = page.evaluate("window.sentForms.at(-1).job")
    page.select_option("#method", "gradcampp")
    expect(page.locator("#stage figcaption .tag").first).to_have_text(titles(server)["gradcampp"])
    assert page.evaluate("window.sentForms.at(-1).job") != first
    assert job_state(server, first, "cancelled")["state"] == "cancelled"

    # what the page writes of a job's answers: queued; three phases, the passes of the two not
    # started expected as many as the first's; estimates to the second, then to the minute
    texts = page.evaluate(
        """async () => {
          const { jobProgress } = await import(new URL("static/jobs.js", document.baseURI));
          const job = (o) => ({ job: "x", state: "running", passes_done: 0, passes_total: 0,
            phases_done: 0, phases: 1, seconds: 1, queued_seconds: 0, estimate_seconds: null, ...o });
          return [
            { state: "queued", queued_seconds: 3.7 },
            { phases: 0 },
            { passes_done: 600, passes_total: 1008, phases_done: 1, phases: 3,
              estimate_seconds: 44.6 },
            { passes_done: 27, passes_total: 504, estimate_seconds: 95 },
            { passes_done: 27, passes_total: 504, estimate_seconds: 150 },
          ].map((o) => jobProgress(job(o)));
        }"""
    )
    assert texts == [
        {"text": "waiting for the server, 3 s", "fraction": None},
        {"text": "", "fraction": None},
        {
            "text": "600 of 1,512 masked passes · phase 2 of 3 · about 45 s left",
            "fraction": pytest.approx(600 / 1512),
        },
        {"text": "27 of 504 masked passes · about 1 min 40 s left", "fraction": 27 / 504},
        {"text": "27 of 504 masked passes · about 3 min left", "fraction": 27 / 504},
    ]


# A server behind a reverse proxy at /camlens/: the app told its root path, as uvicorn's
# --root-path or a proxy's X-Forwarded-Prefix handling would.
BEHIND_PROXY = """
import sys, uvicorn, camlens
from camlens.serve import create_app
app = create_app(camlens.load_model())
app.root_path = "/camlens"
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import subprocess
    import sys
    import time

    import httpx
    from serving import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("serve-proxied") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", BEHIND_PROXY, str(port)], stdout=out, stderr=out, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/camlens/api/server", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
        yield f"{url}/camlens"
    finally:
        process.terminate()
        process.wait(30)


def test_behind_a_proxy(
    proxied_server: str, page: Any, tmp_path: Path, chelsea: np.ndarray
) -> None:
    """Every request of the page, the API docs' link included, goes under the root path."""
    from playwright.sync_api import expect

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{proxied_server}/")
    page.wait_for_selector("body[data-ready]")
    page.set_input_files("#file", str(photo))
    expect(page.locator("#stage img.heat")).to_have_js_property("naturalWidth", 451)
    expect(page.locator("#stage img.photo")).to_have_js_property("naturalWidth", 451)
    expect(page.locator(".colorbar img")).to_have_js_property("naturalWidth", 256)
    expect(page.locator("a.docs")).to_have_js_property("href", f"{proxied_server}/docs")
    with page.expect_download() as download:
        page.click("#download-overlay")
    assert Image.open(download.value.path()).size == (451, 300)
    served = [u for u in requested if not u.startswith(("data:", "blob:"))]
    assert len(served) >= 8
    assert [u for u in served if not u.startswith(f"{proxied_server}/")] == []


# --- the run gallery (serve --runs) --------------------------------------------------------------


@pytest.fixture(scope="module")
def gallery_server(tmp_path_factory: pytest.TempPathFactory, small_runs: Path) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-runs") / "serve.log"
    with camlens_serve(["--runs", str(small_runs)], log=log) as (url, _):
        yield url


def names(page: Any) -> list[str]:
    return [str(n) for n in page.locator(".thumb .thumb-name").all_inner_texts()]


def test_gallery_of_a_run(gallery_server: str, page: Any, tmp_path: Path) -> None:
    import httpx
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.goto(gallery_server)
    page.wait_for_selector("body[data-ready]")
    page.click("#nav a[data-view=gallery]")
    runs = page.locator(".run")
    expect(runs).to_have_count(2)
    expect(runs.nth(0)).to_have_attribute("aria-pressed", "true")  # the first run, "dataset"
    runs.nth(1).click()
    expect(runs.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(runs.nth(1)).to_contain_text("7 images · 1 failed")
    expect(page).to_have_url(f"{gallery_server}/#/gallery/files")

    # every image of the run, the overlays loaded, the failed one with its badge and reason
    thumbs = page.locator(".thumb")
    expect(thumbs).to_have_count(7)
    expect(page.locator("#gallery-count")).to_have_text("7 images · by score, highest first")
    expect(thumbs.nth(0).locator(".thumb-name")).to_have_text("coffee.jpg")  # 90%, the highest
    failed = page.locator(".thumb.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".badge.error")).to_have_text("error")
    expect(failed).to_contain_text("val/espresso/broken.jpg: is not an image Pillow can read")
    expect(thumbs.nth(6)).to_have_class("thumb failed")  # last in every order
    for image in page.locator(".thumb img").all():
        expect(image).not_to_have_js_property("naturalWidth", 0)
    rocket = page.locator(".thumb", has_text="rocket.jpg")
    expect(rocket.locator(".wrong")).to_have_text("is missile")  # the model's mistake
    expect(page.locator("#facts")).to_contain_text("Top-1 right83.3% of 6")
    shots.take(page, "gallery-1-run")

    # filtered by a class (true classes, from the folders' names)
    expect(page.locator("#class-label")).to_have_text("Class (true, from folder names)")
    page.select_option("#class-filter", label="Egyptian cat (2)")
    expect(page.locator("#gallery-title")).to_have_text("Egyptian cat")
    expect(thumbs).to_have_count(2)
    assert names(page) == ["chelsea.jpg", "chelsea_face.jpg"]  # 80%, then 40%
    expect(page).to_have_url(f"{gallery_server}/#/gallery/files?class=285")
    shots.take(page, "gallery-2-class")

    # sorted by spread, as the API orders them
    page.click("#sort button[data-sort=spread]")
    expect(page.locator("#sort button[data-sort=spread]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#gallery-count")).to_have_text("2 images · by spread, highest first")
    api = httpx.get(
        f"{gallery_server}/api/runs/files/images", params={"class": "285", "sort": "spread"}
    ).json()["images"]
    spreads = [i["maps"][i["focus"]]["spread"] for i in api]
    assert spreads[0] > spreads[1]
    expect(thumbs.nth(0).locator(".thumb-name")).to_have_text(api[0]["image"].split("/")[-1])
    expect(thumbs.nth(0).locator(".thumb-notes")).to_have_text(f"spread {round(100 * spreads[0])}%")
    assert names(page) == [i["image"].split("/")[-1] for i in api]
    page.click("#order button[data-order=asc]")
    expect(thumbs.nth(0).locator(".thumb-name")).to_have_text(api[1]["image"].split("/")[-1])
    page.click("#order button[data-order=desc]")
    expect(thumbs.nth(0).locator(".thumb-name")).to_have_text(api[0]["image"].split("/")[-1])
    shots.take(page, "gallery-3-spread")

    # opened: all its maps, each with its class, method, layer and score
    first, second = (i["image"].split("/")[-1] for i in api)
    thumbs.nth(0).click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page.locator("#grid-view")).to_be_hidden()
    expect(page.locator("#detail-title")).to_have_text(first)
    expect(page.locator("#detail-position")).to_have_text("1 of 2")
    cards = page.locator(".map-card")
    expect(cards).to_have_count(4)  # Egyptian cat and tiger cat, Grad-CAM and CAM
    title = titles(gallery_server)
    expect(cards.nth(0).locator(".tag").nth(0)).to_have_text(title["gradcam"])
    expect(cards.nth(1).locator(".tag").nth(0)).to_have_text(title["cam"])
    expect(cards.nth(0).locator(".tag.layer")).to_have_text("bn2")
    expect(cards.nth(0).locator("strong")).to_have_text("Egyptian cat")
    expect(cards.nth(2).locator("strong")).to_have_text("tiger cat")
    width = api[0]["size"][0]
    for card in cards.all():
        expect(card.locator("img")).to_have_js_property("naturalWidth", width)
        expect(card.locator("figcaption")).to_contain_text("spread")
    expect(page.locator("#detail-meta")).to_contain_text("true class: Egyptian cat ✓")
    expect(page.locator(".chip").nth(0)).to_have_class("chip truth")
    shots.take(page, "gallery-4-image")

    # the keyboard: → the next image, ← back, Esc to the grid, on the image it came from
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail-title")).to_have_text(second)
    expect(page.locator("#detail-position")).to_have_text("2 of 2")
    expect(page.locator("#detail-next")).to_be_disabled()
    shots.take(page, "gallery-5-next")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#detail-title")).to_have_text(first)
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    expect(thumbs).to_have_count(2)
    expect(thumbs.nth(0)).to_be_focused()
    expect(page).to_have_url(f"{gallery_server}/#/gallery/files?class=285&sort=spread")

    # the failed images alone; then another run, without classes from folders
    page.select_option("#class-filter", label="Failed images (1)")
    expect(thumbs).to_have_count(1)
    expect(page.locator("#gallery-title")).to_have_text("Failed images")
    runs.nth(0).click()
    expect(page.locator("#class-label")).to_have_text("Class (top-1 prediction)")
    expect(thumbs).to_have_count(7)
    expect(page).to_have_url(f"{gallery_server}/#/gallery/dataset?sort=spread")  # the order stays
    widest = httpx.get(
        f"{gallery_server}/api/runs/dataset/images", params={"sort": "spread", "limit": 1}
    ).json()["images"][0]
    expect(page.locator(".thumb img").first).to_have_attribute("src", widest["maps"][0]["overlay"])
    assert widest["maps"][0]["overlay"].startswith("/runs/dataset/photos/")
    # an address with an image opens it at once
    page.goto(f"{gallery_server}/#/gallery/files?image=0")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-position")).to_have_text("2 of 7")
    expect(page.locator("#detail-title")).to_have_text("chelsea.jpg")
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    expect(thumbs).to_have_count(7)

    # a class by name in the address: the class list and the title say it alike
    page.goto(f"{gallery_server}/#/gallery/files?class=espresso")
    expect(thumbs).to_have_count(1)
    expect(page.locator("#gallery-title")).to_have_text("espresso")
    expect(page.locator("#class-filter")).to_have_value("967")
    expect(page.locator("#class-filter option:checked")).to_have_text("espresso (1)")
    page.goto(f"{gallery_server}/#/gallery/files?class=zebrafish")
    expect(page.locator("#gallery-message")).to_have_text(
        "class 'zebrafish' is not a class of run 'files'"
    )
    expect(page.locator("#gallery-title")).to_have_text("Class “zebrafish”")
    expect(page.locator("#class-filter option:checked")).to_have_text(
        "“zebrafish”: not a class of this run"
    )
    expect(thumbs).to_have_count(0)

    # the per-class table of the run's summary; a class opens its images
    summary = httpx.get(f"{gallery_server}/api/runs/files/summary").json()
    table = page.locator("#class-table")
    table.locator("summary").click()
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(len(summary["classes"]))
    moped = next(c for c in summary["classes"] if c["label"] == "moped")
    row = table.locator("tbody tr", has_text="moped")
    expect(row.locator("td").nth(0)).to_have_text(str(moped["images"]))
    expect(row.locator("td").nth(1)).to_have_text(f"{100 * moped['score']:.1f}%")
    expect(table.locator("thead th")).to_have_text(
        ["Class", "Images", "Mean score", "Top-1 right", "Top-5 right", "Spread", "Off-center"]
    )
    shots.take(page, "gallery-6-classes")
    row.locator("button").click()
    expect(page).to_have_url(f"{gallery_server}/#/gallery/files?class=665")
    expect(page.locator("#gallery-title")).to_have_text("moped")
    expect(thumbs).to_have_count(1)

    # on a phone: no overflow; an image opened far down the list shows its top, not the page's
    page.set_viewport_size(PHONE)
    page.goto(f"{gallery_server}/#/gallery/files")
    expect(thumbs).to_have_count(7)
    assert page_width(page) == 390
    thumbs.nth(5).scroll_into_view_if_needed()
    thumbs.nth(5).click()
    expect(detail).to_be_visible()
    assert page.evaluate("scrollY") > 0
    assert in_view(page, "#detail-title") and in_view(page, "#detail-back")
    assert page_width(page) == 390
    shots.take(page, "gallery-7-phone")


@pytest.fixture(scope="module")
def mistakes_server(tmp_path_factory: pytest.TempPathFactory, mistakes_runs: Path) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-mistakes") / "serve.log"
    with camlens_serve(["--runs", str(mistakes_runs)], log=log) as (url, _):
        yield url


def test_gallery_mistakes_and_their_contrast(
    mistakes_server: str, page: Any, tmp_path: Path
) -> None:
    """A --versus true run: "Mistakes only" keeps the rocket (a missile, predicted a drilling
    platform), and opened, its top-1 map has beside it the map of the top-1 versus missile."""
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    page.goto(f"{mistakes_server}/#/gallery/mistakes")
    thumbs = page.locator(".thumb")
    expect(thumbs).to_have_count(7)
    mistakes = page.locator("#mistakes-only")
    expect(page.locator("#mistakes-field")).to_be_visible()
    expect(page.locator("#mistakes-label")).to_have_text("Mistakes only (1)")
    mistakes.check()
    expect(page).to_have_url(f"{mistakes_server}/#/gallery/mistakes?status=wrong")
    expect(thumbs).to_have_count(1)
    expect(page.locator("#gallery-title")).to_have_text("Mistakes")
    expect(thumbs.nth(0).locator(".thumb-name")).to_have_text("rocket.jpg")
    expect(thumbs.nth(0).locator(".wrong")).to_have_text("is missile")
    shots.take(page, "mistakes-1-grid")

    thumbs.nth(0).click()
    cards = page.locator(".map-card")
    expect(cards).to_have_count(2)
    top1, versus = cards.nth(0), cards.nth(1)
    expect(top1).to_have_attribute("data-role", "top1")
    expect(versus).to_have_attribute("data-role", "versus")
    expect(top1.locator(".role")).to_have_text("Top-1")
    expect(top1.locator("strong")).to_have_text("drilling platform")
    expect(versus.locator(".role")).to_have_text("Versus the true class")
    expect(versus.locator("strong")).to_have_text("drilling platform vs missile")
    expect(versus.locator(".why")).to_have_text(
        "where the model saw drilling platform rather than missile"
    )
    expect(versus.locator(".score")).to_have_text(re.compile(r"^\+\d+\.\d\d$"))
    expect(versus.locator("img")).to_have_attribute(
        "src", "/runs/mistakes/val/missile/rocket.gradcam.bn2.540-vs-657.png"
    )
    for card in (top1, versus):
        expect(card.locator("img")).to_have_js_property("naturalWidth", 640)
    left, right = top1.bounding_box(), versus.bounding_box()
    assert left["y"] == right["y"] and left["x"] + left["width"] <= right["x"]  # side by side
    expect(page.locator("#detail-meta")).to_contain_text("true class: missile ✗")
    shots.take(page, "mistakes-2-image")

    # back to the list, the filter kept; unticked, every image again
    page.keyboard.press("Escape")
    expect(thumbs).to_have_count(1)
    mistakes.uncheck()
    expect(thumbs).to_have_count(7)
    expect(page).to_have_url(f"{mistakes_server}/#/gallery/mistakes")
    # a right image has its top-1's map alone, with no role caption
    page.locator(".thumb", has_text="chelsea.jpg").click()
    expect(cards).to_have_count(1)
    expect(cards.nth(0).locator(".role")).to_have_count(0)

    # on a phone: the two maps still side by side, nothing wider than the screen
    page.set_viewport_size(PHONE)
    page.goto(f"{mistakes_server}/#/gallery/mistakes?status=wrong")
    expect(thumbs).to_have_count(1)
    thumbs.nth(0).click()
    expect(cards).to_have_count(2)
    expect(versus.locator("img")).to_have_js_property("naturalWidth", 640)
    left, right = top1.bounding_box(), versus.bounding_box()
    assert left["y"] == right["y"] and left["x"] + left["width"] <= right["x"]
    assert page_width(page) == 390
    shots.take(page, "mistakes-3-phone")


def test_no_gallery_without_runs(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server}/#/gallery")
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#nav a")).to_have_count(0)
    expect(page.locator(".explore")).to_be_visible()  # the explorer, not the gallery
    expect(page.locator("#help-gallery")).to_be_hidden()


def test_a_server_of_fewer_maps_than_five(page: Any, tmp_path: Path, chelsea: np.ndarray) -> None:
    """`camlens serve --max-maps 2`: a new photo asks for the top 2 (the top 5 would be refused),
    shows its map and still lists five predictions; the third class is asked for alone."""
    from playwright.sync_api import expect

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    with camlens_serve(["--max-maps", "2"], log=tmp_path / "serve.log") as (url, _):
        page.add_init_script(SENT_FORMS)
        page.goto(url)
        page.wait_for_selector("body[data-ready]")
        page.set_input_files("#file", str(photo))
        expect(page.locator(".prediction")).to_have_count(5)
        expect(page.locator("#stage img.heat")).to_have_js_property("naturalWidth", 451)
        expect(page.locator("#stage figcaption")).to_contain_text("Egyptian cat")
        page.locator(".prediction").nth(2).click()
        expect(page.locator("#stage figcaption")).to_contain_text("tabby")
        expect(page.locator("#stage img.heat")).to_have_js_property("naturalWidth", 451)
        sent = page.evaluate("window.sentForms")
    assert sent[0]["top"] == "2" and "classes" not in sent[0]
    assert sent[-1]["classes"] == "281" and "top" not in sent[-1]
