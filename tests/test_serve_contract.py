"""The HTTP API's contract: its OpenAPI document says what the server does. Every error example
the document gives is the answer a real request gets; schemathesis (``--checks all``) finds no
mismatch against a live ``camlens serve`` (uvicorn on a free port, the synthetic model); the
options ``--max-inline`` and ``--upload-stall`` take effect there; the example values of the
explain form (what the documentation page fills in) explain a photo."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import camlens

pytest.importorskip("fastapi")
from awkward import cat, cup
from fastapi.testclient import TestClient
from serving import camlens_serve, held

from camlens.serve import ServeSettings, create_app

TESTS = Path(__file__).parent


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that says its size and holds no pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")


@pytest.fixture(scope="module")
def model(weights: Path) -> camlens.Model:
    return camlens.load_model("synthetic", weights=weights)


def examples(doc: dict[str, Any]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    """Every error example of the document: (verb, path, status, name) -> its body."""
    found = {}
    for path, operations in doc["paths"].items():
        for verb, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    content = answer["content"]["application/json"]
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                    assert content["examples"], (verb, path, status)
                    for name, example in content["examples"].items():
                        found[(verb.upper(), path, int(status), name)] = example["value"]
    return found


# --- every documented error is a real answer --------------------------------------------------------

Call = Callable[[TestClient], httpx.Response]


def explain(client: TestClient, photo: bytes | None = None, **fields: Any) -> httpx.Response:
    files = {"image": ("cat.png", photo or png(80, 60), "image/png")}
    return client.post("/api/explain", files=files, data=fields)


def first_result(client: TestClient) -> str:
    answer = explain(client)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["url"])


def concrete(path: str, client: TestClient) -> str:
    """``path`` with its parameters filled in: a kept result, its map 0, a job, the run."""
    if "{result_id}" in path:
        path = path.replace("/api/results/{result_id}", first_result(client))
    return path.replace("{index}", "0").replace("{job}", "no-such-job-1").replace("{run}", "audit")


def unknown(verb: str, path: str) -> Call:
    def call(client: TestClient) -> httpx.Response:
        url = concrete(path, client)
        if verb == "POST":
            return explain(client, colour="red")
        return client.request(verb, url, params={"colour": "red"})

    return call


def get(url: str) -> Call:
    return lambda client: client.get(url)


def in_result(tail: str) -> Call:
    return lambda client: client.get(first_result(client) + tail)


def no_boundary(client: TestClient) -> httpx.Response:
    headers = {"Content-Type": "multipart/form-data"}
    return client.post("/api/explain", content=b"--x\r\n", headers=headers)


# (status, example name) of POST /api/explain -> the request that gets it
EXPLAIN: dict[tuple[int, str], Call] = {
    (400, "field"): lambda c: explain(c, methods="gradcam," * 600),
    (400, "form"): no_boundary,
    (413, "upload"): lambda c: explain(c, png(20, 20) + b"\0" * 80_000),
    (413, "pixels"): lambda c: c.post(
        "/api/explain", files={"image": ("huge.png", png_header(20000, 20000), "image/png")}
    ),
    (413, "inline"): lambda c: explain(c, png(4000, 3000), inline="true", top="1"),
    (415, "image"): lambda c: c.post(
        "/api/explain", files={"image": ("notes.txt", b"just some text", "text/plain")}
    ),
    (422, "top"): lambda c: explain(c, top="0"),
    (422, "kind"): lambda c: explain(c, region="1"),
}


def provoke(key: tuple[str, str, int, str]) -> Call | None:
    verb, path, status, name = key
    if status == 422 and name == "unknown":
        return unknown(verb, path)
    if verb == "POST" and path == "/api/explain":
        return EXPLAIN.get((status, name))
    if path.startswith("/api/results/"):
        if name == "result":
            return get(path.replace("{result_id}", "Qx3nVd8aYw0bKp1z").replace("{index}", "0"))
        if name == "map":
            return in_result(path.split("{result_id}")[1].replace("{index}", "3"))
        if name == "region":
            return in_result(path.split("{result_id}")[1].replace("{index}", "0"))
        if name == "cmap":
            return in_result(path.split("{result_id}")[1].replace("{index}", "0") + "?cmap=nosuch")
    if path.startswith("/api/jobs/") and name == "job":
        return lambda c: c.request(verb, "/api/jobs/no-such-job-1")
    if path.startswith("/api/runs"):
        url = {"runs": path, "run": path, "unreadable": path}[name]
        run = {"runs": "audit", "run": "no-such-run", "unreadable": "audit"}[name]
        return get(url.replace("{run}", run).replace("{image_id}", "0"))
    return None


def test_every_documented_error_is_the_real_answer(model: camlens.Model, tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "index.jsonl").write_text('{"image": "a.jpg", "status": "ok"}\n')
    plain = ServeSettings(max_upload_bytes=50_000, max_inline_bytes=2**20)
    runs = ServeSettings(runs=tmp_path)
    checked: set[tuple[str, str, int, str]] = set()
    documented: set[tuple[str, str, int, str]] = set()
    for settings in (plain, runs):
        with TestClient(create_app(model, settings)) as client:
            doc = client.get("/openapi.json").json()
            assert "HTTPValidationError" not in doc["components"]["schemas"]
            for key, body in examples(doc).items():
                documented.add(key)
                _, path, status, name = key
                if (status, name) in ((408, "stalled"), (409, "cancelled"), (503, "busy")):
                    continue  # below, and against a live server
                if settings.runs is None and name in ("run", "unreadable"):
                    continue  # what the server with runs says
                if settings.runs is not None and (name == "runs" or "/runs" not in path):
                    continue  # what the server without runs says
                if name == "past":
                    continue  # against the live server, whose run can be read
                call = provoke(key)
                assert call is not None, f"no request for the example {key}"
                answer = call(client)
                assert (answer.status_code, answer.json()) == (status, body), key
                checked.add(key)
    assert documented - checked == {
        ("POST", "/api/explain", 408, "stalled"),  # test_options_take_effect
        ("POST", "/api/explain", 409, "cancelled"),  # the next test
        ("POST", "/api/explain", 503, "busy"),
    }
    assert {status for _, _, status, _ in checked} == {400, 404, 409, 413, 415, 422}


def test_documented_cancel_and_busy_are_the_real_answers(model: camlens.Model) -> None:
    """A named job cancelled while its batch runs answers the documented 409; a request over a
    full queue the documented 503 (its Retry-After's number aside)."""
    app = create_app(model, ServeSettings(max_queue=1, batch_wait=0))
    running, release = held(app)
    with TestClient(app) as client:
        doc = examples(client.get("/openapi.json").json())
        answers: dict[str, httpx.Response] = {}

        def send(name: str, **fields: Any) -> None:
            answers[name] = explain(client, **fields)

        first = threading.Thread(target=send, args=("first",), kwargs={"job": "my-job-0001"})
        first.start()
        assert running.wait(60)
        second = threading.Thread(target=send, args=("second",))
        second.start()
        deadline = time.monotonic() + 60
        while app.state.camlens.batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = explain(client)
        assert client.delete("/api/jobs/my-job-0001").status_code == 200
        first.join(60)
        release.set()
        second.join(60)
    assert busy.status_code == 503
    documented = doc[("POST", "/api/explain", 503, "busy")]
    assert re.sub(r"\d+", "N", json.dumps(busy.json())) == re.sub(
        r"\d+", "N", json.dumps(documented)
    )
    assert busy.headers["retry-after"].isdigit()
    cancelled = answers["first"]
    assert (cancelled.status_code, cancelled.json()) == (
        409,
        doc[("POST", "/api/explain", 409, "cancelled")],
    )
    assert answers["second"].status_code == 200


def test_a_long_form_field_is_named(model: camlens.Model) -> None:
    with TestClient(create_app(model)) as client:
        for field in ("methods", "cmap", "colour"):
            answer = explain(client, **{field: "x" * 100_000})
            assert answer.status_code == 400
            assert answer.json()["parameter"] == field
            assert answer.json()["detail"].startswith(f"form field {field!r} is over 4 kB")
        urlencoded = client.post("/api/explain", data={"layers": "x" * 5000})  # no file
        assert (urlencoded.status_code, urlencoded.json()["parameter"]) == (400, "layers")
        as_text = client.post("/api/explain", data={"image": "x" * 5000})
        assert as_text.status_code == 400
        assert as_text.json() == {
            "detail": "image must be sent as a file: a part with a file name (curl -F "
            "image=@photo.jpg), not a plain form field",
            "parameter": "image",
        }
        part = client.post("/api/explain", files={"image": (None, b"x" * 5000)})  # no file name
        assert (part.status_code, part.json()) == (400, as_text.json())
        short = client.post("/api/explain", data={"image": "x"})
        assert (short.status_code, short.json()) == (422, as_text.json())


def test_a_field_of_one_value_given_twice_is_refused(model: camlens.Model) -> None:
    """FastAPI would take the last of a repeated field of one value, silently."""
    with TestClient(create_app(model)) as client:
        twice = explain(client, inline=["true", "false"])
        assert (twice.status_code, twice.json()) == (
            422,
            {
                "detail": "form field 'inline' is given 2 times: it takes one value",
                "parameter": "inline",
            },
        )
        assert explain(client, methods=["cam", "gradcam"]).status_code == 200  # a list: repeat
        url = first_result(client)
        query = client.get(f"{url}/maps/0/overlay.png", params={"cmap": ["jet", "hot"]})
        assert (query.status_code, query.json()["parameter"]) == (422, "cmap")


def test_a_method_not_allowed_says_which_are(model: camlens.Model) -> None:
    with TestClient(create_app(model)) as client:
        answer = client.options("/api/jobs/some-job-1")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "DELETE, GET"
        assert answer.json()["detail"] == (
            "OPTIONS is not allowed: /api/jobs/some-job-1 takes DELETE, GET"
        )
        assert client.put("/api/explain").headers["allow"] == "POST"


# --- the documentation page's "Try it out" ------------------------------------------------------


def test_the_forms_examples_explain_a_photo(model: camlens.Model) -> None:
    """What the documentation page sends (tested in Chromium below): every field of the form,
    each with its example, else its default, empty where it has neither, and the like photo
    as an empty "blob" (no file chosen). No field can be null (multipart has no null)."""
    with TestClient(create_app(model)) as client:
        doc = client.get("/openapi.json").json()
        form = doc["components"]["schemas"]["Body_explain_api_explain_post"]
        fields: dict[str, list[str]] = {}
        for name, schema in form["properties"].items():
            assert "anyOf" not in schema and schema.get("type") != "null", name
            if name in ("image", "like", "mask"):
                continue
            assert "examples" in schema or "default" in schema, name
            value = schema["examples"][0] if "examples" in schema else schema["default"]
            values = value if isinstance(value, list) else [value]
            fields[name] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            fields[name] = fields[name] or [""]
        sent = {name: values for name, values in fields.items() if values != [""]}
        assert sent == {
            "methods": ["gradcam"],
            "top": ["1"],
            "boxes": ["none"],
            "threshold": ["0.2"],
            "cmap": ["jet"],
            "alpha": ["0.5"],
            "normalize": ["minmax"],
            "inline": ["false"],
        }
        files = [
            ("image", ("cat.png", png(80, 60), "image/png")),
            ("like", ("blob", b"", "image/*")),
        ]
        answer = client.post("/api/explain", files=files, data=fields)
        assert answer.status_code == 200, (fields, answer.text)
        body = answer.json()
        assert body["methods"] == ["gradcam"] and len(body["explanations"]) == 1
        assert body["explanations"][0]["target"] is None  # no similarity: no like photo
        # an empty file of a name of its own is a photo that is empty
        files[1] = ("like", ("ref.png", b"", "image/png"))
        empty = client.post("/api/explain", files=files)
        assert (empty.status_code, empty.json()["parameter"]) == (415, "like")


def test_the_fields_documented_as_exclusive_are_refused_together(model: camlens.Model) -> None:
    """Each pair of the fields that say what is explained is a 422 naming one of the two when
    the form's ``not`` names it, and is answered when it does not: top and above combine (at
    most top of the classes over above), the others go with classes or alone."""
    values = {"classes": "disc", "top": "1", "above": "0.1", "output": "0", "versus": "next"}

    def ask(client: TestClient, names: list[str]) -> httpx.Response:
        files = {"image": ("cat.png", png(80, 60), "image/png")}
        if "like" in names:
            files["like"] = ("ref.png", png(40, 40, (10, 200, 10)), "image/png")
        data = {n: values[n] for n in names if n != "like"}
        return client.post("/api/explain", files=files, data=data)

    with TestClient(create_app(model)) as client:
        form = client.get("/openapi.json").json()["components"]["schemas"][
            "Body_explain_api_explain_post"
        ]
        refused = [sorted(pair["required"]) for pair in form["not"]["anyOf"]]
        for one, other in itertools.combinations([*values, "like"], 2):
            answer = ask(client, [one, other])
            if sorted([one, other]) in refused:
                assert answer.status_code == 422, (one, other, answer.text)
                assert answer.json()["parameter"] in (one, other), (one, other, answer.json())
            else:
                assert answer.status_code == 200, (one, other, answer.text)
        assert len(refused) == 8 and ["above", "top"] not in refused


# --- a live server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(syn: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``camlens serve`` on the synthetic model with --max-maps 2 (no request asks for long),
    --max-inline 1 (MB) and --upload-stall 1.5 (s), and a run of three photos (one unreadable)
    for the gallery's endpoints."""
    from typer.testing import CliRunner

    from camlens.cli import app

    folder = tmp_path_factory.mktemp("serve")
    for name, draw in (("cat/0.jpg", cat), ("cup/0.png", cup)):
        draw(folder / "photos" / name)
    (folder / "photos" / "cup" / "broken.jpg").write_bytes(b"not a photo")
    here = os.getcwd()
    os.chdir(folder)
    try:
        done = CliRunner().invoke(
            app, ["explain", "photos", *syn, "--top", "2", "--out", "runs/photos"]
        )
    finally:
        os.chdir(here)
    assert done.exit_code == 2, done.output  # 2: the unreadable photo
    log = folder / "serve.log"
    options = [*syn, "--max-maps", "2", "--max-inline", "1", "--upload-stall", "1.5"]
    options += ["--runs", str(folder / "runs")]
    with camlens_serve(options, log=log) as (url, _):
        yield url


@pytest.mark.slow
def test_options_take_effect(live: str) -> None:
    server = httpx.get(f"{live}/api/server").json()
    assert server["max_inline_bytes"] == 2**20 and server["upload_stall"] == 1.5
    assert server["max_maps"] == 2
    doc = examples(httpx.get(f"{live}/openapi.json").json())
    # --max-inline 1: a 600x400 map's .npy is 1.2 MB in base64
    files = {"image": ("cat.png", png(600, 400), "image/png")}
    small = {"image": ("cat.png", png(300, 200), "image/png")}
    refused = httpx.post(f"{live}/api/explain", files=files, data={"inline": "true"}, timeout=60)
    assert refused.status_code == 413 and refused.json()["parameter"] == "inline"
    assert "over this server's limit of 1 MB" in refused.json()["detail"]
    answered = httpx.post(f"{live}/api/explain", files=small, data={"inline": "true"}, timeout=60)
    assert answered.status_code == 200 and answered.json()["explanations"][0]["map"].startswith(
        "data:"
    )
    # a run's image past its last, as documented
    past = doc[("GET", "/api/runs/{run}/images/{image_id}", 404, "past")]
    number = re.search(r"not (\d+)$", past["detail"])
    assert number is not None and past["parameter"] == "image_id"
    image = httpx.get(f"{live}/api/runs/photos/images/{number.group(1)}")
    assert (image.status_code, image.json()) == (404, past)
    # --max-maps 2
    three = httpx.post(f"{live}/api/explain", files=small, data={"top": "3"}, timeout=60)
    assert three.json() == {
        "detail": "3 maps asked for (classes x methods x layers), over this server's limit of 2",
        "parameter": "top",
    }
    # --upload-stall 1.5: a body that stops coming is a 408 after 1.5 s, as documented
    host, port = live.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /api/explain HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        waited = time.monotonic() - started
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(body) == doc[("POST", "/api/explain", 408, "stalled")]
    assert json.loads(body)["detail"] == "the upload stalled: no data for 1.5 s"
    assert 1.4 < waited < 10


@pytest.mark.slow
def test_schemathesis_finds_no_mismatch(live: str, tmp_path: Path) -> None:
    """schemathesis 4 with every check (tests/schemathesis.toml says what is widened, and why)
    over every operation: its examples, coverage, fuzzing and stateful phases, a bounded and
    seeded run (40 cases an operation and phase: about 1,400 requests)."""
    pytest.importorskip("schemathesis")
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(TESTS / "schemathesis.toml"),
        "run",
        f"{live}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "40",
        "--seed",
        "1",
        "--workers",
        "1",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    generated = re.search(r"(\d+) generated, \1 passed", output)
    assert generated is not None and int(generated.group(1)) >= 500, output[-3000:]


@pytest.mark.slow
def test_try_it_out_on_the_documentation_page(live: str, tmp_path: Path) -> None:
    """In Chromium, /docs: POST /api/explain, "Try it out", a photo chosen, "Execute": the
    fields as the page fills them in explain the photo."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    photo = tmp_path / "cat.png"
    photo.write_bytes(png(80, 60))
    operation = "#operations-explain-explain_api_explain_post"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            sent: list[bytes] = []

            def keep(route: Any) -> None:
                sent.append(route.request.post_data_buffer or b"")
                route.continue_()

            page.route("**/api/explain", keep)
            page.goto(f"{live}/docs")
            page.click(f"{operation} .opblock-summary")
            page.click(f"{operation} button.try-out__btn")
            page.set_input_files(f"{operation} input[type=file] >> nth=0", str(photo))
            page.click(f"{operation} button.execute")
            status = page.wait_for_selector(
                f"{operation} .live-responses-table .response .response-col_status",
                timeout=60_000,
            )
            assert status is not None and status.inner_text().strip() == "200"
            body = page.inner_text(f"{operation} .live-responses-table .microlight")
        finally:
            browser.close()
    answer = json.loads(body)
    assert answer["methods"] == ["gradcam"] and len(answer["explanations"]) == 1
    assert b'name="methods"\r\n\r\ngradcam\r\n' in sent[0]
    assert b"string" not in sent[0].replace(b"octet-stream", b"")
