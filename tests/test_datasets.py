"""Ground-truth readers (Pascal VOC XML, COCO JSON) on hand-written files, their problems, and the
seeded synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.datasets import (
    Annotated,
    GroundTruth,
    check_boxes,
    make_synthetic,
    read_coco,
    read_dataset,
    read_voc,
    synthetic_image,
    synthetic_scene,
)
from camlens.errors import DatasetError
from camlens.types import Box


def voc_xml(
    filename: str, objects: list[tuple[str, int, int, int, int]], size: tuple[int, int]
) -> str:
    parts = [
        f"<annotation><folder>VOC</folder><filename>{filename}</filename>",
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
    ]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / "a.jpg")
    Image.new("RGB", (30, 30)).save(root / "JPEGImages" / "b.jpg")
    (root / "Annotations" / "a.xml").write_text(
        voc_xml("a.jpg", [("cat", 1, 1, 50, 40), ("dog", 11, 6, 20, 15)], (50, 40))
    )
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", [("dog", 5, 5, 10, 10)], (30, 30)))
    return root


def test_voc_boxes_are_converted_from_one_based_inclusive(voc: Path) -> None:
    data = read_voc(voc)
    assert data.format == "voc" and data.problems == []
    assert [item.image.name for item in data.items] == ["a.jpg", "b.jpg"]
    a = data.items[0]
    assert a.size == (50, 40)
    # xmin=1 .. xmax=50 covers the whole 50-pixel width: [0, 50)
    assert a.objects == [
        GroundTruth("cat", Box(0, 0, 50, 40)),
        GroundTruth("dog", Box(10, 5, 20, 15)),
    ]
    assert data.classes == ["cat", "dog"]
    assert read_dataset(voc).items == data.items  # a folder of XML files is VOC
    single = read_dataset(voc / "Annotations" / "b.xml")
    assert len(single.items) == 1 and single.items[0].image.name == "b.jpg"


def test_voc_problems_leave_the_other_files_readable(voc: Path) -> None:
    notes = voc / "Annotations"
    (notes / "empty.xml").write_text("")
    (notes / "broken.xml").write_text("<annotation><filename>")
    (notes / "missing.xml").write_text(voc_xml("nowhere.jpg", [("cat", 1, 1, 5, 5)], (10, 10)))
    (notes / "nobox.xml").write_text(
        "<annotation><filename>a.jpg</filename><object><name>cat</name></object></annotation>"
    )
    (notes / "badnumber.xml").write_text(
        voc_xml("a.jpg", [("cat", 1, 1, 5, 5)], (50, 40)).replace(
            "<xmax>5</xmax>", "<xmax>five</xmax>"
        )
    )
    data = read_voc(voc)
    assert [item.image.name for item in data.items] == ["a.jpg", "b.jpg"]
    text = "\n".join(data.problems)
    assert len(data.problems) == 5
    assert "empty.xml: empty annotation file" in text
    assert "broken.xml: not valid XML" in text
    assert "missing.xml: the image 'nowhere.jpg' it names is not there" in text
    assert "nobox.xml: object 1 ('cat') has no <bndbox>" in text
    assert "badnumber.xml: object 1 ('cat') needs numeric" in text


def coco_file(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "0.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "1.png")
    return coco_file(
        tmp_path,
        {
            "images": [
                {"id": 10, "file_name": "images/0.png", "width": 64, "height": 48},
                {"id": 11, "file_name": "images/1.png", "width": 64, "height": 48},
                {"id": 12, "file_name": "images/2.png", "width": 64, "height": 48},
                {"id": 13, "file_name": "images/1.png", "width": 64, "height": 48},
            ],
            "annotations": [
                {"id": 1, "image_id": 10, "category_id": 2, "bbox": [4.5, 6, 10, 20]},
                {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 64, 48]},
                {"id": 3, "image_id": 11, "category_id": 1, "bbox": [1, 2, 3, 4]},
                {"id": 4, "image_id": 12, "category_id": 1, "bbox": [1, 2, 3, 4]},
                {"id": 5, "image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4]},
                {"id": 6, "image_id": 11, "category_id": 7, "bbox": [1, 2, 3, 4]},
                {"id": 7, "image_id": 13, "category_id": 1, "bbox": [1, 2, -3, 4]},
            ],
            "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}],
        },
    )


def test_coco_boxes_and_problems(coco: Path) -> None:
    data = read_coco(coco)
    assert data.format == "coco"
    assert data.classes == ["disc", "square"]
    assert [item.image.name for item in data.items] == ["0.png"]
    (item,) = data.items
    assert item.size == (64, 48)
    # bbox [x, y, w, h] -> [x, y, x + w, y + h]
    assert item.objects == [
        GroundTruth("square", Box(4.5, 6, 14.5, 26)),
        GroundTruth("disc", Box(0, 0, 64, 48)),
    ]
    text = "\n".join(data.problems)
    assert len(data.problems) == 4
    assert "images/2.png: named in" in text and "not there" in text  # a missing image file
    assert "names the image id 99, which is not listed" in text
    assert "has the category id 7, which is not listed" in text  # image 11 is left out
    assert "malformed bbox [1, 2, -3, 4]" in text
    assert read_dataset(coco.parent).items == data.items  # a folder with one JSON file is COCO


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty annotation file"),
        ("   \n", "empty annotation file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not COCO JSON"),
        ('{"images": [], "annotations": [], "categories": []}', "empty annotation file: no images"),
        ('{"images": [{"id": 1, "file_name": "x.png"}]}', "no list 'annotations'"),
    ],
)
def test_unusable_coco_files_raise(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "gt.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        read_coco(path)
    assert str(path) in str(info.value)


def test_read_dataset_needs_annotations(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="no COCO"):
        read_dataset(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a COCO"):
        read_dataset(tmp_path / "notes.txt")


def test_check_boxes_against_the_image() -> None:
    item = Annotated(
        Path("x.jpg"),
        [
            GroundTruth("a", Box(0, 0, 100, 50)),
            GroundTruth("b", Box(-0.5, 10, 100.8, 20)),  # within a pixel of the edges: clipped
        ],
        size=(100, 50),
        source="x.xml",
    )
    objects, problems = check_boxes(item, (100, 50))
    assert problems == []
    assert objects[1].box.xyxy == (0, 10, 100, 20)
    outside = Annotated(Path("x.jpg"), [GroundTruth("a", Box(90, 10, 130, 20))], source="x.xml")
    _, problems = check_boxes(outside, (100, 50))
    assert problems == [
        "x.jpg: the box [90, 10, 130, 20] of 'a' (x.xml) lies outside the 100x50 image"
    ]
    _, problems = check_boxes(item, (50, 100))  # the declared size, turned: EXIF?
    assert "says 100x50, the image is 50x100 (rotated by its EXIF orientation?)" in problems[0]


def test_the_synthetic_set_is_seeded(tmp_path: Path) -> None:
    first = make_synthetic(tmp_path / "a", 6, seed=3)
    second = make_synthetic(tmp_path / "b", 6, seed=3)
    other = make_synthetic(tmp_path / "c", 6, seed=4)
    assert first.read_text() == second.read_text()
    for i in range(6):
        name = f"images/{i:05d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first.read_text() != other.read_text()
    data = read_dataset(first)
    assert data.problems == [] and len(data) == 6
    assert data.classes == ["disc", "square", "triangle", "cross"]
    for item in data.items:
        assert Image.open(item.image).size == (64, 64)
        assert len(item.objects) == 1


def test_synthetic_boxes_are_tight() -> None:
    # On a plain grey background, the pixels that differ from it are the object's.
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, truth = synthetic_image(rng, size=(80, 60), objects=2, backgrounds=[grey])
        arr = np.asarray(image).astype(int)
        assert len(truth) == 2 and truth[0].label != truth[1].label
        for obj in truth:
            b = obj.box
            x0, y0, x1, y1 = int(b.x0), int(b.y0), int(b.x1), int(b.y1)
            assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60
            # Anti-aliased edges may tint one more pixel around the box (mask below 0.5).
            window = arr[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1]
            ys, xs = np.nonzero((np.abs(window - 128) > 2).any(axis=2))
            oy, ox = max(0, y0 - 1), max(0, x0 - 1)
            assert ys.min() + oy >= y0 - 1 and ys.max() + oy <= y1
            assert xs.min() + ox >= x0 - 1 and xs.max() + ox <= x1
            # The box's own edge rows and columns hold object pixels.
            inside = (np.abs(arr[y0:y1, x0:x1] - 128) > 2).any(axis=2)
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )


def test_the_generator_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from camlens.cli import app

    args = ["synthetic", str(tmp_path / "set"), "--count", "3", "--seed", "7", "--size", "48"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == tmp_path / "set" / "annotations.json"
    assert path.read_text() == make_synthetic(tmp_path / "again", 3, seed=7, size=48).read_text()
    result = CliRunner().invoke(app, [*args, "--train", "--objects", "2"])
    assert result.exit_code == 2 and "--train makes one object per image" in result.stderr
    out = tmp_path / "trained"
    result = CliRunner().invoke(app, ["synthetic", str(out), "--count", "8", "--train"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"training set: {out / 'train' / 'annotations.json'}",
        f"held-out set: {out / 'test' / 'annotations.json'}",
        f"model: {out / 'model.pt'}",
    ]
    assert len(read_dataset(out / "test" / "annotations.json")) == 2  # a quarter of --count
    model = camlens.load_model("synthetic", weights=out / "model.pt")
    assert model.labels == ("disc", "square", "triangle", "cross")


def test_synthetic_masks_are_the_objects(tmp_path: Path) -> None:
    # Each mask's pixels of class k are exactly its object's: the box is their tight box, and on
    # a plain grey background every pixel far from grey lies in a mask (anti-aliased edges aside).
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    rng = np.random.default_rng(1)
    classes = ("disc", "square", "triangle", "cross")
    for _ in range(10):
        image, truth, mask = synthetic_scene(rng, size=(80, 60), objects=2, backgrounds=[grey])
        assert mask.shape == (60, 80) and mask.dtype == np.uint8
        assert sorted(np.unique(mask)) == sorted([0] + [classes.index(o.label) + 1 for o in truth])
        for obj in truth:
            ys, xs = np.nonzero(mask == classes.index(obj.label) + 1)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box.xyxy
        changed = (np.abs(np.asarray(image).astype(int) - 128) > 60).any(axis=2)
        assert changed.any() and (mask[changed] > 0).mean() > 0.97
    # synthetic_image is the same scene without its mask: same random draws, same pixels.
    a = synthetic_image(np.random.default_rng(5), size=(40, 40), backgrounds=[grey])
    b = synthetic_scene(np.random.default_rng(5), size=(40, 40), backgrounds=[grey])
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]


def test_the_generator_writes_masks(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from camlens.cli import app

    args = ["synthetic", str(tmp_path / "m"), "--count", "3", "--size", "48", "--objects", "2"]
    result = CliRunner().invoke(app, [*args, "--masks"])
    assert result.exit_code == 0, result.output
    plain = make_synthetic(tmp_path / "p", 3, size=48, objects=2)
    coco = json.loads((tmp_path / "m" / "annotations.json").read_text())
    assert [e.pop("mask_file") for e in coco["images"]] == [f"masks/{i:05d}.png" for i in range(3)]
    assert coco == json.loads(plain.read_text())  # the same set, with masks beside it
    data = read_dataset(tmp_path / "m" / "annotations.json")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for i, item in enumerate(data.items):
        assert (tmp_path / "m" / f"images/{i:05d}.png").read_bytes() == (
            tmp_path / "p" / f"images/{i:05d}.png"
        ).read_bytes()
        mask = np.asarray(Image.open(tmp_path / "m" / f"masks/{i:05d}.png"))
        assert mask.shape == (48, 48)
        for obj in item.objects:
            k = next(k for k, name in names.items() if name == obj.label)
            ys, xs = np.nonzero(mask == k)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box.xyxy
