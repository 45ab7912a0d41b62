"""Bad input and faults, second round: each case found by trying every front-end as a careless or
hostile user would, with its neighbours. The command line runs in-process with the synthetic
benchmark's small CNN (random weights, 64x64 inputs), as in tests/test_bad_input.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from awkward import assert_clean, cat, cup, invoke, problems, strict_json, synthetic_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import camlens
from camlens import outputs
from camlens.config import ExplainConfig
from camlens.errors import CamlensError
from camlens.types import class_number


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_weights(tmp_path_factory.mktemp("weights") / "synthetic.pt")


@pytest.fixture(scope="module")
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
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
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
