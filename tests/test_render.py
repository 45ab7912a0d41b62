"""Tests of camlens.render: colours, overlays, panels, grids, boxes and saving."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from camlens import render
from camlens.errors import CamlensError
from camlens.render import GridCell, colorize, draw_boxes, grid, overlay, panel, save_png


def cmap_u8(value: float, cmap: str = "jet") -> tuple[int, int, int]:
    """A colormap colour converted to uint8 as render documents: rint(rgb * 255)."""
    rgba = matplotlib.colormaps[cmap](value)
    r, g, b = (int(np.rint(c * 255)) for c in rgba[:3])
    return (r, g, b)


def solid(size: tuple[int, int], colour: tuple[int, int, int] = (90, 120, 150)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noisy(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def smooth_map(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (h * w / 8)).astype(np.float32)
    out: np.ndarray = (m - m.min()) / (m.max() - m.min())
    return out


# --------------------------------------------------------------------------------------------------
# colorize


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_colorize_ends_are_colormap_ends(cmap: str) -> None:
    out = colorize(np.array([[0.0, 1.0]], dtype=np.float32), cmap)
    assert out.dtype == np.uint8
    assert out.shape == (1, 2, 3)
    assert tuple(out[0, 0]) == cmap_u8(0.0, cmap)
    assert tuple(out[0, 1]) == cmap_u8(1.0, cmap)


def test_colorize_jet_ends_are_dark_blue_and_dark_red() -> None:
    out = colorize(np.array([[0.0, 1.0]], dtype=np.float32))
    assert tuple(out[0, 0]) == (0, 0, 128)
    assert tuple(out[0, 1]) == (128, 0, 0)


def test_colorize_matches_matplotlib_everywhere() -> None:
    rng = np.random.default_rng(1)
    m = rng.random((17, 23)).astype(np.float32)
    m[0, :5] = [0.0, 1 / 256, 0.5, 255 / 256, 1.0]  # LUT boundaries
    expected = np.rint(matplotlib.colormaps["jet"](m)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(colorize(m), expected)


def test_colorize_accepts_torch_tensor_with_grad() -> None:
    m = torch.rand(5, 6, requires_grad=True)
    np.testing.assert_array_equal(colorize(m), colorize(m.detach().numpy()))


def test_colorize_tolerates_float_rounding_just_past_one() -> None:
    m = np.array([[1.0 + 1e-7, -1e-7]], dtype=np.float32)
    np.testing.assert_array_equal(colorize(m), colorize(np.array([[1.0, 0.0]], dtype=np.float32)))


def test_colorize_unknown_cmap_names_it_and_valid_ones() -> None:
    with pytest.raises(CamlensError, match="no_such_cmap") as info:
        colorize(np.zeros((2, 2), dtype=np.float32), "no_such_cmap")
    assert "jet" in str(info.value)
    assert "viridis" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_colorize_refuses_non_finite(bad: float) -> None:
    m = np.zeros((3, 3), dtype=np.float32)
    m[1, 1] = bad
    with pytest.raises(CamlensError, match="NaN or infinite"):
        colorize(m)


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_colorize_refuses_values_outside_unit_range(bad: float) -> None:
    m = np.zeros((3, 3), dtype=np.float32)
    m[0, 2] = bad
    with pytest.raises(CamlensError, match=r"\[0, 1\]"):
        colorize(m)


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4), (0, 3)])
def test_colorize_refuses_non_2d_or_empty(shape: tuple[int, ...]) -> None:
    with pytest.raises(CamlensError):
        colorize(np.zeros(shape, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# overlay

TINY_PHOTO = np.array(
    [
        [[10, 20, 30], [200, 100, 0], [255, 255, 255]],
        [[0, 0, 0], [17, 33, 251], [128, 64, 32]],
    ],
    dtype=np.uint8,
)  # height 2, width 3
TINY_MAP = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], dtype=np.float32)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.8])
def test_overlay_each_pixel_is_the_hand_computed_blend(alpha: float) -> None:
    out = np.asarray(overlay(Image.fromarray(TINY_PHOTO), TINY_MAP, alpha=alpha))
    assert out.shape == (2, 3, 3)
    for y in range(2):
        for x in range(3):
            heat = cmap_u8(float(TINY_MAP[y, x]))
            for ch in range(3):
                photo = int(TINY_PHOTO[y, x, ch])
                expected = round((1 - alpha) * photo + alpha * heat[ch])
                assert out[y, x, ch] == expected, (y, x, ch)


def test_overlay_alpha_zero_is_the_photo_and_alpha_one_the_colormap() -> None:
    photo = Image.fromarray(TINY_PHOTO)
    np.testing.assert_array_equal(np.asarray(overlay(photo, TINY_MAP, alpha=0.0)), TINY_PHOTO)
    np.testing.assert_array_equal(
        np.asarray(overlay(photo, TINY_MAP, alpha=1.0)), colorize(TINY_MAP)
    )


def test_overlay_small_map_on_non_square_photo_has_the_photo_size() -> None:
    photo = noisy((300, 200))
    out = overlay(photo, smooth_map(7, 7))
    assert out.size == (300, 200)
    assert out.mode == "RGB"


def test_overlay_resizes_the_map_bilinearly() -> None:
    m = smooth_map(7, 7)
    out = np.asarray(overlay(solid((30, 20)), m, alpha=1.0))
    resized = F.interpolate(
        torch.from_numpy(m)[None, None], size=(20, 30), mode="bilinear", align_corners=False
    )[0, 0]
    np.testing.assert_array_equal(out, colorize(resized.clamp(0, 1)))


def test_overlay_does_not_modify_the_photo_and_accepts_other_modes() -> None:
    photo = Image.fromarray(TINY_PHOTO)
    before = photo.tobytes()
    overlay(photo, TINY_MAP)
    assert photo.tobytes() == before
    grey = Image.new("L", (3, 2), 77)
    out = overlay(grey, TINY_MAP, alpha=0.0)
    assert out.mode == "RGB"
    assert np.all(np.asarray(out) == 77)


@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan")])
def test_overlay_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(CamlensError, match="alpha"):
        overlay(Image.fromarray(TINY_PHOTO), TINY_MAP, alpha=alpha)


def test_overlay_refuses_a_bad_map() -> None:
    with pytest.raises(CamlensError):
        overlay(Image.fromarray(TINY_PHOTO), TINY_MAP * 3)


# --------------------------------------------------------------------------------------------------
# panel


def test_panel_without_title_is_three_tiles() -> None:
    photo = noisy((40, 30))
    m = smooth_map(7, 7)
    out = panel(photo, m, alpha=0.4)
    assert out.size == (120, 30)
    arr = np.asarray(out)
    np.testing.assert_array_equal(arr[:, :40], np.asarray(photo))
    resized = F.interpolate(
        torch.from_numpy(m)[None, None], size=(30, 40), mode="bilinear", align_corners=False
    )[0, 0]
    np.testing.assert_array_equal(arr[:, 40:80], colorize(resized.clamp(0, 1)))
    np.testing.assert_array_equal(arr[:, 80:], np.asarray(overlay(photo, m, alpha=0.4)))


def test_panel_with_title_adds_a_strip_above() -> None:
    photo = noisy((40, 30))
    m = smooth_map(5, 5)
    out = panel(photo, m, title="Egyptian cat 0.77", cmap="viridis")
    width, height = out.size
    strip = height - 30
    assert width == 120
    assert strip > 0
    arr = np.asarray(out)
    np.testing.assert_array_equal(arr[strip:, :40], np.asarray(photo))
    np.testing.assert_array_equal(arr[strip:, 80:], np.asarray(overlay(photo, m, cmap="viridis")))
    title_strip = arr[:strip]
    assert (title_strip < 100).any()  # some dark text
    assert (title_strip == 255).all(axis=2).any()  # on a white background


def test_panel_title_strip_scales_with_photo_height() -> None:
    m = smooth_map(4, 4)
    small = panel(solid((60, 224)), m, title="tabby")
    large = panel(solid((60, 4000)), m, title="tabby")
    small_strip = small.height - 224
    large_strip = large.height - 4000
    assert large_strip > 5 * small_strip


def test_panel_long_title_does_not_crash() -> None:
    out = panel(solid((20, 20)), smooth_map(3, 3), title="a very long title " * 20)
    assert out.width == 60


# --------------------------------------------------------------------------------------------------
# grid


def test_grid_returns_an_image_growing_with_rows_and_columns() -> None:
    cell = GridCell(noisy((64, 48)), smooth_map(7, 7), "Egyptian cat 0.77")
    one = grid([[cell]], tile=64)
    wide = grid([[cell, cell, cell]], tile=64)
    tall = grid([[cell], [cell]], tile=64)
    assert isinstance(one, Image.Image)
    assert one.mode == "RGB"
    assert wide.width > one.width
    assert wide.height == one.height
    assert tall.height > one.height
    assert tall.width == one.width


def test_grid_none_cells_ragged_rows_and_titles() -> None:
    photo = noisy((80, 60))
    m = smooth_map(7, 7)
    cells: list[list[GridCell | None]] = [
        [GridCell(photo, m, "Egyptian cat 0.77"), None, GridCell(photo, None, "photo alone")],
        [GridCell(noisy((30, 90)), m, "$5 bill — a very, very, very long class title")],
    ]
    out = grid(
        cells,
        row_titles=["image A", "image B"],
        col_titles=["layer1", "layer2", "layer3"],
        cmap="inferno",
        alpha=0.6,
        tile=96,
    )
    assert out.width > 3 * 96
    assert out.height > 2 * 96


def test_grid_draws_the_overlay_keeping_the_photo_aspect() -> None:
    # A 4:1 photo under a map of ones at alpha 1 is a 4:1 block of the colormap's top colour.
    cell = GridCell(solid((400, 100)), np.ones((3, 3), dtype=np.float32), "")
    arr = np.asarray(grid([[cell]], alpha=1.0, tile=128))
    top = np.array(cmap_u8(1.0))
    ys, xs = np.nonzero((np.abs(arr.astype(int) - top) <= 2).all(axis=2))
    assert ys.size > 0
    block_w = xs.max() - xs.min() + 1
    block_h = ys.max() - ys.min() + 1
    assert abs(block_w - 128) <= 2
    assert abs(block_w / block_h - 4.0) < 0.2


def test_grid_leaves_no_pyplot_figures() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    cell = GridCell(noisy((32, 32)), smooth_map(4, 4), "x")
    for _ in range(3):
        grid([[cell, None], [None, cell]], row_titles=["a", "b"], tile=32)
    assert plt.get_fignums() == before == []


def test_grid_is_thread_safe() -> None:
    cell = GridCell(noisy((48, 32)), smooth_map(7, 7), "Egyptian cat 0.77")
    expected = np.asarray(grid([[cell, cell]], col_titles=["a", "b"], tile=48))
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(np.asarray(grid([[cell, cell]], col_titles=["a", "b"], tile=48)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_grid_bad_arguments() -> None:
    cell = GridCell(noisy((16, 16)), smooth_map(3, 3), "x")
    with pytest.raises(CamlensError, match="row_titles"):
        grid([[cell]], row_titles=["a", "b"])
    with pytest.raises(CamlensError, match="col_titles"):
        grid([[cell]], col_titles=["a", "b"])
    no_rows: list[list[GridCell | None]] = []
    with pytest.raises(CamlensError):
        grid(no_rows)
    with pytest.raises(CamlensError):
        grid([[cell]], alpha=2.0)
    with pytest.raises(CamlensError, match="nope"):
        grid([[cell]], cmap="nope")
    with pytest.raises(CamlensError, match="tile"):
        grid([[cell]], tile=0)


LONG = "grey whale, gray whale, devilfish, Eschrichtius gibbosus, Eschrichtius robustus 0.54"


def drawn(cells: list[list[GridCell | None]], **options: Any) -> tuple[Image.Image, Figure]:
    """The grid, and its figure drawn on a canvas (so that the texts have their extents)."""
    picture = grid(cells, **options)
    figure = render._grid_figure(
        cells,
        row_titles=options.get("row_titles"),
        col_titles=options.get("col_titles"),
        cmap="jet",
        alpha=0.5,
        tile=options.get("tile", 256),
        wrap=options.get("wrap", True),
    )
    FigureCanvasAgg(figure).draw()
    return picture, figure


def texts_of(figure: Figure) -> list[Text]:
    titles = [ax.title for ax in figure.axes if ax.title.get_text()]
    return titles + list(figure.texts)


def whole(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_grid_of_17_photos_is_near_square_with_every_title_whole() -> None:
    photo = noisy((120, 90))
    titles = [f"{LONG}\ngradcam" if i % 2 else f"espresso 0.{i:02d}" for i in range(17)]
    names = [f"photo_{i:02d}_from_the_holiday_album_of_2024.jpg" for i in range(17)]
    cells: list[list[GridCell | None]] = [[GridCell(photo, smooth_map(7, 7), t)] for t in titles]
    picture, figure = drawn(cells, row_titles=names)
    assert 2 / 3 <= picture.width / picture.height <= 3 / 2, picture.size
    # every title is drawn in full (its lines hold all its characters, no ellipsis), on lines that
    # fit their tile, and no two texts overlap
    shown = sorted(whole(t.get_text()) for t in texts_of(figure))
    assert shown == sorted(whole(t) for t in titles + names)
    boxes = [t.get_window_extent() for t in texts_of(figure)]
    assert all(b.width <= 256 + 1 for b in boxes[: len(titles)])
    assert all(b.height <= 256 + 1 for b in boxes[len(titles) :])  # the row titles, turned
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    # the titles stay clear of the pictures
    for ax in figure.axes:
        assert not any(ax.get_window_extent().overlaps(b) for b in boxes)
    strip, _ = drawn(cells, row_titles=names, wrap=False)  # the old layout, on request
    assert strip.height > 10 * strip.width


def test_grid_wraps_a_long_row_unless_columns_are_titled() -> None:
    cells: list[list[GridCell | None]] = [[GridCell(noisy((60, 60)), smooth_map(5, 5), "x")] * 20]
    wrapped, _ = drawn(cells, row_titles=["one photo, twenty maps"], tile=64)
    assert 2 / 3 <= wrapped.width / wrapped.height <= 3 / 2, wrapped.size
    titled, figure = drawn(cells, col_titles=[f"layer{i}" for i in range(20)], tile=64)
    assert titled.width > 10 * titled.height  # a row under column titles is not broken
    assert sum(t.get_text() == "layer3" for t in figure.texts) == 1


def test_grid_keeps_small_grids_as_they_are() -> None:
    cell = GridCell(noisy((64, 64)), smooth_map(5, 5), "a")
    for rows, cols in [(1, 3), (3, 1), (3, 6)]:
        picture = grid([[cell] * cols] * rows, tile=64, wrap=True)
        assert picture.size == grid([[cell] * cols] * rows, tile=64, wrap=False).size


def test_wrap_text_breaks_between_words_then_inside_a_word() -> None:
    def width_of(line: str) -> float:
        return 10.0 * len(line)

    wrap_text = render._wrap_text
    assert wrap_text("cab, hack, taxi, taxicab", 100, width_of) == [
        "cab, hack,",
        "taxi,",
        "taxicab",
    ]
    assert wrap_text("a b\nc", 100, width_of) == ["a b", "c"]
    assert wrap_text("abcdefghijklmnopqrstuvwxy z", 100, width_of) == [
        "abcdefghij",
        "klmnopqrst",
        "uvwxy z",
    ]


# --------------------------------------------------------------------------------------------------
# draw_boxes

GREY = (100, 100, 100)
RED = (255, 0, 0)


def test_draw_boxes_edges_take_the_colour_inside_does_not() -> None:
    photo = solid((100, 80), GREY)
    before = photo.tobytes()
    out = draw_boxes(photo, [[10, 20, 60, 70]], color=RED, width=2)
    assert photo.tobytes() == before  # the original is untouched
    assert out is not photo
    px = out.load()
    assert px is not None
    for xy in [(10, 20), (59, 69), (10, 45), (59, 45), (35, 20), (35, 69), (11, 21), (58, 68)]:
        assert px[xy] == RED, xy
    for xy in [(35, 45), (12, 22), (57, 67), (5, 5), (9, 45), (60, 45), (35, 70), (99, 79)]:
        assert px[xy] == GREY, xy


def test_draw_boxes_float_coordinates_are_rounded() -> None:
    photo = solid((100, 80), GREY)
    a = draw_boxes(photo, [[10.4, 19.6, 59.6, 70.4]], color=RED, width=2)
    b = draw_boxes(photo, [[10, 20, 60, 70]], color=RED, width=2)
    assert a.tobytes() == b.tobytes()


def test_draw_boxes_default_width_scales_with_image() -> None:
    photo = solid((2000, 1000), GREY)
    out = draw_boxes(photo, torch.tensor([[100.0, 100.0, 900.0, 900.0]]), color=RED)
    px = out.load()
    assert px is not None
    assert px[(109, 500)] == RED  # default width 2000 / 200 = 10 pixels
    assert px[(110, 500)] == GREY
    small = draw_boxes(solid((100, 80), GREY), [[10, 10, 50, 50]], color=RED).load()
    assert small is not None
    assert small[(11, 30)] == RED  # never thinner than 2
    assert small[(12, 30)] == GREY


def test_draw_boxes_labels_and_clipping() -> None:
    photo = solid((200, 150), GREY)
    out = draw_boxes(
        photo,
        [[20, 60, 120, 140], [-50, -50, 400, 400]],
        labels=["Egyptian cat 0.77", "everything"],
        color=RED,
        width=2,
    )
    arr = np.asarray(out)
    # The label tag sits just above the first box, in the box colour, with text on it.
    tag = arr[40:59, 20:60]
    assert (tag == RED).all(axis=2).any()
    assert (tag.max(axis=2) < 60).any() or (tag.min(axis=2) > 200).any()
    # The second box is clipped to the image: its outline runs along the image border.
    assert tuple(arr[149, 100]) == RED
    assert tuple(arr[75, 199]) == RED


def test_draw_boxes_no_boxes_returns_a_copy() -> None:
    photo = solid((10, 10), GREY)
    out = draw_boxes(photo, [])
    assert out is not photo
    assert out.tobytes() == photo.tobytes()


def test_draw_boxes_bad_arguments() -> None:
    photo = solid((50, 50), GREY)
    with pytest.raises(CamlensError, match="x0 <= x1"):
        draw_boxes(photo, [[30, 10, 20, 40]])
    with pytest.raises(CamlensError, match=r"\[N, 4\]"):
        draw_boxes(photo, [[1, 2, 3]])
    with pytest.raises(CamlensError, match="NaN"):
        draw_boxes(photo, [[1, 2, float("nan"), 4]])
    with pytest.raises(CamlensError, match="labels"):
        draw_boxes(photo, [[1, 2, 3, 4]], labels=["a", "b"])
    with pytest.raises(CamlensError, match="color"):
        draw_boxes(photo, [[1, 2, 3, 4]], color=(0, 300, 0))


# --------------------------------------------------------------------------------------------------
# save_png


def test_save_png_creates_folders_and_round_trips(tmp_path: Path) -> None:
    photo = noisy((13, 7))
    target = tmp_path / "a" / "b" / "out.png"
    saved = save_png(photo, str(target))
    assert saved == target
    assert isinstance(saved, Path)
    with Image.open(saved) as back:
        assert back.format == "PNG"
        np.testing.assert_array_equal(np.asarray(back.convert("RGB")), np.asarray(photo))
