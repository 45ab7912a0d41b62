"""Dataset-scale runs: `camlens explain DIR --top 1` against the API's decode + explain, in one run.

Makes N JPEGs of 640x480 from the offline sample photos (shifted crops), then, round after round,
times each variant on them:

- ``api``: ``Explainer(model, method="gradcam").explain(paths, top=1)`` in this process, batches
  of 16, torch's default threads, nothing written: the reference;
- ``dataset``: ``camlens explain DIR --top 1 --format dataset`` (JPEG overlays, maps in the index);
- ``files``: ``camlens explain DIR --top 1`` (the default layout: PNG overlays and .npy maps);
- ``ray``: ``camlens explain DIR --top 1 --format dataset --ray local`` (with ``--ray``).

A command's rate is read from outside, by watching its index grow: images per second from the
first 10% of the rows to the last row (not to the process's exit), so the start-up (loading the
model, starting Ray) and the teardown are apart; its start-up is reported beside it. Bytes per image are the output folder's size over N.
``--memory N`` runs the dataset format on N images (default 2000) and prints the command's RSS
at every 250 rows.

    python benchmarks/datasets.py --images 200 --rounds 2 [--ray]
    python benchmarks/datasets.py --memory 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import psutil
import torch
from PIL import Image

import camlens
from camlens.demo import sample_photos

SRC = Path(__file__).resolve().parents[1] / "src"


def make_images(folder: Path, count: int) -> list[Path]:
    photos = sample_photos(folder.parent / "samples")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        array = arrays[i % len(arrays)]
        h, w = array.shape[:2]
        dx, dy = (i * 7) % (w // 5), (i * 5) % (h // 5)
        crop = Image.fromarray(array).crop((dx, dy, w - (i * 3) % (w // 6), h - (i * 2) % (h // 6)))
        path = folder / f"{i:05d}.jpg"
        crop.resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def api_rate(model: camlens.Model, paths: list[Path]) -> float:
    explainer = camlens.Explainer(model, method="gradcam", batch_size=16)
    start = time.perf_counter()
    explainer.explain([str(p) for p in paths], top=1)
    return len(paths) / (time.perf_counter() - start)


def command_rate(
    args: list[str], out: Path, count: int, memory_every: int = 0
) -> tuple[float, float, int, list[tuple[int, float]]]:
    """Runs ``camlens explain ...`` and watches ``out/index.jsonl``: (images/s from 10% of the rows
    to the last, seconds to the first row, bytes written, [(rows, RSS MB)] every
    ``memory_every`` rows)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "camlens.cli", "explain", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    index = out / "index.jsonl"
    seen: list[tuple[float, int]] = []
    rss: list[tuple[int, float]] = []
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        rows = index.read_bytes().count(b"\n") if index.exists() else 0
        if not seen or rows != seen[-1][1]:
            seen.append((time.perf_counter(), rows))
            if memory_every and rows // memory_every > (rss[-1][0] // memory_every if rss else 0):
                try:
                    total = watched.memory_info().rss
                    total += sum(c.memory_info().rss for c in watched.children(recursive=True))
                except psutil.Error:
                    total = 0
                rss.append((rows, total / 2**20))
        time.sleep(0.05)
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(err.decode())
    if seen[-1][1] < count:  # the last rows came as it exited: timed at the exit, a little late
        seen.append((time.perf_counter(), index.read_bytes().count(b"\n")))
    first = next(t for t, rows in seen if rows >= 1)
    t10, r10 = next((t, rows) for t, rows in seen if rows >= max(1, count // 10))
    last = next(t for t, rows in seen if rows >= count)  # not the exit: Ray's and torch's teardown
    rate = (count - r10) / (last - t10)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return rate, first - started, size, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also time --ray local")
    parser.add_argument("--memory", type=int, nargs="?", const=2000, help="RSS over N images")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="camlens-bench-"))
    load = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    print(f"# {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {load[0]:.1f}", flush=True)
    if args.memory:
        paths = make_images(work / "many", args.memory)
        rate, _, size, rss = command_rate(
            [str(work / "many"), "--top", "1", "--format", "dataset"],
            work / "out-memory",
            len(paths),
            memory_every=250,
        )
        print(
            f"dataset format, {len(paths)} images: {rate:.1f} images/s, {size / len(paths) / 1e3:.0f} KB/image"
        )
        print("| rows | RSS (MB, command and its children) |\n|---:|---:|")
        for rows, mb in rss:
            print(f"| {rows} | {mb:.0f} |")
        return
    paths = make_images(work / "imgs", args.images)
    model = camlens.load_model()
    variants = {
        "dataset": [str(work / "imgs"), "--top", "1", "--format", "dataset"],
        "files": [str(work / "imgs"), "--top", "1"],
    }
    if args.ray:
        variants["ray"] = [
            str(work / "imgs"),
            "--top",
            "1",
            "--format",
            "dataset",
            "--ray",
            "local",
        ]
    rates: dict[str, list[float]] = {"api": [], **{k: [] for k in variants}}
    startup: dict[str, list[float]] = {k: [] for k in variants}
    sizes: dict[str, int] = {}
    api_rate(model, paths[:16])  # warm-up
    for r in range(args.rounds):
        order = ["api", *variants]
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            if name == "api":
                rates["api"].append(api_rate(model, paths))
            else:
                rate, first, size, _ = command_rate(
                    variants[name], work / f"out-{name}", len(paths)
                )
                rates[name].append(rate)
                startup[name].append(first)
                sizes[name] = size
            print(
                f"round {r + 1}: {name} {rates[name][-1]:.1f} images/s", file=sys.stderr, flush=True
            )
    api = statistics.median(rates["api"])
    after = os.getloadavg()
    print(
        f"{len(paths)} JPEGs of 640x480, --top 1, gradcam; torch {torch.__version__}; "
        f"rounds {args.rounds}; load average {load[0]:.1f} before, {after[0]:.1f} after\n"
    )
    print("| variant | images/s (median) | / API | start-up to the first row (s) | KB per image |")
    print("|---|---:|---:|---:|---:|")
    print(f"| API decode + explain (nothing written) | {api:.1f} | 1.00 | | |")
    for name in variants:
        rate = statistics.median(rates[name])
        print(
            f"| camlens explain, {name} | {rate:.1f} | {rate / api:.2f} | "
            f"{statistics.median(startup[name]):.1f} | {sizes[name] / len(paths) / 1e3:.0f} |"
        )
    print("\nall rates:", {k: [round(v, 1) for v in vs] for k, vs in rates.items()})


if __name__ == "__main__":
    main()
