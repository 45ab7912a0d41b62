"""Two versions of camlens on the same machine, alternately: is a change in a ratio the code or the
machine?

    git worktree add /tmp/before 2caf8ef
    python benchmarks/versions.py /tmp/before/src src --case scorecam --processes 4 --calls 3
    python benchmarks/versions.py /tmp/before/src src --case vgg --processes 2 --calls 15

Each process imports one version (``PYTHONPATH``), times its case and prints the times; the
processes alternate between the versions, so that the machine's load hits both alike. Cases:

- ``scorecam``: Score-CAM of the top-1 class on the default EfficientNet-Lite0, one photo
  (chelsea), batch 1; one warm-up call, then ``--calls`` timed calls.
- ``vgg``: torchvision VGG16 (seeded random weights) at ``features.29``, one photo: the bare
  forward pass, the reference (forward keeping the layer's output + ``torch.autograd.grad`` of the
  top-1 score to it) and camlens's Grad-CAM of the top-1 class, in turn in each of ``--calls``
  rounds; with ``--with-peer``, pytorch-grad-cam's 5 calls (one per class) in each round too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def scorecam(calls: int, with_peer: bool) -> dict[str, list[float]]:
    from skimage import data

    import camlens
    from camlens.images import preprocess

    model = camlens.load_model()
    x = preprocess([camlens.load_image(data.chelsea())], model.preprocess)
    explainer = camlens.Explainer(model, method="scorecam", batch_size=1)
    return rounds({"scorecam": lambda: explainer.explain(x, top=1)}, calls)


def vgg(calls: int, with_peer: bool) -> dict[str, list[float]]:
    import torch
    import torchvision
    from skimage import data

    import camlens
    from camlens.images import preprocess

    torch.manual_seed(0)
    net = torchvision.models.vgg16().eval()
    model = camlens.load_model(net)
    x = preprocess([camlens.load_image(data.chelsea())], model.preprocess)
    module = dict(net.named_modules())["features.29"]
    explainer = camlens.Explainer(model, method="gradcam", layer="features.29", batch_size=1)

    def forward() -> object:
        with torch.no_grad():
            return net(x)

    def reference() -> object:
        kept: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            logits = net(x)
        finally:
            handle.remove()
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        return torch.autograd.grad(score, kept[0])

    cases: dict[str, Callable[[], object]] = {
        "forward": forward,
        "forward + grad to layer": reference,
        "camlens Grad-CAM top-1": lambda: explainer.explain(x, top=1),
    }
    if with_peer:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def peer() -> object:
            with pytorch_grad_cam.GradCAM(model=net, target_layers=[module]) as cam:
                maps = [cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]) for c in range(5)]
            net.zero_grad(set_to_none=True)
            return maps

        cases["pytorch-grad-cam, 5 classes"] = peer
    return rounds(cases, calls)


def rounds(cases: dict[str, Callable[[], object]], calls: int) -> dict[str, list[float]]:
    for run in cases.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(calls):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


CASES = {"scorecam": scorecam, "vgg": vgg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the src folder of the first version")
    parser.add_argument("after", type=Path, help="the src folder of the second version")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--processes", type=int, default=2, help="processes per version")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process")
    parser.add_argument("--with-peer", action="store_true", help="vgg: pytorch-grad-cam too")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        warnings.simplefilter("ignore")
        print(json.dumps(CASES[args.case](args.calls, args.with_peer)))
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
    print(f"{args.case}: medians in ms of {args.processes} x {args.calls} calls, 2 versions")
    for name, src in versions.items():
        medians = {case: round(statistics.median(v), 1) for case, v in times[name].items()}
        print(f"{name} ({src}): {medians}")
        if args.case == "vgg":
            ratio = medians["camlens Grad-CAM top-1"] / medians["forward + grad to layer"]
            print(f"  camlens Grad-CAM top-1 / forward + grad to layer: {ratio:.3f}")


if __name__ == "__main__":
    main()
