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
