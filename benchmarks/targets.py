"""What targets other than one class cost: five targets of different kinds in one call against one
target, a contrast against one class, and pytorch-grad-cam's five calls, interleaved in one
process on the same input tensor; prints a markdown table of medians and ratios.

    python benchmarks/targets.py --out benchmarks/results/targets.md
    python benchmarks/targets.py --quick      # a short run, to check it works

Where a GAP -> Linear head would let camlens skip the backward pass, there is nothing to measure,
so the layers here have no head after them: torchvision VGG16 (random weights) at
``features.29`` (conv5_3's ReLU, 14 x 14; the gradients go back through three linear layers, the
first of 400 MB) and ResNet-50 at ``layer3`` (14 x 14), batch 1 at 224 x 224, Grad-CAM. For
comparison, ResNet-50 at ``layer4`` too, the layer camlens chooses by default: it feeds the GAP ->
Linear head, so the classes' gradients are the head's weights, and only the similarity target
goes back (through the pooling).

Variants:

- camlens, one target: the top-1 class;
- camlens, a contrast: ``y[top-1] - y[top-2]`` (one backward pass of the difference);
- camlens, five targets in one call: the top-1 class, that contrast, the top-1 versus the mean of
  the next 3, raw output 7 and the cosine similarity to a reference image's embedding (the input
  of the last linear layer); one forward pass and one batched backward for all five;
- pytorch-grad-cam ``GradCAM`` with one target, and with the five as five calls (its way to get
  five maps: a list of targets is one target per image), the contrast as a callable target and the
  similarity as its tutorial's ``SimilarityToConceptTarget`` on the model's own output
  (our embedding target has no counterpart in one call there).

camlens runs the library's capture and method (what the Explainer runs for each batch) on the
pre-processed tensor; the peer's extractor is made inside each call, as its documentation does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from run import medians_and_ratios  # benchmarks/run.py

import camlens
from camlens.capture import Capture, Settings, find_targets
from camlens.images import preprocess
from camlens.maps import normalize
from camlens.methods import get_method
from camlens.modes import eval_mode
from camlens.scoring import TargetPlan
from camlens.targets import ClassScore, Contrast, Output, Similarity


def camlens_call(
    model: camlens.Model, layer: str, x: torch.Tensor, targets: list[object]
) -> Callable[[], object]:
    plan = TargetPlan(model, targets)
    (target,) = find_targets(model, [layer])
    method = get_method("gradcam")

    def run() -> object:
        with eval_mode(model.net):
            capture = Capture(model, [target], x, gradients=[layer], settings=Settings(), plan=plan)
            goals = capture.goals([targets] * len(x))
            raw = method.maps(capture, layer, goals)
        return [normalize(raw[:, j].detach()) for j in range(raw.shape[1])]

    return run


def peer_call(
    model: camlens.Model, layer: str, x: torch.Tensor, targets: list[object]
) -> Callable[[], object]:
    import pytorch_grad_cam as pgc

    module = model.net.get_submodule(layer)

    def run() -> object:
        out = []
        for t in targets:  # one call per target: a list of targets is one per image there
            with pgc.GradCAM(model=model.net, target_layers=[module]) as cam:
                out.append(cam(input_tensor=x, targets=[t]))
        return out

    return run


class Similar:
    """pytorch-grad-cam's tutorial ``SimilarityToConceptTarget``."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(output, self.features, dim=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from skimage import data

    photo = Image.fromarray(np.asarray(data.chelsea()))
    folder = Path(tempfile.mkdtemp())
    reference = folder / "coffee.png"
    Image.fromarray(np.asarray(data.coffee())).save(reference)
    lines = [
        f"# targets ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads, {rounds} rounds, load average "
        f"{os.getloadavg()[0]:.1f})",
        "",
    ]
    table: dict[str, dict[str, float]] = {}
    cases = [("vgg16", "features.29"), ("resnet50", "layer3"), ("resnet50", "layer4")]
    for name, layer in cases[:1] if args.quick else cases:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = camlens.load_model(f"torchvision:{name}")
        x = preprocess([photo], model.preprocess)
        with torch.no_grad():
            order = model.net(x)[0].argsort(descending=True).tolist()
        first, second = order[0], order[1]
        five: list[object] = [
            ClassScore(first),
            Contrast(first, (second,)),
            Contrast(first, next=3),
            Output(7),
            Similarity(str(reference)),
        ]
        with torch.no_grad():
            concept = model.net(
                preprocess([Image.open(reference).convert("RGB")], model.preprocess)
            )[0]
        peer_five = [
            ClassifierOutputTarget(first),
            lambda out, a=first, b=second: out[a] - out[b],
            lambda out, a=first, r=order[1:4]: out[a] - out[r].mean(),
            ClassifierOutputTarget(7),
            Similar(concept),
        ]
        variants = {
            "camlens, one class": camlens_call(model, layer, x, five[:1]),
            "camlens, a contrast": camlens_call(model, layer, x, five[1:2]),
            "camlens, five targets in one call": camlens_call(model, layer, x, five),
            "pytorch-grad-cam, one class": peer_call(model, layer, x, peer_five[:1]),
            "pytorch-grad-cam, five calls": peer_call(model, layer, x, peer_five),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(rounds):
            for key, fn in variants.items():
                started = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - started)
        table[f"{name} {layer}"] = {k: statistics.median(v) for k, v in times.items()}
    ratios = [
        (
            "five targets in one call / one class",
            "<= 1.2",
            "camlens, five targets in one call",
            "camlens, one class",
        ),
        ("a contrast / one class", "~ 1", "camlens, a contrast", "camlens, one class"),
        (
            "pytorch-grad-cam five calls / one class",
            "",
            "pytorch-grad-cam, five calls",
            "pytorch-grad-cam, one class",
        ),
        (
            "camlens five / pytorch-grad-cam five",
            "",
            "camlens, five targets in one call",
            "pytorch-grad-cam, five calls",
        ),
    ]
    lines += medians_and_ratios(table, ratios, digits=3)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
