"""The documentation: the site builds strictly (``make docs``: a broken link or reference fails),
and the examples of the README and of every page run.

Each page's ``python`` and ``sh`` blocks run in page order, in a folder of their own that holds
small stand-ins for the files the examples name (``photo.jpg``, ``val/``, ``data/pets/``,
``tagged/`` with its ``tags.csv``, a small ``hf:my-vit/``...). Python blocks share one namespace per page; in ``sh`` blocks each ``camlens``
command runs through the command's own app and must exit 0 (one without ``--out`` starts
without the default ``camlens-out/`` of an earlier one: each example stands alone). What is not run says why, in the
summary this test prints: a block after ``<!-- not run: REASON -->``; a command other than
``camlens`` (``make``, ``pip``, ``ray``, ``curl``); ``camlens serve``, which runs until stopped
(``tests/test_serve_*.py`` and ``tests/test_wheel.py`` run it); a command naming a weights or
model file that no example makes here; ``--ray`` (``tests/test_distributed.py`` runs Ray); and
the few commands in ``SLOW``, which take minutes of CPU.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tagged import make_tagged_folder
from typer.testing import CliRunner

import camlens

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILES = (".pth", ".pt", ".safetensors", ".keras", ".h5", ".camlens", ".json")
SLOW = {
    # every one of EfficientNet-Lite0's 1280 channels as a masked pass, for 5 classes
    "camlens explain photo.jpg --method scorecam --top 5",
    # trains a CNN on a generated data set, then evaluates every gradient method with every metric
    "camlens synthetic synthetic/ --train",
}


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    not_run: str | None


def blocks(page: Path) -> list[Block]:
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        start = re.match(r"\s*```(python|sh)\s*$", lines[i])
        if start:
            indent = len(lines[i]) - len(lines[i].lstrip())
            end = i + 1
            while not lines[end].strip().startswith("```"):
                end += 1
            marker = re.match(r"\s*<!-- not run: (.+) -->", lines[i - 1]) if i else None
            code = "\n".join(line[indent:] for line in lines[i + 1 : end])
            found.append(Block(page, i + 1, start[1], code, marker[1] if marker else None))
            i = end
        i += 1
    return found


def commands(code: str) -> list[str]:
    """The shell commands of a block, ``\\`` continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, small."""
    from skimage import data

    base = tmp_path_factory.mktemp("stand-ins")
    cat, coffee, astronaut = data.chelsea(), data.coffee(), data.astronaut()

    def save(array: np.ndarray, name: str) -> None:
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(base / name, quality=90)

    for name in ("photo.jpg", "cat.jpg", "x.jpg", "a.jpg", "some_cat.jpg", "pandas.jpg"):
        save(cat, name)
    save(np.asarray(Image.fromarray(cat).resize((640, 480))), "big.jpg")
    (base / "broken.jpg").write_bytes(b"not an image")
    save(coffee, "more/coffee.jpg")
    save(cat, "photos/cat.jpg")
    save(coffee, "photos/coffee.jpg")
    save(cat, "val/Egyptian_cat/1.jpg")
    save(coffee, "val/espresso/2.jpg")
    for cls, photo in (("cat", cat), ("dog", astronaut)):
        for i in range(3):
            save(photo[i * 20 :, i * 30 :], f"data/pets/{cls}/{i}.jpg")
            save(photo[i * 20 :, i * 30 :], f"kaggle/train/{cls}.{i}.jpg")
    make_tagged_folder(base / "tagged", 12)  # tagged/tags.csv: camlens train --tags
    torch.manual_seed(0)
    camlens.save(camlens.build_cam_model(class_names=["not_person", "person"]), base / "people")
    transformers = pytest.importorskip("transformers")
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    vit.save_pretrained(base / "my-vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(
        base / "my-vit"
    )
    return base


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    api = (site / "api" / "index.html").read_text()
    assert "camlens.load_model" in api and "w_k = mean_ij G[k, i, j]" in api  # from docstrings
    assert (site / "benchmarks" / "index.html").is_file()  # benchmarks/README.md, by the hook
    for notebook in (ROOT / "docs" / "notebooks").glob("*.ipynb"):
        assert (site / "notebooks" / notebook.name).is_file()


def why_not(command: str, folder: Path) -> str | None:
    words = shlex.split(command)
    if words[0] != "camlens":
        return f"not a camlens command ({words[0]})"
    if words[1] == "serve":
        return "camlens serve runs until stopped"
    if "--ray" in words:
        return "needs a Ray cluster"
    if command in SLOW or any(command.startswith(s) for s in SLOW):
        return "minutes of CPU"
    for before, word in itertools.pairwise(words[1:]):
        if word.startswith("/shared"):
            return "a shared folder of a cluster"
        written = before in ("--out", "--grid")
        if word.endswith(FILES) and not written and not (folder / word).exists():
            return f"needs {word}, which no example makes here"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_examples_run(
    page: Path, stand_ins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camlens.cli import app

    found = blocks(page)
    if not found:
        pytest.skip(f"{page.name} has no python or sh example")
    folder = tmp_path / "work"
    shutil.copytree(stand_ins, folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runner = CliRunner()
    namespace: dict[str, object] = {"camlens": camlens}
    ran, skipped = 0, []
    for block in found:
        where = f"{page.name}:{block.line}"
        if block.not_run:
            skipped.append(f"{where} block: {block.not_run}")
            continue
        if block.language == "python":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(block.code, where, "exec"), namespace)
            ran += 1
            continue
        for command in commands(block.code):
            reason = why_not(command, folder)
            if reason:
                skipped.append(f"{where} {command}: {reason}")
                continue
            words = shlex.split(command)  # --out, not --output
            if "--out" not in words:  # each example stands alone: no earlier default output
                shutil.rmtree(folder / "camlens-out", ignore_errors=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = runner.invoke(app, words[1:])
            assert result.exit_code == 0, f"{where} {command}:\n{result.output}"
            ran += 1
    print(f"\n{page.name}: {ran} examples ran; not run:\n  " + "\n  ".join(skipped))
    assert ran or skipped
