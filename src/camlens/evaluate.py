"""Running explanation methods over a dataset with ground-truth boxes, and aggregating the metrics.

>>> report = evaluate(model, "synthetic/val/annotations.json", ["cam", "gradcam"])  # doctest: +SKIP
>>> rich.print(report.table())                                                       # doctest: +SKIP
>>> report.save("report.json"); report.plot("deletion_insertion.png")                # doctest: +SKIP

For every image and method (see :mod:`camlens.metrics` for the formulas):

- the top-k predicted classes (k = min(5, classes)) each get a box from their map (the largest
  component above ``threshold``, :func:`camlens.localize.boxes_from_map`): top-1 and top-5
  localization accuracy;
- every ground-truth class of the image gets its own map: ground-truth-known localization, the
  pointing game and the energy-based pointing game, one count per (image, class) pair;
- the map of the top-1 predicted class, at the model's input size, is measured for faithfulness:
  average drop and increase in confidence, deletion and insertion AUC, ROAD (MoRF and LeRF).

Bad ground truth (an image that is missing or unreadable, a box outside its image, a class name the
model does not know) is reported in ``problems`` with a message naming the file and the problem;
the rest of the dataset is still evaluated.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from camlens.config import ExplainConfig
from camlens.datasets.readers import Annotated, Dataset, GroundTruth, check_boxes, read_dataset
from camlens.errors import CamlensError
from camlens.files import atomic_write
from camlens.localize import CAM_THRESHOLD, Threshold, boxes_from_map, check_threshold
from camlens.metrics import (
    LOCALIZATION_IOU,
    POINTING_TOLERANCE,
    ROAD_PERCENTAGES,
    Curve,
    average_drop,
    confidence_change,
    deletion_insertion,
    energy_pointing_game,
    gt_known_localization,
    increase_in_confidence,
    mean_curve,
    plot_curves,
    pointing_hit,
    road,
    top_k_localization,
)
from camlens.progress import Event, Progress
from camlens.types import Box

if TYPE_CHECKING:
    from camlens.models import Model

#: (key, column title, better) for every aggregate, in table order. Accuracies are fractions in
#: [0, 1] (shown as %), the average drop and increase in confidence are in % by definition.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("classification", "class@1", "higher"),
    ("top1_loc", "loc@1", "higher"),
    ("top5_loc", "loc@5", "higher"),
    ("gt_known_loc", "GT-known", "higher"),
    ("pointing_game", "pointing", "higher"),
    ("energy_pointing", "energy", "higher"),
    ("average_drop", "avg drop %", "lower"),
    ("increase_in_confidence", "increase %", "higher"),
    ("deletion_auc", "deletion", "lower"),
    ("insertion_auc", "insertion", "higher"),
    ("road_morf", "ROAD MoRF", "lower"),
    ("road_lerf", "ROAD LeRF", "higher"),
)
_PERCENT = {
    "classification",
    "top1_loc",
    "top5_loc",
    "gt_known_loc",
    "pointing_game",
    "energy_pointing",
}


@dataclass
class Report:
    """The result of :func:`evaluate`: ``rows[method][key]`` holds the aggregates (keys of
    :data:`COLUMNS`, ``None`` where not measured), ``curves[method]`` the mean deletion and insertion
    curves, ``per_image`` one record per (image, method), ``problems`` the messages about bad input.
    ``images``: the images of the dataset (with those its annotations' problems left out, unless
    a ``limit`` was given), ``evaluated`` those measured."""

    dataset: str
    format: str
    model: str
    layers: list[str]
    methods: list[str]
    settings: dict[str, Any]
    images: int
    evaluated: int
    rows: dict[str, dict[str, float | int | None]]
    curves: dict[str, dict[str, Curve]]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "format": self.format,
            "model": self.model,
            "layers": self.layers,
            "settings": self.settings,
            "images": self.images,
            "evaluated": self.evaluated,
            "seconds": round(self.seconds, 3),
            "methods": [{"method": m, **self.rows[m]} for m in self.methods],
            "curves": {
                m: {kind: c.to_dict() for kind, c in kinds.items()}
                for m, kinds in self.curves.items()
            },
            "problems": self.problems,
            "per_image": self.per_image,
        }

    def save(self, path: str | Path) -> Path:
        """Writes the JSON report, whole or not at all (a temporary file, then renamed over
        ``path``): strict JSON, a value that is not a finite number written as ``null``."""
        text = json.dumps(_finite(self.to_dict()), indent=1, allow_nan=False) + "\n"
        return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))

    def plot(self, path: str | Path) -> Path | None:
        """The mean deletion and insertion curves of every method, one PNG (None when faithfulness
        was not measured)."""
        deletion = {m: c["deletion"] for m, c in self.curves.items() if "deletion" in c}
        insertion = {m: c["insertion"] for m, c in self.curves.items() if "insertion" in c}
        if not deletion:
            return None
        return plot_curves(
            {"deletion (lower is better)": deletion, "insertion (higher is better)": insertion},
            path,
            xlabel="share of pixels deleted / inserted",
        )

    def table(self) -> Any:
        """A Rich table: a row per method, a column per metric (arrows say which way is better)."""
        from rich.markup import escape
        from rich.table import Table

        title = (
            f"{Path(self.dataset).name}: {self.evaluated} of {self.images} images, "
            f"model {self.model}, threshold {self.settings['threshold']}"
        )
        table = Table(title=escape(title), header_style="bold")
        table.add_column("method", no_wrap=True)
        shown = [
            c for c in COLUMNS if any(self.rows[m].get(c[0]) is not None for m in self.methods)
        ]
        for _, header, better in shown:
            table.add_column(f"{header} {'↑' if better == 'higher' else '↓'}", justify="right")
        for m in self.methods:
            cells = []
            for key, _, _ in shown:
                value = self.rows[m].get(key)
                if value is None:
                    cells.append("-")
                elif key in _PERCENT:
                    cells.append(f"{100 * value:.1f}")
                elif key in ("average_drop", "increase_in_confidence"):
                    cells.append(f"{value:.1f}")
                else:
                    cells.append(f"{value:.3f}")
            table.add_row(escape(m), *cells)
        return table


def _finite(value: Any) -> Any:
    """``value`` (JSON-ready) with every float that is not finite replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean([float(v) for v in values])) if values else None


def check_evaluate_options(
    *,
    tolerance: float = POINTING_TOLERANCE,
    iou_threshold: float = LOCALIZATION_IOU,
    steps: int = 32,
    road_percentages: Sequence[float] = ROAD_PERCENTAGES,
    batch_size: int = 16,
    limit: int | None = None,
) -> None:
    """A :class:`CamlensError` naming the first option of :func:`evaluate` that cannot be used:
    a tolerance that is not a finite number >= 0, an IoU outside (0, 1], ROAD percentages
    outside [0, 1], steps, a batch size or a limit that are not whole numbers >= 1."""

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float)

    if not number(tolerance) or not 0 <= tolerance < math.inf:
        raise CamlensError(f"tolerance must be a finite number of pixels >= 0, not {tolerance!r}")
    if not number(iou_threshold) or not 0 < iou_threshold <= 1:
        raise CamlensError(f"iou_threshold must be a number in (0, 1], not {iou_threshold!r}")
    if not all(number(p) and 0 <= p <= 1 for p in road_percentages):
        raise CamlensError(f"road_percentages must lie in [0, 1], not {list(road_percentages)}")
    for name, count in (("steps", steps), ("batch_size", batch_size), ("limit", limit)):
        if count is None and name == "limit":
            continue
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CamlensError(f"{name} must be a whole number >= 1, not {count!r}")


def evaluate(
    model: Model | nn.Module | str | None,
    dataset: Dataset | str | Path,
    methods: str | Sequence[str] = "gradcam",
    *,
    layer: str | None = None,
    threshold: Threshold = CAM_THRESHOLD,
    tolerance: float = POINTING_TOLERANCE,
    iou_threshold: float = LOCALIZATION_IOU,
    faithfulness: bool = True,
    steps: int = 32,
    road_percentages: Sequence[float] = ROAD_PERCENTAGES,
    batch_size: int = 16,
    limit: int | None = None,
    images: str | Path | None = None,
    progress: Progress | None = None,
    config: ExplainConfig | None = None,
) -> Report:
    """Evaluates ``methods`` (names, see ``camlens methods``) of ``model`` on ``dataset`` (a
    :class:`~camlens.datasets.Dataset`, a COCO JSON file or a Pascal VOC folder; ``images``: where
    its image files are, if not beside the annotations) at ``layer`` (automatic by default).

    ``threshold``: the box threshold (fraction of the map's maximum, or "otsu"); ``tolerance``:
    the pointing game's, in pixels; ``iou_threshold``: for a correct box. ``faithfulness=False``
    skips the perturbation metrics (the slow part: ``2 * (steps + 1) + 2 * len(road_percentages)
    + 2`` forward passes per image and method, and ``2 * len(road_percentages)`` sparse solves of
    up to H * W unknowns for ROAD); ``road_percentages=()`` skips ROAD alone. ``limit``: evaluate only the
    first images. ``progress`` is called with an :class:`~camlens.progress.Event` of task
    ``"images"`` (``total``: the images to evaluate) for each message about bad input as it is
    found (``problem`` set; the image it is about is counted when it is done) and for each image
    when it is done (``item``: its name).

    ``config``: an :class:`~camlens.config.ExplainConfig` to explain with (its methods, layers,
    batch size, smoothing and fast modes; its classes and top are not used: the evaluation picks
    the top 5 and the ground-truth classes), instead of ``methods``, ``layer`` and ``batch_size``.
    """
    from camlens.explain import Explainer
    from camlens.images import load_image, preprocess
    from camlens.models import Model as ModelClass
    from camlens.models import load_model

    started = time.perf_counter()
    threshold = check_threshold(threshold)
    check_evaluate_options(
        tolerance=tolerance,
        iou_threshold=iou_threshold,
        steps=steps,
        road_percentages=road_percentages,
        batch_size=batch_size,
        limit=limit,
    )
    data = dataset if isinstance(dataset, Dataset) else read_dataset(dataset, images)
    items = data.items[:limit] if limit is not None else data.items
    problems: list[str] = []
    done = 0

    def report(event: Event) -> None:
        if progress is not None:
            progress(event)

    def problem(message: str) -> None:
        problems.append(message)
        report(Event("images", done, len(items), problem=message))

    def finished(sources: Sequence[str]) -> None:
        nonlocal done
        for source in sources:
            done += 1
            report(Event("images", done, len(items), item=source))

    for message in data.problems:
        problem(message)
    loaded = model if isinstance(model, ModelClass) else load_model(model)
    if config is not None:
        explainer = Explainer.from_config(config.replace(classes=(), top=None), loaded)
        batch_size = explainer.batch_size
    else:
        explainer = Explainer(loaded, method=methods, layer=layer, batch_size=batch_size)
    names = [m.name for m in explainer.methods]

    # Ground-truth class names -> the model's classes.
    class_of: dict[str, int] = {}
    for name in data.classes:
        try:
            class_of[name] = loaded.class_index(name)
        except CamlensError as exc:
            count = sum(any(o.label == name for o in item.objects) for item in data.items)
            if count:
                where = "1 image" if count == 1 else f"{count} images"
                problem(f"{data.path}: {exc}; its objects (in {where}) are left out")

    top = min(5, loaded.num_classes)
    state = _State(names)
    evaluated = 0
    for start in range(0, len(items), batch_size):
        batch: list[tuple[Annotated, Any, list[tuple[int, GroundTruth]]]] = []
        skipped = []
        for item in items[start : start + batch_size]:
            try:
                photo = load_image(item.image, max_pixels=explainer.max_pixels)
            except CamlensError as exc:
                problem(str(exc))
                skipped.append(str(item.image))
                continue
            objects, found = check_boxes(item, photo.size)
            known = [(class_of[o.label], o) for o in objects if o.label in class_of]
            for message in found:
                problem(message + "; image left out")
            if found or not known:  # no known class: said above
                skipped.append(str(item.image))
                continue
            batch.append((item, photo, known))
        finished(skipped)
        if not batch:
            continue
        sources = [str(item.image) for item, _, _ in batch]
        each = explainer.explain_each([p for _, p, _ in batch], top=top, names=sources)
        for failed in each:  # the model fails on this image (NaN scores, say): the others go on
            if isinstance(failed, CamlensError):
                problem(f"{failed}; image left out")
        finished([s for s, r in zip(sources, each, strict=True) if isinstance(r, CamlensError)])
        kept = [i for i, r in enumerate(each) if not isinstance(r, CamlensError)]
        batch, sources = [batch[i] for i in kept], [sources[i] for i in kept]
        results: list[Any] = [each[i] for i in kept]
        if not batch:
            continue
        # The ground-truth classes outside the top k get their maps from a second pass.
        missing = [
            sorted({c for c, _ in known} - {m.class_index for m in r.maps})
            for (_, _, known), r in zip(batch, results, strict=True)
        ]
        rows = [i for i, cs in enumerate(missing) if cs]
        if rows:
            extra = explainer.explain(
                [batch[i][1] for i in rows],
                classes=[missing[i] for i in rows],
                names=[sources[i] for i in rows],
            )
            for i, e in zip(rows, extra, strict=True):
                results[i].maps.extend(e.maps)
        x = preprocess([p for _, p, _ in batch], loaded.preprocess) if faithfulness else None
        for method in names:
            picked = []
            for (item, _, known), r in zip(batch, results, strict=True):
                record = _localization(
                    r, method, known, threshold, tolerance, iou_threshold, top, state
                )
                record["image"] = str(item.image)
                picked.append((record, r))
            if x is not None:
                _faithfulness(loaded, x, picked, method, steps, road_percentages, batch_size, state)
            state.records.extend(record for record, _ in picked)
        evaluated += len(batch)
        finished(sources)

    rows_out = {m: state.aggregate(m, faithfulness) for m in names}
    curves: dict[str, dict[str, Curve]] = {}
    for m in names:
        kinds = {k: mean_curve(v) for k, v in state.curves[m].items() if v}
        if kinds:
            curves[m] = kinds
    settings = {
        "threshold": threshold,
        "tolerance": tolerance,
        "iou_threshold": iou_threshold,
        "top_k": top,
        "faithfulness": faithfulness,
        "deletion_steps": steps,
        "road_percentages": list(road_percentages),
        "input_size": list(loaded.preprocess.input_size),
    }
    return Report(
        dataset=str(data.path),
        format=data.format,
        model=loaded.name,
        layers=list(explainer.layers),
        methods=names,
        settings=settings,
        images=len(items) + (data.left_out if limit is None else 0),
        evaluated=evaluated,
        rows=rows_out,
        curves=curves,
        per_image=state.records,
        problems=problems,
        seconds=time.perf_counter() - started,
    )


class _State:
    """What accumulates over the dataset, per method."""

    def __init__(self, methods: Sequence[str]) -> None:
        self.records: list[dict[str, Any]] = []
        self.curves: dict[str, dict[str, list[Curve]]] = {
            m: {"deletion": [], "insertion": []} for m in methods
        }
        self.measured: dict[tuple[str, int, str], _Measured] = {}

    def aggregate(self, method: str, faithfulness: bool) -> dict[str, float | int | None]:
        records = [r for r in self.records if r["method"] == method]
        pairs = [p for r in records for p in r["classes"]]
        row: dict[str, float | int | None] = {
            "images": len(records),
            "classification": _mean([r["correct_class"] for r in records]),
            "top1_loc": _mean([r["top1_loc"] for r in records]),
            "top5_loc": _mean([r["top5_loc"] for r in records]),
            "gt_known_loc": _mean([p["gt_known_loc"] for p in pairs]),
            "pointing_game": _mean([p["pointing"] for p in pairs]),
            "energy_pointing": _mean([p["energy"] for p in pairs]),
        }
        if faithfulness and records:
            full = [r["score"] for r in records]
            masked = [r["masked_score"] for r in records]
            row["average_drop"] = average_drop(full, masked)
            row["increase_in_confidence"] = increase_in_confidence(full, masked)
            for key in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"):
                values = [r[key] for r in records if r[key] is not None]
                row[key] = _mean(values)
        else:
            for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"):
                row[key] = None
            row["road_morf"] = row["road_lerf"] = None
        return row


def _localization(
    result: Any,
    method: str,
    known: list[tuple[int, GroundTruth]],
    threshold: Threshold,
    tolerance: float,
    iou_threshold: float,
    top: int,
    state: _State,
) -> dict[str, Any]:
    """The localization record of one image for one method."""
    index = {(m.class_index, m.method): i for i, m in enumerate(result.maps) if m.method == method}
    full_maps: dict[int, torch.Tensor] = {}
    boxes: dict[int, Box | None] = {}

    def box_of(cls: int) -> Box | None:
        if cls not in boxes:
            full_maps[cls] = result.map_at_image(index[(cls, method)])
            found = boxes_from_map(full_maps[cls], threshold=threshold)
            boxes[cls] = found[0] if found else None
        return boxes[cls]

    predicted = [p.class_index for p in result.predictions[:top]]
    guesses = [(c, box_of(c)) for c in predicted]
    truth = [(c, o.box) for c, o in known]
    per_class = []
    for cls in sorted({c for c, _ in known}):
        gt_boxes = [o.box for c, o in known if c == cls]
        box = box_of(cls)
        per_class.append(
            {
                "class_index": cls,
                "label": known[[c for c, _ in known].index(cls)][1].label,
                "box": None if box is None else box.to_dict()["box"],
                "gt_known_loc": gt_known_localization(box, gt_boxes, iou_threshold),
                "pointing": pointing_hit(full_maps[cls], gt_boxes, tolerance),
                "energy": energy_pointing_game(full_maps[cls], gt_boxes),
            }
        )
    best = result.predictions[0]
    top1_box = guesses[0][1]
    return {
        "method": method,
        "predicted": {"class_index": best.class_index, "label": best.label, "score": best.score},
        "correct_class": best.class_index in {c for c, _ in known},
        "top1_box": None if top1_box is None else top1_box.to_dict()["box"],
        "top1_loc": top_k_localization(guesses, truth, 1, iou_threshold),
        "top5_loc": top_k_localization(guesses, truth, top, iou_threshold),
        "classes": per_class,
    }


def _faithfulness(
    model: Model,
    x: torch.Tensor,
    picked: list[tuple[dict[str, Any], Any]],
    method: str,
    steps: int,
    road_percentages: Sequence[float],
    batch_size: int,
    state: _State,
) -> None:
    """Adds the perturbation metrics of the top-1 class's map to each record of a batch.

    Methods often give the very same map (on a GAP -> Linear head CAM, Grad-CAM, XGrad-CAM and
    HiResCAM agree): a map already measured for the same image and class is not measured again."""
    keys, maps, classes = [], [], []
    for record, result in picked:
        cls = record["predicted"]["class_index"]
        i = next(
            k for k, m in enumerate(result.maps) if m.method == method and m.class_index == cls
        )
        at_input = result.map_at_input(i).float().cpu().contiguous()
        digest = hashlib.sha1(at_input.numpy().tobytes()).hexdigest()
        keys.append((record["image"], cls, digest))
        maps.append(at_input)
        classes.append(cls)
    todo = [k for k, key in enumerate(keys) if key not in state.measured]
    if todo:
        m = torch.stack([maps[k] for k in todo])
        xs = x[todo]
        cs = [classes[k] for k in todo]
        full, masked = confidence_change(model, xs, m, cs, batch_size=batch_size)
        deletion = deletion_insertion(
            model, xs, m, cs, mode="deletion", steps=steps, batch_size=batch_size
        )
        insertion = deletion_insertion(
            model, xs, m, cs, mode="insertion", steps=steps, batch_size=batch_size
        )
        morf: list[Curve | None] = [None] * len(todo)
        lerf: list[Curve | None] = [None] * len(todo)
        if road_percentages:
            percentages, size = road_percentages, batch_size
            morf[:] = road(model, xs, m, cs, order="morf", percentages=percentages, batch_size=size)
            lerf[:] = road(model, xs, m, cs, order="lerf", percentages=percentages, batch_size=size)
        for j, k in enumerate(todo):
            state.measured[keys[k]] = _Measured(
                float(full[j]), float(masked[j]), deletion[j], insertion[j], morf[j], lerf[j]
            )
    for key, (record, _) in zip(keys, picked, strict=True):
        found = state.measured[key]
        record.update(
            score=found.score,
            masked_score=found.masked_score,
            deletion_auc=found.deletion.auc,
            insertion_auc=found.insertion.auc,
            road_morf=None if found.morf is None else found.morf.mean,
            road_lerf=None if found.lerf is None else found.lerf.mean,
        )
        state.curves[method]["deletion"].append(found.deletion)
        state.curves[method]["insertion"].append(found.insertion)


@dataclass(frozen=True)
class _Measured:
    """The faithfulness measurements of one map of one image."""

    score: float
    masked_score: float
    deletion: Curve
    insertion: Curve
    morf: Curve | None
    lerf: Curve | None


__all__ = ["COLUMNS", "Report", "evaluate"]
