"""A synthetic localization set: textured shapes of a few classes pasted at random sizes and
places on crops of real photos (the sample photos of scikit-image and scikit-learn, offline), with
their exact boxes written as COCO JSON (read back with :func:`camlens.datasets.read_dataset`)
and, if asked, their masks as one PNG per image; seeded, so the same call makes the same files.

The classes are those of the synthetic benchmark's CNN
(:data:`camlens.models.synthetic.SYNTHETIC_CLASSES`), which
:func:`camlens.train.train_synthetic_model` trains on such a set, on the CPU in well under a minute.
``camlens synthetic OUT --count 200 --seed 0 [--masks]`` writes a set to ``OUT``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from camlens.datasets.readers import GroundTruth
from camlens.errors import CamlensError
from camlens.models.synthetic import SYNTHETIC_CLASSES
from camlens.types import Box

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
    """One synthetic image and its objects: :func:`synthetic_scene` without the mask."""
    image, truth, _ = synthetic_scene(
        rng, size=size, classes=classes, objects=objects, scale=scale, backgrounds=backgrounds
    )
    return image, truth


def synthetic_scene(
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (64, 64),
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    objects: int = 1,
    scale: tuple[float, float] | None = None,
    backgrounds: Sequence[Image.Image] | None = None,
) -> tuple[Image.Image, list[GroundTruth], npt.NDArray[np.uint8]]:
    """One synthetic image (width, height = ``size``) with ``objects`` objects of random classes
    (different classes when there are several), each a square shape whose side is a random share
    ``scale`` of the image's shorter side (default 0.4 to 0.7 for one object, 0.25 to 0.45 for
    several), at a random place at least 2 pixels from the others (smaller if there is no room). Boxes are
    the tight boxes of each object's visible pixels (mask >= 0.5); the mask ``[height, width]``
    holds at each of those pixels its object's class as ``1 +`` its index in ``classes``, 0
    elsewhere (objects never overlap, so a class mask is also an object mask)."""
    photos = list(backgrounds) if backgrounds is not None else sample_photos()
    low_high = scale if scale is not None else ((0.4, 0.7) if objects == 1 else (0.25, 0.45))
    width, height = size
    canvas = _background(photos, size, rng)
    if objects > len(classes):
        raise CamlensError(f"{objects} objects of different classes need {objects} classes")
    chosen = rng.choice(len(classes), size=objects, replace=False)
    truth: list[GroundTruth] = []
    taken: list[Box] = []
    mask = np.zeros((height, width), dtype=np.uint8)
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
        mask[y : y + side, x : x + side][alpha >= 0.5] = int(index) + 1
        rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
        cols = np.flatnonzero((alpha >= 0.5).any(axis=0))
        box = Box(x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)
        truth.append(GroundTruth(label, box))
        taken.append(Box(x, y, x + side, y + side))
    image = Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), "RGB")
    return image, truth, mask


MAX_SIDE = 2048
"""The largest side of a synthetic image: one of 2048x2048 pixels takes 1.2 GB of memory and 45 s
to make (``camlens synthetic --count 1 --size 2048``, peak RSS, on 2 cores)."""


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
    masks: bool = False,
) -> Path:
    """Writes a synthetic localization set to ``out_dir``: ``images/00000.png``... and
    ``annotations.json`` (COCO: the boxes of every object, the class names as categories); returns
    the JSON's path. The same arguments write the same files (seeded with ``numpy``'s PCG64).

    ``masks``: also ``masks/00000.png``... (8-bit grey, the size of the image): each pixel the
    category id of the object there (1 + the class's index in ``classes``, as in the JSON), 0
    on the background; each image's entry in the JSON names its mask (``"mask_file"``). The
    images and boxes are the same with or without masks."""
    if count < 1:
        raise CamlensError(f"count must be at least 1, not {count}")
    unknown = [c for c in classes if c not in SYNTHETIC_CLASSES]
    if unknown or not classes:
        raise CamlensError(f"unknown synthetic classes {unknown}: choose from {SYNTHETIC_CLASSES}")
    width, height = (size, size) if isinstance(size, int) else size
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        raise CamlensError(f"size must be whole numbers of pixels, not {size!r}")
    if not 8 <= min(width, height) <= max(width, height) <= MAX_SIDE:
        raise CamlensError(
            f"size must be 8 to {MAX_SIDE} pixels a side, not {width}x{height} "
            f"(a {MAX_SIDE}x{MAX_SIDE} image takes about 1.2 GB of memory to make)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CamlensError(f"seed must be a whole number of 0 or more, not {seed!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = list(backgrounds) if backgrounds is not None else sample_photos()
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    category_id = {name: k + 1 for k, name in enumerate(classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        image, truth, mask = synthetic_scene(
            rng,
            size=(width, height),
            classes=classes,
            objects=objects,
            scale=scale,
            backgrounds=photos,
        )
        name = f"images/{i:05d}.png"
        image.save(out / name)
        entry: dict[str, Any] = {"id": i, "file_name": name, "width": width, "height": height}
        if masks:
            entry["mask_file"] = f"masks/{i:05d}.png"
            Image.fromarray(mask).save(out / entry["mask_file"])
        images.append(entry)
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


__all__ = ["make_synthetic", "sample_photos", "synthetic_image", "synthetic_scene"]
