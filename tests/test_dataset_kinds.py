"""Dataset runs (``camlens explain DIR --format dataset``) of the other kinds of model: a
segmentation model (LR-ASPP MobileNetV3) and a detector (Faster R-CNN MobileNetV3-FPN), both with
seeded random weights saved to a local file and given by spec, as a user gives them. A run writes
each image's segmentation or detections and a map per class or detection; a run stopped half-way
(or killed, its last index line torn) and resumed writes the bytes of one uninterrupted run;
``camlens summary`` reads the index of both."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_runs import tree
from typer.testing import CliRunner

import camlens
from camlens.batch import explain_files
from camlens.cli import app
from camlens.config import OutputConfig
from camlens.maps import upsample
from camlens.runs import INDEX, read_index, summarize

runner = CliRunner()

RAY = importlib.util.find_spec("ray") is not None
if RAY:  # the one-machine Ray cluster on 127.0.0.1 of the Ray tests (fixture ``ray_cluster``)
    from test_distributed import cluster as ray_cluster  # noqa: F401
needs_ray = pytest.mark.skipif(not RAY, reason="Ray is not installed")
BROWSER = importlib.util.find_spec("playwright") is not None
if BROWSER:  # a real Chromium, as the gallery's browser tests drive it (fixture ``page``)
    from test_serve_browser import CHROMIUM, Shots, page  # noqa: F401
needs_browser = pytest.mark.skipif(
    not BROWSER or CHROMIUM is None, reason="no playwright or no chromium on this machine"
)

SEG_SPEC = "torchvision:lraspp_mobilenet_v3_large"
SEG_ARGS = ["--input-size", "64x64", "--top", "2", "--batch-size", "2", "--format", "dataset"]
DET_SPEC = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # the options of SEG_ARGS
    "segmentation": (SEG_SPEC, "seg.pth", {"input_size": (64, 64), "top": 2, "batch_size": 2}),
    # every detection the detector keeps (its own threshold is 0.05), the 3 best explained
    "detection": (
        DET_SPEC,
        "det.pth",
        {"input_size": (128, 128), "min_score": 0.0, "detections": 3, "batch_size": 2},
    ),
}
IMAGES = ["astronaut", "broken", "cat", "coffee", "motorcycle", "rocket"]


def _photos(folder: Path) -> list[Path]:
    """Five small photos (64x48, 48x64 and 56x56) of skimage's samples, in ``folder``."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "cat": (data.chelsea(), (64, 48)),
        "coffee": (data.coffee(), (64, 48)),
        "astronaut": (data.astronaut(), (56, 56)),
        "rocket": (data.rocket(), (48, 64)),
        "motorcycle": (data.stereo_motorcycle()[0], (64, 48)),
    }
    paths = []
    for name, (array, size) in arrays.items():
        path = folder / f"{name}.png"
        Image.fromarray(np.asarray(array)).convert("RGB").resize(size).save(path)
        paths.append(path)
    return sorted(paths)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``imgs/`` (five photos, one file that is no photo), ``seg.pth`` and ``det.pth``.

    ``seg.pth``: LR-ASPP's seeded random weights with its classifiers' biases zeroed (with them,
    a random LR-ASPP gives one class everywhere, whatever the photo; without them, 5 to 10
    classes per photo). ``det.pth``: Faster R-CNN MobileNetV3-FPN's seeded random weights, its
    backbone's batch-norm statistics those of the five photos (with the initial ones its
    activations fade to 1e-9 by the last stage, and every box gets the same scores) and its
    class logits' weights times 10: then astronaut, coffee and motorcycle have 100, 61 and 7
    detections (scores 0.06 to 0.41), cat and rocket none above the detector's own 0.05."""
    import torchvision

    root = tmp_path_factory.mktemp("kinds")
    photos = _photos(root / "imgs")
    (root / "imgs" / "broken.png").write_bytes(b"not a photo")
    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None
    )
    with torch.no_grad():
        net.classifier.low_classifier.bias.zero_()
        net.classifier.high_classifier.bias.zero_()
    torch.save(net.state_dict(), root / "seg.pth")
    torch.manual_seed(0)
    detector = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None
    )
    x = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(p).resize((128, 128)))).permute(2, 0, 1) / 255
            for p in photos
        ]
    )
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for module in detector.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain mean over the batch
    detector.eval()
    detector.backbone.train()
    with torch.no_grad():
        detector.backbone((x - mean) / std)  # normalized as the detector's transform does
        detector.roi_heads.box_predictor.cls_score.weight.mul_(10)
    torch.save(detector.eval().state_dict(), root / "det.pth")
    return root


@pytest.fixture
def here(base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(base)  # the index keeps the paths as given: short ones
    return base


def _explain(args: list[str]) -> Any:
    result = runner.invoke(app, ["explain", *args])
    return result


def _explainer(kind: str) -> camlens.Explainer:
    """The Explainer of :data:`KINDS` ``[kind]``, in the current folder."""
    spec, weights, options = KINDS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights; images with no detection
        return camlens.Explainer(camlens.load_model(spec, weights=weights), **options)


def _run(kind: str, out: str, **kwargs: Any) -> list[Any]:
    """A run of ``imgs/*.png`` into ``out`` (dataset format), in the current folder."""
    files = sorted(Path("imgs").glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(
            explain_files(
                files, _explainer(kind), Path(out), OutputConfig(format="dataset"), **kwargs
            )
        )


# --- segmentation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_whole(base: Path) -> Path:
    """One uninterrupted run of the command line over ``imgs`` (top 2, dataset format)."""
    import os

    here = os.getcwd()
    os.chdir(base)
    try:
        result = _explain(
            ["imgs", "--model", SEG_SPEC, "--weights", "seg.pth", *SEG_ARGS, "--out", "seg-whole"]
        )
    finally:
        os.chdir(here)
    assert result.exit_code == 2, result.output  # 2: the file that is no photo
    assert "broken.png" in result.output
    return base / "seg-whole"


def test_a_segmentation_run_writes_segments_and_a_map_per_class(seg_whole: Path) -> None:
    rows = read_index(seg_whole)
    assert [r["image"] for r in rows] == [
        f"imgs/{n}.png" for n in ("astronaut", "broken", "cat", "coffee", "motorcycle", "rocket")
    ]
    broken = rows[1]
    assert broken["error"] and "broken.png" in broken["error"]
    explained = [r for i, r in enumerate(rows) if i != 1]
    kinds = set()
    for row in explained:
        report = json.loads((seg_whole / row["report"]).read_text())
        segmentation = report["segmentation"]
        assert segmentation == row["segmentation"]
        shares = [s["share"] for s in segmentation]
        assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-3
        kinds.add(len(segmentation))
        # the segments overlay, at the photo's size, in the dataset format's JPEG
        overlay = seg_whole / row["segments_overlay"]
        with Image.open(overlay) as picture:
            assert picture.format == "JPEG" and list(picture.size) == row["size"]
        # top 2: the two classes with the most pixels (background left out), a map each
        chosen = [s for s in segmentation if s["label"] != "__background__"][:2]
        maps = row["explanations"]
        assert [m["class_index"] for m in maps] == [s["class_index"] for s in chosen]
        for m, seg in zip(maps, chosen, strict=True):
            assert m["target"]["kind"] == "segment" and m["target"]["classes"] == [
                seg["class_index"]
            ]
            assert m["target"]["region"] == "predicted" and m["target"]["pixels"] > 0
            assert m["map"] is None and len(m["layer_map"]) == 4  # 64 px / 16
            with Image.open(seg_whole / m["overlay"]) as picture:
                assert picture.format == "JPEG" and list(picture.size) == row["size"]
    assert max(kinds) > 2  # several classes present: the maps are the two largest
    assert not list(seg_whole.rglob("*.npy"))
    summary = runner.invoke(app, ["summary", str(seg_whole)])
    assert summary.exit_code == 0, summary.output
    assert "6 images, 5 explained, 1 errors" in summary.output
    lines = summarize(rows).segments
    assert sum(line.images for line in lines) == sum(len(r["segmentation"]) for r in explained)
    assert "segments: images with the class" in summary.output
    assert f"{lines[0].label} ({lines[0].class_index})" in summary.output


@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_a_run_resumed_writes_the_bytes_of_one_run(
    kind: str, request: pytest.FixtureRequest, here: Path
) -> None:
    """Stopped after two batches, then as a kill leaves a run: the last index line torn (its
    image's files written, its row not) and a temporary file left behind; resumed: the same
    files as one run (the index included, a detector's images with no detection too)."""
    out = Path(f"{kind}-resumed")
    batches = iter(range(100))
    stopped = _run(kind, str(out), stop=lambda: next(batches) >= 2)
    assert [d.path.stem for d in stopped] == IMAGES[:4]
    index = (out / INDEX).read_bytes()
    (out / INDEX).write_bytes(index[:-10])  # the last row torn: that image is not done
    (out / ".camlens" / "tmp").mkdir()
    (out / ".camlens" / "tmp" / "left.tmp").write_bytes(b"half an overlay")
    resumed = _run(kind, str(out))
    assert [d.path.stem for d in resumed] == IMAGES
    redone = [d.path.stem for d in resumed if not d.skipped]  # a failure is never done
    assert redone == ["broken", "coffee", "motorcycle", "rocket"]
    whole = request.getfixturevalue("seg_whole" if kind == "segmentation" else "det_whole")
    assert tree(out) == tree(whole)  # the index included, byte for byte
    assert not list(out.rglob("*.tmp"))


# --- detection -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def det_whole(base: Path) -> Path:
    """One uninterrupted run of the detector over ``imgs`` (dataset format)."""
    import os

    here = os.getcwd()
    os.chdir(base)
    try:
        done = _run("detection", "det-whole")
    finally:
        os.chdir(here)
    assert [d.problem is not None for d in done] == [name == "broken" for name in IMAGES]
    return base / "det-whole"


def _in_box(layer_map: list[list[float]], size: list[int], box: list[float]) -> float:
    """The share of a map's sum (upsampled to the photo's size) at the pixels whose centers
    lie in ``box``: energy_in_box, computed here in numpy."""
    width, height = size
    full = upsample(torch.tensor(layer_map, dtype=torch.float32), (height, width)).numpy()
    full = full.astype(np.float64)
    x0, y0, x1, y1 = box
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return float(full[inside].sum() / full.sum())


def test_a_detector_run_writes_detections_and_a_map_per_detection(det_whole: Path) -> None:
    rows = read_index(det_whole)
    assert [r["image"] for r in rows] == [f"imgs/{n}.png" for n in IMAGES]
    by_name = dict(zip(IMAGES, rows, strict=True))
    assert "broken.png" in by_name["broken"]["error"]
    for name in ("cat", "rocket"):  # no detection: a report that says so, no map, no error
        row = by_name[name]
        assert row.get("error") is None
        assert row["detections"] == [] and row["explanations"] == []
        report = json.loads((det_whole / row["report"]).read_text())
        assert report["detections"] == [] and report["explanations"] == []
    energies = []
    for name in ("astronaut", "coffee", "motorcycle"):
        row = by_name[name]
        report = json.loads((det_whole / row["report"]).read_text())
        assert report["detections"] == row["detections"] and len(row["detections"]) >= 3
        scores = [d["score"] for d in row["detections"]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
        maps = row["explanations"]
        assert len(maps) == 3  # the 3 best detections, a map each, in their order
        for m, detection in zip(maps, row["detections"], strict=False):
            assert m["target"] == {
                "kind": "detection",
                "box": detection["box"],
                "label": detection["class_index"],
                "score": detection["score"],
            }
            assert m["class_index"] == detection["class_index"]
            assert m["label"].startswith(detection["label"])  # "truck 0.41 at 32,9,52,19"
            assert (
                m["map"] is None and len(m["layer_map"]) == 8
            )  # 128 px / 16, the automatic layer's stride
            assert m["energy_in_box"] == pytest.approx(
                _in_box(m["layer_map"], row["size"], detection["box"]), abs=2e-6
            )
            energies.append(m["energy_in_box"])
            with Image.open(det_whole / m["overlay"]) as picture:
                assert picture.format == "JPEG" and list(picture.size) == row["size"]
    assert 0 < min(energies) < 0.1 and max(energies) > 0.5  # some maps lie outside their box
    assert not list(det_whole.rglob("*.npy"))


def test_the_summary_of_a_detector_run(det_whole: Path) -> None:
    summary = summarize(read_index(det_whole))
    assert (summary.images, summary.explained, len(summary.errors)) == (6, 5, 1)
    assert summary.undetected == 2
    rows = read_index(det_whole)
    counted = sum(len(r.get("detections") or []) for r in rows)
    assert sum(line.detections for line in summary.detections) == counted
    result = runner.invoke(app, ["summary", str(det_whole)])
    assert result.exit_code == 0, result.output
    assert "6 images, 5 explained, 1 errors, 2 with no detection" in result.output


DET_ARGS = [
    *["--model", DET_SPEC, "--weights", "det.pth", "--input-size", "128x128"],
    *["--min-score", "0", "--detections", "3", "--batch-size", "2", "--format", "dataset"],
]


@pytest.mark.slow
def test_a_detector_run_killed_then_resumed_on_the_command_line(
    base: Path, det_whole: Path
) -> None:
    """``camlens explain imgs`` of the detector, SIGKILLed once its first batch is indexed, run
    again: every image once in the index, the images with no detection found done, and the
    bytes of the uninterrupted run (made through the Python API with the same options)."""
    import signal

    from test_runs import _cli, _wait_for_rows

    args = ["explain", "imgs", *DET_ARGS, "--out", "det-killed"]
    killed = _cli(args, base)
    at_kill = _wait_for_rows(base / "det-killed" / INDEX, killed, 1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert at_kill < len(IMAGES)  # killed mid-run
    resumed = _cli(args, base)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 2, err.decode()  # 2: the file that is no photo
    assert "already done (skipped" in err.decode()
    rows = read_index(base / "det-killed")
    assert sorted(r["image"] for r in rows) == [f"imgs/{n}.png" for n in IMAGES]
    assert tree(base / "det-killed") == tree(det_whole)


# --- on Ray ----------------------------------------------------------------------------------


def _on_ray(ray: dict[str, str], base: Path, args: list[str]) -> None:
    """``camlens explain ARGS --ray ADDRESS --actors 1`` in a process of its own, in ``base``."""
    import subprocess
    import sys

    env = {k: v for k, v in ray.items() if k not in ("address", "dashboard")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "camlens.cli",
            "explain",
            *args,
            "--ray",
            ray["address"],
            "--actors",
            "1",
        ],
        cwd=base,
        env=env,
        capture_output=True,
        timeout=600,
    )
    err = run.stderr.decode()
    assert run.returncode == 2, err[-3000:]  # 2: the file that is no photo
    assert [line for line in err.splitlines() if line.startswith("camlens:")] == [
        "camlens: imgs/broken.png: is not an image Pillow can read"
    ], err[-3000:]


def _same_run(remote: Path, local: Path) -> None:
    """The same files, byte for byte; the index's lines the same, in the order batches ended."""
    got, want = tree(remote), tree(local)
    assert sorted(got.pop(INDEX).splitlines()) == sorted(want.pop(INDEX).splitlines())
    assert got == want


@pytest.mark.slow
@needs_ray
def test_a_segmentation_run_on_ray_writes_what_the_local_runner_writes(
    ray_cluster: dict[str, str],
    base: Path,
    seg_whole: Path,
) -> None:
    args = ["imgs", "--model", SEG_SPEC, "--weights", "seg.pth", *SEG_ARGS, "--out", "seg-ray"]
    _on_ray(ray_cluster, base, args)
    _same_run(base / "seg-ray", seg_whole)


# --- the gallery (camlens serve --runs) ------------------------------------------------------


@pytest.fixture(scope="module")
def gallery(default_model: camlens.Model, base: Path, seg_whole: Path) -> Iterator[Any]:
    """The API of ``camlens serve --runs`` over the runs made here."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from camlens.serve import ServeSettings, create_app

    with TestClient(create_app(default_model, ServeSettings(runs=base))) as client:
        yield client


def test_the_gallery_shows_each_images_segments(gallery: Any, seg_whole: Path) -> None:
    runs = {r["name"]: r for r in gallery.get("/api/runs").json()["runs"]}
    assert runs["seg-whole"]["kind"] == "segmentation"
    assert runs["seg-whole"]["format"] == "dataset"
    rows = {r["image"]: r for r in read_index(seg_whole)}
    page = gallery.get("/api/runs/seg-whole/images", params={"sort": "name"}).json()
    assert [i["image"] for i in page["images"]] == sorted(rows)
    for image in page["images"]:
        row = rows[image["image"]]
        if row.get("error"):
            assert image["segmentation"] is None and image["segments_overlay"] is None
            continue
        assert image["segmentation"] == row["segmentation"]
        assert image["segments_overlay"] == "/runs/seg-whole/" + row["segments_overlay"]
        served = gallery.get(image["segments_overlay"])
        assert (
            served.status_code == 200
            and served.content == (seg_whole / row["segments_overlay"]).read_bytes()
        )
        assert [m["class_index"] for m in image["maps"]] == [
            m["class_index"] for m in row["explanations"]
        ]
    summary = gallery.get("/api/runs/seg-whole/summary").json()
    expected = summarize(read_index(seg_whole)).segments
    assert summary["segments"] == [
        {"class_index": s.class_index, "label": s.label, "images": s.images, "share": s.share}
        for s in expected
    ]
    assert sum(s["images"] for s in summary["segments"]) > 5  # several classes per image


DRIVER = """
import json, sys, warnings
from pathlib import Path
import camlens
from camlens.config import OutputConfig
from camlens.distributed import explain_on_ray
spec, weights, options = json.loads(sys.argv[2])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    explainer = camlens.Explainer(camlens.load_model(spec, weights=weights), **options)
files = sorted(Path("imgs").glob("*.png"))
done = list(explain_on_ray(files, explainer, Path(sys.argv[3]), OutputConfig(format="dataset"),
                           address=sys.argv[1], actors=1))
print(json.dumps(sorted([d.path.stem, d.problem is None] for d in done)))
"""


@pytest.mark.slow
@needs_ray
def test_a_detector_run_on_ray_writes_what_the_local_runner_writes(
    ray_cluster: dict[str, str],
    base: Path,
    det_whole: Path,
) -> None:
    """The detector's run through :func:`camlens.distributed.explain_on_ray` (its options
    shipped to the actor in the config: min_score, detections, input_size)."""
    import subprocess
    import sys

    env = {k: v for k, v in ray_cluster.items() if k not in ("address", "dashboard")}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            ray_cluster["address"],
            json.dumps(KINDS["detection"]),
            "det-ray",
        ],
        cwd=base,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    done = json.loads(run.stdout.decode().splitlines()[-1])
    assert done == [[name, name != "broken"] for name in IMAGES]
    _same_run(base / "det-ray", det_whole)


def test_the_gallery_shows_each_images_detections_sorted_by_energy_in_box(
    gallery: Any, det_whole: Path
) -> None:
    runs = {r["name"]: r for r in gallery.get("/api/runs").json()["runs"]}
    assert runs["det-whole"]["kind"] == "detection"
    rows = {r["image"]: r for r in read_index(det_whole)}
    page = gallery.get("/api/runs/det-whole/images", params={"sort": "energy_in_box"}).json()
    assert page["order"] == "asc"  # the maps that lie outside their box first
    # an image's value: the least energy in box among its maps; then those without maps
    lowest = {
        image: min(m["energy_in_box"] for m in row["explanations"])
        for image, row in rows.items()
        if row.get("explanations")
    }
    assert [i["image"] for i in page["images"]] == [
        *sorted(lowest, key=lambda image: lowest[image]),
        "imgs/broken.png",
        "imgs/cat.png",
        "imgs/rocket.png",
    ]
    for image in page["images"]:
        row = rows[image["image"]]
        if row.get("error"):
            assert image["detections"] is None
            continue
        assert image["detections"] == [
            {k: d[k] for k in ("box", "class_index", "label", "score")} for d in row["detections"]
        ]
        overlay = gallery.get(image["detections_overlay"])
        assert overlay.status_code == 200
        assert overlay.content == (det_whole / row["detections_overlay"]).read_bytes()
        if not row["detections"]:
            assert image["maps"] == [] and image["focus"] is None
            continue
        focus = image["maps"][image["focus"]]  # the map shown: the one sorted by
        assert focus["energy_in_box"] == lowest[image["image"]]
        assert focus["target"]["kind"] == "detection"
    first = page["images"][0]["maps"][page["images"][0]["focus"]]["energy_in_box"]
    descending = gallery.get(
        "/api/runs/det-whole/images", params={"sort": "energy_in_box", "order": "desc"}
    ).json()["images"]
    assert descending[2]["maps"][descending[2]["focus"]]["energy_in_box"] == first
    summary = gallery.get("/api/runs/det-whole/summary").json()
    expected = summarize(read_index(det_whole))
    assert summary["undetected"] == expected.undetected == 2
    assert summary["detections"] == [dataclasses.asdict(line) for line in expected.detections]
    assert [(n["image"], n["value"]) for n in summary["outside_box"]] == [
        (n.image, n.value) for n in expected.outside_box
    ]
    assert summary["outside_box"][0]["value"] == lowest[page["images"][0]["image"]]
    worst = page["images"][0]
    assert summary["outside_box"][0]["overlay"] == worst["maps"][worst["focus"]]["overlay"]
    assert summary["explained"] == 5


@pytest.mark.slow
@needs_browser
def test_the_gallery_page_of_both_kinds(
    base: Path, seg_whole: Path, det_whole: Path, page: Any, tmp_path: Path
) -> None:
    """``camlens serve --runs`` in a real Chromium: a segmentation model's image opened shows
    its segmentation and a map per class; a detector's run sorted by energy in box shows the
    map that lies most outside its box first, the images with no detection badged, and an image
    opened its detections and a map per detection with its energy in box."""
    import httpx
    from playwright.sync_api import expect
    from serving import camlens_serve

    shots = Shots(tmp_path)
    with camlens_serve(["--runs", str(base)], log=tmp_path / "serve.log") as (url, _):
        page.goto(f"{url}/#/gallery/seg-whole")
        thumbs = page.locator(".thumb")
        expect(thumbs).to_have_count(6)
        expect(page.locator("#sort button[data-sort=energy_in_box]")).to_be_hidden()
        thumbs.nth(0).click()
        segments = page.locator(".output-card[data-role=segments]")
        expect(segments).to_be_visible()
        opened = httpx.get(f"{url}/api/runs/seg-whole/images", params={"limit": 1}).json()
        first = opened["images"][0]
        expect(segments.locator("img")).to_have_js_property("naturalWidth", first["size"][0])
        expect(segments.locator("figcaption")).to_contain_text(
            f"{len(first['segmentation'])} classes"
        )
        for segment in first["segmentation"]:
            expect(segments.locator("figcaption")).to_contain_text(segment["label"])
        expect(page.locator(".map-card:not(.output-card)")).to_have_count(2)  # top 2 classes
        shots.take(page, "kinds-1-segmentation")

        page.goto(f"{url}/#/gallery/det-whole")
        expect(thumbs).to_have_count(6)
        expect(page.locator(".run", has_text="det-whole")).to_contain_text("dataset · detection")
        energy = page.locator("#sort button[data-sort=energy_in_box]")
        expect(energy).to_be_visible()
        energy.click()
        expect(page.locator("#gallery-count")).to_have_text(
            "6 images · by energy in box, lowest first"
        )
        expect(page).to_have_url(f"{url}/#/gallery/det-whole?sort=energy_in_box")
        listed = httpx.get(
            f"{url}/api/runs/det-whole/images", params={"sort": "energy_in_box"}
        ).json()["images"]
        assert names(page) == [i["image"].split("/")[-1] for i in listed]
        lowest = listed[0]["maps"][listed[0]["focus"]]
        expect(thumbs.nth(0).locator(".thumb-notes")).to_contain_text(
            f"{round(100 * lowest['energy_in_box'])}% in its box"
        )
        expect(thumbs.nth(0).locator("img")).to_have_attribute("src", lowest["overlay"])
        expect(page.locator(".badge", has_text="no detection")).to_have_count(2)
        expect(page.locator("#facts")).to_contain_text("No detection2 images")
        lines = httpx.get(f"{url}/api/runs/det-whole/summary").json()["detections"]
        table = page.locator("#class-table")
        expect(table.locator("summary")).to_have_text(f"Per class detected: {len(lines)} classes")
        table.locator("summary").click()
        expect(table.locator("tbody tr")).to_have_count(len(lines))
        expect(table.locator("tbody tr").nth(0)).to_contain_text(lines[0]["label"])
        shots.take(page, "kinds-2-detections")

        thumbs.nth(0).click()
        card = page.locator(".output-card[data-role=detections]")
        expect(card).to_be_visible()
        detections = listed[0]["detections"]
        expect(card.locator("li")).to_have_count(min(12, len(detections)))
        expect(card.locator("li.explained")).to_have_count(3)
        expect(card.locator("img")).to_have_js_property("naturalWidth", listed[0]["size"][0])
        maps = page.locator(".map-card:not(.output-card)")
        expect(maps).to_have_count(3)
        for m, shown in zip(listed[0]["maps"], maps.all(), strict=True):
            expect(shown).to_contain_text(f"{round(100 * m['energy_in_box'])}% in its box")
        shots.take(page, "kinds-3-detector-image")


def names(page: Any) -> list[str]:
    return [str(n) for n in page.locator(".thumb .thumb-name").all_inner_texts()]
