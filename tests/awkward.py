"""Helpers for the bad-input tests: a tiny model's weights file, small photos, the command run
in-process, and the checks every awkward call must pass (no traceback, exit status 0 or 2, one
line per bad input, strict JSON).

Used by tests/test_bad_input.py and tests/test_corpus.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from camlens.cli import app

runner = CliRunner()

#: A line of Python's own warning format (``file.py:12: UserWarning: ...``, or its source line).
PYTHON_WARNING = re.compile(r"\.py:\d+: \w*Warning: |^\s*warnings\.warn\(")


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON for most
    readers, though Python writes and reads them by default)."""
    return json.loads(text, parse_constant=refuse_constant)


def strict_reports(folder: Path) -> int:
    """Parses every ``.json`` and ``.jsonl`` file under ``folder`` strictly (each line of a
    ``.jsonl``); returns how many files there were. Numbers must all be finite."""
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            finite(strict_json(path.read_text()), path)
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                finite(strict_json(line), path)
        else:
            continue
        count += 1
    return count


def finite(value: Any, where: object) -> None:
    if isinstance(value, float):
        assert math.isfinite(value), f"{where}: {value}"
    elif isinstance(value, dict):
        for v in value.values():
            finite(v, where)
    elif isinstance(value, list):
        for v in value:
            finite(v, where)


def invoke(*args: object) -> Result:
    """``camlens ARGS...`` run in-process."""
    return runner.invoke(app, [str(a) for a in args])


def problems(result: Result) -> list[str]:
    """The lines on stderr about bad input (``camlens: ...``, warnings left out)."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith("camlens: ") and not line.startswith("camlens: warning: ")
    ]


def warnings_of(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("camlens: warning: ")]


def assert_clean(result: Result, bad: int | None = None) -> None:
    """No traceback, exit status 0 (no bad input) or 2, and ``bad`` lines about bad input on
    stderr (when given); no warning in Python's own format."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\n{output}")
    assert result.exit_code in (0, 2), (result.exit_code, output)
    raw = [line for line in result.stderr.splitlines() if PYTHON_WARNING.search(line)]
    assert not raw, result.stderr  # warnings are camlens lines, not Python's format
    if bad is not None:
        assert len(problems(result)) == bad, result.stderr
        assert result.exit_code == (2 if bad else 0), (result.exit_code, output)


@cache
def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)()))


def cat(path: Path, size: tuple[int, int] = (96, 64), **save: Any) -> Path:
    """chelsea the cat, small, at ``path`` (its suffix decides the format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _photo("chelsea").resize(size).save(path, **save)
    return path


def cup(path: Path, size: tuple[int, int] = (80, 60), **save: Any) -> Path:
    """skimage's coffee cup, small, at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _photo("coffee").resize(size).save(path, **save)
    return path


def synthetic_weights(path: Path, *, fill: float | None = None, seed: int = 0) -> Path:
    """The state dict of the synthetic benchmark's CNN (4 classes, 64x64 inputs, random weights
    seeded by ``seed``), for ``--model synthetic --weights PATH``; every float set to ``fill``
    when given (NaN, say)."""
    from camlens.models.synthetic import SyntheticCNN

    torch.manual_seed(seed)
    state = SyntheticCNN(4).state_dict()
    if fill is not None:
        state = {k: v.fill_(fill) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, path)
    return path


SYNTHETIC_LABELS = ("disc", "square", "triangle", "cross")


def coco(
    path: Path,
    images: Sequence[tuple[str, Sequence[tuple[str, list[Any]]]]],
    *,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """A COCO JSON file at ``path`` listing ``images``: (file name, [(class name, bbox)...]),
    with the synthetic model's class names and the others used as categories."""
    used = [label for _, objects in images for label, _ in objects]
    names = list(dict.fromkeys([*SYNTHETIC_LABELS, *used]))
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    ids = {n: k + 1 for k, n in enumerate(names)}
    entries, annotations = [], []
    for i, (name, objects) in enumerate(images):
        entry: dict[str, Any] = {"id": i + 1, "file_name": name}
        if sizes and name in sizes:
            entry["width"], entry["height"] = sizes[name]
        entries.append(entry)
        for label, bbox in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": ids[label],
                    "bbox": bbox,
                }
            )
    data = {"images": entries, "annotations": annotations, "categories": categories}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
