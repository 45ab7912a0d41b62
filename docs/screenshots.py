"""Remake the documentation's screenshots of the page from the browser tests.

    python docs/screenshots.py          # or: make screenshots (a few minutes)

The Chromium tests take their screenshots anyway (each test's folder); with ``CAMLENS_SCREENSHOTS``
set they also copy them to one folder, from which the pictures below are cut: what the pages
show is what the tests check, so a picture is never older than the page it shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
TESTS = [
    "tests/test_serve_browser.py::test_explore_a_photo",
    "tests/test_serve_browser.py::test_phone",
    "tests/test_serve_browser.py::test_gallery_of_a_run",
    "tests/test_serve_targets_page.py",
    "tests/test_serve_kinds_page.py",
]


def crop(shot: Image.Image, height: int) -> Image.Image:
    return shot.crop((0, 0, shot.width, min(height, shot.height)))


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 20) -> Image.Image:
    out = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), "white"
    )
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        shots = Path(folder)
        env = {**os.environ, "CAMLENS_SCREENSHOTS": str(shots)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
        subprocess.run(command, cwd=DOCS.parent, env=env, check=True)

        def shot(name: str) -> Image.Image:
            return Image.open(shots / f"{name}.png").convert("RGB")

        pictures = {
            "serve.jpg": crop(shot("1-egyptian-cat"), 700),
            "serve-phone.jpg": side_by_side(shot("phone-1-map"), shot("phone-3-dark")),
            "gallery.jpg": crop(shot("gallery-1-run"), 700),
            "targets.jpg": crop(shot("versus"), 700),
            "serve-segments.jpg": crop(shot("segments"), 620),
            "serve-detections.jpg": crop(shot("detections"), 620),
        }
        for name, picture in pictures.items():
            picture.save(DOCS / name, quality=85, optimize=True)
            print(f"docs/{name}: {picture.width}x{picture.height}")


if __name__ == "__main__":
    main()
