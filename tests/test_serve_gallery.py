"""The run gallery's API (``camlens serve --runs``) through FastAPI's test client, on small runs
made by ``camlens explain`` in both formats (``small_runs``), and on hand-written indexes for the
cases a real run does not easily give (flat maps, torn and broken indexes, odd folders)."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.runs import read_index, summarize

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from camlens.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def client(default_model: camlens.Model, small_runs: Path) -> Iterator[TestClient]:
    with TestClient(create_app(default_model, ServeSettings(runs=small_runs))) as c:
        yield c


def images(client: TestClient, run: str, **params: Any) -> Any:
    response = client.get(f"/api/runs/{run}/images", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def top_score(image: dict[str, Any]) -> float:
    return float(image["prediction"]["score"])


# --- the runs ------------------------------------------------------------------------------------


def test_the_runs_found(client: TestClient, small_runs: Path) -> None:
    assert client.get("/api/server").json()["runs"] is True
    body = client.get("/api/runs").json()
    assert body["folder"] == "runs"
    by_name = {r["name"]: r for r in body["runs"]}
    assert list(by_name) == ["dataset", "files"]
    files, dataset = by_name["files"], by_name["dataset"]
    assert (files["images"], files["explained"], files["errors"], files["labelled"]) == (7, 6, 1, 6)
    assert (dataset["images"], dataset["explained"], dataset["errors"]) == (7, 6, 1)
    assert dataset["labelled"] == 0  # one folder of photos: no class from folder names
    assert files["model"] == dataset["model"] == "efficientnet_lite0"
    assert files["methods"] == ["gradcam", "cam"] and dataset["methods"] == ["gradcam"]
    assert files["layers"] == dataset["layers"] == ["bn2"]
    assert (files["format"], dataset["format"]) == ("files", "dataset")
    assert files["url"] == "/runs/files/" and files["problem"] is None


def test_a_page_has_what_the_index_has(client: TestClient, small_runs: Path) -> None:
    rows = read_index(small_runs / "files")
    body = images(client, "files", limit=500)
    assert body["total"] == 7 and len(body["images"]) == 7
    assert (body["sort"], body["order"], body["status"]) == ("score", "desc", "all")
    for image in body["images"]:
        row = rows[image["id"]]
        assert image["image"] == row["image"]
        if row.get("error"):
            assert (
                image["error"]
                == row["error"]
                == "val/espresso/broken.jpg: is not an image Pillow can read"
            )
            assert image["maps"] == [] and image["prediction"] is None and image["focus"] is None
            continue
        assert image["error"] is None and image["size"] == row["size"]
        assert (
            image["predictions"] == row["predictions"]
            and image["prediction"] == row["predictions"][0]
        )
        assert image["truth"] == row["truth"]
        assert image["report"] == f"/runs/files/{row['report']}"
        assert len(image["maps"]) == len(row["explanations"]) == 4  # 2 classes x 2 methods
        for shown, entry in zip(image["maps"], row["explanations"], strict=True):
            for key in ("class_index", "label", "score", "method", "layer", "flat", "peak", "box"):
                assert shown[key] == entry[key], key
            assert shown["spread"] == entry["spread"] and shown["off_center"] == entry["off_center"]
            assert shown["overlay"] == f"/runs/files/{entry['overlay']}"
            assert shown["map"] == f"/runs/files/{entry['map']}"
            assert "layer_map" not in shown
        assert image["focus"] == 0


def test_overlay_and_map_urls_serve_the_run_files(client: TestClient, small_runs: Path) -> None:
    chelsea = next(
        i for i in images(client, "files")["images"] if i["image"].endswith("/chelsea.jpg")
    )
    overlay = client.get(chelsea["maps"][0]["overlay"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    path = small_runs / "files" / "val" / "Egyptian_cat" / "chelsea.gradcam.bn2.285.png"
    assert (
        chelsea["maps"][0]["overlay"] == "/runs/files/val/Egyptian_cat/chelsea.gradcam.bn2.285.png"
    )
    assert overlay.content == path.read_bytes()
    assert Image.open(io.BytesIO(overlay.content)).size == (451, 300)
    saved = np.load(io.BytesIO(client.get(chelsea["maps"][0]["map"]).content))
    assert saved.shape == (300, 451) and saved.dtype == np.float32
    assert client.get(chelsea["report"]).json()["image"] == "val/Egyptian_cat/chelsea.jpg"

    coffee = next(
        i for i in images(client, "dataset")["images"] if i["image"] == "photos/coffee.jpg"
    )
    assert [m["label"] for m in coffee["maps"]] == ["espresso", "cup"]
    jpeg = client.get(coffee["maps"][0]["overlay"])
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (600, 400)
    assert coffee["maps"][0]["map"] is None  # the dataset format keeps no .npy
    assert coffee["truth"] is None


# --- sorting, filtering, paging ------------------------------------------------------------------


def test_sorted_by_score_spread_off_center_and_name(client: TestClient) -> None:
    by_score = images(client, "files")["images"]
    scores = [top_score(i) for i in by_score[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert by_score[0]["image"] == "val/espresso/coffee.jpg"  # 0.90, the most confident
    assert by_score[-1]["error"] is not None  # the failed image comes last in every order
    ascending = images(client, "files", order="asc")["images"]
    assert [i["id"] for i in ascending[:-1]] == [i["id"] for i in reversed(by_score[:-1])]
    assert ascending[-1]["error"] is not None

    for key in ("spread", "off_center"):
        page = images(client, "files", sort=key)
        assert page["order"] == "desc"
        values = [i["maps"][i["focus"]][key] for i in page["images"][:-1]]
        assert values == sorted(values, reverse=True) and len(set(values)) > 3
        low = images(client, "files", sort=key, order="asc")["images"]
        assert [i["maps"][i["focus"]][key] for i in low[:-1]] == sorted(values)

    names = images(client, "files", sort="name")
    assert names["order"] == "asc"
    listed = [i["image"] for i in names["images"]]
    assert listed == sorted(listed) and "val/espresso/broken.jpg" in listed
    assert [
        i["image"] for i in images(client, "files", sort="name", order="desc")["images"]
    ] == listed[::-1]


def test_filtered_by_class_from_folder_names(client: TestClient) -> None:
    cats = images(client, "files", **{"class": "Egyptian cat"})
    assert cats["class_index"] == 285 and cats["total"] == 2
    assert {i["image"] for i in cats["images"]} == {
        "val/Egyptian_cat/chelsea.jpg",
        "val/Egyptian_cat/chelsea_face.jpg",
    }
    assert images(client, "files", **{"class": "285"})["images"] == cats["images"]
    assert images(client, "files", **{"class": "egyptian CAT"})["total"] == 2
    # as camlens explain --class reads names: underscores for spaces (a folder's own name)
    assert images(client, "files", **{"class": "Egyptian_cat"})["class_index"] == 285
    # the true class, not the top-1: the rocket is filed as a missile, predicted an oil rig
    missile = images(client, "files", **{"class": "missile"})
    assert [i["image"] for i in missile["images"]] == ["val/missile/rocket.jpg"]
    rocket = missile["images"][0]
    assert rocket["prediction"]["label"] == "drilling platform, offshore rig"
    # the map shown (and sorted by) is the one of the class filtered by: the second class's
    assert rocket["focus"] == 2 and rocket["maps"][2]["label"] == "missile"
    for index in ("999", "99999"):  # an index the run has no class of: a 422, as a name
        refused = client.get("/api/runs/files/images", params={"class": index})
        assert refused.status_code == 422 and refused.json()["parameter"] == "class"
        assert refused.json()["detail"].startswith(
            f"class {index} is not a class of run 'files' (its classes: "
        )
    # a word of a label is suggested before a spelling close to it
    suggested = client.get("/api/runs/files/images", params={"class": "cat"}).json()
    assert suggested["detail"].endswith("; did you mean 'Egyptian cat'"), suggested
    assert images(client, "files", **{"class": " "})["total"] == 7  # blank: no filter


def test_filtered_by_top1_class_without_labels(client: TestClient) -> None:
    rig = images(client, "dataset", **{"class": "drilling platform, offshore rig"})
    assert [i["image"] for i in rig["images"]] == ["photos/rocket.jpg"]
    cats = images(client, "dataset", **{"class": "Egyptian cat"})
    assert cats["total"] == 2 and [i["image"] for i in cats["images"]] == [
        "photos/chelsea.jpg",  # 0.80
        "photos/chelsea_face.jpg",  # 0.40
    ]
    assert all(i["prediction"]["label"] == "Egyptian cat" for i in cats["images"])


def test_failed_and_explained_images(client: TestClient) -> None:
    failed = images(client, "dataset", status="failed")
    assert failed["total"] == 1
    assert failed["images"][0]["error"] == "photos/broken.jpg: is not an image Pillow can read"
    explained = images(client, "dataset", status="explained")
    assert explained["total"] == 6 and all(i["error"] is None for i in explained["images"])


def test_mistakes_only_and_the_contrast_of_a_mistake(
    client: TestClient, default_model: camlens.Model, mistakes_runs: Path
) -> None:
    """status=wrong: the images whose top-1 is not their true class; in a --versus true run, a
    mistake's maps are its top-1's and its top-1 versus the true class, with what they explain."""
    wrong = images(client, "files", status="wrong")
    assert (wrong["status"], wrong["total"]) == ("wrong", 1)
    assert [i["image"] for i in wrong["images"]] == ["val/missile/rocket.jpg"]
    both = images(client, "files", status="wrong", **{"class": "missile"})
    assert [i["id"] for i in both["images"]] == [i["id"] for i in wrong["images"]]
    assert images(client, "files", status="wrong", **{"class": "espresso"})["total"] == 0
    # without true classes, no image can be a mistake: said, not an empty list
    refused = client.get("/api/runs/dataset/images", params={"status": "wrong"})
    assert refused.status_code == 422
    assert refused.json() == {
        "detail": "status=wrong shows the images whose top-1 is not their true class; no image "
        "of run 'dataset' has one (their folders name no class)",
        "parameter": "status",
    }

    with TestClient(create_app(default_model, ServeSettings(runs=mistakes_runs))) as c:
        every = c.get("/api/runs/mistakes/images", params={"limit": 500}).json()
        assert every["total"] == 7
        counts = {i["image"]: len(i["maps"]) for i in every["images"]}
        assert counts.pop("val/missile/rocket.jpg") == 2  # the top-1, and it versus missile
        assert set(counts.values()) == {0, 1}  # the others: their top-1 (the failed one: none)
        page = c.get("/api/runs/mistakes/images", params={"status": "wrong"}).json()
        (rocket,) = page["images"]
        assert rocket["truth"] == {"class_index": 657, "label": "missile"}
        top1, versus = rocket["maps"]
        assert top1["class_index"] == 540 and top1["target"] is None
        assert top1["explained"] is None and top1["value"] is None
        assert versus["target"] == {"kind": "contrast", "classes": [540, 657]}
        assert versus["explained"] == "drilling platform, offshore rig versus missile"
        report = c.get(rocket["report"]).json()["explanations"][1]
        assert versus["value"] == report["value"] and versus["value"] > 0
        assert versus["overlay"] == "/runs/mistakes/val/missile/rocket.gradcam.bn2.540-vs-657.png"
        assert c.get(versus["overlay"]).status_code == 200
        assert rocket["focus"] == 0  # the top-1's map is the one shown in the grid


def test_pages_cover_the_list_once(client: TestClient) -> None:
    whole = [i["id"] for i in images(client, "files", sort="spread")["images"]]
    pages = []
    for offset in range(0, 8, 3):
        page = images(client, "files", sort="spread", offset=offset, limit=3)
        assert page["total"] == 7 and (page["offset"], page["limit"]) == (offset, 3)
        pages += [i["id"] for i in page["images"]]
    assert pages == whole and sorted(pages) == list(range(7))
    assert images(client, "files", offset=50)["images"] == []


def test_one_image_by_id(client: TestClient) -> None:
    listed = images(client, "files", **{"class": "missile"})["images"][0]
    alone = client.get(f"/api/runs/files/images/{listed['id']}", params={"class": "missile"})
    assert alone.json() == listed
    assert client.get(f"/api/runs/files/images/{listed['id']}").json()["focus"] == 0
    missing = client.get("/api/runs/files/images/7")
    assert (
        missing.status_code == 404
        and missing.json()["detail"] == "run 'files' has images 0..6, not 7"
    )


def test_summary_is_camlens_summary(client: TestClient, small_runs: Path) -> None:
    expected = summarize(read_index(small_runs / "files"), top=10)
    body = client.get("/api/runs/files/summary").json()
    assert body["run"] == "files" and body["by"] == "truth"
    assert (body["images"], body["explained"], body["errors"]) == (7, 6, 1)
    assert body["labelled"] == 6 and body["top1"] == pytest.approx(5 / 6) == expected.top1
    assert [(c["label"], c["images"], c["top1"]) for c in body["classes"]] == [
        (c.label, c.images, c.top1) for c in expected.classes
    ]
    assert body["classes"][0]["label"] == "Egyptian cat" and body["classes"][0]["images"] == 2
    mistake = body["confident_mistakes"][0]
    assert mistake["image"] == "val/missile/rocket.jpg"
    assert mistake["overlay"] == "/runs/files/val/missile/rocket.gradcam.bn2.540.png"
    assert client.get(mistake["overlay"]).status_code == 200
    assert [n["image"] for n in body["spread"]] == [n.image for n in expected.spread]
    unlabelled = client.get("/api/runs/dataset/summary").json()
    assert unlabelled["by"] == "predicted" and unlabelled["top1"] is None


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter", "detail"),
    [
        (
            {"sort": "size"},
            "sort",
            "sort: Input should be 'score', 'spread', 'off_center', 'energy_in_box' or 'name'",
        ),
        ({"order": "up"}, "order", "order: Input should be 'asc' or 'desc'"),
        (
            {"status": "broken"},
            "status",
            "status: Input should be 'all', 'explained', 'failed' or 'wrong'",
        ),
        ({"limit": "0"}, "limit", "limit: Input should be greater than or equal to 1"),
        ({"limit": "501"}, "limit", "limit: Input should be less than or equal to 500"),
        ({"offset": "-1"}, "offset", "offset: Input should be greater than or equal to 0"),
        (
            {"class": "Egyptain cat"},
            "class",
            "class 'Egyptain cat' is not a class of run 'files'; did you mean 'Egyptian cat'",
        ),
        ({"class": "-3"}, "class", "class must be a class index (0 or more) or name, not '-3'"),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    client: TestClient, params: dict[str, str], parameter: str, detail: str
) -> None:
    response = client.get("/api/runs/files/images", params=params)
    assert response.status_code == 422
    assert response.json() == {"detail": detail, "parameter": parameter}


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/nowhere/images",
        "/api/runs/nowhere/summary",
        "/api/runs/nowhere/images/0",
        "/api/runs/..%2Ffiles/images",
        "/api/runs/%2E%2E/summary",
        "/api/runs/files%2F..%2Fdataset/images",
        "/api/runs/.camlens/images",
    ],
)
def test_unknown_runs_are_a_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json()) == {"detail", "parameter"}


def test_without_runs_the_gallery_is_a_404(default_model: camlens.Model) -> None:
    with TestClient(create_app(default_model)) as c:
        assert c.get("/api/server").json()["runs"] is False
        for path in ("/api/runs", "/api/runs/files/images", "/api/runs/files/summary"):
            response = c.get(path)
            assert response.status_code == 404
            assert response.json() == {
                "detail": "this server shows no runs: start it with camlens serve --runs FOLDER",
                "parameter": None,
            }


# --- the folder: one run, runs inside, both; odd indexes -----------------------------------------


def test_a_run_folder_itself(default_model: camlens.Model, small_runs: Path) -> None:
    with TestClient(create_app(default_model, ServeSettings(runs=small_runs / "dataset"))) as c:
        runs = c.get("/api/runs").json()["runs"]
        assert [(r["name"], r["url"]) for r in runs] == [("dataset", "/runs/")]
        page = c.get("/api/runs/dataset/images", params={"sort": "name"}).json()
        first = page["images"][0]
        assert first["image"] == "photos/broken.jpg" and first["error"]
        chelsea = page["images"][1]
        assert chelsea["maps"][0]["overlay"] == "/runs/photos/chelsea.gradcam.bn2.285.jpg"
        assert c.get(chelsea["maps"][0]["overlay"]).status_code == 200


def row(
    name: str, score: float, spread: float | None, *, flat: bool = False, label: str = "cat"
) -> str:
    entry = {
        "class_index": 1,
        "label": label,
        "score": score,
        "method": "gradcam",
        "layer": "bn2",
        "flat": flat,
        "peak": [0, 0],
        "box": None,
        "spread": spread,
        "off_center": None if flat else 0.1,
        "overlay": f"{name}.gradcam.bn2.1.jpg",
        "map": None,
        "layer_map": [[0.0]],
    }
    return json.dumps(
        {
            "image": f"{name}.jpg",
            "stem": name,
            "report": f"{name}.json",
            "size": [4, 4],
            "model": "tiny",
            "predictions": [{"class_index": 1, "label": label, "score": score}],
            "explanations": [entry],
        }
    )


@pytest.fixture
def odd_runs(tmp_path: Path) -> Path:
    """``top`` is a run (no record) and holds runs: ``top`` (its name again), ``b``, a hidden
    one, a link to a run outside, a folder without an index, and ``torn`` (a broken index)."""
    root = tmp_path / "top"
    outside = tmp_path / "elsewhere"
    for folder in (root / "top", root / "b", root / ".hidden", outside, root / "nothing"):
        folder.mkdir(parents=True)
    lines = [
        row("a", 0.5, 0.3),
        row("b", 0.9, 0.0, flat=True),
        row("c", 0.5, 0.6),
        row("d", 0.2, 0.3),
        '{"image": "e.jpg", "stem": "e", "error": "e.jpg: is not an image Pillow can read"}',
    ]
    for folder in (root, root / "top", root / "b", root / ".hidden", outside):
        (folder / "index.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:20])  # torn
    os.symlink(outside, root / "link")
    (root / "torn").mkdir()
    (root / "torn" / "index.jsonl").write_text("not json\n")
    return root


def test_odd_folders_and_indexes(default_model: camlens.Model, odd_runs: Path) -> None:
    with TestClient(create_app(default_model, ServeSettings(runs=odd_runs))) as c:
        runs = c.get("/api/runs").json()["runs"]
        assert [r["name"] for r in runs] == ["top (top)", "b", "top", "torn"]
        assert [r["url"] for r in runs] == ["/runs/", "/runs/b/", "/runs/top/", "/runs/torn/"]
        first = runs[0]
        assert (first["images"], first["errors"], first["model"], first["format"]) == (
            5,
            1,
            "tiny",
            None,
        )
        assert first["methods"] == ["gradcam"]  # from the rows: there is no record
        assert runs[3]["problem"] == "run 'torn': torn/index.jsonl, line 1: not a camlens index row"
        broken = c.get("/api/runs/torn/images")
        assert broken.status_code == 409 and broken.json()["detail"] == runs[3]["problem"]
        for hidden in ("link", ".hidden", "nothing"):
            assert c.get(f"/api/runs/{hidden}/images").status_code == 404

        # the torn last line is no image; by spread, the flat map and the failed image come last
        page = c.get("/api/runs/top (top)/images", params={"sort": "spread"}).json()
        assert [i["image"] for i in page["images"]] == ["c.jpg", "a.jpg", "d.jpg", "b.jpg", "e.jpg"]
        low = c.get("/api/runs/b/images", params={"sort": "spread", "order": "asc"}).json()
        assert [i["image"] for i in low["images"]] == ["a.jpg", "d.jpg", "c.jpg", "b.jpg", "e.jpg"]
        # by score: a flat map still has its class's score; ties by name
        scores = c.get("/api/runs/b/images").json()
        assert [i["image"] for i in scores["images"]] == [
            "b.jpg",
            "a.jpg",
            "c.jpg",
            "d.jpg",
            "e.jpg",
        ]
        assert (
            c.get("/api/runs/b/images", params={"sort": "off_center"}).json()["images"][-2]["image"]
            == "b.jpg"
        )

        # a run that grows is read again
        index = odd_runs / "b" / "index.jsonl"
        text = index.read_text()
        index.write_text(text[: text.rindex("\n") + 1] + row("f", 0.95, 0.1) + "\n")
        again = c.get("/api/runs/b/images").json()
        assert again["total"] == 6 and again["images"][0]["image"] == "f.jpg"
        shutil.rmtree(odd_runs / "b")
        assert c.get("/api/runs/b/images").status_code == 404
