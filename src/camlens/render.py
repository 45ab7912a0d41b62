"""Rendering maps: colour heatmaps, overlays on photos, side-by-side panels, grids and boxes.

A *map* is a 2-D float array in [0, 1] (numpy [H, W], or a 2-D torch tensor, which is detached and
copied to the CPU). Images are ``PIL.Image.Image``; any mode is converted to RGB, and every function
returns a new image, never modifying its input.

Colour convention: a value ``v`` gets the colormap's entry ``floor(v * N)`` (``N`` = the colormap's
number of colours, 256 for ``jet``; ``v == 1`` gets the last entry), exactly as
``matplotlib.colormaps[name](v)`` does, and its RGB floats are converted to uint8 as
``np.rint(rgba[:3] * 255)`` (round to nearest; matplotlib's own ``bytes=True`` truncates instead).
The colormap's alpha channel is ignored.

Matplotlib is used only through ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so
rendering is safe from several threads and registers no figures.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import matplotlib
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image, ImageDraw, ImageFont

from camlens.errors import CamlensError
from camlens.files import atomic_write
from camlens.options import COMMON_CMAPS as COMMON_CMAPS
from camlens.options import check_alpha as check_alpha
from camlens.options import check_cmap as check_cmap

__all__ = [
    "GridCell",
    "MapLike",
    "colorize",
    "draw_boxes",
    "grid",
    "overlay",
    "overlay_pixels",
    "panel",
    "raw_map",
    "save_png",
]

MapLike: TypeAlias = npt.ArrayLike | torch.Tensor
"""A 2-D map in [0, 1]: a numpy array (or nested sequence) or a torch tensor."""

RGB: TypeAlias = tuple[int, int, int]
Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Values this far outside [0, 1] (float rounding in upstream arithmetic) are clipped, not refused.
MAP_TOLERANCE = 1e-5

# Colormaps suggested when an unknown name is given.

# Pixels blended at once by overlay (whole rows), to bound the working memory on huge photos.
_BLEND_CHUNK_PIXELS = 1 << 20


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _as_map(map2d: MapLike, what: str = "map") -> npt.NDArray[np.float32]:
    """The map as a float32 [H, W] array in [0, 1]; CamlensError on anything else."""
    if isinstance(map2d, torch.Tensor):
        arr = map2d.detach().to(torch.float32).cpu().numpy()
    else:
        try:
            arr = np.asarray(map2d, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise CamlensError(f"{what}: not a numeric array ({exc})") from None
    if arr.ndim != 2:
        raise CamlensError(f"{what}: expected a 2-D map [H, W], got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise CamlensError(f"{what}: empty map of shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise CamlensError(f"{what}: {bad} value(s) are NaN or infinite; refusing to draw it")
    low, high = float(arr.min()), float(arr.max())
    if low < -MAP_TOLERANCE or high > 1 + MAP_TOLERANCE:
        raise CamlensError(
            f"{what}: values must lie in [0, 1], got range [{low:.6g}, {high:.6g}]; "
            "normalize the map first"
        )
    if low < 0 or high > 1:
        arr = np.clip(arr, 0, 1)
    return arr


def _as_rgb(image: Image.Image, what: str = "image", copy: bool = True) -> Image.Image:
    """The image in RGB mode (a copy when it already is, unless not ``copy``, so callers may draw
    on it)."""
    if not isinstance(image, Image.Image):
        raise CamlensError(f"{what}: expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise CamlensError(f"{what}: empty image of size {image.size}")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image.copy() if copy else image


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> npt.NDArray[np.uint8]:
    """The colormap's N colours as uint8 RGB [N, 3], read-only."""
    colormap = matplotlib.colormaps[check_cmap(cmap)]
    rgba = np.asarray(colormap(np.arange(colormap.N)), dtype=np.float64)
    lut = np.rint(rgba[:, :3] * 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


# --------------------------------------------------------------------------------------------------
# Colour and overlay


def colorize(map2d: MapLike, cmap: str = "jet") -> npt.NDArray[np.uint8]:
    """Colour a map in [0, 1] with a matplotlib colormap: uint8 RGB [H, W, 3].

    Equals ``np.rint(matplotlib.colormaps[cmap](map2d)[..., :3] * 255)``. An unknown colormap, or a
    map with NaN, infinities or values outside [0, 1], raises CamlensError.
    """
    lut = _lut(cmap)
    arr = _as_map(map2d)
    n = lut.shape[0]
    # Same index arithmetic as matplotlib's Colormap.__call__ on floats: floor(v * N), 1 -> N - 1.
    scaled = arr * np.float32(n)
    index = np.minimum(scaled, np.float32(n - 1)).astype(np.intp)
    colours: npt.NDArray[np.uint8] = lut[index]
    return colours


def _resize_map(arr: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Resize a map to ``size`` (width, height), bilinearly, values kept in [0, 1]."""
    width, height = size
    if arr.shape == (height, width):
        return arr
    # torch.nn.functional.interpolate, bilinear, align_corners=False: the same resampling as
    # camlens.maps.upsample, without renormalization (a convex combination stays in [0, 1]).
    tensor = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    big = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    resized: npt.NDArray[np.float32] = np.clip(big[0, 0].numpy(), 0, 1)
    return resized


@functools.lru_cache(maxsize=16)
def _blend_table(cmap: str, alpha: float) -> npt.NDArray[np.uint8]:
    """[3, 256, N]: channel c of photo value p blended with the colormap's entry q,
    ``rint((1 - alpha) * p + alpha * lut[q, c])`` in float64 (rounded half to even)."""
    lut = _lut(cmap).astype(np.float64)  # [N, 3]
    photo = np.arange(256, dtype=np.float64)[:, None]
    table = np.empty((3, 256, lut.shape[0]), dtype=np.uint8)
    for c in range(3):
        part = (1 - alpha) * photo + alpha * lut[None, :, c]
        table[c] = np.clip(np.rint(part), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def overlay_pixels(
    photo: npt.NDArray[np.uint8], full: npt.NDArray[np.float32], cmap: str, alpha: float
) -> npt.NDArray[np.uint8]:
    """The pixels of :func:`overlay`: a photo ([H, W, 3] uint8) and a map at its size ([H, W] in
    [0, 1]) blended, ``rint((1 - alpha) * photo + alpha * colorize(map))`` per channel, looked up
    in a table of the blended values of every photo value and colormap entry (three times faster
    than the arithmetic, and equal to it value for value); a chunk of rows at a time."""
    table = _blend_table(cmap, float(alpha))
    n = table.shape[2]
    out = np.empty_like(photo)
    rows = max(1, _BLEND_CHUNK_PIXELS // max(1, photo.shape[1]))
    for top in range(0, photo.shape[0], rows):
        part = np.clip(full[top : top + rows], 0, 1)
        index = np.minimum(part * np.float32(n), np.float32(n - 1)).astype(np.intp)
        for c in range(3):
            flat = photo[top : top + rows, :, c].astype(np.intp)
            flat *= n
            flat += index
            out[top : top + rows, :, c] = table[c].ravel()[flat]
    return out


def _photo_and_map(
    image: Image.Image, map2d: MapLike, cmap: str
) -> tuple[Image.Image, npt.NDArray[np.float32]]:
    """The RGB photo and the map at the photo's own size."""
    _lut(cmap)  # fail on a bad colormap name before any work
    photo = _as_rgb(image, copy=False)  # only read
    return photo, _resize_map(_as_map(map2d), photo.size)


def overlay(
    image: Image.Image, map2d: MapLike, *, cmap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """The coloured map laid over the photo, at the photo's own size.

    ``out = rint((1 - alpha) * photo + alpha * colorize(map))`` per channel (float64, rounded half
    to even; :func:`overlay_pixels`). A map of another size is first resized bilinearly to the
    photo's size.
    """
    alpha = check_alpha(alpha)
    photo, arr = _photo_and_map(image, map2d, cmap)
    return Image.fromarray(overlay_pixels(np.asarray(photo), arr, cmap, alpha))


# --------------------------------------------------------------------------------------------------
# Text helpers


def _font(size: int) -> Font:
    return ImageFont.load_default(size=max(1, size))


def _font_size(pixels: int, fraction: float = 0.045, smallest: int = 12) -> int:
    """A font size (pixels) proportional to an image dimension, never below ``smallest``."""
    return max(smallest, round(pixels * fraction))


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Font) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return float(right - left)


def _fit_text(
    draw: ImageDraw.ImageDraw, text: str, size: int, max_width: float, smallest: int = 10
) -> tuple[str, Font]:
    """Shrink the font (down to ``smallest``) and then shorten the text so it fits ``max_width``."""
    font = _font(size)
    while size > smallest and _text_width(draw, text, font) > max_width:
        size = max(smallest, int(size * 0.9))
        font = _font(size)
    if _text_width(draw, text, font) <= max_width:
        return text, font
    # Longest prefix that fits with "..." after it (binary search; at least one character).
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if _text_width(draw, text[:mid] + "...", font) <= max_width:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + "...", font


# --------------------------------------------------------------------------------------------------
# Panel


def panel(
    image: Image.Image,
    map2d: MapLike,
    *,
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    raw: MapLike | None = None,
) -> Image.Image:
    """Three tiles side by side, "photo | heatmap | overlay", each at the photo's own size, and a
    fourth when ``raw`` is given: that map (the layer's own grid, before upsampling) drawn by
    :func:`raw_map` at the photo's height.

    The result is ``3 * W`` wide (plus the fourth tile's width) and ``H`` high, plus a white strip
    above with ``title`` (font scaled with the photo's height) when a title is given.
    """
    alpha = check_alpha(alpha)
    photo, arr = _photo_and_map(image, map2d, cmap)
    width, height = photo.size
    heat = colorize(arr, cmap)
    blended = overlay_pixels(np.asarray(photo), arr, cmap, alpha)
    grid_tile = None if raw is None else raw_map(raw, height, cmap=cmap)

    strip = 0
    font_size = _font_size(height)
    if title:
        strip = round(font_size * 1.6)
    extra = 0 if grid_tile is None else grid_tile.width
    out = Image.new("RGB", (3 * width + extra, height + strip), (255, 255, 255))
    out.paste(photo, (0, strip))
    out.paste(Image.fromarray(heat), (width, strip))
    out.paste(Image.fromarray(blended), (2 * width, strip))
    if grid_tile is not None:
        out.paste(grid_tile, (3 * width, strip))
    if title:
        draw = ImageDraw.Draw(out)
        text, font = _fit_text(draw, title, font_size, max_width=out.width - font_size)
        draw.text((out.width / 2, strip / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return out


# The smallest height raw_map draws at (a smaller tile is drawn at this height, then shrunk).
_RAW_MIN_HEIGHT = 240
# Cell values are written in the cells up to this many cells.
_RAW_MAX_LABELLED = 196


def _cell_text(value: float) -> str:
    """A value in [0, 1] in two decimals, short: ``.53``, ``0``, ``1``."""
    text = f"{value:.2f}"
    return "1" if text == "1.00" else "0" if text == "0.00" else text[1:]


def raw_map(map2d: MapLike, height: int = 480, *, cmap: str = "jet") -> Image.Image:
    """A map at its own grid, as the CAM write-ups show it with ``plt.matshow``: one square cell
    per value (nearest neighbour, no smoothing), thin lines between the cells, the rows and
    columns numbered, a colorbar with the values, and the values themselves written in the cells
    when there are at most 196 (14 x 14). ``height``: the tile's height in pixels (its width
    follows the grid's aspect, plus the colorbar). Colours as :func:`colorize`, values in [0, 1].
    """
    _lut(cmap)
    arr = _as_map(map2d, "raw map")
    if isinstance(height, bool) or not isinstance(height, int) or height < 16:
        raise CamlensError(f"height must be an integer of at least 16 pixels, got {height!r}")
    rows, cols = arr.shape
    draw_height = max(height, _RAW_MIN_HEIGHT)
    dpi = 100.0
    side = draw_height * 0.78  # the grid's longer side, in pixels
    cell = side / max(rows, cols)
    grid_w, grid_h = cell * cols, cell * rows
    left, right, top = 0.11 * side, 0.30 * side, 0.11 * side
    draw_width = round(left + grid_w + right)
    fig = Figure(figsize=(draw_width / dpi, draw_height / dpi), dpi=dpi)
    fig.patch.set_facecolor("white")
    ax = fig.add_axes(
        (
            left / draw_width,
            (draw_height - top - grid_h) / draw_height,
            grid_w / draw_width,
            grid_h / draw_height,
        )
    )
    image = ax.imshow(
        arr, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", resample=False, aspect="equal"
    )
    font = max(6.0, min(11.0, side / 40)) * 72 / dpi * 1.4
    step_r = max(1, math.ceil(rows / 8))
    step_c = max(1, math.ceil(cols / 8))
    ax.set_xticks(range(0, cols, step_c))
    ax.set_yticks(range(0, rows, step_r))
    ax.tick_params(labelsize=font, length=2)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(-0.5, cols, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=max(0.3, min(1.0, cell / 40)))
    ax.tick_params(which="minor", length=0)
    ax.set_title(f"layer grid {rows}x{cols}", fontsize=font, pad=font * 1.8)
    if rows * cols <= _RAW_MAX_LABELLED and cell >= 14:
        cell_font = max(4.0, min(font, cell * 0.3 * 72 / dpi))
        lut = _lut(cmap).astype(np.float64) / 255
        for r in range(rows):
            for c in range(cols):
                v = float(arr[r, c])
                shade = lut[min(int(v * len(lut)), len(lut) - 1)]
                dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                ax.text(
                    c,
                    r,
                    _cell_text(v),
                    ha="center",
                    va="center",
                    fontsize=cell_font,
                    color="white" if dark else "black",
                )
    bar_ax = fig.add_axes(
        (
            (left + grid_w + 0.06 * side) / draw_width,
            (draw_height - top - grid_h) / draw_height,
            0.05 * side / draw_width,
            grid_h / draw_height,
        )
    )
    bar = fig.colorbar(image, cax=bar_ax)
    bar.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0])
    bar.ax.tick_params(labelsize=font)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    tile = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    fig.clear()
    if draw_height != height:
        width = max(1, round(tile.width * height / draw_height))
        tile = tile.resize((width, height), Image.Resampling.LANCZOS)
    return tile


# --------------------------------------------------------------------------------------------------
# Grid


@dataclass(frozen=True, eq=False)
class GridCell:
    """One cell of :func:`grid`: a photo, its map (None: the photo alone) and a title."""

    image: Image.Image
    map2d: MapLike | None
    title: str = ""


def _fit_within(image: Image.Image, tile: int) -> Image.Image:
    """The image shrunk (never enlarged) to fit in a ``tile`` x ``tile`` box, keeping its aspect."""
    width, height = image.size
    scale = min(1.0, tile / max(width, height))
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


#: A grid whose unwrapped picture is more than this many times wider than high, or higher than wide,
#: is wrapped (see :func:`grid`).
WRAP_ASPECT = 4.0


def _wrap_text(text: str, max_px: float, width_of: Callable[[str], float]) -> list[str]:
    """``text`` broken into lines no wider than ``max_px`` (as ``width_of`` measures them): at its
    own line breaks, then between words, and inside a word only when the word alone is too wide.
    Nothing is left out: the lines hold every character of ``text`` but the spaces they replace."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if width_of(candidate) <= max_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # a word wider than the line is cut where it has to be
                if line and width_of(line + char) > max_px:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


@dataclass(frozen=True)
class _GridLayout:
    """Where the rows of a grid go: ``per_line`` cells on each line (a row longer than that goes on
    over several lines), ``rows_per_block`` rows stacked in each block, blocks side by side."""

    per_line: int
    rows_per_block: int
    blocks: int

    def lines_per_row(self, n_cols: int) -> int:
        return math.ceil(n_cols / self.per_line)


def _grid_layout(
    n_rows: int,
    n_cols: int,
    cell_w: float,
    cell_h: float,
    left: float,
    top: float,
    pad: float,
    *,
    wrap: bool,
    keep_rows: bool,
) -> _GridLayout:
    """One block with every row on its line, unless that picture is more than :data:`WRAP_ASPECT`
    times wider than high or higher than wide: then the layout nearest to square (``keep_rows``:
    rows are not broken over lines, as column titles need)."""

    def aspect(layout: _GridLayout) -> float:
        lines = layout.rows_per_block * layout.lines_per_row(n_cols)
        width = layout.blocks * (left + layout.per_line * cell_w) + pad
        height = top + lines * cell_h + pad
        return width / height

    plain = _GridLayout(n_cols, n_rows, 1)
    if not wrap or 1 / WRAP_ASPECT <= aspect(plain) <= WRAP_ASPECT:
        return plain
    options = []
    for per_line in [n_cols] if keep_rows else range(n_cols, 0, -1):
        for rows_per_block in range(n_rows, 0, -1):
            blocks = math.ceil(n_rows / rows_per_block)
            if math.ceil(n_rows / blocks) == rows_per_block:  # no block left empty
                options.append(_GridLayout(per_line, rows_per_block, blocks))
    # nearest to square; among equals, rows kept whole, then fewer blocks (options' order)
    return min(options, key=lambda layout: round(abs(math.log(aspect(layout))), 9))


def grid(
    cells: Sequence[Sequence[GridCell | None]],
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    tile: int = 256,
    wrap: bool = True,
) -> Image.Image:
    """A rows x columns figure of overlays, each cell with its own title, as an RGB PIL image.

    For "images x classes", "image x layers" or "image x methods" figures; save it with
    :func:`save_png` (or ``.save()``). Each cell is drawn in a ``tile`` x ``tile`` pixel box keeping
    its photo's aspect; a None cell (or a row shorter than the longest) is left blank, and a cell
    whose ``map2d`` is None shows its photo alone. Row titles go on the left, column titles on top.
    Titles are never cut: a long one goes on over as many lines as it needs.

    ``wrap``: a grid that would be more than :data:`WRAP_ASPECT` times wider than high, or higher
    than wide (17 photos with one map each, one photo with 20 maps), is laid out nearer to square:
    its rows in several blocks side by side (each with its row titles, and column titles above),
    and, without column titles, a row too long for that broken over several lines.
    Drawn with a matplotlib ``Figure`` on an Agg canvas (no pyplot, no figures left registered).
    """
    fig = _grid_figure(
        cells,
        row_titles=row_titles,
        col_titles=col_titles,
        cmap=cmap,
        alpha=alpha,
        tile=tile,
        wrap=wrap,
    )
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    out = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    fig.clear()
    return out


def _grid_figure(
    cells: Sequence[Sequence[GridCell | None]],
    *,
    row_titles: Sequence[str] | None,
    col_titles: Sequence[str] | None,
    cmap: str,
    alpha: float,
    tile: int,
    wrap: bool,
) -> Figure:
    """The figure :func:`grid` draws (its texts are the titles, as drawn)."""
    alpha = check_alpha(alpha)
    _lut(cmap)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise CamlensError(f"tile must be an integer of at least 16 pixels, got {tile!r}")
    if isinstance(cells, GridCell) or not isinstance(cells, Sequence):
        raise CamlensError("cells must be a sequence of rows, each a sequence of GridCell or None")
    rows = [list(row) for row in cells]
    n_rows = len(rows)
    n_cols = max((len(row) for row in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise CamlensError("grid needs at least one row and one column of cells")
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is not None and not isinstance(cell, GridCell):
                raise CamlensError(
                    f"cells[{r}][{c}]: expected a GridCell or None, got {type(cell).__name__}"
                )
    if row_titles is not None and len(row_titles) != n_rows:
        raise CamlensError(f"row_titles has {len(row_titles)} entries for {n_rows} rows")
    if col_titles is not None and len(col_titles) != n_cols:
        raise CamlensError(f"col_titles has {len(col_titles)} entries for {n_cols} columns")

    # Layout in pixels; the figure is exactly width x height pixels at this dpi.
    dpi = 100.0
    title_px = max(9.0, tile * 0.045)  # cell title font size in pixels
    header_px = title_px * 1.2  # row and column title font size in pixels
    pad = max(4.0, tile * 0.03)

    def to_points(px: float) -> float:
        return px * 72.0 / dpi

    measure = RendererAgg(1, 1, dpi)

    def wrapped(text: str, px: float, bold: bool = False) -> list[str]:
        font = FontProperties(size=to_points(px), weight="bold" if bold else "normal")

        def width_of(line: str) -> float:
            return float(measure.get_text_width_height_descent(line, font, ismath=False)[0])

        return _wrap_text(str(text), tile - 2.0, width_of)

    titles = [[_lines_or_none(cell, title_px, wrapped) for cell in row] for row in rows]
    row_lines = [wrapped(t, header_px, bold=True) for t in row_titles or []]
    col_lines = [wrapped(t, header_px, bold=True) for t in col_titles or []]
    title_lines = max([1, *(len(t) for row in titles for t in row if t)])
    title_band = title_px * (1.25 * title_lines + 0.75)

    def header_band(lines: list[list[str]]) -> float:
        return header_px * (1.25 * max(len(t) for t in lines) + 0.95)

    left = header_band(row_lines) if row_titles is not None else 0.0
    top = header_band(col_lines) if col_titles is not None else 0.0
    cell_w = tile + pad
    cell_h = tile + title_band + pad
    layout = _grid_layout(
        n_rows,
        n_cols,
        cell_w,
        cell_h,
        left,
        top,
        pad,
        wrap=wrap,
        keep_rows=col_titles is not None,
    )
    wraps = layout.lines_per_row(n_cols)
    block_w = left + layout.per_line * cell_w
    width = math.ceil(layout.blocks * block_w + pad)
    height = math.ceil(top + layout.rows_per_block * wraps * cell_h + pad)

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    for r, row in enumerate(rows):
        block, slot = divmod(r, layout.rows_per_block)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            line, column = divmod(c, layout.per_line)
            # Top edge (pixels from the figure's top) of this cell's image box.
            box_top = top + pad + (slot * wraps + line) * cell_h + title_band
            photo = _fit_within(_as_rgb(cell.image, f"cells[{r}][{c}].image"), tile)
            if cell.map2d is not None:
                shown = overlay(photo, cell.map2d, cmap=cmap, alpha=alpha)
            else:
                shown = photo
            x0 = block * block_w + left + pad + column * cell_w
            ax = fig.add_axes(
                (x0 / width, 1 - (box_top + tile) / height, tile / width, tile / height)
            )
            # imshow keeps the photo's aspect: the axes shrink to it inside the tile box, anchored
            # at the top so that the titles of one row line up.
            ax.imshow(np.asarray(shown), aspect="equal", interpolation="antialiased")
            ax.set_anchor("N")
            ax.set_axis_off()
            lines = titles[r][c]
            if lines:
                ax.set_title(
                    "\n".join(lines),
                    fontsize=to_points(title_px),
                    pad=to_points(title_px * 0.4),
                    linespacing=1.25,
                    parse_math=False,
                )
    if row_titles is not None:
        for r, lines in enumerate(row_lines):
            block, slot = divmod(r, layout.rows_per_block)
            first = top + pad + slot * wraps * cell_h + title_band
            last = first + (wraps - 1) * cell_h + tile
            fig.text(
                (block * block_w + left / 2) / width,
                1 - (first + last) / 2 / height,
                "\n".join(lines),
                rotation=90,
                ha="center",
                va="center",
                multialignment="center",
                linespacing=1.25,
                fontsize=to_points(header_px),
                fontweight="bold",
                parse_math=False,
            )
    if col_titles is not None:
        for block in range(layout.blocks):
            for c, lines in enumerate(col_lines):
                x = block * block_w + left + pad + c * cell_w + tile / 2
                fig.text(
                    x / width,
                    1 - top / 2 / height,
                    "\n".join(lines),
                    ha="center",
                    va="center",
                    multialignment="center",
                    linespacing=1.25,
                    fontsize=to_points(header_px),
                    fontweight="bold",
                    parse_math=False,
                )
    return fig


def _lines_or_none(
    cell: GridCell | None, px: float, wrapped: Callable[[str, float], list[str]]
) -> list[str] | None:
    if cell is None or not cell.title:
        return None
    return wrapped(cell.title, px)


# --------------------------------------------------------------------------------------------------
# Boxes


def _as_boxes(boxes: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float64]:
    if isinstance(boxes, torch.Tensor):
        arr = boxes.detach().to(torch.float64).cpu().numpy()
    else:
        try:
            arr = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CamlensError(f"boxes: not a numeric array ({exc})") from None
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise CamlensError(f"boxes: expected [N, 4] as [x0, y0, x1, y1], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise CamlensError("boxes: some coordinates are NaN or infinite")
    bad = np.nonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))[0]
    if bad.size:
        i = int(bad[0])
        raise CamlensError(f"boxes[{i}] = {arr[i].tolist()}: needs x0 <= x1 and y0 <= y1")
    return arr


def _check_color(color: Sequence[int]) -> RGB:
    values = tuple(color)
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    ):
        raise CamlensError(f"color must be three integers in [0, 255], got {color!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def draw_boxes(
    image: Image.Image,
    boxes: npt.ArrayLike | torch.Tensor,
    *,
    labels: Sequence[str] | None = None,
    color: Sequence[int] = (0, 255, 0),
    width: int | None = None,
) -> Image.Image:
    """Draw boxes ``[x0, y0, x1, y1]`` (original pixels, floats allowed) on a copy of the image.

    Coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``, so the box ``[0, 0, W, H]`` frames
    the whole image. The outline is drawn inside the box (pixel columns ``round(x0)`` to
    ``round(x1) - 1``), clipped to the image. ``width`` defaults to ``max(2, max(W, H) / 200)``
    pixels. Each label, if given, is written on a box-coloured tag at the box's top-left corner.
    """
    out = _as_rgb(image)
    arr = _as_boxes(boxes)
    rgb = _check_color(color)
    if labels is not None and len(labels) != len(arr):
        raise CamlensError(f"labels has {len(labels)} entries for {len(arr)} boxes")
    img_w, img_h = out.size
    if width is None:
        width = max(2, round(max(img_w, img_h) / 200))
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise CamlensError(f"width must be a positive integer, got {width!r}")

    draw = ImageDraw.Draw(out)
    font_size = _font_size(max(img_w, img_h), fraction=0.025, smallest=12)
    font = _font(font_size)
    # Black text on light colours, white on dark ones.
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    text_fill = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    for i, (bx0, by0, bx1, by1) in enumerate(arr):
        x0 = max(0, round(bx0))
        y0 = max(0, round(by0))
        x1 = min(img_w, round(bx1)) - 1
        y1 = min(img_h, round(by1)) - 1
        if x1 < x0 or y1 < y0:
            continue  # empty, or entirely outside the image
        draw.rectangle((x0, y0, x1, y1), outline=rgb, width=width)
        if labels is not None and labels[i]:
            text = str(labels[i])
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font, anchor="lt")
            margin = max(1, font_size // 5)
            tag_w = tx1 - tx0 + 2 * margin
            tag_h = ty1 - ty0 + 2 * margin
            # Above the box when there is room, else just inside its top edge.
            tag_y = y0 - tag_h if y0 - tag_h >= 0 else y0
            tag_x = min(x0, max(0, img_w - tag_w))
            draw.rectangle((tag_x, tag_y, tag_x + tag_w - 1, tag_y + tag_h - 1), fill=rgb)
            draw.text(
                (tag_x + margin - tx0, tag_y + margin - ty0),
                text,
                fill=text_fill,
                font=font,
                anchor="lt",
            )
    return out


def class_color(index: int) -> RGB:
    """The color of class ``index`` in the pictures of segments and detections (matplotlib's
    ``tab20``, cycled)."""
    r, g, b = matplotlib.colormaps["tab20"](int(index) % 20)[:3]
    return (round(r * 255), round(g * 255), round(b * 255))


def detection_overlay(
    image: Image.Image,
    boxes: npt.ArrayLike | torch.Tensor,
    classes: Sequence[int],
    labels: Sequence[str],
) -> Image.Image:
    """``image`` with a detector's boxes ``[x0, y0, x1, y1]`` (the photo's pixels) drawn over it,
    each in its class's color (:func:`class_color`) with its tag ``labels[i]`` (the class's name
    and score, say): :func:`draw_boxes` once per class."""
    arr = _as_boxes(boxes)
    if len(classes) != len(arr) or len(labels) != len(arr):
        raise CamlensError(
            f"{len(arr)} boxes need as many classes and labels, not {len(classes)} and "
            f"{len(labels)}"
        )
    out = _as_rgb(image)
    for c in dict.fromkeys(int(c) for c in classes):
        mine = [i for i, k in enumerate(classes) if int(k) == c]
        out = draw_boxes(out, arr[mine], labels=[labels[i] for i in mine], color=class_color(c))
    return out


# --------------------------------------------------------------------------------------------------
# Saving


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save the image as PNG at ``path`` (whatever its suffix), creating parent folders; the file
    appears whole or not at all."""
    if not isinstance(image, Image.Image):
        raise CamlensError(f"{path}: expected a PIL.Image.Image, got {type(image).__name__}")
    return atomic_write(path, lambda temp: image.save(temp, format="PNG"))


def segment_overlay(
    image: Image.Image,
    segments: torch.Tensor | npt.NDArray[np.integer],
    labels: Sequence[str],
    *,
    alpha: float = 0.5,
    skip: Sequence[int] = (),
) -> Image.Image:
    """``image`` with a segmentation drawn over it: ``segments`` [h, w] (a class index per pixel,
    resized to the photo by nearest neighbour) in a color per class (matplotlib's ``tab20``),
    blended at ``alpha``; the classes of ``skip`` (the background) left as they are; each class
    named at the median of its pixels' coordinates, kept inside the photo."""
    check_alpha(alpha)
    photo = _as_rgb(image)
    index = torch.as_tensor(np.asarray(segments)).long()
    if index.ndim != 2:
        raise CamlensError(f"segments: a class index per pixel [h, w], not {tuple(index.shape)}")
    width, height = photo.size
    full = F.interpolate(index[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    classes = full.long().numpy()
    colors = np.array([class_color(i) for i in range(20)], dtype=np.float32)
    pixels = np.asarray(photo, dtype=np.float32).copy()
    drawn = [int(c) for c in np.unique(classes) if int(c) not in set(skip)]
    for c in drawn:
        where = classes == c
        pixels[where] = (1 - alpha) * pixels[where] + alpha * colors[c % 20]
    out = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = _font(_font_size(min(width, height)))
    for c in drawn:
        ys, xs = np.nonzero(classes == c)
        name = labels[c] if c < len(labels) else f"class {c}"
        half_w = _text_width(draw, name, font) / 2 + 2
        half_h = font.size / 2 + 2 if isinstance(font, ImageFont.FreeTypeFont) else 8
        x = min(max(float(np.median(xs)), half_w), max(half_w, width - half_w))
        y = min(max(float(np.median(ys)), half_h), max(half_h, height - half_h))
        draw.text(
            (x, y),
            name,
            fill=(255, 255, 255),
            font=font,
            anchor="mm",
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    return out
