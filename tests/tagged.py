"""A small multi-label image folder: coloured discs on grey noise, each image tagged with the
colours it shows (``red``, ``green``, ``blue``: each present with probability 1/2, at least one),
and its ``tags.csv`` (``file,tags``, tags separated by ``;``) as ``camlens train --tags`` reads it.
Used by tests/test_train_tags.py and tests/test_docs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230)}


def make_tagged_folder(
    root: Path, count: int, *, seed: int = 0, size: int = 64, csv: str = "tags.csv"
) -> dict[Path, frozenset[str]]:
    """``count`` PNG images in ``root`` and ``root/csv``; returns each image's tags."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines, truth = ["file,tags"], {}
    for i in range(count):
        present: list[str] = []
        while not present:
            present = [tag for tag in COLOURS if rng.random() < 0.5]
        image = Image.fromarray(rng.integers(90, 170, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for tag in present:
            r = int(rng.integers(size // 8, size // 5))
            x, y = (int(v) for v in rng.integers(r, size - r, 2))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[tag])
        name = f"{i:03d}.png"
        image.save(root / name)
        lines.append(f"{name},{';'.join(present)}")
        truth[root / name] = frozenset(present)
    (root / csv).write_text("\n".join(lines) + "\n")
    return truth
