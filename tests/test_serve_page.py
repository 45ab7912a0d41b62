"""The page's static files, checked without a browser: the colorbars are the server's colormaps,
and every URL the page's JavaScript asks for is made in ``api.js`` (so a root path applies)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import render

STATIC = Path(__file__).parents[1] / "src" / "camlens" / "serve" / "static"


def colorbar(cmap: str) -> np.ndarray:
    """A colormap from 0 (left) to 1 (right), coloured as the server colours a map."""
    return render.colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :], cmap)


@pytest.mark.parametrize("cmap", render.COMMON_CMAPS)
def test_colorbars_are_the_servers_colormaps(cmap: str) -> None:
    path = STATIC / f"cmap-{cmap}.png"
    assert path.exists(), f"no colorbar for {cmap}: python {__file__} writes them"
    with Image.open(path) as strip:
        assert strip.size == (256, 1) and strip.mode == "RGB"
        assert np.array_equal(np.asarray(strip), colorbar(cmap)), (
            f"{path.name} is not {cmap} as render.colorize draws it: python {__file__} writes it"
        )


def test_no_colorbar_beyond_the_colormaps_offered() -> None:
    found = {p.name for p in STATIC.glob("cmap-*.png")}
    assert found == {f"cmap-{c}.png" for c in render.COMMON_CMAPS}


def test_every_url_comes_from_api_js() -> None:
    """No script but api.js names a server path or calls fetch; index.html's links are relative."""
    server_path = re.compile(r"""["'`]/(api|static|runs|docs)\b|\bfetch\(""")
    for script in STATIC.glob("*.js"):
        if script.name == "api.js":
            continue
        found = [line for line in script.read_text().splitlines() if server_path.search(line)]
        assert found == [], f"{script.name} makes its own URLs: {found}"
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"""(?:href|src)="/""", page) == []


if __name__ == "__main__":  # writes the colorbars
    for name in render.COMMON_CMAPS:
        Image.fromarray(colorbar(name)).save(STATIC / f"cmap-{name}.png", optimize=True)
    sys.exit(0)
