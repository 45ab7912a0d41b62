"""A small two-class image folder with known object positions, from offline sample photos.

Each image is a random crop of a background photo (scikit-learn's china and flower, scikit-image's
astronaut, rocket, grass, gravel, brick and camera) with one object pasted at a random place and
scale: the head of the cat in ``skimage.data.chelsea()`` (class ``cat``) or the cup of
``skimage.data.coffee()`` (class ``coffee``). The object's box is returned for every file, so a test
can check where a class activation map peaks. Used by tests/test_train.py and
benchmarks/train_cache.py.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 excluded

# (photo, the object's box in it)
_OBJECTS: dict[str, tuple[str, Box]] = {
    "cat": ("chelsea", (30, 0, 400, 300)),
    "coffee": ("coffee", (75, 10, 480, 390)),
}


@cache
def _photo(name: str) -> Image.Image:
    from skimage import data

    pixels = np.asarray(getattr(data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


@cache
def _backgrounds() -> tuple[Image.Image, ...]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    photos += [_photo(n) for n in ("astronaut", "rocket", "grass", "gravel", "brick", "camera")]
    return tuple(photos)


def pasted_image(cls: str, rng: np.random.Generator, size: int = 224) -> tuple[Image.Image, Box]:
    """One ``size`` x ``size`` image of class ``cls`` and the pasted object's box."""
    backgrounds = _backgrounds()
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    side = int(rng.integers(size, min(background.size) + 1))
    left = int(rng.integers(background.width - side + 1))
    top = int(rng.integers(background.height - side + 1))
    canvas = background.crop((left, top, left + side, top + side)).resize((size, size))
    photo, box = _OBJECTS[cls]
    thing = _photo(photo).crop(box)
    width = int(size * rng.uniform(0.42, 0.56))
    height = round(width * thing.height / thing.width)
    thing = thing.resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        thing = thing.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = int(rng.integers(size - width + 1))
    y = int(rng.integers(size - height + 1))
    canvas.paste(thing, (x, y))
    return canvas, (x, y, x + width, y + height)


def make_pasted_folder(
    root: Path, per_class: int = 30, size: int = 224, seed: int = 0
) -> dict[Path, Box]:
    """``root/cat/*.jpg`` and ``root/coffee/*.jpg``, ``per_class`` each; returns every file's box."""
    rng = np.random.default_rng(seed)
    boxes: dict[Path, Box] = {}
    for cls in _OBJECTS:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, box = pasted_image(cls, rng, size)
            path = root / cls / f"{i:03d}.jpg"
            image.save(path, quality=90)
            boxes[path] = box
    return boxes
