"""`Explanation`: what the explainer found for one image, and how to show and save it."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from camlens import render
from camlens.errors import CamlensError
from camlens.files import atomic_write, fit_stem, output_folder
from camlens.maps import Normalization, energy_in_boxes, upsample
from camlens.targets import Detection
from camlens.types import Box, Prediction


@dataclass(frozen=True)
class CallStats:
    """What the batch an explanation came from cost: its ``images``, the model's
    ``forward_passes`` (one, more with test-time augmentation), ``backward_passes`` (zero where
    the gradients came from a GAP -> Linear head), ``perturbation_passes`` (rows the perturbation
    methods ran through the model or its replay), the ``replays`` used per layer and the wall
    time in ``seconds``."""

    images: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    perturbation_passes: int = 0
    seconds: float = 0.0
    replays: tuple[tuple[str, str], ...] = ()


@dataclass
class ClassMap:
    """One map: an image, a class, a method, a layer.

    ``map`` is at the layer's resolution [h, w], in [0, 1] (ReLU and min-max applied, or divided
    by its maximum when ``normalize`` is ``"max"``). ``flat`` is True when the method gave a
    constant map (returned as zeros). ``boxes``: boxes in the photo's pixels once localized
    (:func:`camlens.localize.add_boxes`), else None.

    ``target``: what was explained when it is not a plain class (see :mod:`camlens.targets`), as
    data (``{"kind": "contrast", "classes": [282, 285]}``), ``explained`` the same in words
    (``"tiger cat versus Egyptian cat"``) and ``value`` the target's score for this image (the
    contrast's ``y_a - y_b``, the similarity); ``class_index`` is then the first class the target
    is about (-1 for none: a similarity, a callable) and ``label`` the words.
    """

    class_index: int
    label: str
    score: float
    method: str
    layer: str
    map: torch.Tensor
    flat: bool = False
    boxes: list[Box] | None = None
    normalize: Normalization = "minmax"
    target: dict[str, Any] | None = None
    explained: str | None = None
    value: float | None = None

    @property
    def title(self) -> str:
        if self.target is not None and self.value is not None:
            return f"{self.explained or self.label} {self.value:.2f}"
        return f"{self.label} {self.score:.2f}"

    @property
    def tag(self) -> str:
        """What the map explains, in a file name: the class index, or the target (``282-vs-285``,
        ``output-0``, ``similarity``...), so that two maps of one image never share a name."""
        target = self.target
        if target is None or target.get("kind") == "class":
            return str(self.class_index)
        kind = str(target.get("kind"))
        if kind == "contrast":
            classes = [str(c) for c in target.get("classes", [])]
            return classes[0] + "-vs-" + "-".join(classes[1:])
        if kind == "output":
            return f"output-{target.get('index')}"
        if kind == "binary":
            return "positive" if target.get("positive") else "negative"
        if kind == "segment":  # a class's segment: its pixels, or a region given
            region = target.get("region")
            if isinstance(region, list):  # a box: 8-box-20-10-120-90
                return f"{self.class_index}-box-" + "-".join(str(v) for v in region)
            return f"{self.class_index}" + ("" if region == "predicted" else f"-{region}")
        if kind == "detection":  # a detection: its label and box, 1-det-12-30-200-410
            box = target.get("box") or []
            return f"{self.class_index}-det-" + "-".join(str(round(float(v))) for v in box)
        return kind

    @property
    def detection_box(self) -> tuple[float, float, float, float] | None:
        """The box of the detection this map explains (the photo's pixels), else None."""
        target = self.target
        if target is None or target.get("kind") != "detection":
            return None
        x0, y0, x1, y1 = (float(v) for v in target["box"])
        return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Segmentation:
    """A segmentation model's prediction for one image: ``classes`` [h, w], the class of each
    pixel of its output (the whole photo resized); ``labels`` names the classes, ``background``
    the background classes (not drawn over the photo)."""

    classes: torch.Tensor
    labels: tuple[str, ...]
    background: tuple[int, ...] = ()

    def shares(self) -> list[dict[str, Any]]:
        """The classes present, most pixels first: ``class_index``, ``label``, ``share``."""
        counts = torch.bincount(self.classes.flatten().long(), minlength=len(self.labels))
        total = int(counts.sum())
        order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
        return [
            {"class_index": c, "label": self.labels[c], "share": round(int(counts[c]) / total, 6)}
            for c in order
            if int(counts[c]) > 0
        ]


@dataclass(frozen=True)
class Detected:
    """One of a detector's detections: ``box`` ``(x0, y0, x1, y1)`` in the photo's pixels, its
    class (``class_index``, ``label``) and ``score``."""

    box: tuple[float, float, float, float]
    class_index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "class_index": self.class_index,
            "label": self.label,
            "score": self.score,
        }

    def target(self) -> Detection:
        """The :class:`~camlens.targets.Detection` that explains it."""
        return Detection(self.box, self.class_index, self.score)


@dataclass(init=False)
class Explanation:
    """The predictions and maps of one image.

    ``image`` is the photo, upright, at its own size (for a tensor input, the input itself
    de-normalized); ``source`` names it (a path, or ``<image N>``). The constructor also takes a
    function that makes the image, called on first use (the explainer's tensor inputs: most
    callers of a tensor batch never look at the pictures). ``stats``: what the batch it came from
    cost (passes, time). ``scores``: how the model scored the predictions (``softmax``,
    ``sigmoid`` or ``raw``, see :func:`camlens.load_model`). ``skipped``: (method, layer, reason)
    of each method the explainer left out at a layer where it does not apply (CAM where no
    GAP -> Linear head reads the layer). ``segments``: a segmentation model's predicted
    segmentation (None for a classifier); the report lists its classes with their share of the
    pixels (``segmentation``) and :meth:`segment_overlay` draws it. ``detections``: a
    detector's detections scored at least the explainer's ``min_score``, best first, boxes in
    the photo's pixels (:class:`Detected`; None for other models); the report lists them
    (``detections``).
    """

    source: str
    input_size: tuple[int, int]  # (height, width) of the model input
    model: str
    predictions: list[Prediction]
    maps: list[ClassMap]
    stats: CallStats
    skipped: tuple[tuple[str, str, str], ...]

    def __init__(
        self,
        source: str,
        image: Image.Image | Callable[[], Image.Image],
        input_size: tuple[int, int],
        model: str,
        predictions: list[Prediction],
        maps: list[ClassMap] | None = None,
        stats: CallStats | None = None,
        scores: str = "softmax",
        skipped: Sequence[tuple[str, str, str]] = (),
        segments: Segmentation | None = None,
        detections: Sequence[Detected] | None = None,
    ) -> None:
        self.source = source
        self._image = image
        self.input_size = input_size
        self.model = model
        self.predictions = predictions
        self.maps = maps if maps is not None else []
        self.stats = stats or CallStats()
        self.scores = scores
        self.skipped = tuple(skipped)
        self.segments = segments
        self.detections = None if detections is None else list(detections)

    def segment_overlay(self, *, alpha: float = 0.5) -> Image.Image:
        """The photo with the predicted segmentation drawn over it, a color per class and its
        name (the background left as it is); an error for a classifier's explanation."""
        if self.segments is None:
            raise CamlensError(f"{self.source}: a classifier's explanation has no segmentation")
        seg = self.segments
        return render.segment_overlay(
            self.image, seg.classes, seg.labels, alpha=alpha, skip=seg.background
        )

    def detection_overlay(self) -> Image.Image:
        """The photo with the detector's detections drawn over it: each box in its class's
        color, tagged with its class and score; an error for another model's explanation."""
        if self.detections is None:
            raise CamlensError(f"{self.source}: only a detector's explanation has detections")
        return render.detection_overlay(
            self.image,
            np.array([d.box for d in self.detections], dtype=np.float64).reshape(-1, 4),
            [d.class_index for d in self.detections],
            [f"{d.label} {d.score:.2f}" for d in self.detections],
        )

    @property
    def image(self) -> Image.Image:
        if not isinstance(self._image, Image.Image):
            self._image = self._image()
        return self._image

    @property
    def size(self) -> tuple[int, int]:
        """The photo's (width, height)."""
        return self.image.size

    def map_at_input(self, i: int = 0) -> torch.Tensor:
        """Map ``i`` upsampled (bilinear) to the model's input size, [H_in, W_in] in [0, 1]."""
        return upsample(self.maps[i].map, self.input_size, mode=self.maps[i].normalize)

    def map_at_image(self, i: int = 0) -> torch.Tensor:
        """Map ``i`` upsampled (bilinear) to the photo's own size, [height, width] in [0, 1]."""
        count = len(self.maps)
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise CamlensError(
                f"map {i!r} is not one of this explanation's {count} maps (0..{count - 1})"
            )
        width, height = self.size
        return upsample(self.maps[i].map, (height, width), mode=self.maps[i].normalize)

    def overlay(
        self,
        i: int = 0,
        *,
        cmap: str = "jet",
        alpha: float = 0.5,
        boxes: bool | Sequence[Box] = True,
        full: torch.Tensor | None = None,
    ) -> Image.Image:
        """Map ``i`` laid over the photo, at the photo's own size, with boxes, each labelled with
        the class and its score: ``boxes=True`` the map's own (those
        :func:`camlens.localize.add_boxes` gave it, if any), ``False`` none, or the boxes given;
        a detection's map also has the detection's box, in white, with its class and score.
        ``full``: :meth:`map_at_image` of the map, when the caller has it already. Every overlay
        camlens writes or serves is drawn here."""
        full = self.map_at_image(i) if full is None else full
        picture = render.overlay(self.image, self._numpy(full), cmap=cmap, alpha=alpha)
        m = self.maps[i]
        drawn = (m.boxes or []) if boxes is True else (boxes or [])
        if drawn:
            picture = render.draw_boxes(
                picture, [b.xyxy for b in drawn], labels=[m.title] * len(drawn)
            )
        box = m.detection_box
        if box is not None:  # a detection's map: its own box, its class and score, in white
            picture = render.draw_boxes(
                picture, [box], labels=[self._detection_tag(i)], color=(255, 255, 255)
            )
        return picture

    def _detection_tag(self, i: int) -> str:
        """The class and score of the detection map ``i`` explains (``car 0.93``)."""
        target = self.maps[i].target or {}
        score = float(target.get("score", 0.0))
        for d in self.detections or ():
            if list(d.box) == list(target.get("box", ())) and d.class_index == target.get("label"):
                return f"{d.label} {score:.2f}"
        return f"{self.maps[i].label} {score:.2f}"  # a detection given, not found

    def panel(
        self, i: int = 0, *, cmap: str = "jet", alpha: float = 0.5, raw: bool = False
    ) -> Image.Image:
        """ "photo | heatmap | overlay" for map ``i``, titled with its class and method; ``raw``:
        and a fourth tile, the map at the layer's own grid before upsampling, a cell per value
        with a colorbar (:func:`camlens.render.raw_map`)."""
        m = self.maps[i]
        title = f"{m.title}  ({m.method}, {m.layer})"
        return render.panel(
            self.image,
            self._numpy(self.map_at_image(i)),
            title=title,
            cmap=cmap,
            alpha=alpha,
            raw=self._numpy(m.map) if raw else None,
        )

    def at_image(self, i: int = 0, full: torch.Tensor | None = None) -> AtImage:
        """What the report says of map ``i`` at the photo's size: flat there, its peak and, for a
        detection's map, ``energy_in_box``: the share of its sum inside the detection's box.
        ``full``: :meth:`map_at_image` of the map, when the caller has it already (a writer that
        makes each full-size map once, and lets it go before the next)."""
        full = self.map_at_image(i) if full is None else full
        box = self.maps[i].detection_box
        energy = None if box is None else round(energy_in_boxes(full, [box]), 6)
        return AtImage(self.maps[i].flat or not bool(full.max() > 0), _peak(full), energy)

    def peak(self, i: int = 0) -> tuple[int, int]:
        """(x, y) of the maximum of map ``i`` in the photo's pixels."""
        return _peak(self.map_at_image(i))

    def to_dict(
        self,
        files: Sequence[tuple[str, str]] | None = None,
        *,
        panels: Sequence[str] | None = None,
        grid: str | None = None,
        facts: Sequence[AtImage] | None = None,
        maps: bool = True,
    ) -> dict[str, Any]:
        """The JSON report, the one serializer of every result camlens writes or sends (the files
        of `camlens explain` and of a run, the server's answers, `camlens localize`'s lines):
        the image, its size, the model, the top-5 predictions and, per map, its class, score,
        method, layer, whether it is flat, its peak, its grid (``map_shape``) and its boxes when
        it has them. ``files``: (overlay, map) per map, ``panels`` the panel picture of each map,
        ``grid`` the picture of all maps; ``facts``: :meth:`at_image` of each map, when the
        caller has them already (else each map is upsampled here, one at a time); ``maps=False``: no
        ``explanations``. A map's ``flat`` says it is constant (zeros) at the photo's own size:
        flat at the layer, or made so by the resizing (a picture of one pixel)."""
        width, height = self.size
        explanations = []
        for i, m in enumerate(self.maps if maps else ()):
            fact = facts[i] if facts is not None else self.at_image(i)
            entry: dict[str, Any] = {
                "class_index": m.class_index,
                "label": m.label,
                "score": m.score,
                "method": m.method,
                "layer": m.layer,
                "flat": fact.flat,
                "peak": list(fact.peak),
                "map_shape": [int(n) for n in m.map.shape[-2:]],
            }
            if files is not None:
                entry["overlay"], entry["map"] = files[i]
            if panels is not None:
                entry["panel"] = panels[i]
            if m.boxes is not None:
                entry["boxes"] = [b.to_dict() for b in m.boxes]
            if m.target is not None:
                entry["target"] = m.target
                entry["explained"] = m.explained
                entry["value"] = m.value
            if fact.energy_in_box is not None:
                entry["energy_in_box"] = fact.energy_in_box
            explanations.append(entry)
        report: dict[str, Any] = {
            "image": self.source,
            "size": [width, height],
            "model": self.model,
            "scores": self.scores,
            "predictions": [
                {"class_index": p.class_index, "label": p.label, "score": p.score}
                for p in self.predictions
            ],
        }
        if self.segments is not None:
            report["segmentation"] = self.segments.shares()
        if self.detections is not None:
            report["detections"] = [d.to_dict() for d in self.detections]
        if maps:
            report["explanations"] = explanations
        if self.skipped:
            report["skipped"] = [
                {"method": method, "layer": layer, "reason": reason}
                for method, layer, reason in self.skipped
            ]
        if grid is not None:
            report["grid"] = grid
        return report

    def save(
        self,
        out_dir: str | Path,
        stem: str | None = None,
        *,
        cmap: str = "jet",
        alpha: float = 0.5,
        panels: bool = False,
        grid: bool = False,
        raw_panels: bool = False,
    ) -> Path:
        """Writes ``STEM.json``, an overlay PNG at the photo's size and the map (``.npy``, float32
        [height, width] in [0, 1]) for each map; returns the JSON's path. ``stem`` defaults to the
        source's file stem; one too long for the file names is cut
        (:func:`camlens.files.fit_stem`). ``panels``: also ``BASE.panel.png`` per map (photo |
        heatmap | overlay; with ``raw_panels`` also the map at the layer's grid, see
        :meth:`panel`); ``grid``: also ``STEM.grid.png`` with every map of the image. A
        segmentation model's also has ``STEM.segments.png`` (:meth:`segment_overlay`), a
        detector's ``STEM.detections.png`` (:meth:`detection_overlay`). Each file
        appears whole or not at all, the JSON last, so a report on disk always names files that
        are complete."""
        out = output_folder(out_dir, "out_dir")  # a file there, say: one line naming it
        stem = stem or _safe(Path(self.source).stem) or "image"
        tails = file_tails(self.maps)
        longest = max(
            [".json", ".grid.png", ".detections.png", *(t + ".panel.png" for t in tails)], key=len
        )
        stem = fit_stem(stem, longest)
        files: list[tuple[str, str]] = []
        panel_files: list[str] = []
        facts: list[AtImage] = []
        for i in range(len(self.maps)):
            base = stem + tails[i]
            full = self.map_at_image(i)  # one at a time: the report keeps only at_image's facts
            facts.append(self.at_image(i, full))
            atomic_write(out / f"{base}.npy", partial(_save_npy, self._numpy(full)))
            picture = self.overlay(i, cmap=cmap, alpha=alpha, full=full)
            del full  # before the next map is made
            render.save_png(picture, out / f"{base}.png")
            files.append((f"{base}.png", f"{base}.npy"))
            if panels or raw_panels:
                picture = self.panel(i, cmap=cmap, alpha=alpha, raw=raw_panels)
                render.save_png(picture, out / f"{base}.panel.png")
                panel_files.append(f"{base}.panel.png")
        all_maps = None
        segments = None
        if self.segments is not None:
            segments = f"{stem}.segments.png"
            render.save_png(self.segment_overlay(alpha=alpha), out / segments)
        detections = None
        if self.detections is not None:
            detections = f"{stem}.detections.png"
            render.save_png(self.detection_overlay(), out / detections)
        if grid:
            all_maps = f"{stem}.grid.png"
            render.save_png(_grid([self], cmap=cmap, alpha=alpha), out / all_maps)
        document = self.to_dict(
            files, panels=panel_files if panels or raw_panels else None, grid=all_maps, facts=facts
        )
        if segments is not None:
            document["segments_overlay"] = segments
        if detections is not None:
            document["detections_overlay"] = detections
        report = json.dumps(document, indent=2, allow_nan=False) + "\n"
        return atomic_write(out / f"{stem}.json", lambda temp: temp.write_text(report))

    # --- display: Jupyter's rich output and matplotlib --------------------------------------

    def _repr_html_(self) -> str:
        """What a notebook shows: the photo, an overlay per map captioned with its class, score,
        method and layer, and the top-5 predictions as a table (pictures embedded, at most
        :data:`DISPLAY_SIDE` pixels a side)."""
        name = Path(self.source).name or "photo"
        figures = [_html_figure(self.image, html.escape(name), name)]
        for i, m in enumerate(self.maps):
            caption = f"<b>{html.escape(m.label)}</b> {m.score:.3f}<br>{html.escape(m.method)}"
            caption += f" · {html.escape(m.layer)}" + (" · flat map" if m.flat else "")
            alt = f"{m.method} map of {m.label} over the photo"
            figures.append(_html_figure(self.overlay(i), caption, alt))
        rows = "".join(
            f"<tr><td>{p.class_index}</td><td>{html.escape(p.label)}</td>"
            f"<td>{p.score:.3f}</td></tr>"
            for p in self.predictions
        )
        table = (
            '<table style="margin:0 0 0 8px"><thead><tr><th>class</th><th>label</th>'
            f"<th>score</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        return (
            f'<div class="camlens-explanation" style="display:flex;flex-wrap:wrap;'
            f'align-items:flex-start;gap:8px">{"".join(figures)}{table}</div>'
        )

    def _repr_png_(self) -> bytes:
        """The PNG of :func:`grid` for this image (for front-ends without HTML)."""
        buffer = io.BytesIO()
        picture = _grid([self]) if self.maps else _thumbnail(self.image)
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    def show(self, *, cmap: str = "jet", alpha: float = 0.5) -> None:
        """Shows the photo and each map's overlay in a matplotlib window (``pyplot``, for
        scripts; a notebook displays the explanation by itself)."""
        import matplotlib.pyplot as plt

        pictures = [(self.image, Path(self.source).name)]
        for i, m in enumerate(self.maps):
            pictures.append(
                (self.overlay(i, cmap=cmap, alpha=alpha), f"{m.title}\n{m.method}, {m.layer}")
            )
        fig, axes = plt.subplots(
            1, len(pictures), figsize=(3.2 * len(pictures), 3.4), squeeze=False
        )
        for ax, (picture, title) in zip(axes[0], pictures, strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        plt.show()

    @staticmethod
    def _numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()


def grid(
    explanations: Sequence[Explanation], *, cmap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """One picture: a row per image, a column per map (its classes x layers x methods), each tile
    titled as :func:`grid_cells` says; a long strip (many images, one map each) is laid out near
    square by :func:`camlens.render.grid`."""
    cells = grid_cells(explanations)
    width = max((len(r) for r in cells), default=0)
    rows = [[*r, *([None] * (width - len(r)))] for r in cells]
    names = [Path(e.source).name for e in explanations]
    return render.grid(rows, row_titles=names, cmap=cmap, alpha=alpha)


def grid_cells(explanations: Sequence[Explanation]) -> list[list[render.GridCell]]:
    """The tiles of :func:`grid`, a row per image: each titled with the label and probability, the
    method and layer where they vary, and "flat map" where nothing was left after the ReLU."""
    methods = {m.method for e in explanations for m in e.maps}
    layers = {m.layer for e in explanations for m in e.maps}
    rows = []
    for e in explanations:
        row = []
        for i, m in enumerate(e.maps):
            title = m.title
            if len(methods) > 1:
                title += f"\n{m.method}"
            if len(layers) > 1:
                title += f"\n{m.layer}"
            if m.flat:
                title += "\nflat map: no positive evidence"
            row.append(render.GridCell(e.image, e._numpy(e.map_at_image(i)), title))
        rows.append(row)
    return rows


_grid = grid  # for Explanation.save, whose own ``grid`` argument hides the function


def file_tails(maps: Sequence[ClassMap]) -> list[str]:
    """The end of each map's file names, ``.METHOD.LAYER.TAG`` (:attr:`ClassMap.tag`), made
    unique: a tail met before gets ``-2``, ``-3``... (two masks of one class, say), so no map
    of an image overwrites another's files. Every writer names its files by these."""
    tails: list[str] = []
    seen: set[str] = set()
    for m in maps:
        tail = f".{_safe(m.method)}.{_safe(m.layer)}.{_safe(m.tag)}"
        unique, n = tail, 1
        while unique in seen:
            n += 1
            unique = f"{tail}-{n}"
        seen.add(unique)
        tails.append(unique)
    return tails


DISPLAY_SIDE = 320  # the longest side of a picture in an explanation's notebook display


def _thumbnail(image: Image.Image) -> Image.Image:
    picture = image.copy()
    picture.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return picture


def _html_figure(image: Image.Image, caption: str, alt: str) -> str:
    buffer = io.BytesIO()
    _thumbnail(image).convert("RGB").save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        '<figure style="margin:0;text-align:center;font-size:12px">'
        f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


class AtImage(NamedTuple):
    """A map at the photo's own size, as the report gives it: constant (zeros) there, the (x, y)
    of its maximum and, for a detection's map, the share of its sum inside the detection's own
    box (:func:`camlens.maps.energy_in_boxes`; None for other maps)."""

    flat: bool
    peak: tuple[int, int]
    energy_in_box: float | None = None


def _peak(full: torch.Tensor) -> tuple[int, int]:
    """(x, y) of the maximum of a map [height, width] (the first, in reading order)."""
    flat_index = int(torch.argmax(full))
    width = full.shape[1]
    return flat_index % width, flat_index // width


def _save_npy(array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would add .npy to the temp name
        np.save(handle, array)


def _safe(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
