"""Two versions of camlens on the same machine, alternately: is a change in a ratio the code or the
machine?

    git worktree add /tmp/before 2caf8ef
    python benchmarks/versions.py /tmp/before/src src --case scorecam --processes 4 --calls 3
    python benchmarks/versions.py /tmp/before/src src --case vgg --processes 2 --calls 15

Each process imports one version (``PYTHONPATH``), times its case with ``benchmarks/run.py``'s
models, inputs and variants (one photo, batch 1; one warm-up round, then ``--calls`` rounds in
turn) and prints the times; the processes alternate between the versions, so that the machine's
load hits both alike. Cases:

- ``scorecam``: Score-CAM of the top-1 class on the default EfficientNet-Lite0.
- ``vgg``: torchvision VGG16 at ``features.29``: the bare forward pass, the reference (forward
  keeping the layer's output + ``torch.autograd.grad`` of the top-1 score to it) and camlens's
  Grad-CAM of the top-1 class; with ``--with-peer``, pytorch-grad-cam's 5 calls too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

CASES = {
    # case: the model of run.py, its variants and the names of those timed
    "scorecam": ("efficientnet_lite0", "score_variants", ["camlens Score-CAM top-1"]),
    "vgg": (
        "vgg16",
        "vgg_variants",
        ["forward", "forward + grad to layer", "camlens Grad-CAM top-1"],
    ),
}
PEER = "pytorch-grad-cam GradCAM, 5 classes"


def timed(case: str, calls: int, with_peer: bool) -> dict[str, list[float]]:
    """The case's variants, as ``benchmarks/run.py`` builds them, round-robin for ``calls`` rounds
    after one warm-up round."""
    sys.path.insert(0, str(Path(__file__).parent))
    import run

    key, variants, names = CASES[case]
    chosen = names + ([PEER] if with_peer and case == "vgg" else [])
    model, layer = run.load(key)
    x = run.make_input(model, 1)
    items = [v for v in getattr(run, variants)(model, layer, x) if v.name in chosen]
    return run.time_round_robin(items, calls, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the src folder of the first version")
    parser.add_argument("after", type=Path, help="the src folder of the second version")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--processes", type=int, default=2, help="processes per version")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process")
    parser.add_argument("--with-peer", action="store_true", help="vgg: pytorch-grad-cam too")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, help="also write the lines printed to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        warnings.simplefilter("ignore")
        print(json.dumps(timed(args.case, args.calls, args.with_peer)))
        return
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in versions}
    for _ in range(args.processes):
        for name, src in versions.items():
            command = [sys.executable, __file__, str(src), str(src), "--case", args.case]
            command += ["--calls", str(args.calls), "--threads", str(args.threads), "--child"]
            command += ["--with-peer"] if args.with_peer else []
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            for case, values in json.loads(out.stdout.strip().splitlines()[-1]).items():
                times[name].setdefault(case, []).extend(values)
    load = os.getloadavg()[0]
    lines = [
        f"# benchmarks/versions.py --case {args.case}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"medians in ms of {args.processes} processes x {args.calls} calls per version, "
        f"alternately; {args.threads} torch threads; load average (1 min) {load:.1f} at the end",
        "",
    ]
    for name, src in versions.items():
        medians = {case: round(statistics.median(v), 1) for case, v in times[name].items()}
        lines.append(f"- {name} (`{src}`): {medians}")
        if args.case == "vgg":
            ratio = medians["camlens Grad-CAM top-1"] / medians["forward + grad to layer"]
            lines.append(f"  - camlens Grad-CAM top-1 / forward + grad to layer: {ratio:.3f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
