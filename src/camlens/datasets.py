"""Ground truth for localization: readers for Pascal VOC XML and COCO JSON, and a synthetic set.

Both readers give a :class:`Dataset`: a list of :class:`Annotated` images, each with its objects
(a class name and a box in the image's pixels, in the continuous convention of
:mod:`camlens.localize`), plus the problems found on the way. A problem with one image (its file
missing, a malformed object, a box outside the image) is recorded with a message naming the file
and the problem, and that image is left out; the rest of the dataset is still read. Only a file
that cannot be read at all (empty, not XML / JSON, no images) raises :class:`DatasetError`.

Box conventions of the formats:

- Pascal VOC: ``<bndbox>`` holds 1-based, inclusive pixel indices, so ``xmin=1, xmax=W`` is the
  whole width; it becomes ``[xmin - 1, ymin - 1, xmax, ymax]``.
- COCO: ``bbox = [x, y, width, height]`` in continuous pixel coordinates; it becomes
  ``[x, y, x + width, y + height]``.

The synthetic set (:func:`make_synthetic`): textured shapes of a few classes pasted at random sizes
and places on crops of real photos (the sample photos of scikit-image and scikit-learn, offline),
with their exact boxes written as COCO JSON; seeded, so the same call makes the same files.
:class:`SyntheticCNN` and :func:`train_synthetic_model` make a small GAP -> Linear classifier for
it, trained on the CPU in well under a minute.

``python -m camlens.datasets OUT --count 200 --seed 0`` writes a synthetic set to ``OUT``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw
from torch import nn

from camlens.errors import CamlensError, DatasetError
from camlens.images import PreprocessConfig
from camlens.localize import Box

if TYPE_CHECKING:
    from camlens.models import Model

#: How far (in pixels) a ground-truth box may cross the image's edge before it is an error; boxes
#: within this margin are clipped (annotation tools often write ``xmin=0`` in 1-based VOC files).
EDGE_MARGIN = 1.0


@dataclass(frozen=True)
class GroundTruth:
    """One annotated object: a class name and its box in the image's pixels."""

    label: str
    box: Box


@dataclass
class Annotated:
    """An image and its objects. ``size`` is the (width, height) the annotation declares, if it
    does; ``source`` names the annotation file (and entry) for messages."""

    image: Path
    objects: list[GroundTruth]
    size: tuple[int, int] | None = None
    source: str = ""


@dataclass
class Dataset:
    """Annotated images read from ``path`` (``format`` "voc", "coco" or "synthetic"), the class
    names in the order met (COCO: the categories' order), and the problems met while reading."""

    path: Path
    format: str
    items: list[Annotated]
    classes: list[str]
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def check_boxes(item: Annotated, size: tuple[int, int]) -> tuple[list[GroundTruth], list[str]]:
    """The objects of ``item`` checked against the image's actual (width, height): boxes within
    :data:`EDGE_MARGIN` of the edges are clipped; a box further outside, or with no area, is a
    problem (returned as messages; any problem means the image should be left out). A declared size
    that differs from the image's is a problem too (often an EXIF rotation the annotator did not
    see)."""
    width, height = size
    problems = []
    if item.size is not None and tuple(item.size) != (width, height):
        hint = " (rotated by its EXIF orientation?)" if tuple(item.size) == (height, width) else ""
        problems.append(
            f"{item.image}: the annotation ({item.source}) says {item.size[0]}x{item.size[1]}, "
            f"the image is {width}x{height}{hint}"
        )
    checked = []
    for obj in item.objects:
        b = obj.box
        outside = (
            b.x0 < -EDGE_MARGIN
            or b.y0 < -EDGE_MARGIN
            or b.x1 > width + EDGE_MARGIN
            or b.y1 > height + EDGE_MARGIN
        )
        clipped = Box(max(b.x0, 0.0), max(b.y0, 0.0), min(b.x1, width), min(b.y1, height), b.score)
        if outside or clipped.width <= 0 or clipped.height <= 0:
            problems.append(
                f"{item.image}: the box [{_fmt(b.x0)}, {_fmt(b.y0)}, {_fmt(b.x1)}, {_fmt(b.y1)}] of "
                f"{obj.label!r} ({item.source}) lies outside the {width}x{height} image"
                if outside
                else f"{item.image}: the box of {obj.label!r} ({item.source}) has no area"
            )
            continue
        checked.append(GroundTruth(obj.label, _whole(clipped)))
    return checked, problems


def _whole(box: Box) -> Box:
    """Coordinates that are whole numbers as ints (for tidy JSON), the others as they are."""
    x0, y0, x1, y1 = (int(v) if float(v).is_integer() else v for v in box.xyxy)
    return Box(x0, y0, x1, y1, box.score)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


# --------------------------------------------------------------------------------------------------
# Pascal VOC


def read_voc(path: str | Path, images: str | Path | None = None) -> Dataset:
    """Pascal VOC XML annotations: ``path`` is a VOC folder (with ``Annotations/`` and
    ``JPEGImages/``), a folder of ``.xml`` files (searched recursively), or one ``.xml`` file.

    Each file's image is found by its ``<filename>``: in ``images`` if given, else next to the XML
    file, in ``JPEGImages/`` beside the annotations folder, or in ``path``. A file that cannot be
    parsed, names no image or an image that does not exist, or has a malformed object is a problem
    (the image is left out); the other files are still read."""
    root = Path(path)
    if root.is_file():
        files = [root]
        base = root.parent
    elif root.is_dir():
        folder = root / "Annotations" if (root / "Annotations").is_dir() else root
        files = sorted(folder.rglob("*.xml"))
        base = root
    else:
        raise DatasetError(f"{root}: no such file or folder")
    if not files:
        raise DatasetError(f"{root}: no Pascal VOC .xml annotation files found")
    items: list[Annotated] = []
    classes: list[str] = []
    problems: list[str] = []
    image_dir = Path(images) if images is not None else None
    for xml_file in files:
        try:
            item = _read_voc_file(xml_file, base, image_dir)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        for obj in item.objects:
            if obj.label not in classes:
                classes.append(obj.label)
        items.append(item)
    if not items and problems:
        problems.append(f"{root}: no usable annotation in {len(files)} files")
    return Dataset(root, "voc", items, classes, problems)


def _voc_image(xml_file: Path, name: str, base: Path, image_dir: Path | None) -> Path:
    candidates = (
        [image_dir / name]
        if image_dir is not None
        else [
            xml_file.parent / name,
            xml_file.parent.parent / "JPEGImages" / name,
            base / "JPEGImages" / name,
            base / name,
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{xml_file}: the image {name!r} it names is not there (looked in "
        + ", ".join(str(c.parent) for c in dict.fromkeys(candidates))
        + ")"
    )


def _read_voc_file(xml_file: Path, base: Path, image_dir: Path | None) -> Annotated:
    try:
        text = xml_file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{xml_file}: cannot read ({exc.strerror})") from None
    if not text.strip():
        raise DatasetError(f"{xml_file}: empty annotation file")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_file}: not valid XML ({exc})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{xml_file}: not a Pascal VOC annotation (root <{root.tag}>)")
    name = (root.findtext("filename") or "").strip()
    if not name:
        raise DatasetError(f"{xml_file}: no <filename>")
    image = _voc_image(xml_file, name, base, image_dir)
    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            size = (
                int(float(size_node.findtext("width", ""))),
                int(float(size_node.findtext("height", ""))),
            )
        except ValueError:
            size = None
        if size is not None and (size[0] <= 0 or size[1] <= 0):
            size = None  # VOC files sometimes say 0x0: no information
    objects = []
    for k, node in enumerate(root.iter("object")):
        label = (node.findtext("name") or "").strip()
        box_node = node.find("bndbox")
        if not label:
            raise DatasetError(f"{xml_file}: object {k + 1} has no <name>")
        if box_node is None:
            raise DatasetError(f"{xml_file}: object {k + 1} ({label!r}) has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(box_node.findtext(tag, "")) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DatasetError(
                f"{xml_file}: object {k + 1} ({label!r}) needs numeric xmin, ymin, xmax, ymax"
            ) from None
        if (
            not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax))
            or xmax < xmin
            or ymax < ymin
        ):
            raise DatasetError(
                f"{xml_file}: object {k + 1} ({label!r}) has the empty box "
                f"xmin={_fmt(xmin)} ymin={_fmt(ymin)} xmax={_fmt(xmax)} ymax={_fmt(ymax)}"
            )
        objects.append(GroundTruth(label, _whole(Box(xmin - 1, ymin - 1, xmax, ymax))))
    if not objects:
        raise DatasetError(f"{xml_file}: no <object> in the annotation")
    return Annotated(image, objects, size, xml_file.name)


# --------------------------------------------------------------------------------------------------
# COCO


def read_coco(path: str | Path, images: str | Path | None = None) -> Dataset:
    """COCO JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

    Image files are looked up by ``file_name`` in ``images`` if given, else beside the JSON file or
    in its ``images/`` folder. An image whose file is missing, an annotation naming an unknown image
    or category, or a malformed box is a problem (that image is left out); an empty or unreadable
    file, or one with no images, raises :class:`DatasetError`. Images without annotations are
    left out silently (COCO lists them on purpose)."""
    json_file = Path(path)
    try:
        text = json_file.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{json_file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_file}: cannot read ({exc})") from None
    if not text.strip():
        raise DatasetError(f"{json_file}: empty annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{json_file}: not COCO JSON (an object with images, annotations, categories)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file}: not COCO JSON: no list {key!r}")
    if not data["images"]:
        raise DatasetError(f"{json_file}: empty annotation file: no images listed")
    problems: list[str] = []
    categories: dict[Any, str] = {}
    for cat in data["categories"]:
        if isinstance(cat, dict) and "id" in cat and isinstance(cat.get("name"), str):
            categories[cat["id"]] = cat["name"]
        else:
            problems.append(f"{json_file}: a category without id and name: {cat!r}")
    image_dir = Path(images) if images is not None else None
    records: dict[Any, dict[str, Any]] = {}
    for entry in data["images"]:
        if (
            not isinstance(entry, dict)
            or "id" not in entry
            or not isinstance(entry.get("file_name"), str)
        ):
            problems.append(f"{json_file}: an image entry without id and file_name: {entry!r}")
            continue
        records[entry["id"]] = entry
    objects: dict[Any, list[GroundTruth]] = {}
    broken: set[Any] = set()
    for k, ann in enumerate(data["annotations"]):
        where = f"{json_file.name}, annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        if not isinstance(ann, dict):
            problems.append(f"{json_file}: annotation {k} is not an object")
            continue
        image_id = ann.get("image_id")
        if image_id not in records:
            problems.append(
                f"{json_file}: {where} names the image id {image_id!r}, which is not listed"
            )
            continue
        name = records[image_id]["file_name"]
        if ann.get("category_id") not in categories:
            problems.append(
                f"{name}: {where} has the category id {ann.get('category_id')!r}, which is not listed"
            )
            broken.add(image_id)
            continue
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            problems.append(f"{name}: {where} has a malformed bbox {bbox!r} (want [x, y, w, h])")
            broken.add(image_id)
            continue
        x, y, w, h = (float(v) for v in bbox)
        label = categories[ann["category_id"]]
        objects.setdefault(image_id, []).append(GroundTruth(label, _whole(Box(x, y, x + w, y + h))))
    items = []
    for image_id, entry in records.items():
        if image_id in broken or image_id not in objects:
            continue
        name = entry["file_name"]
        candidates = (
            [image_dir / name]
            if image_dir is not None
            else [json_file.parent / name, json_file.parent / "images" / name]
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            problems.append(
                f"{name}: named in {json_file} (image id {image_id!r}) but not there (looked in "
                + ", ".join(str(c.parent) for c in candidates)
                + ")"
            )
            continue
        size = None
        if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int):
            size = (entry["width"], entry["height"])
        items.append(
            Annotated(found, objects[image_id], size, f"{json_file.name}, image id {image_id}")
        )
    return Dataset(json_file, "coco", items, list(dict.fromkeys(categories.values())), problems)


def read_dataset(path: str | Path, images: str | Path | None = None) -> Dataset:
    """Ground truth from ``path``: a COCO ``.json`` file, a folder holding exactly one ``.json``
    file (COCO), or Pascal VOC ``.xml`` files (one file or a folder)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return read_coco(p, images)
        if p.suffix.lower() == ".xml":
            return read_voc(p, images)
        raise DatasetError(f"{p}: not a COCO .json or Pascal VOC .xml file")
    if not p.is_dir():
        raise DatasetError(f"{p}: no such file or folder")
    jsons = sorted(p.glob("*.json"))
    if len(jsons) == 1 and not (p / "Annotations").is_dir():
        return read_coco(jsons[0], images)
    if any(p.rglob("*.xml")):
        return read_voc(p, images)
    if len(jsons) > 1:
        raise DatasetError(
            f"{p}: several .json files ({', '.join(j.name for j in jsons)}): name the COCO file"
        )
    raise DatasetError(f"{p}: no COCO .json or Pascal VOC .xml annotations found")


# --------------------------------------------------------------------------------------------------
# The synthetic set

#: The synthetic classes: each a shape drawn with a texture of its own family (random colours,
#: scales and angles), so that the class shows everywhere on the object.
SYNTHETIC_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "cross")
_TEXTURES = {"disc": "stripes", "square": "checker", "triangle": "dots", "cross": "speckle"}
SUPERSAMPLE = 4


def sample_photos() -> list[Image.Image]:
    """The offline sample photos used as backgrounds: scikit-image's astronaut, chelsea, coffee,
    rocket and immunohistochemistry, and scikit-learn's china and flower, as far as installed."""
    photos: list[Image.Image] = []
    try:
        from skimage import data as skdata

        for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
            photos.append(Image.fromarray(getattr(skdata, name)()).convert("RGB"))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images  # type: ignore[import-untyped]

        photos.extend(Image.fromarray(a).convert("RGB") for a in load_sample_images().images)
    except ImportError:
        pass
    if not photos:
        raise CamlensError(
            "the synthetic set needs background photos: install scikit-image or scikit-learn "
            "(the dev extra), or pass backgrounds="
        )
    return photos


def _texture(kind: str, size: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """An RGB texture [size, size, 3] in [0, 1] of the family ``kind``, two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    first = rng.uniform(0.0, 1.0, 3)
    second = 1.0 - first + rng.uniform(-0.15, 0.15, 3)  # far from the first colour
    period = rng.uniform(0.14, 0.25) * size
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        on = ((xx * math.cos(angle) + yy * math.sin(angle)) / period) % 1.0 < 0.5
    elif kind == "checker":
        cell = period / 1.5
        on = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2) == 0
    elif kind == "dots":
        cell = period
        dx = (xx % cell) - cell / 2
        dy = (yy % cell) - cell / 2
        on = dx**2 + dy**2 < (0.3 * cell) ** 2
    elif kind == "speckle":
        on = rng.random((size, size)) < 0.5
    else:  # pragma: no cover - the classes above are all
        raise CamlensError(f"unknown texture {kind!r}")
    rgb = np.where(on[..., None], first, second)
    return np.clip(rgb, 0.0, 1.0)


def _shape_mask(shape: str, size: int) -> npt.NDArray[np.float64]:
    """An anti-aliased mask [size, size] in [0, 1] of ``shape`` filling the square."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    last = big - 1
    if shape == "disc":
        draw.ellipse((0, 0, last, last), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, last, last), fill=255)
    elif shape == "triangle":
        draw.polygon([(big / 2, 0), (last, last), (0, last)], fill=255)
    elif shape == "cross":
        third = big / 3
        draw.rectangle((third, 0, 2 * third, last), fill=255)
        draw.rectangle((0, third, last, 2 * third), fill=255)
    else:
        raise CamlensError(f"unknown synthetic shape {shape!r}: choose from {SYNTHETIC_CLASSES}")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _background(
    photos: Sequence[Image.Image], size: tuple[int, int], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """A random crop of a random photo, resized to ``size`` (width, height), as floats in [0, 1]."""
    photo = photos[int(rng.integers(len(photos)))]
    pw, ph = photo.size
    width, height = size
    aspect = width / height
    crop_h = int(rng.uniform(0.3, 1.0) * min(ph, pw / aspect))
    crop_w = max(1, int(crop_h * aspect))
    crop_h = max(1, crop_h)
    x0 = int(rng.integers(0, pw - crop_w + 1))
    y0 = int(rng.integers(0, ph - crop_h + 1))
    crop = photo.crop((x0, y0, x0 + crop_w, y0 + crop_h)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float64) / 255.0


def _place(
    side: int, size: tuple[int, int], taken: list[Box], rng: np.random.Generator
) -> tuple[int, int] | None:
    """A top-left corner for a ``side``-pixel object at least 2 pixels away from every taken box
    (50 tries)."""
    width, height = size
    gap = 2
    for _ in range(50):
        x = int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, height - side + 1))
        if all(
            x + side + gap <= t.x0 or t.x1 + gap <= x or y + side + gap <= t.y0 or t.y1 + gap <= y
            for t in taken
        ):
            return x, y
    return None


def synthetic_image(
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (64, 64),
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    objects: int = 1,
    scale: tuple[float, float] | None = None,
    backgrounds: Sequence[Image.Image] | None = None,
) -> tuple[Image.Image, list[GroundTruth]]:
    """One synthetic image (width, height = ``size``) with ``objects`` objects of random classes
    (different classes when there are several), each a square shape whose side is a random share
    ``scale`` of the image's shorter side (default 0.4 to 0.7 for one object, 0.25 to 0.45 for
    several), at a random place at least 2 pixels from the others (smaller if there is no room). Boxes are
    the tight boxes of each object's visible pixels (mask >= 0.5)."""
    photos = list(backgrounds) if backgrounds is not None else sample_photos()
    low_high = scale if scale is not None else ((0.4, 0.7) if objects == 1 else (0.25, 0.45))
    width, height = size
    canvas = _background(photos, size, rng)
    if objects > len(classes):
        raise CamlensError(f"{objects} objects of different classes need {objects} classes")
    chosen = rng.choice(len(classes), size=objects, replace=False)
    truth: list[GroundTruth] = []
    taken: list[Box] = []
    for index in chosen:
        label = classes[int(index)]
        side = max(4, int(rng.uniform(*low_high) * min(width, height)))
        where = _place(side, size, taken, rng)
        while where is None and side > 8:  # no room: a smaller object
            side = int(side * 0.8)
            where = _place(side, size, taken, rng)
        if where is None:
            continue
        x, y = where
        alpha = _shape_mask(label, side)
        texture = _texture(_TEXTURES.get(label, "stripes"), side, rng)
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = (
            region * (1 - alpha[..., None]) + texture * alpha[..., None]
        )
        rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
        cols = np.flatnonzero((alpha >= 0.5).any(axis=0))
        box = Box(x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)
        truth.append(GroundTruth(label, box))
        taken.append(Box(x, y, x + side, y + side))
    image = Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), "RGB")
    return image, truth


def make_synthetic(
    out_dir: str | Path,
    count: int = 200,
    *,
    seed: int = 0,
    size: tuple[int, int] | int = 64,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    objects: int = 1,
    scale: tuple[float, float] | None = None,
    backgrounds: Sequence[Image.Image] | None = None,
) -> Path:
    """Writes a synthetic localization set to ``out_dir``: ``images/00000.png``... and
    ``annotations.json`` (COCO: the boxes of every object, the class names as categories); returns
    the JSON's path. The same arguments write the same files (seeded with ``numpy``'s PCG64)."""
    if count < 1:
        raise CamlensError(f"count must be at least 1, not {count}")
    unknown = [c for c in classes if c not in SYNTHETIC_CLASSES]
    if unknown or not classes:
        raise CamlensError(f"unknown synthetic classes {unknown}: choose from {SYNTHETIC_CLASSES}")
    width, height = (size, size) if isinstance(size, int) else size
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = list(backgrounds) if backgrounds is not None else sample_photos()
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    category_id = {name: k + 1 for k, name in enumerate(classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        image, truth = synthetic_image(
            rng,
            size=(width, height),
            classes=classes,
            objects=objects,
            scale=scale,
            backgrounds=photos,
        )
        name = f"images/{i:05d}.png"
        image.save(out / name)
        images.append({"id": i, "file_name": name, "width": width, "height": height})
        for obj in truth:
            b = obj.box
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": i,
                    "category_id": category_id[obj.label],
                    "bbox": [b.x0, b.y0, b.width, b.height],
                    "area": b.area,
                    "iscrowd": 0,
                }
            )
    path = out / "annotations.json"
    path.write_text(
        json.dumps(
            {
                "info": {"description": f"camlens synthetic localization set, seed {seed}"},
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
            indent=1,
        )
        + "\n"
    )
    return path


# --------------------------------------------------------------------------------------------------
# A small CAM-ready classifier for the synthetic set


class SyntheticCNN(nn.Module):
    """Conv -> batch norm -> ReLU blocks (three 3x3, one 1x1) with two 2x2 max pools, then global
    average pooling and one linear layer: a CAM-ready head (``features`` gives
    [N, 2 * width, H / 4, W / 4])."""

    def __init__(self, num_classes: int, width: int = 24) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        # The receptive field of ``features`` is 18 pixels: small, so the maps stay sharp.
        self.features = nn.Sequential(
            block(3, width // 2),
            nn.MaxPool2d(2),
            block(width // 2, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width, kernel=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return out


#: The synthetic model's preprocessing: the whole image at 64x64, ImageNet mean and std.
SYNTHETIC_PREPROCESS = PreprocessConfig(input_size=(64, 64), interpolation="bilinear")


def _tensors(dataset: Dataset, preprocess: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from camlens.images import load_image
    from camlens.images import preprocess as prepare

    photos, labels = [], []
    for item in dataset.items:
        photos.append(load_image(item.image))
        labels.append(dataset.classes.index(item.objects[0].label))
    return prepare(photos, preprocess), torch.tensor(labels)


def train_synthetic_model(
    dataset: Dataset | str | Path,
    *,
    epochs: int = 12,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    width: int = 24,
    preprocess: PreprocessConfig = SYNTHETIC_PREPROCESS,
    threads: int | None = None,
) -> Model:
    """Trains a :class:`SyntheticCNN` on a synthetic set (each image's class: its first object's)
    with Adam, random horizontal flips and a one-cycle learning rate, seeded; returns it as a camlens
    :class:`~camlens.models.Model` (``load_model(net, preprocess=..., labels=classes)``).

    ``threads``: torch's intra-op threads while training (restored afterwards). Convolutions this
    small gain little from a second thread, and lose much when the CPU is shared: on 2 busy cores
    one thread trained 2.5-5x faster than two."""
    from camlens.models import load_model

    data = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    if not data.items:
        raise DatasetError(f"{data.path}: no images to train on")
    torch.manual_seed(seed)
    x, y = _tensors(data, preprocess)
    net = SyntheticCNN(len(data.classes), width)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _fit(net, x, y, optimizer, schedule, generator, epochs, batch_size)
    finally:
        torch.set_num_threads(before)
    return load_model(net, preprocess=preprocess, labels=list(data.classes))


def _fit(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    epochs: int,
    batch_size: int,
) -> None:
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            batch = x[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = nn.functional.cross_entropy(net(batch), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m camlens.datasets",
        description="Write a synthetic localization set (COCO JSON); with --train, a training "
        "set, a held-out set and a model trained on the first (OUT/train, OUT/test, OUT/model.pt).",
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=200, help="number of images (200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    parser.add_argument("--objects", type=int, default=1, help="objects per image (1)")
    parser.add_argument(
        "--train",
        action="store_true",
        help="also train the synthetic CNN on OUT/train (--count images) and write OUT/model.pt, "
        "for `camlens evaluate OUT/test/annotations.json --model synthetic --weights OUT/model.pt`",
    )
    args = parser.parse_args(argv)
    if not args.train:
        print(
            make_synthetic(
                args.out, args.count, seed=args.seed, size=args.size, objects=args.objects
            )
        )
        return
    train = make_synthetic(args.out / "train", args.count, seed=args.seed, size=args.size)
    test = make_synthetic(
        args.out / "test", max(args.count // 4, 1), seed=args.seed + 1, size=args.size
    )
    model = train_synthetic_model(train, seed=args.seed, threads=1)
    torch.save(model.net.state_dict(), args.out / "model.pt")
    print(f"training set: {train}\nheld-out set: {test}\nmodel: {args.out / 'model.pt'}")


__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PREPROCESS",
    "Annotated",
    "Dataset",
    "DatasetError",
    "GroundTruth",
    "SyntheticCNN",
    "check_boxes",
    "make_synthetic",
    "read_coco",
    "read_dataset",
    "read_voc",
    "sample_photos",
    "synthetic_image",
    "train_synthetic_model",
]

if __name__ == "__main__":
    _main()
