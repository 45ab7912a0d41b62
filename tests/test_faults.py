"""Bad input and faults, second round: each case found by trying every front-end as a careless or
hostile user would, with its neighbours. The command line runs in-process with the synthetic
benchmark's small CNN (random weights, 64x64 inputs), as in tests/test_bad_input.py."""

from __future__ import annotations

import errno
import json
import os
import struct
import warnings
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest
from awkward import assert_clean, cat, cup, invoke, problems, strict_json
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import camlens
from camlens import outputs
from camlens.config import ExplainConfig
from camlens.errors import CamlensError, ImageError
from camlens.types import class_number


def index_rows(out: Path) -> list[dict[str, object]]:
    return [strict_json(line) for line in (out / "index.jsonl").read_text().splitlines()]


# --- 1. a symlink loop among the inputs ------------------------------------------------------------


def test_a_symlink_loop_is_one_bad_input_and_the_rest_is_explained(
    photos: list[str], syn: list[str]
) -> None:
    os.symlink("loop_b", "loop_a.jpg")
    os.symlink("loop_a.jpg", "loop_b")
    result = invoke("explain", "loop_a.jpg", *photos, "--out", "o", *syn)
    assert_clean(result, bad=1)
    assert problems(result)[0].startswith("camlens: loop_a.jpg: cannot be read")
    assert sorted(p.name for p in Path("o").glob("*.json")) == ["cat.json", "cup.json"]
    # an absolute path takes the other branch of the layout
    result = invoke("explain", Path("loop_a.jpg").absolute(), "cat.jpg", "--out", "o2", *syn)
    assert_clean(result, bad=1)
    assert (Path("o2") / "cat.json").is_file()


# --- 2. class texts that look like numbers ---------------------------------------------------------


@pytest.mark.parametrize("text", ["--5", "²", "-", "+1", "1e3", "٣", "0x1"])
def test_a_class_text_that_is_no_index_is_read_as_a_name(
    photos: list[str], syn: list[str], weights: Path, text: str
) -> None:
    result = invoke("explain", "cat.jpg", "--out", "o", *syn, f"--class={text}")
    assert_clean(result, bad=1)
    assert f"class name {text!r} is not one of" in problems(result)[0]
    assert ExplainConfig(classes=(text,)).classes == (text,)  # a name, not a ValueError
    with pytest.raises(CamlensError, match="class name"):
        camlens.load_model("synthetic", weights=weights).class_index(text)


@given(st.text(max_size=6))
@settings(max_examples=300, deadline=None)
def test_class_number_reads_ascii_digits_alone(text: str) -> None:
    number = class_number(text)
    stripped = text.strip()
    plain = stripped.removeprefix("-")
    if plain and plain.isascii() and plain.isdigit():
        assert number == int(stripped)
    else:
        assert number is None
    config = ExplainConfig(classes=(text,)) if stripped else None
    if config is not None:
        assert config.classes == ((number,) if number is not None else (stripped,))


# --- 3. failed images are never done ---------------------------------------------------------------


def no_space(*args: object, **kwargs: object) -> object:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_images_that_failed_for_a_full_disk_are_done_again(
    photos: list[str], syn: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(outputs, "open", no_space, raising=False)  # the disk is full
        result = invoke("explain", *photos, "--out", "o", *syn)
    assert_clean(result, bad=2)
    assert all("No space left on device" in line for line in problems(result))
    assert [row.get("error") is not None for row in index_rows(Path("o"))] == [True, True]
    result = invoke("explain", *photos, "--out", "o", *syn)  # space freed
    assert_clean(result, bad=0)
    assert "already done" not in result.stderr
    rows = index_rows(Path("o"))
    assert [row["image"] for row in rows] == photos  # each image once, no error left
    assert all("error" not in row for row in rows)
    assert sorted(p.name for p in Path("o").glob("*.json")) == ["cat.json", "cup.json"]


# --- 4. --overwrite on a subset --------------------------------------------------------------------


def test_overwrite_of_a_subset_keeps_the_other_images_in_the_index(
    photos: list[str], syn: list[str]
) -> None:
    assert_clean(invoke("explain", *photos, "--out", "o", *syn), bad=0)
    before = {row["image"]: row for row in index_rows(Path("o"))}
    result = invoke("explain", "cat.jpg", "--out", "o", *syn, "--overwrite")
    assert_clean(result, bad=0)
    after = {row["image"]: row for row in index_rows(Path("o"))}
    assert sorted(after) == sorted(photos)  # each once
    assert after["cup.png"] == before["cup.png"]  # kept as it was
    result = invoke("summary", "o")
    assert "2 images, 2 explained" in result.stdout
    # other options: a new run, the earlier rows do not hold for it
    result = invoke("explain", "cat.jpg", "--out", "o", *syn, "--overwrite", "--top", "2")
    assert_clean(result, bad=0)
    assert [row["image"] for row in index_rows(Path("o"))] == ["cat.jpg"]


# --- 5. --grid over an input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "says"),
    [
        ("cup.png", "--grid cup.png is one of the inputs"),
        ("./cup.png", "--grid cup.png is one of the inputs"),
        ("cat.jpg", "--grid cat.jpg: the grid is a PNG"),
        ("grid.jpg", "--grid grid.jpg: the grid is a PNG"),
    ],
)
def test_a_grid_over_an_input_or_not_png_is_refused(
    photos: list[str], syn: list[str], grid: str, says: str
) -> None:
    before = Path("cat.jpg").read_bytes(), Path("cup.png").read_bytes()
    result = invoke("explain", *photos, *syn, "--out", "o", "--grid", grid)
    assert_clean(result, bad=1)
    assert says in problems(result)[0]
    assert (Path("cat.jpg").read_bytes(), Path("cup.png").read_bytes()) == before
    assert not Path("o", "index.jsonl").exists()  # refused before anything ran


# --- 6. odd contents of --out ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (".camlens", "file"),
        (".camlens/lock", "folder"),
        ("index.jsonl", "folder"),
        (".camlens/run", "folder"),
        (".camlens/tmp", "file"),
    ],
)
def test_odd_contents_of_out_are_one_line(
    photos: list[str], syn: list[str], path: str, kind: str
) -> None:
    odd = Path("o", path)
    odd.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        odd.write_text("not camlens's")
    else:
        odd.mkdir()
    result = invoke("explain", *photos, "--out", "o", *syn)
    assert_clean(result, bad=1)
    assert str(odd) in problems(result)[0]


# --- 8. COCO ids that are not ids ------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2)
    ),
    max_leaves=4,
)


def coco_file(path: Path, image_id: object, ann_image_id: object, category_id: object) -> Path:
    data = {
        "images": [
            {"id": image_id, "file_name": "cat.jpg", "width": 96, "height": 64},
            {"id": 2, "file_name": "cup.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": ann_image_id, "category_id": category_id, "bbox": [1, 2, 30, 20]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 40, 30]},
        ],
        "categories": [{"id": category_id, "name": "disc"}, {"id": 1, "name": "square"}],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("odd", [[1], {"a": 1}])
def test_coco_ids_that_are_not_ids_are_problems(
    photos: list[str], syn: list[str], odd: object
) -> None:
    data = coco_file(Path("coco.json"), odd, odd, odd)
    result = invoke("evaluate", data, *syn, "--out", "e")
    assert_clean(result)
    assert result.exit_code == 2
    assert any("cup.png" not in line for line in problems(result))
    assert Path("e").is_dir()


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("coco")
    cat(folder / "cat.jpg")
    cup(folder / "cup.png")
    return folder


@given(JSON, JSON, JSON)
@settings(max_examples=200, deadline=None)
def test_coco_ids_of_any_json_are_read_or_refused(
    coco_folder: Path, image_id: object, ann: object, category: object
) -> None:
    from camlens.datasets.readers import read_coco

    data = read_coco(coco_file(coco_folder / "coco.json", image_id, ann, category))
    assert "cup.png" in [item.image.name for item in data.items]  # the good image is kept


# --- 9, 10. an index whose rows are JSON but not camlens's ----------------------------------------


GOOD_ROW = {
    "image": "a.jpg",
    "stem": "a",
    "report": "a.json",
    "size": [4, 4],
    "model": "tiny",
    "predictions": [{"class_index": 1, "label": "square", "score": 0.5}],
    "explanations": [
        {"class_index": 1, "label": "square", "score": 0.5, "method": "gradcam", "layer": "x"}
    ],
}


def spoilt(path: str, value: object) -> dict[str, object]:
    """GOOD_ROW with the value at ``path`` (``"explanations.0.layer"``) replaced, or removed when
    ``value`` is ``...``."""
    row = json.loads(json.dumps(GOOD_ROW))
    *parents, last = path.split(".")
    place: object = row
    for key in parents:
        place = place[int(key)] if isinstance(place, list) else place[key]  # type: ignore[index]
    if value is ...:
        del place[int(last) if isinstance(place, list) else last]  # type: ignore[union-attr, arg-type]
    else:
        place[int(last) if isinstance(place, list) else last] = value  # type: ignore[index]
    return row


BAD_ROWS = [
    ({"foo": 1}, "no image path"),
    ({"image": "a.jpg", "foo": 1}, "no predictions"),
    (spoilt("predictions.0.class_index", ...), "predictions[0] has no class_index"),
    (spoilt("predictions.0.score", "high"), "predictions[0].score is 'high', not a finite number"),
    (spoilt("explanations.0.class_index", ...), "explanations[0] has no class_index"),
    (spoilt("explanations.0.method", ...), "explanations[0] has no method"),
    (spoilt("explanations.0.layer", None), "explanations[0] has no layer"),
    (spoilt("explanations", {}), "no explanations"),
    (spoilt("truth", {"label": "x"}), "truth has no class_index"),
    (spoilt("predictions.0", 3), "predictions[0] is not an object"),
    ({"image": "a.jpg", "error": 3}, "its error is not a text"),
]


def write_index(folder: Path, *rows: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "index.jsonl").write_text(text)
    return folder


@pytest.mark.parametrize(("row", "says"), BAD_ROWS)
def test_summary_of_rows_camlens_did_not_write_is_one_line(
    tmp_path: Path, row: object, says: str
) -> None:
    out = write_index(tmp_path / "run", GOOD_ROW, row)
    result = invoke("summary", out)
    assert_clean(result, bad=1)
    assert problems(result) == [
        f"camlens: {out / 'index.jsonl'}, line 2: not a camlens index row: {says}"
    ]


def test_summary_of_nan_scores_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    text = json.dumps(GOOD_ROW).replace('"score": 0.5}]', '"score": NaN}]', 1)
    (out / "index.jsonl").write_text(text + "\n")
    result = invoke("summary", out)
    assert_clean(result, bad=1)
    assert "predictions[0].score is nan, not a finite number" in problems(result)[0]
    assert "nan" not in result.stdout


@pytest.mark.parametrize(("row", "says"), BAD_ROWS[:3] + BAD_ROWS[4:7])
def test_the_gallery_lists_such_a_run_with_its_problem(
    tmp_path: Path, weights: Path, row: object, says: str
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from camlens.serve import ServeSettings, create_app

    runs = tmp_path / "runs"
    write_index(runs / "odd", GOOD_ROW, row)
    write_index(runs / "fine", GOOD_ROW)
    model = camlens.load_model("synthetic", weights=weights)
    with TestClient(create_app(model, ServeSettings(runs=runs))) as client:
        listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
        assert listed["fine"]["problem"] is None
        assert listed["odd"]["problem"] == (
            f"run 'odd': odd/index.jsonl, line 2: not a camlens index row: {says}"
        )
        for path in ("/api/runs/odd/images", "/api/runs/odd/summary", "/api/runs/odd/images/0"):
            answer = client.get(path)
            assert answer.status_code == 409, path
            assert answer.headers["content-type"] == "application/json", path
            assert answer.json()["detail"] == listed["odd"]["problem"]


# --- 11. localize twice into one --out -------------------------------------------------------------


def test_localize_twice_into_one_out_keeps_both_images(photos: list[str], syn: list[str]) -> None:
    for photo in [*photos, "cat.jpg"]:
        assert_clean(invoke("localize", photo, "--out", "l", *syn, "--top", "2"), bad=0)
    lines = [strict_json(line) for line in Path("l/boxes.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == ["cup.png", "cat.jpg"]  # cat's line replaced
    assert all(Path("l", line["picture"]).is_file() for line in lines)


# --- 15. camlens synthetic --size without bound ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--size", "60000"], "size must be 8 to 2048 pixels a side, not 60000x60000"),
        (["--size", "2049"], "size must be 8 to 2048 pixels a side"),
        (["--seed", "-1"], "seed must be a whole number of 0 or more, not -1"),
    ],
)
def test_synthetic_sizes_and_seeds_out_of_range_are_one_line(
    tmp_path: Path, options: list[str], says: str
) -> None:
    result = invoke("synthetic", tmp_path / "s", "--count", "1", *options)
    assert_clean(result, bad=1)
    assert says in problems(result)[0]
    assert not (tmp_path / "s" / "annotations.json").exists()


# --- 14 and options that cannot apply ---------------------------------------------------------------


def test_a_ray_address_where_nothing_listens_is_said_in_seconds(
    photos: list[str], syn: list[str]
) -> None:
    pytest.importorskip("ray")
    import socket
    import time

    with socket.socket() as probe:  # a port of this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = invoke("explain", *photos, "--out", "o", *syn, "--ray", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    assert_clean(result, bad=1)
    assert problems(result) == [
        f"camlens: cannot join the Ray cluster at 127.0.0.1:{port}: Connection refused"
    ]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--actors", "3"], "--actors is for --ray runs"),
        (["--out", "."], "every input is inside --out ."),
    ],
)
def test_options_that_cannot_apply_are_refused(
    photos: list[str], syn: list[str], options: list[str], says: str
) -> None:
    result = invoke("explain", *photos, *syn, *options)
    assert_clean(result, bad=1)
    assert says in problems(result)[0]
    assert not Path("index.jsonl").exists()


def test_a_symlink_loop_goes_to_ray_as_a_path(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from camlens.batch import Item
    from camlens.distributed import _batch_row

    os.symlink(tmp_path / "b", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b")
    row = _batch_row(0, [Item(tmp_path / "a.jpg", "a")])  # resolve() raised RuntimeError here
    assert row["paths"] == [os.path.realpath(tmp_path / "a.jpg")]


# --- camlens serve --port taken --------------------------------------------------------------------


def test_a_taken_port_is_said_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, syn: list[str]
) -> None:
    pytest.importorskip("uvicorn")
    import socket

    import camlens.cli.common

    def no_model(*args: object) -> object:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(camlens.cli.common, "model_from_options", no_model)
    monkeypatch.setattr("camlens.cli.serve.model_from_options", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", *syn, "--port", port)
    assert_clean(result, bad=1)
    assert problems(result) == [
        f"camlens: --port {port} on 127.0.0.1 cannot be used (Address already in use): "
        "choose another --port"
    ]
    result = invoke("serve", *syn, "--host", "no.such.host.invalid")
    assert_clean(result, bad=1)
    assert "--host no.such.host.invalid: not an address of this machine" in problems(result)[0]


# --- 16. inline answers bounded by bytes ------------------------------------------------------------


def test_inline_answers_are_bounded_by_bytes(tmp_path: Path, weights: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from camlens.serve import ServeSettings, create_app

    photo = cat(tmp_path / "cat.png", size=(300, 200)).read_bytes()
    model = camlens.load_model("synthetic", weights=weights)
    limit = 2**20  # 1 MB: 300x200 maps are 240 kB of .npy each, 320 kB in base64
    with TestClient(create_app(model, ServeSettings(max_inline_bytes=limit))) as client:

        def ask(top: int, inline: bool) -> object:
            files = {"image": ("cat.png", photo, "image/png")}
            form = {"top": str(top), "inline": str(inline).lower()}
            return client.post("/api/explain", files=files, data=form)

        answer = ask(2, True)
        assert answer.status_code == 200, answer.text
        assert answer.json()["explanations"][1]["map"].startswith("data:")
        refused = ask(4, True)
        assert refused.status_code == 413
        body = refused.json()
        assert body["parameter"] == "inline"
        assert (
            "inline=true would answer at least 1.22 MB for 4 maps of 300x200 pixels"
            in (body["detail"])
        )
        assert ask(4, False).status_code == 200  # the URLs alone: no limit


# --- the Python API names the argument at fault ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"method": 42}, "method must be a name, a Method or a list of them, not 42"),
        ({"layer": 123}, "layer must be a name, a module or a list of them, not 123"),
    ],
)
def test_explainer_arguments_of_the_wrong_type_are_named(
    weights: Path, options: dict[str, object], says: str
) -> None:
    model = camlens.load_model("synthetic", weights=weights)
    with pytest.raises(CamlensError) as caught:
        camlens.Explainer(model, **options)  # type: ignore[arg-type]
    assert str(caught.value) == says


def test_a_result_names_a_map_or_folder_that_is_not_there(photos: list[str], weights: Path) -> None:
    model = camlens.load_model("synthetic", weights=weights)
    result = camlens.Explainer(model).explain("cat.jpg")
    assert result.map_at_image(-1).shape == (64, 96)
    for bad in (1, -2, "0", True):
        with pytest.raises(CamlensError, match=r"is not one of this explanation's 1 maps \(0..0\)"):
            result.map_at_image(bad)  # type: ignore[arg-type]
    with pytest.raises(CamlensError, match=r"out_dir cat\.jpg is a file, not a folder"):
        result.save("cat.jpg")


# --- an unreadable folder among readable ones ------------------------------------------------------


def test_a_folder_that_cannot_be_listed_is_one_bad_input(
    photos: list[str], syn: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cat(Path("d", "a.jpg"))
    cup(Path("d", "locked", "b.png"))
    listing = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(str(path)).name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return listing(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)  # as root, chmod 000 would not stop a read
    result = invoke("explain", "d", "cat.jpg", "--out", "o", *syn)
    assert_clean(result, bad=1)
    assert problems(result) == [
        "camlens: d/locked: is a folder that cannot be read (permission denied)"
    ]
    assert sorted(p.name for p in Path("o").rglob("*.json")) == ["a.json", "cat.json"]


# --- 7 and Keras files: a JSON beside the model, a damaged file -------------------------------------


@pytest.fixture(scope="module")
def keras_flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras model whose Flatten -> Dense head takes 24x24 inputs only, in a .keras."""
    from camlens.models.keras import import_keras

    try:
        keras = import_keras()
    except CamlensError as exc:
        pytest.skip(str(exc))
    keras.utils.set_random_seed(2)
    inputs = keras.Input((24, 24, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Flatten()(h)
    path = tmp_path_factory.mktemp("keras") / "flat.keras"
    keras.Model(inputs, keras.layers.Dense(3, name="out")(h)).save(path)
    return path


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras's
def test_a_keras_json_input_size_the_model_cannot_take_is_one_line(
    photos: list[str], keras_flat: Path
) -> None:
    Path("flat.keras").write_bytes(keras_flat.read_bytes())
    Path("flat.keras.json").write_text(json.dumps({"mode": "tf", "input_size": [32, 32]}))
    result = invoke("explain", "cat.jpg", "--model", "flat.keras", "--out", "o")
    assert_clean(result, bad=1)
    assert problems(result)[0].startswith(
        "camlens: flat.keras.json: input_size 32x32: the model cannot take it ("
    )
    Path("flat.keras.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    with pytest.warns(UserWarning) as caught:
        model = camlens.load_model("flat.keras")
    assert model.labels == ("a", "b", "c")
    said = " ".join(str(w.message) for w in caught)
    assert "no flat.keras.json beside it" not in said
    assert 'add to flat.keras.json its "mode"' in said


@pytest.mark.parametrize("data", [b"PK\x03\x04damaged", b"not a model at all"])
def test_a_damaged_keras_file_is_not_file_not_found(tmp_path: Path, data: bytes) -> None:
    pytest.importorskip("keras")
    path = tmp_path / "m.keras"
    path.write_bytes(data)
    with pytest.raises(CamlensError) as caught:
        camlens.load_model(path)
    assert "cannot load the Keras model: not a file Keras can read" in str(caught.value)
    assert "File not found" not in str(caught.value)


# --- stalled uploads --------------------------------------------------------------------------------


def test_a_stalled_upload_is_a_408_in_its_time() -> None:
    pytest.importorskip("starlette")
    import asyncio
    import time

    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from camlens.serve.middleware import BodyLimit

    async def app(scope: dict, receive: object, send: object) -> None:
        body = await Request(scope, receive).body()  # type: ignore[arg-type]
        await JSONResponse({"bytes": len(body)})(scope, receive, send)  # type: ignore[arg-type]

    async def call(chunks: list[bytes], stall: float) -> list[dict]:
        sent: list[dict] = []
        queue = list(chunks)

        async def receive() -> dict:
            if queue:
                return {"type": "http.request", "body": queue.pop(0), "more_body": True}
            await asyncio.sleep(3600)  # the client stops sending
            raise AssertionError("not reached")

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await BodyLimit(app, limit=10**6, message="too big", stall=stall)(scope, receive, send)
        return sent

    started = time.monotonic()
    sent = asyncio.run(call([b"x" * 1000, b"y" * 1000], stall=0.3))
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408
    body = json.loads(sent[1]["body"])
    assert body["detail"] == "the upload stalled: no data for 0.3 s"


def test_a_long_form_field_is_a_400_that_gives_the_limit(tmp_path: Path, weights: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from camlens.serve import create_app

    photo = cat(tmp_path / "cat.png").read_bytes()
    model = camlens.load_model("synthetic", weights=weights)
    with TestClient(create_app(model)) as client:
        files = {"image": ("cat.png", photo, "image/png")}
        answer = client.post("/api/explain", files=files, data={"methods": "x" * 100_000})
    assert answer.status_code == 400
    assert answer.json() == {
        "detail": "form field 'methods' is over 4 kB, the limit of every field but image, like "
        "and mask: give each value in a field of its own (-F methods=gradcam -F methods=cam)",
        "parameter": "methods",
    }


def test_train_out_that_is_a_folder_is_refused(photos: list[str]) -> None:
    cat(Path("data", "cat", "0.jpg"))
    cup(Path("data", "cup", "0.png"))
    Path("models").mkdir()
    result = invoke(
        "train", "data", "--epochs", "1", "--views", "1", "--val", "0", "--out", "models"
    )
    assert_clean(result, bad=1)
    assert "--out models is a folder: give the checkpoint's file name" in problems(result)[0]
    assert not Path("models.camlens").exists()


# --- a PNG whose pixel data stops early ------------------------------------------------------------

ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def png_file(
    path: Path, size: tuple[int, int], rows: int | None = None, interlace: int = 0
) -> Path:
    """An 8-bit RGB PNG written byte by byte: every pixel 200 (filter byte 0), its zlib stream
    ending cleanly after ``rows`` rows of pixel data (of the first pass when interlaced), all of
    them when None."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    width, height = size
    passes = [((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in ADAM7]
    lines = [w for w, h in (passes if interlace else [size]) if w for _ in range(h)]
    raw = b"".join(b"\0" + bytes([200]) * (3 * w) for w in lines[:rows])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def test_a_png_whose_data_stops_early_is_one_bad_input(photos: list[str], syn: list[str]) -> None:
    png_file(Path("short.png"), (900, 700), rows=4)
    result = invoke("explain", "short.png", "cat.jpg", "--out", "o", *syn)
    assert_clean(result, bad=1)
    assert problems(result) == [
        "camlens: short.png: is truncated: its data holds 4 of its 700 rows of pixels"
    ]
    assert sorted(p.name for p in Path("o").glob("*.json")) == ["cat.json"]


def test_the_issues_png_and_an_interlaced_one_are_refused(tmp_path: Path) -> None:
    # 7100x7100 pixels from a file of 177 bytes: Pillow decodes it as black, without a word
    short = png_file(tmp_path / "short.png", (7100, 7100), rows=4)
    with pytest.raises(
        ImageError, match=r"short\.png: is truncated: its data holds 4 of its 7100 "
    ):
        camlens.load_image(short)
    interlaced = png_file(tmp_path / "interlaced.png", (40, 30), rows=3, interlace=1)
    with pytest.raises(ImageError, match=r"is truncated: its data holds \d+% of the pixel data"):
        camlens.load_image(interlaced.read_bytes())


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_whole_pngs_with_a_black_bottom_row_are_read(tmp_path: Path, mode: str) -> None:
    """A black last row (what a short file leaves) in a whole file is only a black row."""
    pixels = np.full((30, 40), 7, np.uint8)
    pixels[-1] = 0
    Image.fromarray(pixels).convert(mode).save(tmp_path / "black.png")
    assert np.asarray(camlens.load_image(tmp_path / "black.png"))[-1].max() == 0


def test_whole_pngs_written_by_hand_are_read(tmp_path: Path) -> None:
    for interlace in (0, 1):  # Pillow writes no interlaced PNG
        whole = png_file(tmp_path / f"whole{interlace}.png", (40, 31), interlace=interlace)
        assert (np.asarray(camlens.load_image(whole)) == 200).all()


# --- train --classes-from names on a folder-per-class tree ------------------------------------------


def test_classes_from_names_on_folders_of_classes_are_refused_or_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camlens.train import scan_folder

    monkeypatch.chdir(tmp_path)
    for kind in ("apple", "pear", "plum"):
        for i in range(6):
            cat(tmp_path / "numbered" / kind / f"{i}.jpg", (32, 32))
            cat(tmp_path / "named" / f"batch{i % 2}" / f"{kind}.{i}.jpg", (32, 32))
    result = invoke("train", "numbered", "--classes-from", "names", "--epochs", "1")
    assert_clean(result, bad=1)
    assert problems(result) == [
        "camlens: numbered: the file names are numbers ('0.jpg'), not classes, and the images lie "
        "in 3 subfolders that look like classes (apple, pear, plum): --classes-from folders reads "
        "the classes from them"
    ]
    assert not list(tmp_path.glob("*.camlens"))
    assert scan_folder("numbered").classes == ("apple", "pear", "plum")
    with pytest.warns(UserWarning, match=r"\('apple' in batch0, batch1\), and the images lie in 2"):
        named = scan_folder("named", classes_from="names")  # maybe right: said, not refused
    assert named.classes == ("apple", "pear", "plum")
    for kind in ("apple", "pear"):  # classes from names that follow the folders: no word
        for i in range(3):
            cat(tmp_path / "follow" / kind / f"{kind}.{i}.jpg", (32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_folder("follow", classes_from="names").classes == ("apple", "pear")


# --- --top 200 --format dataset: one full-size map at a time ----------------------------------------


def test_a_run_writes_each_full_size_map_before_making_the_next(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full-size maps alive at once while an image's outputs are written, counted as each is
    made (map_at_image) and let go (a finalizer): one, whatever the number of maps; the report
    says of each what it said when they were all kept."""
    from camlens.config import OutputConfig
    from camlens.explanation import Explanation

    model = camlens.load_model("synthetic", weights=weights)
    photo = cat(tmp_path / "cat.jpg", (300, 200))
    result = camlens.Explainer(model, method=["gradcam", "gradcampp", "cam"], top=4).explain(photo)
    assert len(result.maps) == 12
    expected = result.to_dict()["explanations"]  # each map made and dropped here, as before
    made = Explanation.map_at_image
    alive: set[int] = set()
    counted_ids: list[int] = []
    most = 0

    def counted(self: Explanation, i: int = 0) -> object:
        nonlocal most
        full = made(self, i)
        counted_ids.append(id(full))
        alive.add(id(full))
        most = max(most, len(alive))
        weakref.finalize(full, alive.discard, id(full))
        return full

    monkeypatch.setattr(Explanation, "map_at_image", counted)
    (tmp_path / "tmp").mkdir()
    for form in ("dataset", "files"):
        row = outputs.write_image(
            result, f"cat-{form}", tmp_path / "out", OutputConfig(format=form), tmp_path / "tmp"
        )
        assert most == 1, (form, most)  # 12 when every map was kept for the report
        for entry, before in zip(row["explanations"], expected, strict=True):
            assert (entry["peak"], entry["flat"]) == (before["peak"], before["flat"])
    calls = len(counted_ids)
    saved = json.loads(result.save(tmp_path / "saved").read_text())  # the Python API's writer
    assert most == 1 and len(counted_ids) - calls == 12  # each map made once (twice before)
    assert [(e["peak"], e["flat"]) for e in saved["explanations"]] == [
        (e["peak"], e["flat"]) for e in expected
    ]


# --- --ray local from Python code that imported Ray first -------------------------------------------


def test_a_local_ray_after_ray_was_imported_the_network_way_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, on import; imported without it, Ray puts
    the host's address for 127.0.0.1: a local Ray is refused before any process starts (the
    loopback test itself is tests/test_distributed.py's, with a real run)."""
    ray = pytest.importorskip("ray")
    from camlens.localray import LocalRay

    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, "x")  # set back after the test
        monkeypatch.delenv(name)
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", True)
    local = LocalRay()
    with pytest.raises(CamlensError, match="a local Ray needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        local.start(ray)
    assert local.watchdog is None and local.temp is None
