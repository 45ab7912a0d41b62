"""An explanation shows itself where users look at it: in Jupyter (HTML, with a PNG for front-ends
without HTML, through IPython's own display formatter) and in a matplotlib window."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens.explanation import DISPLAY_SIDE


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return out


LABELS = ["cat <tabby>", "dog & co", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def result(chelsea: np.ndarray) -> camlens.Explanation:
    config = camlens.PreprocessConfig(input_size=(32, 32))
    model = camlens.load_model(Tiny(), preprocess=config, labels=LABELS)
    return camlens.Explainer(model, ["gradcam", "cam"]).explain(chelsea, classes=[0, 1])


def images_in(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_html_shows_the_photo_each_overlay_and_the_top5(result: camlens.Explanation) -> None:
    page = result._repr_html_()
    pictures = images_in(page)
    assert len(pictures) == 1 + len(result.maps) == 5
    assert all(max(p.size) == DISPLAY_SIDE for p in pictures)  # the photo is 451 x 300
    assert pictures[0].size == (DISPLAY_SIDE, round(300 * DISPLAY_SIDE / 451))
    # the overlays are the explanation's own, downscaled
    first = np.asarray(result.overlay(0).resize(pictures[1].size), dtype=float)
    assert np.abs(first - np.asarray(pictures[1], dtype=float)).mean() < 6
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert (
        captions[1] == f"<b>cat &lt;tabby&gt;</b> {result.maps[0].score:.3f}<br>gradcam · features"
    )
    for caption, m in zip(captions[1:], result.maps, strict=True):
        assert caption.endswith(f"<br>{m.method} · features")
    assert [m.label for m in result.maps].index("dog & co") == 2
    assert captions[3].startswith("<b>dog &amp; co</b>")
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td><td>([\d.]+)</td></tr>", page)
    assert [int(r[0]) for r in rows] == [p.class_index for p in result.predictions]
    assert len(rows) == 5
    assert "<tabby>" not in page  # labels are escaped


def test_ipython_formats_it_and_the_pictures(result: camlens.Explanation) -> None:
    formatter = pytest.importorskip("IPython.core.formatters").DisplayFormatter()
    data, _ = formatter.format(result)
    assert data["text/html"] == result._repr_html_()
    png = Image.open(io.BytesIO(data["image/png"]))
    assert png.format == "PNG" and png.size == camlens.grid([result]).size
    for picture in (result.panel(1), camlens.grid([result])):  # PIL images: pictures too
        data, _ = formatter.format(picture)
        assert Image.open(io.BytesIO(data["image/png"])).size == picture.size


def test_show_draws_the_photo_and_overlays(
    result: camlens.Explanation, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    result.show(cmap="viridis")
    (fig,) = shown
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "<image 0>" and len(titles) == 5
    m = result.maps[1]
    assert titles[2] == f"{m.label} {m.score:.2f}\n{m.method}, features"
    plt.close(fig)
