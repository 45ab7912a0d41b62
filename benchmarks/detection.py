"""What the maps of N detections cost against one: camlens's Grad-CAM of the 10 best detections
in one call (one forward pass, one batched backward) against the best one alone, and against
pytorch-grad-cam's ``GradCAM`` with ``FasterRCNNBoxScoreTarget``, one call per box (its way to get
a map per detection: a target of several boxes sums their scores into one map). Interleaved in one
process on the same input tensor; prints a markdown table of medians and ratios.

    python benchmarks/detection.py --out benchmarks/results/detection.md
    python benchmarks/detection.py --quick      # a short run, to check it works
    python benchmarks/detection.py --quick --profile --models fasterrcnn_resnet50_fpn retinanet_resnet50_fpn

torchvision's detectors (``--models``: the two Faster R-CNN by default, RetinaNet, FCOS and
SSDlite too), loaded by spec (random weights), at their automatic layers (the backbone's last
stage of stride 16: ``backbone.body.12``, ``backbone.body.layer3``, ``backbone.features.0``)
and, with ``--layers auto last``, at the backbone's last stage (stride 32:
``backbone.body.16``, ``backbone.body.layer4``, ``backbone.features.1``), on one photo resized
to the detector's input (``--size``; by default its own, 800 pixels, 320 for SSDlite),
``min_score=0`` so that there are 10 detections to explain. A random MobileNet box head scores
every class of every region alike (1/88, under torchvision's threshold of 0.05): its class
weights are multiplied by 100 here, so that one class of each region passes the threshold, as a
trained head's few classes do. RetinaNet, FCOS and SSDlite score every anchor about alike with
random weights: their threshold is set to 0, and the 10 best of what their NMS keeps are
explained.

Variants, per model:

- the detector's forward pass alone (inference mode), and with the gradient of the best
  detection's score at the layer (``torch.autograd.grad``: the least one detection's Grad-CAM
  costs), and with the gradients of the 10 best, one backward pass each on the same graph;
- camlens Grad-CAM of the best detection, and of the 10 best in one call
  (``Explainer(model, method="gradcam", min_score=0, detections=N)``, on the tensor);
- camlens Eigen-CAM of the 10 best (no gradient: one forward pass);
- pytorch-grad-cam, one call for the best box, and 10 calls for the 10 best boxes (Faster
  R-CNN only: its ``FasterRCNNBoxScoreTarget`` fails on FCOS, a detection's box not found again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from run import medians_and_ratios  # benchmarks/run.py

import camlens
from camlens.images import PreprocessConfig, preprocess

MODELS = {  # the class weights' factor (see above)
    "fasterrcnn_mobilenet_v3_large_fpn": 100.0,
    "fasterrcnn_resnet50_fpn": 1.0,
    "retinanet_resnet50_fpn": 1.0,
    "fcos_resnet50_fpn": 1.0,
    "ssdlite320_mobilenet_v3_large": 1.0,
}
DEFAULT_MODELS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn"]
N = 10
LAST = {  # the backbone's last stage (stride 32)
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.16",
    "fasterrcnn_resnet50_fpn": "backbone.body.layer4",
    "retinanet_resnet50_fpn": "backbone.body.layer4",
    "fcos_resnet50_fpn": "backbone.body.layer4",
    "ssdlite320_mobilenet_v3_large": "backbone.features.1",
}


def load(name: str, factor: float, size: int | None) -> camlens.Model:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        model = camlens.load_model(f"torchvision:{name}")
    if factor != 1:
        with torch.no_grad():
            model.net.roi_heads.box_predictor.cls_score.weight.mul_(factor)
    if not name.startswith("fasterrcnn_"):
        model.net.inner.score_thresh = 0.0  # see above
    if size is not None:
        model.preprocess = PreprocessConfig(
            input_size=(size, size), interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)
        )
    return model


def reference(
    model: camlens.Model, layer: str, x: torch.Tensor, count: int | None
) -> Callable[[], object]:
    """The detector's pass (None: in inference mode), with the gradient of the ``count`` best
    scores at ``layer``, one ``autograd.grad`` each."""
    net: Any = model.net.inner  # torchvision's detector itself
    module = net.get_submodule(layer)

    def run() -> object:
        if count is None:
            with torch.inference_mode():
                return net(list(x))
        kept: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            (found,) = net(list(x))
        finally:
            handle.remove()
        scores = found["scores"][:count]
        return [
            torch.autograd.grad(s, kept[0], retain_graph=j < count - 1)
            for j, s in enumerate(scores)
        ]

    return run


def camlens_call(
    model: camlens.Model, layer: str, x: torch.Tensor, method: str, count: int
) -> Callable[[], object]:
    ex = camlens.Explainer(model, method=method, layer=layer, min_score=0, detections=count)

    def run() -> object:
        (result,) = ex.explain(x)  # a batch of one
        assert len(result.maps) == count, len(result.maps)
        return [m.map for m in result.maps]

    return run


def peer_call(
    model: camlens.Model, layer: str, x: torch.Tensor, boxes: list[tuple[torch.Tensor, int]]
) -> Callable[[], object]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    net: Any = model.net.inner
    module = net.get_submodule(layer)

    def run() -> object:
        out = []
        for box, label in boxes:  # one call per box: one map per call
            with pgc.GradCAM(model=net, target_layers=[module]) as cam:
                out.append(cam(input_tensor=x, targets=[FasterRCNNBoxScoreTarget([label], [box])]))
        return out

    return run


def measure(
    model: camlens.Model,
    name: str,
    layer: str,
    x: torch.Tensor,
    boxes: list[tuple[torch.Tensor, int]],
    rounds: int,
    table: dict[str, dict[str, float]],
) -> None:
    """Every variant at ``layer``, interleaved over ``rounds``; the medians go in ``table``."""
    variants = {
        "forward (inference mode)": reference(model, layer, x, None),
        "forward + gradient of the best score (reference)": reference(model, layer, x, 1),
        f"forward + {N} gradients, one backward each": reference(model, layer, x, N),
        "camlens Grad-CAM, 1 detection": camlens_call(model, layer, x, "gradcam", 1),
        f"camlens Grad-CAM, {N} detections in one call": camlens_call(
            model, layer, x, "gradcam", N
        ),
        f"camlens Eigen-CAM, {N} detections": camlens_call(model, layer, x, "eigencam", N),
    }
    if name.startswith("fasterrcnn_"):  # the peer's target is written for Faster R-CNN
        variants["pytorch-grad-cam, 1 call (1 box)"] = peer_call(model, layer, x, boxes[:1])
        variants[f"pytorch-grad-cam, {N} calls ({N} boxes)"] = peer_call(model, layer, x, boxes)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for key, fn in variants.items():  # warm-up (the peer's 10 calls are its 1 call's code)
        if not key.startswith(f"pytorch-grad-cam, {N}"):
            fn()
    for _ in range(rounds):
        for key, fn in variants.items():
            began = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - began)
            print(f"{name} {key}: {times[key][-1]:.2f} s", flush=True)
    column = f"{name.removeprefix('fasterrcnn_')} {layer} {x.shape[-1]} px"
    table[column] = {k: statistics.median(v) for k, v in times.items()}
    model.net.zero_grad(set_to_none=True)  # the peer's backward filled them


def profile(model: camlens.Model, name: str, layer: str, x: torch.Tensor) -> list[str]:
    """Where camlens's Grad-CAM of the 10 best detections spends its backward pass: the heaviest
    convolution backward calls of one call (``torch.profiler``), grouped by their input shapes."""
    run = camlens_call(model, layer, x, "gradcam", N)
    run()  # warm-up
    with torch.profiler.profile(record_shapes=True) as prof:
        run()
    rows = [
        k
        for k in prof.key_averages(group_by_input_shape=True)
        if k.key == "aten::convolution_backward"
    ]
    total = sum(k.self_cpu_time_total for k in rows)
    lines = [
        "",
        f"{name} {layer}: convolution backward {total / 1e3:.0f} ms of CPU time for {N} "
        "detections, the heaviest by input shape (gradient, input, weight):",
        "",
    ]
    for k in sorted(rows, key=lambda k: -k.self_cpu_time_total)[:5]:
        shapes = " ".join("x".join(map(str, shape)) for shape in k.input_shapes[:3])
        lines.append(f"- {k.self_cpu_time_total / 1e3:.0f} ms, {k.count} calls: {shapes}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, help="input side in pixels (default: the model's)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS)
    parser.add_argument(
        "--layers",
        nargs="+",
        choices=["auto", "last"],
        default=["auto"],
        help="the automatic layer (stride 16), the backbone's last stage (stride 32), or both",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also where the 10 detections' backward goes"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    size = 320 if args.quick and args.size is None else args.size
    from skimage import data

    photo = Image.fromarray(np.asarray(data.chelsea()))
    load_before = os.getloadavg()[0]
    started = dt.datetime.now(dt.UTC)
    table: dict[str, dict[str, float]] = {}
    profiles: list[str] = []
    for name in args.models:
        model = load(name, MODELS[name], size)
        x = preprocess([photo], model.preprocess)
        with torch.no_grad():  # inference tensors cannot be the peer's targets
            (found,) = model.net.inner(list(x))
        assert len(found["scores"]) >= N, f"{name}: {len(found['scores'])} detections"
        boxes = [(found["boxes"][j], int(found["labels"][j])) for j in range(N)]
        for which in args.layers:
            layer = model.default_layer if which == "auto" else LAST[name]
            assert layer is not None
            measure(model, name, layer, x, boxes, rounds, table)
            if args.profile:
                profiles += profile(model, name, layer, x)
        del model
    lines = [
        f"# detection ({started:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads, {rounds} rounds, load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after)",
        "",
    ]
    ten = f"camlens Grad-CAM, {N} detections in one call"
    ratios = [
        (f"camlens {N} detections / 1 detection", "<= 1.5", ten, "camlens Grad-CAM, 1 detection"),
        (
            "camlens 1 detection / forward + gradient",
            "",
            "camlens Grad-CAM, 1 detection",
            "forward + gradient of the best score (reference)",
        ),
        (
            f"forward + {N} gradients / forward + 1",
            "",
            f"forward + {N} gradients, one backward each",
            "forward + gradient of the best score (reference)",
        ),
        (
            f"camlens {N} / forward + {N} gradients",
            "",
            ten,
            f"forward + {N} gradients, one backward each",
        ),
        (
            f"camlens {N} / pytorch-grad-cam {N} calls",
            "",
            ten,
            f"pytorch-grad-cam, {N} calls ({N} boxes)",
        ),
        (
            f"pytorch-grad-cam {N} calls / 1 call",
            "",
            f"pytorch-grad-cam, {N} calls ({N} boxes)",
            "pytorch-grad-cam, 1 call (1 box)",
        ),
        (
            f"camlens Eigen-CAM {N} / forward",
            "",
            f"camlens Eigen-CAM, {N} detections",
            "forward (inference mode)",
        ),
    ]
    lines += medians_and_ratios(table, ratios) + profiles
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
