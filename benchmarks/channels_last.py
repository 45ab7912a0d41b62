"""Is the channels-last memory format worth it for the masked passes? Score-CAM top-1 with
``channels_last=True`` (camlens's default) and ``False``, interleaved, on the models of the scores
suite, 128 channels (``fast_channels``) to keep the run short: the passes are the same work per
channel either way.

    python benchmarks/channels_last.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from run import Variant, load, make_input, time_round_robin  # benchmarks/run.py

import camlens


def explain_once(explainer: camlens.Explainer, x: torch.Tensor) -> Callable[[], object]:
    return lambda: explainer.explain(x, top=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | channels-last (ms) | contiguous (ms) | channels-last / contiguous |")
    print("|---|---:|---:|---:|")
    for key in ("resnet18", "efficientnet_lite0"):
        model, layer = load(key)
        x = make_input(model, 1)
        items = []
        for flag in (True, False):
            explainer = camlens.Explainer(
                model, method="scorecam", layer=layer, fast_channels=128, channels_last=flag
            )
            items.append(Variant(str(flag), explain_once(explainer, x)))
        times = time_round_robin(items, args.rounds, 1)
        last, plain = (statistics.median(times[str(f)]) for f in (True, False))
        print(f"| {key} | {last:.0f} | {plain:.0f} | {last / plain:.2f} |")


if __name__ == "__main__":
    main()
