"""Start-up of the ``camlens`` command against an import of torch, interleaved.

Each round runs, in turn, ``python -c "import torch"`` and ``python -m camlens ARGS`` for
``--help``, ``methods`` and two bad options (an unknown method, ``--top 0``), each a fresh process
timed from its start to its exit; the medians and their ratio to torch's import are printed (goal:
at most 0.3). Run in turns, a change in the machine's load hits every command alike.

    python benchmarks/startup.py --rounds 15 [--out results/startup.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

COMMANDS = {
    "python -c 'import torch'": ["-c", "import torch"],
    "camlens --help": ["-m", "camlens", "--help"],
    "camlens methods": ["-m", "camlens", "methods"],
    "camlens explain cat.jpg --method nope": [
        "-m",
        "camlens",
        "explain",
        "cat.jpg",
        "--method",
        "nope",
    ],
    "camlens explain cat.jpg --top 0": ["-m", "camlens", "explain", "cat.jpg", "--top", "0"],
}


def seconds(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    load = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    for argv in COMMANDS.values():  # warm the file cache
        seconds(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(seconds(argv))
    torch_import = statistics.median(times["python -c 'import torch'"])
    after = os.getloadavg()
    lines = [
        f"# {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.rounds} rounds, "
        f"load average {load[0]:.1f} before, {after[0]:.1f} after",
        "",
        "| command | median (s) | min-max (s) | / import torch (goal <= 0.3) |",
        "|---|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| `{name}` | {median:.2f} | {min(values):.2f}-{max(values):.2f} | "
            f"{median / torch_import:.2f} |"
        )
    print("\n".join(lines))
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
