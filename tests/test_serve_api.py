"""The HTTP API of ``camlens serve`` through FastAPI's test client, with the real model: every
endpoint, every documented error, the request batcher, and the safety of ``--runs`` files."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
import re
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.config import ExplainConfig
from camlens.errors import CamlensError
from camlens.layers import auto_layer, spatial_layers
from camlens.methods import METHODS
from camlens.models.scores import set_scores

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from serving import held

from camlens.serve import ServeSettings, create_app
from camlens.serve.batcher import Batcher, Request


def all_at_once(batcher: Any, requests: list[Any]) -> list[camlens.Explanation]:
    """``requests`` sent to a started ``batcher`` together (all on their way before the first
    batch: batches wait for them), their results in order; the batcher closed after."""

    async def run_all() -> list[camlens.Explanation]:
        tickets = [batcher.expect() for _ in requests]
        return await asyncio.gather(
            *(batcher.explain(r, t) for r, t in zip(requests, tickets, strict=True))
        )

    batcher.start()
    try:
        return asyncio.run(run_all())
    finally:
        batcher.close()


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, a few kB per megapixel (no image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cat(chelsea: np.ndarray) -> bytes:
    return jpeg(chelsea)


@pytest.fixture(scope="module")
def client(default_model: camlens.Model) -> Iterator[TestClient]:
    with TestClient(create_app(default_model)) as c:
        yield c


def post(client: TestClient, image: bytes, name: str = "cat.jpg", **fields: Any) -> Any:
    return client.post("/api/explain", files={"image": (name, image, "image/jpeg")}, data=fields)


# --- the model, the methods, the server ----------------------------------------------------------


def test_model(client: TestClient, default_model: camlens.Model) -> None:
    body = client.get("/api/model").json()
    assert body["name"] == default_model.name
    assert body["num_classes"] == 1000 and body["classes"][285] == "Egyptian cat"
    assert body["preprocessing"]["input_size"] == list(default_model.preprocess.input_size)
    layers = spatial_layers(default_model)
    assert [layer["name"] for layer in body["layers"]] == [info.name for info in layers]
    assert body["auto_layer"] == auto_layer(default_model) == "bn2"
    bn2 = next(layer for layer in body["layers"] if layer["name"] == "bn2")
    assert bn2["shape"] == [1280, 7, 7]


def test_methods(client: TestClient) -> None:
    body = client.get("/api/methods").json()
    assert [m["name"] for m in body["methods"]] == list(METHODS)
    assert body["methods"][0]["needs"] == "head" and "Zhou" in body["methods"][0]["paper"]
    assert body["groups"]["scores"] == ["scorecam", "sscam", "iscam", "ablationcam"]


def test_server_and_docs(client: TestClient) -> None:
    body = client.get("/api/server").json()
    assert body["max_upload_bytes"] == 20 * 2**20 and body["runs"] is False
    assert "jet" in body["colormaps"]
    spec = client.get("/openapi.json").json()
    assert {"/api/model", "/api/methods", "/api/explain"} <= set(spec["paths"])
    form = spec["paths"]["/api/explain"]["post"]
    assert {"413", "415", "422", "503"} <= set(form["responses"])
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower()  # the documentation page works offline
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_page_is_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


# --- explain --------------------------------------------------------------------------------------


def test_explain_matches_the_python_api(
    client: TestClient, default_model: camlens.Model, cat: bytes
) -> None:
    response = post(client, cat, top="2", methods=["gradcam,cam"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["name"] == "cat.jpg" and body["image"]["size"] == [451, 300]
    assert body["predictions"][0]["label"] == "Egyptian cat" and len(body["predictions"]) == 5
    assert body["methods"] == ["gradcam", "cam"] and body["layers"] == ["bn2"]
    with camlens.Explainer(default_model, method=["gradcam", "cam"]) as ex:
        expected = ex.explain(Image.open(io.BytesIO(cat)), top=2)
    maps = body["explanations"]
    assert [(m["class_index"], m["method"]) for m in maps] == [
        (m.class_index, m.method) for m in expected.maps
    ]
    for i, m in enumerate(maps):
        assert m["index"] == i and m["layer"] == "bn2" and m["boxes"] is None
        assert m["score"] == pytest.approx(expected.maps[i].score, abs=1e-6)
        assert tuple(m["peak"]) == expected.peak(i)
        npy = client.get(m["map"])
        assert npy.status_code == 200
        array = np.load(io.BytesIO(npy.content), allow_pickle=False)
        assert array.dtype == np.float32 and array.shape == (300, 451)
        np.testing.assert_allclose(array, expected.map_at_image(i).numpy(), atol=1e-5)
    overlay = client.get(maps[0]["overlay"])
    assert overlay.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(overlay.content))
    assert picture.size == (451, 300)
    assert np.array_equal(np.asarray(picture), np.asarray(expected.overlay(0)))
    heatmap = Image.open(io.BytesIO(client.get(maps[0]["heatmap"]).content))
    assert heatmap.size == (451, 300)
    small = client.get(maps[0]["heatmap"], params={"max_side": 100})
    assert Image.open(io.BytesIO(small.content)).size == (100, 67)  # the photo's shape
    assert client.get(maps[0]["heatmap"], params={"max_side": 0}).json()["parameter"] == "max_side"
    photo = Image.open(io.BytesIO(client.get(body["image"]["url"]).content))
    assert photo.format == "JPEG" and photo.size == (451, 300)
    assert client.get(body["url"]).json() == body


def test_explain_classes_by_name_and_index(client: TestClient, cat: bytes) -> None:
    fields = {"classes": ["Egyptian cat", "tench, Tinca tinca", "968"], "methods": "cam"}
    body = post(client, cat, **fields).json()
    assert [m["class_index"] for m in body["explanations"]] == [285, 0, 968]


def test_explain_boxes_and_colormap(client: TestClient, cat: bytes) -> None:
    body = post(client, cat, boxes="largest", cmap="viridis", alpha="0.3").json()
    (m,) = body["explanations"]
    ((box,),) = [m["boxes"]]
    x0, y0, x1, y1 = box["box"]
    assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300 and 0 < box["score"] <= 1
    assert (
        "cmap=viridis" in m["overlay"] and "alpha=0.3" in m["overlay"] and "boxes=1" in m["overlay"]
    )
    with_boxes = np.asarray(Image.open(io.BytesIO(client.get(m["overlay"]).content)))
    plain_url = m["overlay"].replace("boxes=1", "boxes=0")
    plain = np.asarray(Image.open(io.BytesIO(client.get(plain_url).content)))
    assert (with_boxes != plain).any(axis=-1).mean() < 0.2  # only the outline and its label
    assert (with_boxes != plain).any()


def test_explain_inline(client: TestClient, cat: bytes) -> None:
    body = post(client, cat, inline="true").json()
    (m,) = body["explanations"]
    assert m["overlay"].startswith("data:image/png;base64,")
    assert m["map"].startswith("data:application/octet-stream;base64,")
    inline = np.load(io.BytesIO(base64.b64decode(m["map"].split(",", 1)[1])))
    by_url = np.load(io.BytesIO(client.get(f"{body['url']}/maps/0/map.npy").content))
    assert np.array_equal(inline, by_url)


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"top": "0"}, "top", "top must be at least 1"),
        ({"top": "many"}, "top", "valid integer"),
        ({"top": "1001"}, "top", "at most 1000"),
        ({"methods": "gradcam,nosuch"}, "methods", "unknown method 'nosuch'"),
        ({"layers": "bn3"}, "layers", "did you mean bn2"),
        ({"classes": "1000"}, "classes", "out of range"),
        ({"classes": "5", "top": "2"}, "classes", "not both"),
        ({"smooth": "blur"}, "smooth", "unknown smoothing"),
        ({"fast_channels": "0"}, "fast_channels", "at least 1"),
        ({"fast_resolution": "2"}, "fast_resolution", "(0, 1]"),
        ({"boxes": "most"}, "boxes", "largest"),
        ({"threshold": "high"}, "threshold", "otsu"),
        ({"cmap": "jett"}, "cmap", "unknown colormap 'jett'"),
        ({"alpha": "1.5"}, "alpha", "[0, 1]"),
        ({"top": "20", "methods": "gradients"}, "top", "over this server's limit of 100"),
        ({"methods": "cam", "layers": "blocks.5"}, "methods", "GAP -> Linear head"),
    ],
)
def test_bad_parameter_is_a_422_naming_it(
    client: TestClient, cat: bytes, fields: dict[str, str], parameter: str, words: str
) -> None:
    response = post(client, cat, **fields)
    assert response.status_code == 422
    body = response.json()
    assert body["parameter"] == parameter and words in body["detail"]
    assert "\n" not in body["detail"]


def test_unknown_class_name_gets_suggestions(client: TestClient, cat: bytes) -> None:
    response = post(client, cat, classes="egyptian kat")
    assert response.status_code == 422
    assert response.json() == {
        "detail": "class name 'egyptian kat' is not one of efficientnet_lite0's 1000 class "
        "names; did you mean one of: 'Egyptian cat'",
        "parameter": "classes",
    }
    # the labels with "cat" as a word (of the label or a synonym) come before spellings close
    # to it ("bullfrog, Rana catesbeiana", "oystercatcher")
    detail = post(client, cat, classes="cat").json()["detail"]
    assert detail.endswith(
        "did you mean one of: 'tabby, tabby cat', 'tiger cat', 'Persian cat', 'Siamese cat, "
        "Siamese', 'Egyptian cat'"
    ), detail


def test_missing_image_is_a_422(client: TestClient) -> None:
    response = client.post("/api/explain", data={"top": "1"})
    assert response.status_code == 422 and response.json()["parameter"] == "image"


@pytest.mark.parametrize(
    ("data", "name", "problem"),
    [
        (b"just some text", "notes.txt", "notes.txt: is not an image Pillow can read"),
        (b"", "empty.png", "empty.png: is empty (0 bytes)"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "../../etc/x.png", "x.png: is"),
    ],
)
def test_non_image_is_a_415(client: TestClient, data: bytes, name: str, problem: str) -> None:
    response = post(client, data, name=name)
    assert response.status_code == 415
    assert response.json()["detail"].startswith(problem)
    assert response.json()["parameter"] == "image"


def test_image_over_the_pixel_limit_is_a_413_before_decoding(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blank_png(tmp_path / "huge.png", 20000, 20000).read_bytes()  # 400 MP in ~50 kB
    assert len(data) < 200_000
    from PIL import ImageFile

    decoded: list[bool] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(True))
    response = post(client, data, name="huge.png")
    assert response.status_code == 413
    assert response.json() == {
        "detail": "huge.png: is 20000x20000 pixels (400.0 megapixels), over the limit of "
        "40.0 megapixels",
        "parameter": "image",
    }
    assert not decoded


def test_upload_over_the_size_limit_is_a_413(
    default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    big = jpeg(chelsea, quality=100)
    assert len(big) > 50_000 + 16 * 1024  # over the limit, also with the form's allowance
    with TestClient(create_app(default_model, ServeSettings(max_upload_bytes=50_000))) as c:
        response = post(c, big)
        assert response.status_code == 413
        assert response.json() == {
            "detail": "the upload is over this server's limit of 50000 bytes",
            "parameter": "image",
        }
        # without a Content-Length (chunked): refused once the bytes received pass the limit
        boundary = "camlensboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()

        def chunks() -> Iterator[bytes]:
            yield head
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]
            yield f"\r\n--{boundary}--\r\n".encode()

        chunked = c.post(
            "/api/explain",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert chunked.status_code == 413 and "50000 bytes" in chunked.json()["detail"]
        assert post(c, jpeg(chelsea, quality=40)).status_code == 200  # under the limit: fine


def test_uploads_stay_in_memory(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tempfile

    rolled: list[bool] = []
    original = tempfile.SpooledTemporaryFile.rollover

    def rollover(self: Any) -> None:
        rolled.append(True)
        original(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", rollover)
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")  # about 3.6 MB: over Starlette's 1 MB spool
    assert len(buffer.getvalue()) > 3 * 2**20
    assert post(client, buffer.getvalue(), name="noise.png").status_code == 200
    assert not rolled


def test_result_files_errors(client: TestClient, cat: bytes) -> None:
    body = post(client, cat).json()
    missing = client.get("/api/results/nosuchresult/maps/0/map.npy")
    assert missing.status_code == 404 and "explain the image again" in missing.json()["detail"]
    assert client.get(f"{body['url']}/maps/1/map.npy").status_code == 404
    bad = client.get(f"{body['url']}/maps/0/overlay.png", params={"cmap": "nosuch"})
    assert bad.status_code == 422 and bad.json()["parameter"] == "cmap"


# one kept result of cat.jpg: its photo, its 7x7 float32 map and its answer's URLs
ONE_RESULT = 3 * 451 * 300 + 4 * 7 * 7


@pytest.mark.parametrize(
    "settings",
    [ServeSettings(results=2), ServeSettings(results_bytes=2 * ONE_RESULT + 2 * 4096 + 2000)],
    ids=["count", "bytes"],
)
def test_old_results_are_dropped(
    default_model: camlens.Model, cat: bytes, settings: ServeSettings
) -> None:
    with TestClient(create_app(default_model, settings)) as c:
        urls = [post(c, cat).json()["url"] for _ in range(3)]
        assert [c.get(u).status_code for u in urls] == [404, 200, 200]
        store = c.app.state.camlens.store  # type: ignore[attr-defined]
        assert 2 * ONE_RESULT < store.bytes <= settings.results_bytes


def test_inline_answers_count_in_the_results_memory(
    default_model: camlens.Model, cat: bytes
) -> None:
    """An inline answer keeps its data: URLs (as large as the files): they count, so that
    fewer such results are kept in the same memory."""
    settings = ServeSettings(results_bytes=3 * ONE_RESULT + 3 * 4096 + 3000)
    with TestClient(create_app(default_model, settings)) as c:
        store = c.app.state.camlens.store  # type: ignore[attr-defined]
        post(c, cat)
        assert store.bytes < ONE_RESULT + 5000
        inline = post(c, cat, inline="true").json()
        size = sum(len(m["overlay"]) + len(m["map"]) for m in inline["explanations"])
        assert size > 4 * 451 * 300  # the .npy alone is 4 bytes a pixel
        assert len(store) == 1  # the plain result no longer fits beside it
        assert store.bytes > ONE_RESULT + size


def test_map_at_the_layers_size_and_the_zip_of_a_result(client: TestClient, cat: bytes) -> None:
    body = post(client, cat, methods=["gradcam", "cam"], boxes="largest").json()
    m = body["explanations"][1]
    layer = client.get(m["map"], params={"size": "layer"})
    assert layer.status_code == 200 and ".layer.npy" in layer.headers["content-disposition"]
    small = np.load(io.BytesIO(layer.content), allow_pickle=False)
    assert small.dtype == np.float32 and small.shape == tuple(m["map_shape"]) == (7, 7)
    full = np.load(io.BytesIO(client.get(m["map"]).content), allow_pickle=False)
    assert full.shape == (300, 451) and small.max() == pytest.approx(1.0)
    # the full map is the layer's, upsampled: its peak is at the layer cell of the small one's
    cell = np.unravel_index(small.argmax(), small.shape)
    peak_y, peak_x = np.unravel_index(full.argmax(), full.shape)
    assert (peak_y * 7 // 300, peak_x * 7 // 451) == cell
    bad = client.get(m["map"], params={"size": "huge"})
    assert bad.status_code == 422 and bad.json()["parameter"] == "size"

    download = client.get(body["download"])
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert 'filename="cat.camlens.zip"' in download.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    names = archive.namelist()
    stems = [f"cat.{e['method']}.bn2.{e['class_index']}" for e in body["explanations"]]
    assert names == [
        "report.json",
        "cat.jpg",
        *[s + ext for s in stems for ext in (".png", ".npy")],
    ]
    assert json.loads(archive.read("report.json")) == body
    for i, stem in enumerate(stems):
        overlay = client.get(body["explanations"][i]["overlay"]).content
        assert archive.read(stem + ".png") == overlay  # the answer's overlay, boxes and all
        npy = client.get(body["explanations"][i]["map"]).content
        assert archive.read(stem + ".npy") == npy
    assert archive.read("cat.jpg") == client.get(body["image"]["url"]).content
    assert client.get("/api/results/nosuchresult/download.zip").status_code == 404


# --- a full queue ---------------------------------------------------------------------------------


def test_full_queue_is_a_503_with_retry_after(default_model: camlens.Model, cat: bytes) -> None:
    app = create_app(default_model, ServeSettings(max_queue=1, batch_wait=0))
    batcher = app.state.camlens.batcher
    running, release = held(app)
    with TestClient(app) as c:
        statuses: list[int] = []

        def send() -> None:
            statuses.append(post(c, cat).status_code)

        first = threading.Thread(target=send)
        first.start()
        assert running.wait(60)  # the worker holds the first request
        second = threading.Thread(target=send)
        second.start()
        deadline = time.monotonic() + 60
        while batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.queued == 1  # the second waits: the queue is full
        refused = post(c, cat)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["detail"]
        release.set()
        first.join(60)
        second.join(60)
        assert statuses == [200, 200]


# --- the batcher ----------------------------------------------------------------------------------


def test_batcher_explains_concurrent_requests_together(
    default_model: camlens.Model, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    photos = [Image.fromarray(chelsea), Image.fromarray(coffee)] * 3
    tops = [1, 3, 2, 1, 3, 2]
    batcher = Batcher(default_model, max_batch=4, max_wait=0.5)
    config = ExplainConfig(methods=("gradcam", "eigencam"))
    requests = [
        Request(p, f"photo{i}", config.replace(top=t))
        for i, (p, t) in enumerate(zip(photos, tops, strict=True))
    ]
    requests.append(Request(photos[0], "by class", config.replace(classes=(285, 1))))

    results = all_at_once(batcher, requests)
    assert batcher.images == 7
    assert batcher.batches < 7 and batcher.largest_batch == 4  # batched, and never past the size
    with camlens.Explainer(default_model, method=["gradcam", "eigencam"]) as ex:
        for request, result in zip(requests, results, strict=True):
            alone = (
                ex.explain(request.image, top=request.config.top)
                if request.config.top
                else (ex.explain(request.image, classes=list(request.config.classes)))
            )
            assert result.source == request.name
            assert [(m.class_index, m.method) for m in result.maps] == [
                (m.class_index, m.method) for m in alone.maps
            ]
            for got, want in zip(result.maps, alone.maps, strict=True):
                torch_close(got.map, want.map)


def test_batcher_bounds_above_by_each_requests_top(
    default_model: camlens.Model, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    """Requests for every class over a threshold, with several tops and one without, explained
    in one batch: each gets what the Python API gives it alone."""
    sigmoid = set_scores(dataclasses.replace(default_model), "sigmoid")
    photos = [Image.fromarray(chelsea), Image.fromarray(coffee), Image.fromarray(coffee)]
    tops = [2, None, 1]  # over 0.99: 4 classes of the cat, 6 of the coffee
    batcher = Batcher(sigmoid, max_batch=4, max_wait=0.5)
    config = ExplainConfig(above=0.99)
    requests = [
        Request(p, f"photo{i}", config.replace(top=t))
        for i, (p, t) in enumerate(zip(photos, tops, strict=True))
    ]

    results = all_at_once(batcher, requests)
    assert batcher.batches == 1
    counts = []
    for request, result in zip(requests, results, strict=True):
        with camlens.Explainer(sigmoid, above=0.99, top=request.config.top) as ex:
            alone = ex.explain(request.image)
        assert [m.class_index for m in result.maps] == [m.class_index for m in alone.maps]
        for got, want in zip(result.maps, alone.maps, strict=True):
            torch_close(got.map, want.map)
        counts.append(len(result.maps))
    assert counts == [2, 6, 1]


def test_batcher_waits_for_expected_requests_only(
    default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    batcher = Batcher(default_model, max_wait=600)  # a wait that would fail the test
    request = Request(Image.fromarray(chelsea), "cat", ExplainConfig())

    async def scenario() -> None:
        await asyncio.wait_for(batcher.explain(request), 60)  # alone: starts at once
        assert batcher.batches == 1
        ticket = batcher.expect()
        first = asyncio.ensure_future(batcher.explain(request))
        await asyncio.wait_for(in_queue(batcher, 1), 60)  # held there for the request on its way
        second = asyncio.ensure_future(batcher.explain(request, ticket))
        await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert batcher.batches == 2 and batcher.largest_batch == 2  # one batch: first waited
        cancelled = batcher.expect()
        third = asyncio.ensure_future(batcher.explain(request))
        await asyncio.wait_for(in_queue(batcher, 1), 60)
        assert batcher.batches == 2  # held: a batch waits max_wait (600 s) for the ticket
        cancelled.cancel()  # that request never comes: the batch goes without it, at once
        await asyncio.wait_for(third, 60)
        assert batcher.batches == 3

    batcher.start()
    try:
        asyncio.run(scenario())
    finally:
        batcher.close()


async def in_queue(batcher: Batcher, count: int) -> None:
    """Returns once ``count`` requests are in the batcher's queue: the tasks that ask have run up
    to their wait (each turn of the event loop lets them go on; no time is waited)."""
    while batcher.queued < count:
        await asyncio.sleep(0)


def torch_close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_batcher_refuses_when_full_and_fails_waiting_requests_on_close(
    default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    from camlens.serve.batcher import Closed, QueueFull

    batcher = Batcher(default_model, max_queue=2, max_queue_pixels=10**9)  # never started
    request = Request(Image.fromarray(chelsea), "cat", ExplainConfig())

    async def scenario() -> None:
        waiting = [asyncio.ensure_future(batcher.explain(request)) for _ in range(2)]
        await asyncio.wait_for(in_queue(batcher, 2), 60)
        with pytest.raises(QueueFull) as full:
            await batcher.explain(request)
        assert full.value.retry_after >= 1
        batcher.close()
        for task in waiting:
            with pytest.raises(Closed):
                await task

    asyncio.run(scenario())


def test_batcher_bounds_queued_pixels(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    from camlens.serve.batcher import QueueFull

    photo = Image.fromarray(chelsea)  # 135,300 pixels
    batcher = Batcher(default_model, max_queue=10, max_queue_pixels=200_000)
    request = Request(photo, "cat", ExplainConfig())

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.explain(request))  # alone: taken whatever its size
        await asyncio.wait_for(in_queue(batcher, 1), 60)
        with pytest.raises(QueueFull):
            await batcher.explain(request)
        batcher.close()
        with pytest.raises(Exception, match="shutting down"):
            await first

    asyncio.run(scenario())


# --- settings, CORS, run files --------------------------------------------------------------------


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(CamlensError, match=r"runs: .* is not a folder"):
        ServeSettings(runs=tmp_path / "missing")
    with pytest.raises(CamlensError, match="max_queue must be"):
        ServeSettings(max_queue=0)
    with pytest.raises(CamlensError, match="batch_wait"):
        ServeSettings(batch_wait=-1)


def test_no_cors_unless_asked(default_model: camlens.Model, client: TestClient) -> None:
    origin = {"Origin": "http://elsewhere.test"}
    assert "access-control-allow-origin" not in client.get("/api/methods", headers=origin).headers
    settings = ServeSettings(cors_origins=("http://tool.test",))
    with TestClient(create_app(default_model, settings)) as c:
        allowed = c.get("/api/methods", headers={"Origin": "http://tool.test"})
        assert allowed.headers["access-control-allow-origin"] == "http://tool.test"
        other = c.get("/api/methods", headers=origin)
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def runs_client(default_model: camlens.Model, tmp_path: Path) -> Iterator[TestClient]:
    runs = tmp_path / "runs"
    (runs / "cats").mkdir(parents=True)
    (runs / "index.jsonl").write_text('{"image": "cats/0.jpg"}\n')
    (runs / "cats" / "0.json").write_text("{}")
    (runs / "cats" / "0.npy").write_bytes(b"\x93NUMPY")
    (runs / "cats" / ".hidden.png").write_bytes(b"png")
    (runs / "notes.txt").write_text("notes")
    for run in (runs, runs / "cats"):
        (run / ".camlens").mkdir()
        (run / ".camlens" / "run").write_text('{"options": {}}')
        (run / ".camlens" / "x.json").write_text('{"options": {}}')
    (tmp_path / "secret.txt").write_text("not for clients")
    os.symlink(tmp_path / "secret.txt", runs / "escape.txt")
    os.symlink(tmp_path, runs / "parent")
    os.symlink(runs / "cats" / "0.json", runs / "inside.json")
    with TestClient(create_app(default_model, ServeSettings(runs=runs))) as c:
        yield c


def test_run_files_are_served(runs_client: TestClient) -> None:
    assert runs_client.get("/api/server").json()["runs"] is True
    unknown = runs_client.get("/api/runs", params={"sort": "name"})
    assert unknown.status_code == 422 and unknown.json()["parameter"] == "sort"
    assert runs_client.get("/runs/cats/0.json").json() == {}
    assert runs_client.get("/runs/inside.json").status_code == 200  # a link that stays inside
    assert runs_client.get("/runs/cats/0.npy").status_code == 200
    # only what the gallery shows: not a run's options, its index or any other file
    for path in (
        "/runs/.camlens/run",
        "/runs/cats/.camlens/run",
        "/runs/index.jsonl",
        "/runs/.camlens/x.json",
        "/runs/notes.txt",
        "/runs/cats/.hidden.png",
    ):
        refused = runs_client.get(path)
        assert refused.status_code == 404, path
        assert "options" not in refused.text


@pytest.mark.parametrize(
    "path",
    [
        "/runs/../secret.txt",
        "/runs/%2e%2e/secret.txt",
        "/runs/..%2fsecret.txt",
        "/runs/cats/..%2f..%2fsecret.txt",
        "/runs/%2e%2e%2fsecret.txt",
        "/runs/escape.txt",  # a symbolic link out of the folder
        "/runs/parent/secret.txt",  # a link to a folder outside
        "/runs/cats",  # no listing
    ],
)
def test_run_files_never_leave_the_folder(runs_client: TestClient, path: str) -> None:
    response = runs_client.get(path)
    assert response.status_code == 404
    assert "not for clients" not in response.text


def test_serve_command_checks_its_options_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from camlens.cli import app

    result = CliRunner().invoke(app, ["serve", "--runs", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert f"runs: {tmp_path / 'missing'} is not a folder" in result.stderr
    assert "Traceback" not in result.output


# --- one config per request, unknown parameters ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "fields", "parameter", "words"),
    [
        ("post", "/api/explain", {"method": "gradcampp"}, "method", "did you mean 'methods'?"),
        ("post", "/api/explain", {"layer": "bn2"}, "layer", "did you mean 'layers'?"),
        ("post", "/api/explain", {"class": "285"}, "class", "did you mean 'classes'?"),
        ("post", "/api/explain", {"colour": "x"}, "colour", "takes image, methods, layers"),
        ("get", "/api/model?verbose=1", None, "verbose", "takes no query parameter"),
        ("get", "/api/methods?titles=1", None, "titles", "takes no query parameter"),
    ],
)
def test_unknown_parameter_is_a_422_naming_it(
    client: TestClient,
    cat: bytes,
    method: str,
    url: str,
    fields: dict[str, str] | None,
    parameter: str,
    words: str,
) -> None:
    if method == "post":
        response = client.post(
            url, files={"image": ("cat.jpg", cat, "image/jpeg")}, data=fields or {}
        )
    else:
        response = client.get(url)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["parameter"] == parameter and words in body["detail"], body
    assert "\n" not in body["detail"]


def test_unknown_query_parameter_of_a_result_file(client: TestClient, cat: bytes) -> None:
    body = post(client, cat).json()
    url = f"{body['url']}/maps/0/overlay.png"
    response = client.get(url, params={"colormap": "viridis"})
    assert response.status_code == 422
    assert response.json()["parameter"] == "colormap"
    assert "did you mean 'cmap'?" in response.json()["detail"]
    assert client.get(url, params={"cmap": "viridis", "alpha": "0.4"}).status_code == 200
    assert client.get(f"{body['url']}?x=1").json()["parameter"] == "x"


def test_a_request_is_one_config(
    default_model: camlens.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camlens.serve.parameters import explain_options
    from camlens.serve.state import ServerState

    st = ServerState(default_model, ServeSettings(max_batch=4))
    made: list[ExplainConfig] = []
    check = ExplainConfig.__post_init__

    def counted(self: ExplainConfig) -> None:
        check(self)
        made.append(self)

    monkeypatch.setattr(ExplainConfig, "__post_init__", counted)
    options = {
        "methods": ["gradcampp,layercam"],
        "layers": ["bn2"],
        "classes": ["Egyptian cat", "tench, Tinca tinca"],
        "top": None,
        "smooth": ["pca"],
        "fast_channels": None,
        "fast_resolution": None,
        "boxes": "largest",
        "threshold": "otsu",
        "cmap": "viridis",
        "alpha": 0.25,
    }
    config, output = explain_options(st, **options)  # type: ignore[arg-type]
    assert made == [config]  # one config, no throwaway ones
    assert config == ExplainConfig(
        methods=("gradcampp", "layercam"),
        layers=("bn2",),
        classes=(285, 0),  # names resolved once, here
        smooth=("pca",),
        batch_size=4,
        max_pixels=st.settings.max_pixels,
    )
    assert (output.boxes, output.threshold, output.cmap, output.alpha) == (
        "largest",
        "otsu",
        "viridis",
        0.25,
    )
    made.clear()
    from camlens.serve.errors import ApiError

    with pytest.raises(ApiError) as bad:
        explain_options(st, **{**options, "smooth": ["blur"]})  # type: ignore[arg-type]
    assert bad.value.parameter == "smooth" and len(made) == 0  # refused in that one config
    # the batcher groups requests by the config, without their classes or top
    photo = Image.new("RGB", (8, 8))
    key, given = st.batcher.key(Request(photo, "a", config))
    assert given and key == config.replace(classes=())
    assert st.batcher.key(Request(photo, "b", config.replace(classes=(1,))))[0] == key
    assert st.batcher.key(Request(photo, "c", config.replace(smooth=())))[0] != key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", ""),
        ("device", "tpu"),
        ("methods", ("nosuch",)),
        ("layers", ("bn2", "")),
        ("classes", (1.5,)),
        ("top", 0),
        ("smooth", ("blur",)),
        ("tta_flips", "yes"),
        ("tta_scales", (0,)),
        ("batch_size", 0),
        ("max_batch_memory", "lots"),
        ("fast_channels", 0),
        ("fast_resolution", 2.0),
        ("use_head_gradients", 1),
        ("input_size", (224,)),
        ("max_pixels", 0),
        ("relu", None),
    ],
)
def test_config_errors_name_their_option(field: str, value: Any) -> None:
    with pytest.raises(CamlensError) as refused:
        ExplainConfig(**{field: value})
    assert refused.value.option == field, str(refused.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("cmap", "jett"), ("alpha", 2), ("boxes", "most"), ("threshold", "high"), ("quality", 0)],
)
def test_output_config_errors_name_their_option(field: str, value: Any) -> None:
    from camlens.config import OutputConfig

    with pytest.raises(CamlensError) as refused:
        OutputConfig(**{field: value})
    assert refused.value.option == field, str(refused.value)


def test_methods_have_titles(client: TestClient) -> None:
    methods = client.get("/api/methods").json()["methods"]
    titles = {m["name"]: m["title"] for m in methods}
    assert titles == {name: m.title for name, m in METHODS.items()}
    assert titles["gradcampp"] == "Grad-CAM++" and titles["scorecam"] == "Score-CAM"
    assert len(set(titles.values())) == len(titles)


# --- one serializer, one overlay ------------------------------------------------------------------


def test_the_answer_is_the_report_and_its_schema(client: TestClient, cat: bytes) -> None:
    from camlens.serve.schemas import ExplainOut

    body = post(client, cat, top="2", methods="gradcam,eigencam", boxes="largest").json()
    kept = client.app.state.camlens.store.get(body["id"])  # type: ignore[attr-defined]
    report = kept.explanation.to_dict()
    assert body["model"] == report["model"] and body["predictions"] == report["predictions"]
    assert [body["image"]["name"], body["image"]["size"]] == [report["image"], report["size"]]
    for got, want in zip(body["explanations"], report["explanations"], strict=True):
        assert {k: got[k] for k in want} == want  # every field of the report, the same values
        # and the map's URLs; a plain class's target fields are null (the report leaves them out)
        assert set(got) - set(want) == {"index", "overlay", "heatmap", "map"} | {
            k for k in ("target", "explained", "value", "region") if got[k] is None
        }
    assert ExplainOut.model_validate(body).model_dump(mode="json") == body
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/api/explain"]["post"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExplainOut"
    }
    assert "map_shape" in spec["components"]["schemas"]["MapOut"]["properties"]


def test_every_writer_draws_the_same_overlay(
    default_model: camlens.Model, chelsea: np.ndarray, tmp_path: Path
) -> None:
    from camlens.config import OutputConfig
    from camlens.localize import add_boxes
    from camlens.outputs import write_image
    from camlens.serve.encoders import overlay_png

    with camlens.Explainer(default_model, method=["gradcam"]) as ex:
        result = ex.explain(Image.fromarray(chelsea), top=2)
    add_boxes(result, threshold=0.3)
    assert all(m.boxes for m in result.maps)
    report = json.loads(result.save(tmp_path / "saved", "cat", cmap="magma", alpha=0.4).read_text())
    (tmp_path / "temp").mkdir()
    output = OutputConfig(cmap="magma", alpha=0.4, boxes="largest", threshold=0.3)
    row = write_image(result, "cat", tmp_path / "run", output, tmp_path / "temp")
    for i, entry in enumerate(report["explanations"]):
        saved = np.asarray(Image.open(tmp_path / "saved" / entry["overlay"]))
        written = np.asarray(Image.open(tmp_path / "run" / row["explanations"][i]["overlay"]))
        served = np.asarray(Image.open(io.BytesIO(overlay_png(result, i, "magma", 0.4, True))))
        plain = np.asarray(result.overlay(i, cmap="magma", alpha=0.4, boxes=False))
        assert np.array_equal(saved, written) and np.array_equal(saved, served)
        assert (saved != plain).any()  # the boxes and their labels are drawn
        assert entry["boxes"] == row["explanations"][i]["boxes"]


def test_cam_runs_where_it_applies_and_the_answer_says_where_not(
    client: TestClient, cat: bytes
) -> None:
    """CAM with Grad-CAM at bn2 (which the GAP -> Linear head reads) and blocks.5 (which it
    does not): CAM's map at bn2, Grad-CAM's at both, and `skipped` says why not CAM at blocks.5;
    the answer says what it cost, in its JSON and its Server-Timing header."""
    response = post(client, cat, methods=["cam", "gradcam"], layers=["bn2", "blocks.5"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted((m["method"], m["layer"]) for m in body["explanations"]) == [
        ("cam", "bn2"),
        ("gradcam", "blocks.5"),
        ("gradcam", "bn2"),
    ]
    [skipped] = body["skipped"]
    assert skipped["method"] == "cam" and skipped["layer"] == "blocks.5"
    assert "no global-average-pooling -> Linear head after 'blocks.5'" in skipped["reason"]
    stats = body["stats"]
    assert stats["images"] == 1 and stats["forward_passes"] == 1
    assert stats["backward_passes"] == 1  # blocks.5's gradients: bn2's come from the head
    assert stats["perturbation_passes"] == 0 and stats["seconds"] > 0
    timing = response.headers["server-timing"]
    assert re.fullmatch(
        r'queue;dur=[\d.]+, model;dur=[\d.]+;desc="1 forward, 1 backward, 0 perturbation passes"',
        timing,
    ), timing
    model_ms = float(timing.split("model;dur=")[1].split(";")[0])
    assert model_ms == pytest.approx(stats["seconds"] * 1000, abs=0.1)
    only_bn2 = post(client, cat, methods=["cam"], layers=["bn2"]).json()
    assert only_bn2["skipped"] == [] and only_bn2["stats"]["backward_passes"] == 0


def test_above_is_bounded_by_top(
    default_model: camlens.Model, client: TestClient, cat: bytes
) -> None:
    """Under sigmoid scores every class may be over a threshold (all 1000 of the default model's
    are over 0.01 on the cat): ``above`` alone may ask for 1000 maps, over ``max_maps`` (100), a
    422 naming ``above`` that says to give ``top``; with ``top``, at most ``top`` maps per method
    and layer, the best classes over the threshold first, as the Python API gives them. Under
    softmax ``above`` asks at most 1 / above classes (0.5: 2), and above 0 every class."""
    for fields in ({"scores": "sigmoid", "above": "0.01"}, {"above": "0"}):
        refused = post(client, cat, **fields)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["parameter"] == "above"
        assert body["detail"].startswith(f"above {fields['above']} may ask for 1000 maps")
        assert body["detail"].endswith(
            "over this server's limit of 100: give top (at most 100 here) to explain the best "
            "of those classes only"
        )
    assert post(client, cat, above="0.5").status_code == 200
    sigmoid = set_scores(dataclasses.replace(default_model), "sigmoid")
    methods = ["gradcam", "cam"]
    with TestClient(create_app(sigmoid)) as c:
        assert post(c, cat, above="0.01").json()["parameter"] == "above"
        over = post(c, cat, above="0.01", top="51", methods=methods)  # 102 maps
        assert (over.status_code, over.json()["parameter"]) == (422, "top")
        answer = post(c, cat, above="0.01", top="3", methods=methods)
        assert answer.status_code == 200, answer.text
        body = answer.json()
    best = [p["class_index"] for p in body["predictions"][:3]]
    assert all(p["score"] >= 0.01 for p in body["predictions"])
    got = [(m["method"], m["class_index"]) for m in body["explanations"]]
    assert sorted(got) == sorted((m, c) for m in methods for c in best)
    with camlens.Explainer(sigmoid, method=methods, above=0.01, top=3) as ex:
        expected = ex.explain(Image.open(io.BytesIO(cat)))
    assert got == [(m.method, m.class_index) for m in expected.maps]


# --- lanes, progress and cancellation -------------------------------------------------------------


def test_long_request_progress_cancel_and_no_head_of_line_blocking(
    default_model: camlens.Model, cat: bytes
) -> None:
    """A Score-CAM request named with `job`: its progress is polled, a Grad-CAM request sent
    meanwhile is answered while it runs (the fast lane), DELETE cancels it, its batch stops at
    the next chunk of passes (far from all) and its POST answers 409; the model is free after."""
    with TestClient(create_app(default_model, ServeSettings())) as c:
        answers: dict[str, Any] = {}

        def long() -> None:
            answers["long"] = post(c, cat, methods="scorecam", job="long-job-1")

        thread = threading.Thread(target=long)
        thread.start()
        try:
            check_long_job(c, cat, answers, thread)
        finally:  # never leave the long request running
            c.delete("/api/jobs/long-job-1")
            thread.join(120)


def check_long_job(
    c: TestClient, cat: bytes, answers: dict[str, Any], thread: threading.Thread
) -> None:
    if True:
        deadline = time.monotonic() + 120
        progress = None
        while time.monotonic() < deadline:
            found = c.get("/api/jobs/long-job-1")
            if found.status_code == 200 and found.json()["passes_done"] > 0:
                progress = found.json()
                break
            time.sleep(0.05)
        assert progress is not None, "no progress seen"
        assert progress["state"] == "running" and progress["phases"] == 1
        total = progress["passes_total"]  # bn2's channels that are not constant, one pass each
        assert 0 < progress["passes_done"] < total <= 1280
        assert progress["estimate_seconds"] is not None and progress["estimate_seconds"] > 0

        quick = post(c, cat)  # Grad-CAM: not queued behind the Score-CAM
        assert quick.status_code == 200
        assert c.get("/api/jobs/long-job-1").json()["state"] == "running"

        cancelled = c.delete("/api/jobs/long-job-1")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        thread.join(60)
        assert answers["long"].status_code == 409
        assert answers["long"].json()["parameter"] == "job"
        stopped = c.get("/api/jobs/long-job-1").json()
        assert stopped["state"] == "cancelled" and stopped["passes_done"] < total
        # the chunk running when cancelled ends (however slow the machine), and no other starts
        after, still = -1, time.monotonic()
        while time.monotonic() < still + 2 and time.monotonic() < deadline:
            now = c.get("/api/jobs/long-job-1").json()["passes_done"]
            if now != after:
                after, still = now, time.monotonic()
            time.sleep(0.1)
        assert c.get("/api/jobs/long-job-1").json()["passes_done"] == after < total

        again = post(c, cat, methods="scorecam", fast_channels="8", job="short-job-1")
        assert again.status_code == 200, again.text
        done = c.get("/api/jobs/short-job-1").json()
        assert done["state"] == "done" and done["passes_done"] == done["passes_total"] == 8
        assert again.json()["stats"]["perturbation_passes"] == 8
        assert c.get("/api/jobs/nosuchjob").status_code == 404
        bad = post(c, cat, job="x")
        assert bad.status_code == 422 and bad.json()["parameter"] == "job"


# --- the similarity to a reference photo ---------------------------------------------------------


def test_like_explains_the_similarity_to_a_reference(client: TestClient, cat: bytes) -> None:
    def like(reference: bytes, name: str = "ref.jpg") -> Any:
        return client.post(
            "/api/explain",
            files={
                "image": ("cat.jpg", cat, "image/jpeg"),
                "like": (name, reference, "image/jpeg"),
            },
        )

    (same,) = like(cat).json()["explanations"]  # the photo against itself: cosine 1
    assert same["target"]["kind"] == "similarity" and same["explained"] == "similarity to ref.jpg"
    assert same["value"] == pytest.approx(1.0, abs=1e-3)
    assert "camlens-like-" not in json.dumps(same)  # the server's folder is not shown
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    (other,) = like(jpeg(noise), "noise.jpg").json()["explanations"]
    assert -1 <= other["value"] < 0.99 and other["explained"] == "similarity to noise.jpg"
    bad = like(b"not an image", "notes.txt")
    assert bad.status_code == 415 and "notes.txt" in bad.text and "like" in bad.text
    lone = client.post(
        "/api/explain", files={"image": ("cat.jpg", cat, "image/jpeg")}, data={"embedding": "bn2"}
    )
    assert lone.status_code == 422 and "embedding" in lone.text and "like" in lone.text
