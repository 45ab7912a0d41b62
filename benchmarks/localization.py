"""Localization and faithfulness on the synthetic set, with a small CNN trained here.

    python benchmarks/localization.py [--out DIR] [--val 200] [--seed 0]

1. writes the synthetic set (``camlens.datasets.make_synthetic``): 600 training images (seed S),
   a held-out split (seed S + 1), and a two-object split (seed S + 2), 64 x 64 pixels;
2. trains ``camlens.models.synthetic.SyntheticCNN`` (GAP -> Linear head) on the training images,
   on the CPU (``camlens.train.train_synthetic_model``);
3. evaluates CAM and every gradient method on the held-out split (``camlens.evaluate.evaluate``):
   a Rich table, ``DIR/evaluation.json`` and ``DIR/deletion_insertion.png``;
4. sweeps the box threshold for CAM (0.15, 0.2, 0.3, Otsu);
5. finds the objects of the two-object images with ``localize_objects`` (top 2 classes, NMS,
   crops re-classified) and counts those found (right class, IoU >= 0.5);
6. prints Markdown tables for ``benchmarks/README.md`` and writes ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from camlens.datasets import Dataset, make_synthetic, read_dataset
from camlens.evaluate import COLUMNS, evaluate
from camlens.explain import Explainer
from camlens.localize import boxes_from_map, localize_objects
from camlens.methods import METHODS
from camlens.metrics import gt_known_localization, iou, pointing_hit
from camlens.train import train_synthetic_model


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def markdown(rows: dict[str, dict[str, Any]], methods: list[str]) -> str:
    keys = [c for c in COLUMNS if any(rows[m].get(c[0]) is not None for m in methods)]
    head = "| method | " + " | ".join(
        f"{title} {'↑' if better == 'higher' else '↓'}" for _, title, better in keys
    )
    lines = [head + " |", "|---" * (len(keys) + 1) + "|"]
    for m in methods:
        cells = []
        for key, _, _ in keys:
            value = rows[m][key]
            if key in ("average_drop", "increase_in_confidence"):
                cells.append(f"{value:.1f}")
            elif key in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"):
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{100 * value:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def center_baseline(data: Dataset) -> dict[str, float]:
    """What a map that ignores the image scores: a Gaussian at the center (sigma 15% of each side),
    boxed at 0.2 of its maximum, with the true class given."""
    gt_known = pointing = 0
    for item in data.items:
        width, height = Image.open(item.image).size
        yy, xx = np.mgrid[0:height, 0:width]
        blob = np.exp(
            -(((xx + 0.5 - width / 2) / (0.15 * width)) ** 2) / 2
            - (((yy + 0.5 - height / 2) / (0.15 * height)) ** 2) / 2
        )
        truth = [o.box for o in item.objects]
        (box,) = boxes_from_map(blob)
        gt_known += gt_known_localization(box, truth)
        pointing += pointing_hit(blob, truth)
    return {"gt_known_loc": gt_known / len(data), "pointing_game": pointing / len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/localization"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--multi", type=int, default=100, help="two-object images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps")
    args = parser.parse_args()
    console = Console(width=200)
    out: Path = args.out
    summary: dict[str, Any] = {"machine": machine(), "seed": args.seed}
    console.print(summary["machine"])

    started = time.perf_counter()
    train = make_synthetic(out / "train", args.train, seed=args.seed)
    held_out = make_synthetic(out / "val", args.val, seed=args.seed + 1)
    multi = make_synthetic(out / "multi", args.multi, seed=args.seed + 2, objects=2)
    summary["generate_seconds"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    model = train_synthetic_model(train, seed=args.seed)
    summary["train_seconds"] = round(time.perf_counter() - started, 2)
    console.print(
        f"set written in {summary['generate_seconds']} s, trained in {summary['train_seconds']} s"
    )

    methods = ["cam"] + [n for n, m in METHODS.items() if m.needs == "gradients"]
    report = evaluate(
        model,
        held_out,
        methods,
        steps=args.steps,
        progress=lambda event: None if event.problem is None else console.print(event.problem),
    )
    console.print(report.table())
    report.save(out / "evaluation.json")
    report.plot(out / "deletion_insertion.png")
    summary["evaluate_seconds"] = round(report.seconds, 1)
    summary["rows"] = report.rows
    table = markdown(report.rows, methods)

    sweep = {}
    for threshold in (0.15, 0.2, 0.3, "otsu"):
        row = evaluate(model, held_out, ["cam"], threshold=threshold, faithfulness=False).rows[
            "cam"
        ]
        sweep[str(threshold)] = {k: row[k] for k in ("top1_loc", "gt_known_loc", "pointing_game")}
    summary["cam_threshold_sweep"] = sweep
    summary["center_baseline"] = center_baseline(read_dataset(held_out))

    data = read_dataset(multi)
    explainer = Explainer(model, method="gradcam")
    objects = found = crops_agree = predicted = 0
    for item in data.items:
        found_objects = localize_objects(explainer.explain(str(item.image), top=2), model).objects
        predicted += len(found_objects)
        for truth in item.objects:
            objects += 1
            match = [
                o for o in found_objects if o.label == truth.label and iou(o.box, truth.box) >= 0.5
            ]
            found += bool(match)
            crops_agree += bool(match and match[0].crop and match[0].crop.label == truth.label)
    summary["two_objects"] = {
        "images": len(data.items),
        "objects": objects,
        "found": found / objects,
        "boxes_per_image": predicted / len(data.items),
        "crop_agrees": crops_agree / objects,
    }

    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    console.print("\n" + table + "\n")
    console.print("CAM threshold sweep (top-1 loc / GT-known / pointing, %):")
    for threshold, row in sweep.items():
        console.print(
            f"| {threshold} | {100 * row['top1_loc']:.1f} | {100 * row['gt_known_loc']:.1f} | "
            f"{100 * row['pointing_game']:.1f} |"
        )
    console.print(f"center baseline (class given): {summary['center_baseline']}")
    console.print(f"two objects per image (Grad-CAM, top 2): {summary['two_objects']}")
    console.print(f"evaluation of {len(methods)} methods: {summary['evaluate_seconds']} s")


if __name__ == "__main__":
    main()
