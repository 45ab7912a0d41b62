"""Which classes `localize_objects` boxes: the objects found and the false boxes on the synthetic
two-object set, for each rule that picks the classes (``min_score``, a score relative to the top
class's, the number of top classes).

    PYTHONPATH=src python benchmarks/localize_objects.py [--out DIR] [--multi 100] [--seed 0]

1. writes the synthetic set as ``benchmarks/localization.py`` does (``camlens.datasets``, in a
   temporary folder): 600 training images (seed S) and 100 images with two objects each
   (seed S + 2), 64 x 64 pixels;
2. trains ``camlens.datasets.SyntheticCNN`` on the training images (CPU, one thread);
3. explains every two-object image with Grad-CAM (``camlens localize``'s method) for its top K
   classes, K = 4 (every class of this set: ``camlens localize``'s ``--top 5`` is all of them)
   and K = 2, 3; boxes them with ``localize_objects`` (the largest region above 0.2 of the map's
   maximum, NMS at IoU 0.5), without crops, under each rule;
4. counts, of the 200 objects, those found (a box of the object's class with IoU >= 0.5) and the
   false boxes (boxes that find no object: another class, a box off the object, a second box);
5. boxes the objects of scikit-image's sample photos (one object each to a person) with the
   default model, top 5, at min_score 0.05, 0.01 and 0;
6. prints a Markdown table for ``benchmarks/README.md`` and writes ``DIR/summary.json``;
7. ``--pairs`` (alone: ``--pairs-only``): two objects, two boxes. The default model's Grad-CAM of
   its top class on photos with two copies of one object pasted side by side (the cat's head of
   ``skimage.data.chelsea()`` or the cup of ``coffee()``, the second mirrored; touching,
   overlapping by 10% or 15% apart) and with one copy alone; for each way of boxing
   (``boxes_from_map(mode="all")`` at several thresholds, with and without the cut at saddles)
   the pairs that get a box on each object (IoU >= 0.5) and the single objects that get one box
   and one only (not split), written to ``DIR/pairs.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camlens.datasets import Annotated, Dataset, make_synthetic, read_dataset
from camlens.explain import Explainer
from camlens.explanation import Explanation
from camlens.localize import LocalizedObject, localize_objects
from camlens.metrics import iou
from camlens.models import Model, load_model
from camlens.train import train_synthetic_model

Rule = Callable[[Explanation], list[LocalizedObject]]


def min_score(value: float) -> Rule:
    return lambda e: localize_objects(e, min_score=value).objects


def relative(fraction: float) -> Rule:
    """The classes at least ``fraction`` times as probable as the top class."""

    def rule(e: Explanation) -> list[LocalizedObject]:
        floor = fraction * e.predictions[0].score
        return [o for o in localize_objects(e, min_score=0.0).objects if o.score >= floor]

    return rule


def count(items: list[Annotated], explanations: list[Explanation], rule: Rule) -> dict[str, Any]:
    objects = found = false = boxes = 0
    for item, explanation in zip(items, explanations, strict=True):
        chosen = rule(explanation)
        boxes += len(chosen)
        matched: set[int] = set()
        for box in chosen:
            hit = next(
                (
                    k
                    for k, truth in enumerate(item.objects)
                    if k not in matched
                    and box.label == truth.label
                    and iou(box.box, truth.box) >= 0.5
                ),
                None,
            )
            if hit is None:
                false += 1
            else:
                matched.add(hit)
        objects += len(item.objects)
        found += len(matched)
    return {"objects": objects, "found": found, "false_boxes": false, "boxes": boxes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/localize_objects"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--multi", type=int, default=100, help="two-object images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=12, help="pasted pairs per layout")
    parser.add_argument("--pairs-only", action="store_true", help="step 7 alone")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.pairs_only:
        two_objects(args.pairs, args.seed, out)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        train = make_synthetic(Path(scratch, "train"), args.train, seed=args.seed)
        multi = make_synthetic(Path(scratch, "multi"), args.multi, seed=args.seed + 2, objects=2)
        model = train_synthetic_model(train, seed=args.seed, threads=1)
        data = read_dataset(multi)
        summary = sweep(model, data)
    table = summary.pop("table")
    summary["sample_photos"] = sample_photos()
    summary["seed"] = args.seed
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(table))
    print("\nthe default model on the sample photos, top 5 (class, probability, box):")
    for name, by_rule in summary["sample_photos"].items():
        for rule, found in by_rule.items():
            print(f"  {name}, min_score {rule}: {found}")
    print(f"\n{summary['seconds']} s (set, training and the sweeps)")
    two_objects(args.pairs, args.seed, out)


# --- 7. two objects, two boxes ---------------------------------------------------------------------

OBJECTS = {"cat": ("chelsea", (30, 0, 400, 300)), "cup": ("coffee", (75, 10, 480, 390))}
LAYOUTS = {"touching": 0.0, "overlapping 10%": -0.1, "15% apart": 0.15}
BoxT = tuple[int, int, int, int]


def pasted(kind: str, layout: str | None, rng: Any, height: int = 300) -> tuple[Any, list[BoxT]]:
    """A photo of one object (``layout`` None) or two side by side (the second mirrored),
    pasted on a crop of a texture photo, and the objects' boxes."""
    import numpy as np
    from PIL import Image, ImageOps
    from skimage import data

    name, box = OBJECTS[kind]
    thing = Image.fromarray(np.asarray(getattr(data, name)())).crop(box)
    side = int(height * rng.uniform(0.6, 0.8))
    thing = thing.resize((round(side * thing.width / thing.height), side))
    w = thing.width
    gap = 0 if layout is None else round(LAYOUTS[layout] * w)
    count = 1 if layout is None else 2
    width = int(count * w + (count - 1) * gap + 2 * int(rng.integers(20, 60)))
    texture = np.asarray(getattr(data, ("grass", "gravel", "brick")[int(rng.integers(3))])())
    background = Image.fromarray(texture).convert("RGB").resize((max(width, height),) * 2)
    canvas = background.crop((0, 0, width, height))
    top = int(rng.integers(0, height - side + 1))
    left = (width - (count * w + (count - 1) * gap)) // 2
    boxes = []
    for i in range(count):
        x = left + i * (w + gap)
        canvas.paste(thing if i == 0 else ImageOps.mirror(thing), (x, top))
        boxes.append((x, top, x + w, top + side))
    if count == 2 and gap < 0:  # the mirrored copy covers the first one's overlapping strip
        x0, y0, _, y1 = boxes[0]
        boxes[0] = (x0, y0, boxes[1][0], y1)
    return canvas, boxes


def box_iou(a: BoxT, b: BoxT) -> float:
    return float(iou(a, b))


def two_objects(per_layout: int, seed: int, out: Path) -> None:
    import numpy as np

    from camlens.localize import boxes_from_map

    rng = np.random.default_rng(seed)
    explainer = Explainer(load_model(), method="gradcam")
    cases: list[tuple[str, str, Any, list[BoxT]]] = []
    for kind in OBJECTS:
        for layout in [*LAYOUTS, None]:
            for _ in range(per_layout):
                photo, boxes = pasted(kind, layout, rng)
                cases.append((kind, layout or "one object", photo, boxes))
    rules: list[tuple[str, Any, float | None]] = [
        ("threshold 0.2, no cut (before)", 0.2, None),
        ("threshold 0.3, no cut", 0.3, None),
        ("threshold 0.4, no cut", 0.4, None),
        ("threshold 0.5, no cut", 0.5, None),
        ("threshold otsu, no cut", "otsu", None),
        ("threshold 0.2, cut at saddles of depth 0.05", 0.2, 0.05),
        ("threshold 0.2, cut at saddles of depth 0.1", 0.2, 0.1),
        ("threshold 0.2, cut at saddles of depth 0.15", 0.2, 0.15),
        ("threshold 0.2, cut at saddles of depth 0.2", 0.2, 0.2),
        ("threshold 0.2, cut at saddles of depth 0.3", 0.2, 0.3),
    ]
    maps = []
    for kind, layout, photo, boxes in cases:
        result = explainer.explain(photo, top=1)
        maps.append((kind, layout, result.map_at_image(0).numpy(), boxes))
    rows = []
    for name, threshold, saddle in rules:
        row: dict[str, Any] = {"rule": name}
        for layout in [*LAYOUTS, "one object"]:
            chosen = [m for m in maps if m[1] == layout]
            good = 0
            for _, _, full, truth in chosen:
                found = boxes_from_map(full, threshold=threshold, mode="all", saddle=saddle)
                hits = [any(box_iou(b.xyxy, t) >= 0.5 for b in found) for t in truth]
                good += all(hits) and len(found) == len(truth)
            row[layout] = f"{good} of {len(chosen)}"
        rows.append(row)
    columns = [*LAYOUTS, "one object"]
    lines = [
        "| `--all-boxes` | "
        + " | ".join(f"two, {c}" if c != "one object" else c for c in columns)
        + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += ["| " + r["rule"] + " | " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    (out / "pairs.json").write_text(
        json.dumps({"per_layout": per_layout, "seed": seed, "rows": rows}, indent=1) + "\n"
    )
    print("\n".join(lines))


def sample_photos() -> dict[str, dict[str, list[list[Any]]]]:
    """The boxes of the default model on scikit-image's sample photos (one object each, to a
    person), Grad-CAM of the top 5 classes, at min_score 0.05, 0.01 and 0."""
    from skimage import data

    model = load_model()
    explainer = Explainer(model, method="gradcam")
    out: dict[str, dict[str, list[list[Any]]]] = {}
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        explanation = explainer.explain(getattr(data, name)(), top=5)
        out[name] = {
            str(value): [
                [o.label, round(o.score, 3), list(o.box.xyxy)]
                for o in localize_objects(explanation, min_score=value).objects
            ]
            for value in (0.05, 0.01, 0.0)
        }
    return out


def sweep(model: Model, data: Dataset) -> dict[str, Any]:
    explainer = Explainer(model, method="gradcam")
    rules: list[tuple[str, Rule]] = [
        ("min_score 0.05 (the old default)", min_score(0.05)),
        ("min_score 0.02", min_score(0.02)),
        ("min_score 0.01 (the new default)", min_score(0.01)),
        ("min_score 0.005", min_score(0.005)),
        ("min_score 0 (every top class)", min_score(0.0)),
        ("score >= 0.1 x the top class's", relative(0.1)),
        ("score >= 0.05 x the top class's", relative(0.05)),
        ("score >= 0.02 x the top class's", relative(0.02)),
    ]
    summary: dict[str, Any] = {"images": len(data.items), "rows": []}
    lines = [
        "| top K | rule | objects found | false boxes | boxes per image |",
        "|---:|---|---:|---:|---:|",
    ]
    for top in (model.num_classes, 3, 2):
        explanations = [explainer.explain(str(item.image), top=top) for item in data.items]
        for name, rule in rules:
            row = {"top": top, "rule": name, **count(data.items, explanations, rule)}
            summary["rows"].append(row)
            lines.append(
                f"| {top} | {name} | {row['found']} of {row['objects']} "
                f"({100 * row['found'] / row['objects']:.1f}%) | {row['false_boxes']} | "
                f"{row['boxes'] / len(data.items):.2f} |"
            )
    summary["table"] = lines
    return summary


if __name__ == "__main__":
    main()
