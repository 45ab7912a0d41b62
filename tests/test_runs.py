"""Runs over many files: the two output formats, the run index and record, resume (after a clean
end, a torn index line, SIGKILL at any moment, Ctrl-C), and `camlens summary`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens import render
from camlens.batch import explain_files
from camlens.cli import app
from camlens.config import OutputConfig
from camlens.errors import CamlensError
from camlens.images import preprocess
from camlens.maps import upsample
from camlens.render import overlay_pixels
from camlens.runs import INDEX, iter_index_at, read_index, read_row, summarize

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def make_photos(folder: Path, arrays: list[np.ndarray], count: int, size: tuple[int, int]) -> None:
    """``count`` JPEGs at ``size`` (width, height), shifted crops of the sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        array = arrays[i % len(arrays)]
        h, w = array.shape[:2]
        dx, dy = (i * 7) % (w // 5), (i * 5) % (h // 5)
        crop = Image.fromarray(array).crop((dx, dy, w - dx // 2, h - dy // 2))
        crop.resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:03d}.jpg", quality=90)


@pytest.fixture
def photos(
    tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """``imgs/000.jpg`` .. ``imgs/005.jpg`` (320x240) in the current folder, ``tmp_path``."""
    make_photos(tmp_path / "imgs", [chelsea, coffee], 6, (320, 240))
    monkeypatch.chdir(tmp_path)
    return Path("imgs")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the run record, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".camlens" not in p.parts
    }


@pytest.mark.parametrize(("cmap", "alpha"), [("jet", 0.5), ("viridis", 0.3), ("tab10", 1.0)])
def test_overlay_is_the_blend_formula(
    cmap: str, alpha: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    small = torch.from_numpy(rng.random((5, 7), dtype=np.float32))
    full = upsample(small, (37, 53)).numpy()
    full[0, :3] = [0.0, 1.0, 0.999999]  # both ends of the colormap and the edge of its last bin
    colours = np.rint(matplotlib.colormaps[cmap](full)[..., :3] * 255)
    expected = np.rint((1 - alpha) * photo.astype(np.float64) + alpha * colours).astype(np.uint8)
    assert np.array_equal(overlay_pixels(photo, full, cmap, alpha), expected)
    picture = render.overlay(Image.fromarray(photo), full, cmap=cmap, alpha=alpha)
    assert np.array_equal(np.asarray(picture), expected)
    monkeypatch.setattr(render, "_BLEND_CHUNK_PIXELS", 100)  # row by row: the same pixels
    assert np.array_equal(overlay_pixels(photo, full, cmap, alpha), expected)


def test_formats_write_the_contract_and_the_layer_map_is_exact(
    default_model: camlens.Model, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.glob("*.jpg"))[:2]
    explainer = camlens.Explainer(default_model, batch_size=2)
    written = {}
    for fmt in ("files", "dataset"):
        out = tmp_path / fmt
        done = list(explain_files(files, explainer, out, OutputConfig(format=fmt), top=2))
        assert [d.path for d in done] == files and all(d.problem is None for d in done)
        written[fmt] = out
    report = json.loads((written["files"] / "imgs/000.json").read_text())
    entry = report["explanations"][0]
    full = np.load(written["files"] / "imgs" / entry["map"])
    assert full.dtype == np.float32 and full.shape == (240, 320)
    assert Image.open(written["files"] / "imgs" / entry["overlay"]).format == "PNG"
    compact = json.loads((written["dataset"] / "imgs/000.json").read_text())
    assert compact["predictions"] == report["predictions"]
    first = compact["explanations"][0]
    assert first["map"] is None and first["overlay"].endswith(".jpg")
    assert Image.open(written["dataset"] / "imgs" / first["overlay"]).size == (320, 240)
    layer = torch.tensor(first["layer_map"], dtype=torch.float32)
    assert layer.shape == (7, 7)
    assert torch.equal(upsample(layer, (240, 320)), torch.from_numpy(full))  # bit for bit
    assert not list(written["dataset"].rglob("*.npy"))
    x, y = first["peak"]
    assert full[y, x] == 1.0
    # the index: a row per image, paths relative to OUT, the map's statistics
    rows = read_index(written["dataset"])
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert rows[0]["report"] == "imgs/000.json"
    assert rows[0]["explanations"][0]["overlay"] == "imgs/" + first["overlay"]
    spread = float(np.count_nonzero(full >= 0.5)) / full.size
    assert rows[0]["explanations"][0]["spread"] == round(spread, 4)
    x0, y0, x1, y1 = rows[0]["explanations"][0]["box"]
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240


def test_the_pipeline_gives_what_the_explainer_gives(
    default_model: camlens.Model, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.glob("*.jpg"))
    explainer = camlens.Explainer(default_model, batch_size=4)
    done = list(
        explain_files(files, explainer, tmp_path / "o", workers=2, readers=3, writers=2, top=1)
    )
    for start in (0, 4):  # the runner's batches: files[0:4], files[4:6]
        chunk = files[start : start + 4]
        expected = explainer.explain([str(f) for f in chunk], top=1)
        for want, got in zip(expected, done[start : start + 4], strict=True):
            assert got.explanation is not None
            assert torch.equal(got.explanation.maps[0].map, want.maps[0].map)
            assert got.row is not None
            assert got.row["predictions"][0]["score"] == want.predictions[0].score


def test_resume_skips_what_is_done_and_refuses_other_options(
    default_model: camlens.Model, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.glob("*.jpg"))
    explainer = camlens.Explainer(default_model, batch_size=4)
    out = tmp_path / "o"
    first = list(explain_files(files, explainer, out, OutputConfig(format="dataset")))
    before = tree(out)
    index = (out / INDEX).read_bytes()
    again = list(explain_files(files, explainer, out, OutputConfig(format="dataset")))
    assert [d.skipped for d in again] == [True] * 6 and [d.path for d in again] == files
    assert tree(out) == before  # nothing rewritten, nothing appended
    with pytest.raises(CamlensError, match=r"other options \(output.format: 'dataset' -> 'files'"):
        list(explain_files(files, explainer, out, OutputConfig(format="files")))
    # a killed run can tear the last line: it is cut off and that image is done again, once
    torn = index[: index.rindex(b"\n", 0, len(index) - 1) + 1] + index.splitlines()[-1][:40]
    (out / INDEX).write_bytes(torn)
    (out / "imgs/005.json").unlink()
    resumed = list(explain_files(files, explainer, out, OutputConfig(format="dataset")))
    # 005 only is written again, from its batch (004 and 005) explained whole: the same bytes
    assert [d.skipped for d in resumed] == [True] * 5 + [False]
    assert (out / INDEX).read_bytes() == index
    assert tree(out) == before
    redone = list(
        explain_files(files, explainer, out, OutputConfig(format="files"), overwrite=True)
    )
    assert not any(d.skipped for d in redone) and len(first) == len(redone) == 6
    assert len(read_index(out)) == 6


def _cli(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "camlens.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_rows(index: Path, process: subprocess.Popen[bytes], least: int) -> int:
    """Waits until ``index`` has ``least`` lines; the number it has when it does."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        lines = index.read_bytes().count(b"\n") if index.exists() else 0
        if lines >= least:
            return lines
        assert process.poll() is None, process.communicate()[1].decode()
        time.sleep(0.02)
    raise AssertionError("the run wrote no index row in time")


@pytest.mark.slow
def test_killed_at_any_moment_then_resumed_gives_the_bytes_of_one_run(
    tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_photos(tmp_path / "imgs", [chelsea, coffee], 24, (160, 120))
    args = ["explain", "imgs", "--top", "2", "--batch-size", "3", "--format", "dataset"]
    monkeypatch.chdir(tmp_path)
    whole = runner.invoke(app, [*args, "--out", "whole"])
    assert whole.exit_code == 0, whole.output
    killed = _cli([*args, "--out", "killed"], tmp_path)
    at_kill = _wait_for_rows(tmp_path / "killed" / INDEX, killed, 1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert at_kill < 24  # killed mid-run
    resumed = _cli([*args, "--out", "killed"], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert "already done (skipped" in err.decode()
    rows = read_index(tmp_path / "killed")
    assert sorted(r["image"] for r in rows) == [f"imgs/{i:03d}.jpg" for i in range(24)]  # once each
    assert not [p for p in (tmp_path / "killed").rglob("*") if p.suffix == ".tmp"]
    assert tree(tmp_path / "killed") == tree(tmp_path / "whole")  # index included, byte for byte
    record = json.loads((tmp_path / "killed" / ".camlens" / "run").read_text())
    assert [s.get("finished") is not None for s in record["sessions"]] == [False, True]


@pytest.mark.slow
def test_ctrl_c_finishes_the_batches_under_way(
    tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    make_photos(tmp_path / "imgs", [chelsea], 30, (160, 120))
    args = ["explain", "imgs", "--batch-size", "3", "--workers", "1", "--out", "o"]
    process = _cli(args, tmp_path)
    _wait_for_rows(tmp_path / "o" / INDEX, process, 1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err.decode()
    assert "interrupted: run the same command again" in err.decode()
    rows = read_index(tmp_path / "o")
    assert 0 < len(rows) < 30 and len(rows) % 3 == 0  # whole batches, files complete
    for row in rows:
        assert (tmp_path / "o" / row["explanations"][0]["overlay"]).is_file()
    again = _cli(args, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert f"{30 - len(rows)} explained, {len(rows)} already done" in err.decode()


def test_summary_reads_labels_from_folder_names(
    tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "val" / "Egyptian_cat", [chelsea], 2, (224, 160))
    make_photos(tmp_path / "val" / "n07920052", [coffee], 2, (224, 160))  # espresso's WordNet id
    make_photos(tmp_path / "val" / "tabby", [coffee], 1, (224, 160))  # a cup filed as a tabby
    result = runner.invoke(app, ["explain", "val", "--out", "o", "--format", "dataset"])
    assert result.exit_code == 0, result.output
    rows = read_index(tmp_path / "o")
    assert {r["truth"]["label"] for r in rows} == {"Egyptian cat", "espresso", "tabby, tabby cat"}
    summary = summarize(rows, top=3)
    assert summary.by == "truth" and summary.labelled == 5 and summary.top1 == 0.8
    assert [(c.label, c.images, c.top1) for c in summary.classes] == [
        ("Egyptian cat", 2, 1.0),
        ("espresso", 2, 1.0),
        ("tabby, tabby cat", 1, 0.0),
    ]
    assert summary.confident_mistakes[0].image == "val/tabby/000.jpg"
    shown = runner.invoke(app, ["summary", "o", "--top", "3"])
    assert shown.exit_code == 0, shown.output
    assert "top-1 0.800, top-5" in shown.stdout
    assert "most confident mistakes" in shown.stdout and "val/tabby/000.jpg" in shown.stdout
    assert "most off-center maps" in shown.stdout
    missing = runner.invoke(app, ["summary", "nowhere"])
    assert missing.exit_code == 2 and "no run index" in missing.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "zip"], "format must be 'files' or 'dataset'"),
        (["--overlay-format", "gif"], "overlay_format must be png, jpeg or webp"),
        (["--quality", "101"], "quality must be at most 100"),
        (["--ray", "photos"], "--ray takes local, auto or HOST:PORT, not 'photos'"),
        (["--ray", "auto", "--grid", "g.png"], "--grid is not available with --ray"),
    ],
)
def test_run_options_are_checked_first(
    photo_files: list[Path], tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "o"
    result = runner.invoke(app, ["explain", str(photo_files[0]), "--out", str(out), *options])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_bare_ray_option_means_a_local_ray() -> None:
    from camlens.cli import bare_ray

    assert bare_ray(["explain", "imgs", "--ray"]) == ["explain", "imgs", "--ray", "local"]
    assert bare_ray(["explain", "imgs", "--ray", "--top", "1"])[3] == "local"
    assert bare_ray(["explain", "imgs", "--ray", "auto"]) == ["explain", "imgs", "--ray", "auto"]


def test_prepared_inputs_give_the_explanation_of_the_photos(default_model: camlens.Model) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(2)]
    explainer = camlens.Explainer(default_model, batch_size=2)
    prepared = explainer.explain_prepared(
        preprocess(photos, default_model.preprocess), photos, top=2, names=["a", "b"]
    )
    direct = explainer.explain(photos, top=2)
    for p, d, photo in zip(prepared, direct, photos, strict=True):
        assert p.image is photo and p.source in ("a", "b")
        assert [m.class_index for m in p.maps] == [m.class_index for m in d.maps]
        assert torch.equal(p.maps[1].map, d.maps[1].map)
    with pytest.raises(CamlensError, match="1 photos given for 2 inputs"):
        explainer.explain_prepared(preprocess(photos, default_model.preprocess), photos[:1])


def test_rows_are_read_again_at_their_offsets(tmp_path: Path) -> None:
    index = tmp_path / INDEX
    index.write_bytes(
        b'{"image": "a.jpg", "error": "y"}\n\n{"image": "b.jpg", "error": "x"}\n{"image": "c.j'
    )
    found = list(iter_index_at(index))
    assert [row for _, row in found] == read_index(tmp_path)  # the torn last line left out
    assert [offset for offset, _ in found] == [0, 34]
    assert [read_row(index, offset) for offset, _ in found] == [row for _, row in found]
    with pytest.raises(CamlensError, match=r"index.jsonl, a line: not a camlens index row"):
        read_row(index, 3)
