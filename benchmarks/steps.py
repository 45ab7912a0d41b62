"""Where the time of one image goes in a dataset-format run: the runner's own functions, one by one.

Makes N JPEGs of 640x480 from the offline sample photos (``datasets.make_images``), then, with
the default model, Grad-CAM, ``--top 1`` and one torch thread, times per image: the reading
(``batch.read_photo``), the model and Grad-CAM in batches of 16 (``Explainer.explain_prepared``,
after one untimed warm-up batch) and the writing in the dataset format (``outputs.write_image``);
then, again on each explanation, the sub-steps of that writing (the map at the photo's size, its
largest box, the overlay, the JPEG, spread and off-center) and, for comparison, the overlay as
PNG (Pillow's default level 6 and level 1) and as WebP (quality 80, method 0). Medians over the
images in ms per image; the model's row is the total of its batches over the number of images.

    python benchmarks/steps.py [--images 32] [--out benchmarks/results/datasets-steps.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import make_images  # benchmarks/datasets.py
from PIL import Image

import camlens
from camlens import batch, outputs, render
from camlens.config import OutputConfig
from camlens.explanation import Explanation
from camlens.localize import boxes_from_map

BATCH = 16


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, (time.perf_counter() - start) * 1e3


def png(picture: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def spread_and_off_center(full: np.ndarray) -> tuple[float, float | None]:
    return float(np.count_nonzero(full >= 0.5)) / full.size, outputs.off_center(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--out", type=Path, help="also write the table, with a header, here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="camlens-steps-"))
    paths = make_images(work / "imgs", args.images)
    explainer = camlens.Explainer(camlens.load_model(), method="gradcam", batch_size=BATCH)
    output = OutputConfig(format="dataset")
    settings = explainer.model.preprocess
    ms: dict[str, list[float]] = {}
    sizes: dict[str, list[int]] = {}

    def add(step: str, value: float) -> None:
        ms.setdefault(step, []).append(value)

    reads = []
    for path in paths:
        read, t = timed(batch.read_photo, path, settings, explainer.max_pixels)
        reads.append(read)
        add("read", t)
    warm = reads[:BATCH]
    explainer.explain_prepared(torch.stack([x for _, x in warm]), [p for p, _ in warm], top=1)
    results: list[Explanation] = []
    for i in range(0, len(reads), BATCH):
        chunk = reads[i : i + BATCH]
        inputs = torch.stack([x for _, x in chunk])
        done, t = timed(explainer.explain_prepared, inputs, [p for p, _ in chunk], top=1)
        assert all(isinstance(r, Explanation) for r in done), done
        results.extend(done)
        add("model", t)
    (work / "out").mkdir()
    (work / "temp").mkdir()
    for i, result in enumerate(results):
        stem = f"{i:05d}"
        _, t = timed(outputs.write_image, result, stem, work / "out", output, work / "temp")
        add("write", t)
        full_t, t = timed(lambda r=result: r.map_at_image(0).to(torch.float32))
        full = np.ascontiguousarray(full_t.numpy())
        add("map", t)
        add("box", timed(boxes_from_map, full, threshold=output.threshold, mode="largest")[1])
        photo = np.asarray(result.image.convert("RGB"))
        pixels, t = timed(render.overlay_pixels, photo, full, output.cmap, output.alpha)
        add("overlay", t)
        picture = Image.fromarray(pixels)
        encodings: list[tuple[str, Callable[..., bytes], tuple[Any, ...]]] = [
            ("jpeg", outputs.encode, (picture, "jpeg", output.quality)),
            ("png6", png, (picture, 6)),
            ("png1", png, (picture, 1)),
            ("webp", outputs.encode, (picture, "webp", 80)),
        ]
        for step, encode, encode_args in encodings:
            data, t = timed(encode, *encode_args)
            add(step, t)
            sizes.setdefault(step, []).append(len(data))
        add("spread", timed(spread_and_off_center, full)[1])

    def cell(step: str) -> str:
        if step == "model":  # whole batches: their total over the images
            return f"{sum(ms[step]) / len(results):.1f}"
        return f"{statistics.median(ms[step]):.1f}"

    def kb(step: str) -> str:
        return f"{statistics.mean(sizes[step]) / 1e3:.0f} KB"

    rows = [
        ("read: decode the JPEG, resize and normalize to 224x224 (`batch.read_photo`)", "read"),
        (f"the model and Grad-CAM, batches of {BATCH} (`Explainer.explain_prepared`)", "model"),
        ("write, dataset format (`outputs.write_image`), of which:", "write"),
        ("- the map at the photo's size (`Explanation.map_at_image`)", "map"),
        ("- its largest box (`localize.boxes_from_map` at the photo's size)", "box"),
        ("- the overlay (`render.overlay_pixels`)", "overlay"),
        (f"- JPEG, quality 90 ({kb('jpeg')})", "jpeg"),
        ("- spread and off-center (`outputs.off_center`, the count of full >= 0.5)", "spread"),
    ]
    lines = ["| step | ms per image |", "|---|---:|"]
    lines += [f"| {label} | {cell(step)} |" for label, step in rows]
    lines.append(
        f"| PNG of the overlay, Pillow's default level 6 / level 1 ({kb('png6')} / {kb('png1')})"
        f" | {cell('png6')} / {cell('png1')} |"
    )
    lines.append(f"| WebP, quality 80, method 0 ({kb('webp')}) | {cell('webp')} |")
    load = os.getloadavg()
    header = (
        f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, torch {torch.__version__} "
        f"threads {torch.get_num_threads()}, {len(paths)} JPEGs of 640x480, --top 1, gradcam, "
        f"medians over the images (the model: its batches' total over the images)"
    )
    table = "\n".join(lines)
    shutil.rmtree(work, ignore_errors=True)
    print(header + "\n\n" + table)
    if args.out:
        args.out.write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
