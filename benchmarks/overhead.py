"""What camlens spends outside the network: CAM top-1 on the default model (tensor batches of 1
and 16), with ``net.forward`` wrapped in a timer; the median over calls of (call - forward).

    python benchmarks/overhead.py              # this checkout
    PYTHONPATH=OTHER/src python benchmarks/overhead.py   # another version, for a before/after
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from run import load, make_input  # benchmarks/run.py

import camlens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, layer = load("efficientnet_lite0")
    net = model.net
    forward = net.forward
    inside: list[float] = []

    def timed(*inputs: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = forward(*inputs, **kwargs)
        inside.append(time.perf_counter() - start)
        return out

    print(f"camlens {camlens.__file__}")
    print("| batch | forward (ms) | outside the forward (ms) |")
    print("|---:|---:|---:|")
    for batch in (1, 16):
        x = make_input(model, batch)
        explainer = camlens.Explainer(model, method="cam", layer=layer, batch_size=batch)
        net.forward = timed  # type: ignore[method-assign]
        try:
            for _ in range(3):
                explainer.explain(x, top=1)
            inside.clear()
            total = []
            for _ in range(args.calls):
                start = time.perf_counter()
                explainer.explain(x, top=1)
                total.append(time.perf_counter() - start)
        finally:
            del net.forward
        outside = statistics.median(t - i for t, i in zip(total, inside, strict=True))
        print(f"| {batch} | {statistics.median(inside) * 1000:.1f} | {outside * 1000:.1f} |")


if __name__ == "__main__":
    main()
