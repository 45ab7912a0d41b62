"""Dataset-scale runs: `camlens explain DIR --top 1` against the API's decode + explain, in one run.

Makes N JPEGs of 640x480 from the offline sample photos (shifted crops), then, round after round,
times each variant on them:

- ``api``: ``Explainer(model, method="gradcam").explain(paths, top=1)`` in this process, batches
  of 16, torch's default threads, nothing written: the reference;
- ``dataset``: ``camlens explain DIR --top 1 --format dataset`` (JPEG overlays, maps in the index);
- ``files``: ``camlens explain DIR --top 1`` (the default layout: PNG overlays and .npy maps);
- ``ray``: ``camlens explain DIR --top 1 --format dataset --ray local`` (with ``--ray``).

A rate is what a user sees: each variant runs on a folder of N1 images and one of N2 (``--images
N1 N2``), each timed whole (a command from its start to its exit), and its rate is
(N2 - N1) / (T2 - T1): the start-up (imports, loading the model, starting Ray) and the teardown
cancel out, everything else (reading, the model, drawing and writing, the last batches' writes)
counts. The start-up is what is left, T2 - N2 / rate. Beside it, the rate read the earlier way, by
watching the index grow from its first 10% of rows to its last row: that clock starts when the
runner already holds up to ``workers + 2`` batches read, explained or being written, and stops
before the writers' and the process's end, so it reads high, more so when writing is the slow
stage (the files format's PNGs and ``.npy`` maps). Bytes per image are the output folder's size
over N2. ``--memory N`` runs the dataset format on N images (default 2000) and prints the
command's RSS at every 250 rows.

    python benchmarks/datasets.py --images 100 300 --rounds 3 [--ray] [--out results/datasets.md]
    python benchmarks/datasets.py --memory 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def api_time(model: camlens.Model, paths: list[Path]) -> tuple[float, float]:
    """Seconds and CPU seconds of ``Explainer.explain(paths, top=1)`` (decode + Grad-CAM,
    nothing written)."""
    explainer = camlens.Explainer(model, method="gradcam", batch_size=16)
    start, cpu = time.perf_counter(), time.process_time()
    explainer.explain([str(p) for p in paths], top=1)
    return time.perf_counter() - start, time.process_time() - cpu


@dataclass
class Run:
    seconds: float  # from the start of the command to its exit
    cpu: float  # CPU seconds of the command and its children (user + system)
    watched: float  # images/s read from the index, from its first 10% of rows to its last row
    first: float  # seconds to the first row of the index
    tail: float  # seconds from the last row of the index to the exit
    size: int  # bytes written
    rss: list[tuple[int, float]]  # [(rows, MB)] every memory_every rows


def run_command(args: list[str], out: Path, count: int, memory_every: int = 0) -> Run:
    """Runs ``camlens explain ...`` to its exit, watching ``out/index.jsonl`` as it grows."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    ended = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        raise RuntimeError(err.decode())
    if not seen or seen[-1][1] < count:  # the last rows came as it exited
        seen.append((ended, index.read_bytes().count(b"\n")))
    first = next(t for t, rows in seen if rows >= 1)
    t10, r10 = next((t, rows) for t, rows in seen if rows >= max(1, count // 10))
    last = next(t for t, rows in seen if rows >= count)
    rate = (count - r10) / (last - t10) if last > t10 else float("nan")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Run(ended - started, cpu, rate, first - started, ended - last, size, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        nargs=2,
        default=(100, 300),
        metavar=("N1", "N2"),
        help="the two folder sizes whose difference gives the rate",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants", nargs="+", help="only these commands (dataset, files, ray), beside the API"
    )
    parser.add_argument("--ray", action="store_true", help="also time --ray local")
    parser.add_argument("--memory", type=int, nargs="?", const=2000, help="RSS over N images")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="camlens-bench-"))
    load = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    lines = [f"# {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {load[0]:.1f}"]
    print(lines[0], flush=True)
    if args.memory:
        paths = make_images(work / "many", args.memory)
        run = run_command(
            [str(work / "many"), "--top", "1", "--format", "dataset"],
            work / "out-memory",
            len(paths),
            memory_every=250,
        )
        lines += [
            f"dataset format, {len(paths)} images: {len(paths) / run.seconds:.1f} images/s over "
            f"the whole command, {run.size / len(paths) / 1e3:.0f} KB/image",
            "| rows | RSS (MB, command and its children) |\n|---:|---:|",
            *(f"| {rows} | {mb:.0f} |" for rows, mb in run.rss),
        ]
        _emit(lines[1:], args.out, lines)
        return
    small, large = sorted(args.images)
    if not 0 < small < large:
        parser.error("--images takes two different positive counts")
    paths = make_images(work / "large", large)
    (work / "small").mkdir(parents=True, exist_ok=True)
    for path in paths[:small]:
        shutil.copy(path, work / "small" / path.name)
    folders = {small: work / "small", large: work / "large"}
    model = camlens.load_model()
    variants = {
        "dataset": ["--top", "1", "--format", "dataset"],
        "files": ["--top", "1"],
    }
    if args.ray:
        variants["ray"] = ["--top", "1", "--format", "dataset", "--ray", "local"]
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    names = ["api", *variants]
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpu_rates: dict[str, list[float]] = {k: [] for k in names}
    watched: dict[str, list[float]] = {k: [] for k in variants}
    startup: dict[str, list[float]] = {k: [] for k in variants}
    tails: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    sizes: dict[str, int] = {}
    api_time(model, paths[:16])  # warm-up
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if name == "api":
                both = {n: api_time(model, paths[:n]) for n in (small, large)}
                times = {n: t for n, (t, _) in both.items()}
                cpus = {n: c for n, (_, c) in both.items()}
            else:
                runs = {
                    n: run_command([str(folders[n]), *variants[name]], work / f"out-{name}-{n}", n)
                    for n in (small, large)
                }
                times = {n: run.seconds for n, run in runs.items()}
                cpus = {n: run.cpu for n, run in runs.items()}
                watched[name].append(runs[large].watched)
                tails[name].append((runs[small].tail, runs[large].tail))
                sizes[name] = runs[large].size
            rate = (large - small) / (times[large] - times[small])
            rates[name].append(rate)
            cpu_rates[name].append((large - small) / (cpus[large] - cpus[small]))
            if name != "api":
                startup[name].append(times[large] - large / rate)
            print(
                f"round {r + 1}: {name} {rate:.1f} images/s, "
                f"{cpu_rates[name][-1]:.1f} images per CPU second",
                file=sys.stderr,
                flush=True,
            )
    api = statistics.median(rates["api"])
    api_cpu = statistics.median(cpu_rates["api"])
    after = os.getloadavg()
    lines += [
        f"JPEGs of 640x480, --top 1, gradcam; rate = ({large} - {small}) / (T{large} - T{small}), "
        f"each run timed whole; torch {torch.__version__}; rounds {args.rounds}, the variants "
        f"in turn; load average {load[0]:.1f} before, {after[0]:.1f} after (a shared machine)",
        "",
        "| variant | images/s (median) | / API | images per CPU second (/ API) | start-up (s) "
        "| index-watched images/s (/ API) | KB per image |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| API decode + explain (nothing written) | {api:.1f} | 1.00 | {api_cpu:.1f} (1.00) "
        "| | | |",
    ]
    for name in variants:
        rate = statistics.median(rates[name])
        seen = statistics.median(watched[name])
        cpu_rate = statistics.median(cpu_rates[name])
        lines.append(
            f"| camlens explain, {name} | {rate:.1f} | {rate / api:.2f} | "
            f"{cpu_rate:.1f} ({cpu_rate / api_cpu:.2f}) | "
            f"{statistics.median(startup[name]):.1f} | {seen:.1f} ({seen / api:.2f}) | "
            f"{sizes[name] / large / 1e3:.0f} |"
        )
    lines += [
        "",
        "all rates: " + str({k: [round(v, 1) for v in vs] for k, vs in rates.items()}),
        "per CPU second: " + str({k: [round(v, 1) for v in vs] for k, vs in cpu_rates.items()}),
        f"seconds from the last index row to the exit ({small}, {large} images): "
        + str({k: [(round(a, 1), round(b, 1)) for a, b in vs] for k, vs in tails.items()}),
        "index-watched: " + str({k: [round(v, 1) for v in vs] for k, vs in watched.items()}),
    ]
    _emit(lines[1:], args.out, lines)


def _emit(printed: list[str], out: Path | None, whole: list[str]) -> None:
    print("\n".join(printed))
    if out is not None:
        out.write_text("\n".join(whole) + "\n")


if __name__ == "__main__":
    main()
