"""The files of a result, as bytes: the overlay and the coloured map (PNG), the map (``.npy``),
the photo (JPEG), and ``data:`` URLs of them. The overlays are :meth:`Explanation.overlay`'s
and the encoders :mod:`camlens.outputs`' (the same bytes as a run writes)."""

from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastapi.responses import Response
from PIL import Image
from scipy import ndimage

from camlens import render
from camlens.explanation import Explanation
from camlens.localize import boxes_from_map
from camlens.maps import upsample
from camlens.outputs import encode, npy_bytes
from camlens.types import Box


def overlay_png(explanation: Explanation, i: int, cmap: str, alpha: float, boxes: bool) -> bytes:
    """Map ``i`` over the photo, with its boxes when ``boxes`` (those the request asked for, else
    its largest region at the default threshold)."""
    full = explanation.map_at_image(i)
    drawn: bool | list[Box] = False
    if boxes:
        own = explanation.maps[i].boxes
        drawn = own if own is not None else boxes_from_map(full)
    picture = explanation.overlay(i, cmap=cmap, alpha=alpha, boxes=drawn, full=full)
    return encode(picture, "png")


def heatmap_png(explanation: Explanation, i: int, cmap: str, max_side: int | None = None) -> bytes:
    """Map ``i`` coloured, alone, at the photo's size, or at most ``max_side`` pixels on its
    longer side with the photo's shape (the page lays it over the photo, as large as it shows)."""
    width, height = explanation.size
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    m = explanation.maps[i]
    resized = upsample(m.map, size, mode=m.normalize).detach().float().cpu().numpy()
    return encode(Image.fromarray(render.colorize(resized, cmap)), "png")


def has_region(explanation: Explanation, i: int, mask: bytes | None = None) -> bool:
    """Whether map ``i`` explains a segment whose region can be drawn (:func:`region_png`): the
    pixels of its class, a box, or the uploaded ``mask``."""
    target = explanation.maps[i].target or {}
    if target.get("kind") != "segment":
        return False
    region = target.get("region")
    if region == "predicted":
        return explanation.segments is not None
    return isinstance(region, list) or (region == "mask" and mask is not None)


def region_png(
    explanation: Explanation, i: int, mask: bytes | None = None, max_side: int | None = None
) -> bytes:
    """The region map ``i``'s segment was explained over, at the photo's size (or at most
    ``max_side`` pixels on its longer side): a transparent PNG, the region's outline in white on
    a dark edge and the rest of the photo dimmed, to lay over the map."""
    width, height = explanation.size
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    target = explanation.maps[i].target or {}
    region = target.get("region")
    if isinstance(region, list):  # a box in the photo's pixels
        x0, y0, x1, y1 = region
        xs = (np.arange(w) + 0.5) * width / w
        ys = (np.arange(h) + 0.5) * height / h
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    else:
        if region == "mask" and mask is not None:
            with Image.open(io.BytesIO(mask)) as picture:
                grid = torch.from_numpy(np.asarray(picture.convert("L")) > 0)
        elif explanation.segments is not None:
            grid = explanation.segments.classes == explanation.maps[i].class_index
        else:
            raise ValueError(f"map {i} explains no region")
        sized = F.interpolate(grid[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        inside = sized.numpy() > 0.5
    line = max(1, round(max(h, w) / 250))
    edge = inside & ~ndimage.binary_erosion(inside, iterations=line, border_value=1)
    rim = ndimage.binary_dilation(inside, iterations=line) & ~inside
    pixels = np.zeros((h, w, 4), dtype=np.uint8)
    pixels[~inside] = (0, 0, 0, 90)
    pixels[rim] = (0, 0, 0, 200)
    pixels[edge] = (255, 255, 255, 255)
    return encode(Image.fromarray(pixels, "RGBA"), "png")


def map_npy(explanation: Explanation, i: int, size: str = "image") -> bytes:
    """Map ``i`` as float32 ``.npy`` [height, width] in [0, 1]: at the photo's size, or with
    ``size="layer"`` at the layer's own (as a run in the dataset format keeps it)."""
    full = explanation.maps[i].map if size == "layer" else explanation.map_at_image(i)
    return npy_bytes(full.detach().float().cpu().numpy())


def file_stem(explanation: Explanation, i: int | None = None) -> str:
    """The name of a result's file, without suffix: the photo's stem and, for map ``i``, its
    method, layer and class or target (``cat.gradcam.bn2.285``, ``ClassMap.tag``), in safe
    characters."""
    stem = Path(explanation.source).stem or "image"
    if i is not None:
        m = explanation.maps[i]
        stem = f"{stem}.{m.method}.{m.layer}.{m.tag}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def result_zip(
    explanation: Explanation, report: bytes, cmap: str, alpha: float, boxes: bool
) -> bytes:
    """Everything of a result in one zip: ``report.json`` (the answer), the photo as explained,
    and per map its overlay PNG (``cmap``, ``alpha``, ``boxes`` as the answer's overlays) and
    its ``.npy`` at the photo's size."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("report.json", report, zipfile.ZIP_DEFLATED)
        archive.writestr(f"{file_stem(explanation)}.jpg", photo_jpeg(explanation))
        for i in range(len(explanation.maps)):
            name = file_stem(explanation, i)
            archive.writestr(f"{name}.png", overlay_png(explanation, i, cmap, alpha, boxes))
            npy = map_npy(explanation, i)
            archive.writestr(f"{name}.npy", npy, zipfile.ZIP_DEFLATED, compresslevel=1)
    return buffer.getvalue()


def photo_jpeg(explanation: Explanation) -> bytes:
    buffer = io.BytesIO()
    explanation.image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def file_response(data: bytes, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """A file of a result: private, cached for an hour (a result never changes)."""
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", **(headers or {})},
    )
