"""Shared fixtures: the default model (loaded once) and offline sample photos."""

from __future__ import annotations

import os

# Before torch loads OpenMP: when other processes share the cores (parallel jobs, CI runners),
# OpenMP threads that spin while waiting for each other slow every forward pass down many times
# over (2.1 s instead of 0.05 s for EfficientNet-Lite0 at 224 px on a 2-core machine with one
# other busy process). Sleeping instead costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread: the suite takes as long on an idle 2-core machine (61 s with 1 thread, 62 s with 2),
# and nothing can oversubscribe the cores of a CI runner that has fewer of them than it shows, or
# shares them (test_oracles + test_eigen beside two busy processes: 19 s with 1 thread, 25 s with 2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from awkward import cat, cup, synthetic_weights
from PIL import Image

import camlens

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also if a plugin imported torch first


@pytest.fixture(scope="session")
def default_model() -> camlens.Model:
    return camlens.load_model()


@pytest.fixture(scope="session")
def resnet18() -> camlens.Model:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: expected here
        return camlens.load_model("torchvision:resnet18")


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage import data

    return np.asarray(data.chelsea())


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from skimage import data

    return np.asarray(data.coffee())


@pytest.fixture
def photo_files(tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray) -> list[Path]:
    """chelsea and coffee as JPEG files with the same stem in two folders."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "0.jpg"
    second = tmp_path / "b" / "0.jpg"
    Image.fromarray(chelsea).save(first, quality=95)
    Image.fromarray(coffee).save(second, quality=95)
    return [first, second]


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two small runs made by ``camlens explain`` (for the gallery of ``camlens
    serve --runs``): ``files``, six sample photos in folders named by their class (the rocket's
    ``missile`` is a mistake of the model), top 2, Grad-CAM and CAM, files format; ``dataset``,
    the same photos in one folder, top 2, Grad-CAM, dataset format. Each has an unreadable file."""
    from skimage import data
    from typer.testing import CliRunner

    from camlens.cli import app

    base = tmp_path_factory.mktemp("gallery")
    photos = {
        "Egyptian_cat/chelsea.jpg": data.chelsea(),
        "Egyptian_cat/chelsea_face.jpg": data.chelsea()[20:280, 120:420],
        "espresso/coffee.jpg": data.coffee(),
        "military_uniform/grace_hopper.jpg": None,
        "moped/motorcycle.jpg": data.stereo_motorcycle()[0],
        "missile/rocket.jpg": data.rocket(),
    }
    from matplotlib import cbook

    for name, array in photos.items():
        for folder, path in (("val", name), ("photos", name.split("/")[1])):
            target = base / folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if array is None:
                with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as p:
                    p.convert("RGB").save(target, quality=92)
            else:
                Image.fromarray(np.asarray(array)).convert("RGB").save(target, quality=92)
    (base / "val" / "espresso" / "broken.jpg").write_bytes(b"not a photo")
    (base / "photos" / "broken.jpg").write_bytes(b"not a photo")
    runs = base / "runs"
    commands = [
        ["val", "--top", "2", "--method", "gradcam", "--method", "cam", "--out", "runs/files"],
        ["photos", "--top", "2", "--format", "dataset", "--out", "runs/dataset"],
    ]
    here = os.getcwd()
    os.chdir(base)  # the index keeps the paths as given: short ones
    try:
        for args in commands:
            result = CliRunner().invoke(app, ["explain", *args])
            assert result.exit_code == 2, result.output  # 2: the unreadable file
    finally:
        os.chdir(here)
    return runs


@pytest.fixture(scope="session")
def mistakes_runs(small_runs: Path) -> Path:
    """A folder holding one run, ``mistakes``: the photos of ``small_runs``' ``files`` run
    explained with ``--versus true`` (Grad-CAM, files format): the rocket filed as a missile has
    its top-1's map and the map of its top-1 versus missile."""
    from typer.testing import CliRunner

    from camlens.cli import app

    base = small_runs.parent
    here = os.getcwd()
    os.chdir(base)
    try:
        args = ["explain", "val", "--versus", "true", "--out", "mistakes_runs/mistakes"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output  # 2: the unreadable file
    finally:
        os.chdir(here)
    return base / "mistakes_runs"


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_weights(tmp_path_factory.mktemp("weights") / "synthetic.pt")


@pytest.fixture(scope="session")
def syn(weights: Path) -> list[str]:
    """The options that choose the synthetic CNN."""
    return ["--model", "synthetic", "--weights", str(weights)]


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``cat.jpg`` and ``cup.png`` in the current folder (a fresh one)."""
    monkeypatch.chdir(tmp_path)
    cat(tmp_path / "cat.jpg")
    cup(tmp_path / "cup.png")
    return ["cat.jpg", "cup.png"]
