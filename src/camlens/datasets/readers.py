"""Ground truth for localization: readers for Pascal VOC XML and COCO JSON.

Both readers give a :class:`Dataset`: a list of :class:`Annotated` images, each with its objects
(a class name and a box in the image's pixels, a :class:`camlens.types.Box` in its continuous
convention), plus the problems found on the way. A problem with one image (its file
missing, a malformed object, a box outside the image) is recorded with a message naming the file
and the problem, and that image is left out; the rest of the dataset is still read. Only a file
that cannot be read at all (empty, not XML / JSON, no images) raises :class:`DatasetError`.

Box conventions of the formats:

- Pascal VOC: ``<bndbox>`` holds 1-based, inclusive pixel indices, so ``xmin=1, xmax=W`` is the
  whole width; it becomes ``[xmin - 1, ymin - 1, xmax, ymax]``.
- COCO: ``bbox = [x, y, width, height]`` in continuous pixel coordinates; it becomes
  ``[x, y, x + width, y + height]``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlens.errors import DatasetError
from camlens.types import Box

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
    names in the order met (COCO: the categories' order), and the problems met while reading;
    ``left_out``: how many images the annotations list that a problem kept out of ``items``."""

    path: Path
    format: str
    items: list[Annotated]
    classes: list[str]
    problems: list[str] = field(default_factory=list)
    left_out: int = 0

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
    return Dataset(root, "voc", items, classes, problems, left_out=len(files) - len(items))


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


def _coco_id(value: object) -> bool:
    """Whether ``value`` can be a COCO id: a whole number or a text (``[1]``, ``{}``, ``true`` or
    ``null`` cannot, nor a fraction)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | str) or (isinstance(value, float) and value.is_integer())


def _pixels(value: Any) -> bool:
    """Whether ``value`` is a whole positive number of pixels (not ``true``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
        if isinstance(cat, dict) and _coco_id(cat.get("id")) and isinstance(cat.get("name"), str):
            categories[cat["id"]] = cat["name"]
        else:
            problems.append(f"{json_file}: a category without id and name: {cat!r}")
    image_dir = Path(images) if images is not None else None
    left_out = 0
    records: dict[Any, dict[str, Any]] = {}
    for entry in data["images"]:
        if (
            not isinstance(entry, dict)
            or not _coco_id(entry.get("id"))
            or not isinstance(entry.get("file_name"), str)
        ):
            problems.append(f"{json_file}: an image entry without id and file_name: {entry!r}")
            left_out += 1
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
        if not _coco_id(image_id) or image_id not in records:
            problems.append(
                f"{json_file}: {where} names the image id {image_id!r}, which is not listed"
            )
            continue
        name = records[image_id]["file_name"]
        if not _coco_id(ann.get("category_id")) or ann["category_id"] not in categories:
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
        if image_id in broken:
            left_out += 1
            continue
        if image_id not in objects:
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
            left_out += 1
            continue
        size: tuple[int, int] | None = None
        width, height = entry.get("width"), entry.get("height")
        if _pixels(width) and _pixels(height):
            size = (int(width), int(height))  # type: ignore[arg-type]  # checked
        items.append(
            Annotated(found, objects[image_id], size, f"{json_file.name}, image id {image_id}")
        )
    classes = list(dict.fromkeys(categories.values()))
    return Dataset(json_file, "coco", items, classes, problems, left_out=left_out)


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


__all__ = [
    "EDGE_MARGIN",
    "Annotated",
    "Dataset",
    "GroundTruth",
    "check_boxes",
    "read_coco",
    "read_dataset",
    "read_voc",
]
