"""The explorer page in a real Chromium (Debian's, driven by Playwright) against a real
``camlens serve``: upload a photo, read the predictions, change class, method and view, use the
keyboard and the downloads, and see a rejected file explained. Screenshots are written to the
test's folder, and also to ``$CAMLENS_SCREENSHOTS`` when it is set."""

from __future__ import annotations

import os
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


def test_no_gallery_without_runs(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server}/#/gallery")
    page.wait_for_selector("body[data-ready]")
    expect(page.locator("#nav a")).to_have_count(0)
    expect(page.locator(".explore")).to_be_visible()  # the explorer, not the gallery
    expect(page.locator("#help-gallery")).to_be_hidden()
