"""Peak memory of `camlens explain PHOTO --top K --format dataset` on one 2.2 MP photo (1800x1224,
a sample photo resized), for one or more source trees side by side: each run is a command of its
own, and its peak RSS is the kernel's (``os.wait4``'s ``ru_maxrss`` of that process).

Every map is written at the photo's size (an overlay, and the box, spread and off-centre of the
index), so a writer that keeps every full-size map of an image holds K x 8.8 MB of float32 maps.

    python benchmarks/top_memory.py --top 1 200 [--src before=OTHER/src] [--out results/top-memory.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from camlens.demo import sample_photos

SRC = Path(__file__).resolve().parents[1] / "src"
SIZE = (1800, 1224)  # 2.2 megapixels


def run(src: Path, photo: Path, top: int, out: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one `camlens explain` run with ``src`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="2")
    command = [sys.executable, "-m", "camlens.cli", "explain", str(photo), "--top", str(top)]
    command += ["--format", "dataset", "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(err.decode())
    return usage.ru_maxrss / 1024, seconds  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--src", action="append", help="LABEL=PATH: another tree's src (repeat)")
    parser.add_argument("--out", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    trees = [("this tree", SRC)]
    trees += [(label, Path(path)) for label, _, path in (t.rpartition("=") for t in args.src or [])]
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        photo = folder / "photo.jpg"
        with Image.open(sample_photos(folder / "samples")[0]) as sample:
            sample.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC).save(photo, quality=90)
        rows = []
        for top in args.top:
            for label, src in trees:  # side by side: the same photo, one after the other
                peak, seconds = run(src, photo, top, folder / f"out-{len(rows)}")
                rows.append((label or str(src), top, peak, seconds))
                print(
                    f"{label} ({src}) --top {top}: {peak:.0f} MB peak, {seconds:.1f} s", flush=True
                )
    load = os.getloadavg()[0]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {now}, {os.cpu_count()} cores, load {load:.1f}",
        f"`camlens explain PHOTO --top K --format dataset`, one {SIZE[0]}x{SIZE[1]} photo",
        "| source | K | peak RSS (MB) | seconds |",
        "|---|---:|---:|---:|",
        *(f"| {src} | {top} | {peak:.0f} | {seconds:.1f} |" for src, top, peak, seconds in rows),
    ]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
