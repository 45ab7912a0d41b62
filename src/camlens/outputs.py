"""What a run writes for each image, in one of two formats, and the row it adds to the run index
(:mod:`camlens.runs`).

- ``files`` (the default, the README's contract): ``STEM.json``, and per map an overlay at the
  photo's size (PNG unless asked otherwise) and the map as a float32 ``.npy`` at the photo's
  size; the panels and the grid when asked, as :meth:`Explanation.save` writes them. About 1.5 MB per map for a 640x480 photo, most of it the ``.npy``.
- ``dataset``: ``STEM.json`` and per map an overlay (JPEG, quality 90, unless asked otherwise);
  no ``.npy``: the map is kept exactly at the layer's resolution (``layer_map`` in the report and
  the index row), and :func:`camlens.maps.upsample` of it to the photo's size gives the ``.npy``
  of the files format bit for bit. About 60 KB per map for a 640x480 photo.

The report's ``map`` names the ``.npy`` (files) or is null (dataset). Every file is written to a
temporary file in the run's own temporary folder and renamed into place, the report last, and the
row goes to the index only after that, so a run killed at any moment leaves no partial file in
the layout and no row for an image whose files are not complete. The same image gives the same
bytes in every run (the overlays are encoded without timestamps).

The report is :meth:`Explanation.to_dict`'s, with the index's fields added per map; the overlays
are :meth:`Explanation.overlay`'s, the same as the server's and :meth:`Explanation.save`'s.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from camlens.config import OutputConfig
from camlens.errors import CamlensError
from camlens.explanation import AtImage, Explanation, file_tails
from camlens.explanation import grid as explanation_grid
from camlens.files import fit_stem
from camlens.localize import boxes_from_map
from camlens.models import Model
from camlens.runs import Row
from camlens.types import class_number

OVERLAY_SUFFIXES: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
PNG_LEVEL = 1
"""zlib level of the PNG overlays a run writes: 3.4x faster to encode than Pillow's default (6)
for files 13% larger (640x480 overlays: 52 ms and 412 KB against 177 ms and 366 KB, loaded)."""


def overlay_format(output: OutputConfig) -> str:
    """The overlay format a run writes: the one asked for, else PNG (files) or JPEG (dataset)."""
    if output.overlay_format is not None:
        return output.overlay_format
    return "jpeg" if output.format == "dataset" else "png"


def write_image(
    result: Explanation,
    stem: str,
    out: Path,
    output: OutputConfig,
    temp: Path,
    truth: dict[str, Any] | None = None,
) -> Row:
    """Writes the outputs of ``result`` under ``out`` at ``stem`` (a POSIX path relative to
    ``out``, without suffix) in ``output.format`` and returns its index row (paths relative to
    ``out``). ``temp``: the folder of temporary files, on the same file system as ``out``.
    ``truth``: the class its folder names, if any (:class:`FolderClasses`). A file that cannot be
    written is a :class:`~camlens.errors.CamlensError` naming it."""
    folder_rel, _, name = stem.rpartition("/")
    folder = out / folder_rel if folder_rel else out
    prefix = f"{folder_rel}/" if folder_rel else ""
    kind = overlay_format(output)
    suffix = OVERLAY_SUFFIXES[kind]
    tails = file_tails(result.maps)
    longest = max(
        [".json", ".grid.png", ".detections.png", *(t + ".panel.png" for t in tails)], key=len
    )
    name = fit_stem(name, longest)  # a long input name is cut, as Explanation.save cuts it
    files: list[tuple[str, str]] = []
    facts: list[AtImage] = []
    panels: list[str] = []
    extras: list[dict[str, Any]] = []
    for i, m in enumerate(result.maps):
        # one full-size map at a time, let go before the next: --top 200 of a 2.2 MP photo held
        # them all at once (2.8 GB); the report needs only what at_image keeps of each
        full_t = result.map_at_image(i).to(torch.float32)
        facts.append(result.at_image(i, full_t))
        full = np.ascontiguousarray(full_t.numpy())
        base = name + tails[i]
        found = boxes_from_map(full, threshold=output.threshold, mode="largest")
        if output.boxes is not None:
            m.boxes = (
                found
                if output.boxes == "largest"
                else boxes_from_map(full, threshold=output.threshold, mode=output.boxes)
            )
        picture = result.overlay(i, cmap=output.cmap, alpha=output.alpha, full=full_t)
        put(folder / f"{base}{suffix}", encode(picture, kind, output.quality), temp)
        map_name = ""
        if output.format == "files":
            put(folder / f"{base}.npy", npy_bytes(full), temp)
            map_name = f"{base}.npy"
        files.append((f"{base}{suffix}", map_name))
        if output.panels:
            panel = result.panel(i, cmap=output.cmap, alpha=output.alpha, raw=output.raw_panels)
            put(folder / f"{base}.panel.png", encode(panel, "png", output.quality), temp)
            panels.append(f"{base}.panel.png")
        extras.append(
            {
                "box": found[0].to_dict()["box"] if found else None,
                "box_score": round(found[0].score, 4) if found else None,
                "spread": round(float(np.count_nonzero(full >= 0.5)) / full.size, 4),
                "off_center": off_center(full),
                "layer_map": layer_values(m.map),
            }
        )
        del full, full_t, picture  # before the next map is made
    grid = None
    if output.grids:
        grid = f"{name}.grid.png"
        put(
            folder / grid,
            encode(
                explanation_grid([result], cmap=output.cmap, alpha=output.alpha),
                "png",
                output.quality,
            ),
            temp,
        )
    report = result.to_dict(files, panels=panels if output.panels else None, grid=grid, facts=facts)
    if result.segments is not None:  # the predicted segmentation over the photo
        segments = f"{name}.segments{suffix}"
        picture = result.segment_overlay(alpha=output.alpha)
        put(folder / segments, encode(picture, kind, output.quality), temp)
        report["segments_overlay"] = segments
    if result.detections is not None:  # a detector's boxes over the photo
        detections = f"{name}.detections{suffix}"
        put(folder / detections, encode(result.detection_overlay(), kind, output.quality), temp)
        report["detections_overlay"] = detections
    for entry, extra in zip(report["explanations"], extras, strict=True):
        if not entry["map"]:
            entry["map"] = None
        entry.update(extra)
    if truth is not None:
        report["truth"] = truth
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    put(folder / f"{name}.json", text.encode(), temp)
    row: Row = {"image": report["image"], "stem": stem, "report": f"{prefix}{name}.json"}
    row.update((k, v) for k, v in report.items() if k != "image")
    for entry in row["explanations"]:
        for key in ("overlay", "map", "panel"):
            if entry.get(key) is not None:
                entry[key] = prefix + entry[key]
    if row.get("grid") is not None:
        row["grid"] = prefix + row["grid"]
    for key in ("segments_overlay", "detections_overlay"):
        if row.get(key) is not None:
            row[key] = prefix + row[key]
    return row


def error_row(image: str, stem: str | None, problem: str) -> Row:
    """The index row of an image that could not be explained."""
    return {"image": image, "stem": stem, "error": problem}


# --- pixels and bytes ----------------------------------------------------------------------------


def encode(picture: Image.Image, kind: str, quality: int = 90) -> bytes:
    """The picture as PNG (zlib level :data:`PNG_LEVEL`), JPEG or WebP at ``quality``."""
    buffer = io.BytesIO()
    if kind == "png":
        picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    elif kind == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality)
    elif kind == "webp":
        picture.save(buffer, format="WEBP", quality=quality, method=0)
    else:
        raise CamlensError(f"unknown overlay format {kind!r}: choose png, jpeg or webp")
    return buffer.getvalue()


def npy_bytes(full: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, full.astype(np.float32, copy=False))
    return buffer.getvalue()


def put(path: Path, data: bytes, temp: Path) -> None:
    """``data`` into ``path``, whole or not at all: written to a new file in ``temp`` and renamed
    over ``path``. Its folder is created."""
    scratch = temp / f"{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(scratch, "wb") as handle:
            handle.write(data)
        os.replace(scratch, path)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise CamlensError(f"cannot write {path} ({exc.strerror or type(exc).__name__})") from None


# --- what the index says of a map ----------------------------------------------------------------


def off_center(full: npt.NDArray[np.float32]) -> float | None:
    """How far the map's center of mass is from the photo's center, as a share of the half
    diagonal (0: at the center, 1: in a corner); None for a map that is zero everywhere."""
    height, width = full.shape
    total = float(full.sum(dtype=np.float64))
    if not total > 0:
        return None
    columns = full.sum(axis=0, dtype=np.float64)
    rows = full.sum(axis=1, dtype=np.float64)
    x = float(columns @ (np.arange(width) + 0.5)) / total
    y = float(rows @ (np.arange(height) + 0.5)) / total
    value = math.hypot(x - width / 2, y - height / 2) / math.hypot(width / 2, height / 2)
    return round(value, 4)


def layer_values(layer_map: torch.Tensor) -> list[list[float]]:
    """A map at the layer's resolution as lists of rows, each value the shortest decimal that
    reads back as the same float32."""
    values = layer_map.detach().to("cpu", torch.float32).numpy()
    return [[_short(v) for v in row] for row in values]


def _short(value: np.float32) -> float:
    return float(np.format_float_positional(value, unique=True, trim="0"))


class FolderClasses:
    """The class an image's folder names, by label, synonym or WordNet id (``cat/1.jpg``,
    ``n02123045/1.jpg``), as ``{"class_index", "label"}``, or None; a folder named by a number,
    or by a name that fits several classes, names none. Looked up once per folder name."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.seen: dict[str, dict[str, Any] | None] = {}

    def __call__(self, path: Path) -> dict[str, Any] | None:
        name = path.parent.name
        if name not in self.seen:
            self.seen[name] = self._look_up(name)
        return self.seen[name]

    def _look_up(self, name: str) -> dict[str, Any] | None:
        if not name or class_number(name) is not None:
            return None
        try:
            index = self.model.class_index(name)
        except CamlensError:
            return None
        return {"class_index": index, "label": self.model.labels[index]}
