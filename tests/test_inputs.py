"""camlens.inputs: what an Explainer call is given, turned into named items and model batches
(without copying a batch it was given), and classes into indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camlens
from camlens import inputs
from camlens.errors import ClassError
from camlens.images import PreprocessConfig, preprocess

SETTINGS = PreprocessConfig(input_size=(16, 16))


def test_a_batch_given_is_run_as_a_view_of_itself() -> None:
    x = torch.rand(5, 3, 16, 16)
    photos = [Image.new("RGB", (20, 10)) for _ in range(5)]
    items = [e for e in inputs.prepared(x, photos, None) if isinstance(e, inputs.Item)]
    chunk = inputs.model_input(items[1:4], SETTINGS)
    assert chunk.data_ptr() == x[1].data_ptr() and torch.equal(chunk, x[1:4])  # no copy
    assert torch.equal(inputs.model_input([items[0], items[3]], SETTINGS), x[[0, 3]])
    assert [i.source for i in items] == [f"<image {i}>" for i in range(5)]
    assert items[0].pixels() == 200  # the photo's, not the model input's


def test_photos_are_preprocessed_together_and_mixed_inputs_row_by_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 9, 3), dtype=np.uint8) for _ in range(2)]
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    tensor = torch.rand(3, 16, 16)
    entries = inputs.read([tmp_path / "a.png", arrays[1], tensor], None, 10**6)
    items = [e for e in entries if isinstance(e, inputs.Item)]
    assert [i.source for i in items] == [str(tmp_path / "a.png"), "<image 1>", "<image 2>"]
    photos = [Image.fromarray(a) for a in arrays]
    assert torch.equal(inputs.model_input(items[:2], SETTINGS), preprocess(photos, SETTINGS))
    mixed = inputs.model_input(items[1:], SETTINGS)
    assert torch.equal(mixed[1], tensor) and torch.equal(
        mixed[:1], preprocess(photos[1:], SETTINGS)
    )


def test_each_input_keeps_its_own_problem(tmp_path: Path) -> None:
    x = torch.zeros(3, 3, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    entries = inputs.read([x, tmp_path / "missing.jpg"], ["a", "b", "c", "d"], 10**6)
    assert [type(e).__name__ for e in entries] == ["Item", "CamlensError", "Item", "ImageError"]
    assert str(entries[1]) == "b: the input has NaN or infinite values"
    with pytest.raises(camlens.CamlensError, match="3 names given for 4 images"):
        inputs.read([x, tmp_path / "missing.jpg"], ["a", "b", "c"], 10**6)
    with pytest.raises(camlens.CamlensError, match="2 photos given for 3 inputs"):
        inputs.prepared(x, [Image.new("RGB", (2, 2))] * 2, None)


def test_classes_become_indices(default_model: camlens.Model) -> None:
    assert inputs.class_lists(default_model, None, 3, 2) is None
    assert inputs.class_lists(default_model, [285, "espresso"], None, 2) == [[285, 967]] * 2
    assert inputs.class_lists(default_model, [[1], ["espresso", 2]], None, 2) == [[1], [967, 2]]
    with pytest.raises(ClassError, match="2 class lists given for 3 images"):
        inputs.class_lists(default_model, [[1], [2]], None, 3)
    with pytest.raises(ClassError, match="top must be between 1 and 1000"):
        inputs.class_lists(default_model, None, 0, 1)
