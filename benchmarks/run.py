"""Times camlens against the bare model and the peers (pytorch-grad-cam, torchcam), interleaved in
one process on the same input tensors, and prints a markdown table of medians and ratios.

    python benchmarks/run.py                  # the full run (several minutes on 2 cores)
    python benchmarks/run.py --quick          # a short run, to check it works
    python benchmarks/run.py --memory --out benchmarks/results.md

Models: torchvision ResNet-50 (random weights: speed does not depend on them) at ``layer4`` and the
default model (EfficientNet-Lite0) at ``bn2``, both 224 x 224, batch 1 and 16, on the CPU with
``--threads`` torch threads (2 by default). Both layers feed a GAP -> Linear head.

Variants, each on the same pre-processed batch (no image decoding is timed):

- ``forward``: the bare model under ``torch.no_grad()``;
- ``forward + grad to layer``: the honest reference for Grad-CAM of one class: a forward pass with a
  hook keeping the target layer's output, then ``torch.autograd.grad(score, activation)`` for the
  top-1 class of each image;
- camlens ``Explainer.explain(batch, top=k)``: Grad-CAM top-1 and top-5 with gradients from the head
  (camlens's default at these layers: no backward pass) and with ``use_head_gradients=False``
  (a real backward pass, as for a layer without a head), and CAM top-1. Explainers are built once
  (they keep no hooks between calls); each call returns finished ``Explanation`` objects;
- ``pytorch-grad-cam GradCAM`` and ``torchcam GradCAM``, top-1 class: the extractor is created and
  released inside each call (``with`` blocks, as their documentation uses them), so their hooks do not
  slow the other variants down; creating one costs well under a millisecond. pytorch-grad-cam
  returns maps resized to the input (cv2), torchcam and camlens maps at the layer's resolution.

``--suite scores`` times the perturbation methods instead, batch 1, on torchvision ResNet-18
(``layer4``, 512 channels) and the default model (``bn2``, 1280 channels):

- camlens Score-CAM top-1 and top-5 (all classes from the same masked passes), the fast modes
  (``fast_channels=64``: the 64 channels of largest variance; ``fast_resolution=0.5``: masked passes
  at 112 x 112), Ablation-CAM top-1 (the layers after the target layer replayed with one channel
  zeroed);
- pytorch-grad-cam ``ScoreCAM`` and ``AblationCAM`` and torchcam ``ScoreCAM``, top-1, batch size 32
  for their masked passes (camlens chunks by ``max_batch_memory`` instead);
- after the timing, the Pearson correlation of each fast mode's map with the exact one (top-1 class,
  at the input's resolution), for the fast modes' measured error.

``--suite vgg`` times the top-k cost where no GAP -> Linear head helps: torchvision VGG16 (random
weights) at ``features.29`` (conv5_3's ReLU, 14 x 14), whose gradients go back through three linear
layers (the first holds 400 MB of weights), batch 1 and 8:

- camlens Grad-CAM top-1 and top-5 (every class's gradient from one batched backward pass);
- the reference ``forward + grad to layer`` and ``forward + 5 grads to layer`` (one
  ``autograd.grad`` per class on a retained graph, as camlens did before);
- pytorch-grad-cam ``GradCAM`` with the 5 top classes as targets.

Rounds go round-robin over the variants after warm-up rounds, so that a change in machine load
hits every variant alike; the table gives each variant's median over the rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

import camlens

SIZE = 224
MODELS = {
    "resnet50": ("torchvision:resnet50", "layer4"),
    "resnet18": ("torchvision:resnet18", "layer4"),
    "efficientnet_lite0": (None, "bn2"),
    "vgg16": ("torchvision:vgg16", "features.29"),
}
PEER_BATCH = 32  # the peers' batch size for their masked passes
FAST_CHANNELS = 64
FAST_RESOLUTION = 0.5


@dataclass
class Variant:
    name: str
    run: Callable[[], object]
    after: Callable[[], None] | None = None  # untimed clean-up after each run


def load(model_key: str) -> tuple[camlens.Model, str]:
    spec, layer = MODELS[model_key]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights for ResNet-50: expected
        model = camlens.load_model(spec)
    return model, layer


def make_input(model: camlens.Model, batch: int) -> torch.Tensor:
    """A fixed batch of real-looking inputs: skimage photos, pre-processed as the model expects."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    images = [camlens.load_image(photos[i % len(photos)]) for i in range(batch)]
    from camlens.images import preprocess

    x: torch.Tensor = preprocess(images, model.preprocess)
    assert x.shape == (batch, 3, SIZE, SIZE), x.shape
    return x


def gradient_variants(model: camlens.Model, layer: str, x: torch.Tensor) -> list[Variant]:
    import pytorch_grad_cam
    import torchcam.methods

    net = model.net
    module = dict(net.named_modules())[layer]

    def forward() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = net(x)
        return out

    def reference() -> torch.Tensor:
        kept: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            logits = net(x)
        finally:
            handle.remove()
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(score, kept[0])
        return grad

    explainers = {
        (method, head): camlens.Explainer(
            model, method=method, layer=layer, use_head_gradients=head, batch_size=len(x)
        )
        for method, head in [("gradcam", True), ("gradcam", False), ("cam", True)]
    }

    def ours(method: str, head: bool, top: int) -> Callable[[], object]:
        explainer = explainers[(method, head)]
        return lambda: explainer.explain(x, top=top)

    def pgc() -> object:
        with pytorch_grad_cam.GradCAM(model=net, target_layers=[module]) as cam:
            return cam(input_tensor=x, targets=None)

    def pgc_after() -> None:
        net.zero_grad(set_to_none=True)  # it leaves gradients on every parameter

    def tcam() -> object:
        with torchcam.methods.GradCAM(net, layer) as extractor:
            scores = net(x)
            return extractor(class_idx=scores.argmax(1).tolist(), scores=scores)

    return [
        Variant("forward", forward),
        Variant("forward + grad to layer", reference),
        Variant("camlens Grad-CAM top-1 (head)", ours("gradcam", True, 1)),
        Variant("camlens Grad-CAM top-5 (head)", ours("gradcam", True, 5)),
        Variant("camlens Grad-CAM top-1 (autograd)", ours("gradcam", False, 1)),
        Variant("camlens Grad-CAM top-5 (autograd)", ours("gradcam", False, 5)),
        Variant("camlens CAM top-1", ours("cam", True, 1)),
        Variant("pytorch-grad-cam GradCAM", pgc, pgc_after),
        Variant("torchcam GradCAM", tcam),
    ]


def vgg_variants(model: camlens.Model, layer: str, x: torch.Tensor) -> list[Variant]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = model.net
    module = dict(net.named_modules())[layer]
    with torch.no_grad():
        top5 = net(x).topk(5, dim=1).indices

    def forward() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = net(x)
        return out

    def reference(classes: int) -> Callable[[], object]:
        def run() -> object:
            kept: list[torch.Tensor] = []
            handle = module.register_forward_hook(lambda m, i, o: kept.append(o))
            try:
                logits = net(x)
            finally:
                handle.remove()
            grads = []
            for j in range(classes):
                score = logits.gather(1, top5[:, j : j + 1]).sum()
                grads += torch.autograd.grad(score, kept[0], retain_graph=j < classes - 1)
            return grads

        return run

    explainer = camlens.Explainer(model, method="gradcam", layer=layer, batch_size=len(x))

    def pgc() -> object:
        targets = [ClassifierOutputTarget(int(c)) for c in top5[0]]
        with pytorch_grad_cam.GradCAM(model=net, target_layers=[module]) as cam:
            return [cam(input_tensor=x, targets=[t] * len(x)) for t in targets]

    def pgc_after() -> None:
        net.zero_grad(set_to_none=True)

    return [
        Variant("forward", forward),
        Variant("forward + grad to layer", reference(1)),
        Variant("forward + 5 grads to layer", reference(5)),
        Variant("camlens Grad-CAM top-1", lambda: explainer.explain(x, top=1)),
        Variant("camlens Grad-CAM top-5", lambda: explainer.explain(x, top=5)),
        Variant("pytorch-grad-cam GradCAM, 5 classes", pgc, pgc_after),
    ]


def vgg_rows() -> list[tuple[str, str, str, str]]:
    one, five = "camlens Grad-CAM top-1", "camlens Grad-CAM top-5"
    ref = "forward + grad to layer"
    return [
        ("top-5 / top-1", "<= 1.15", five, one),
        ("camlens Grad-CAM top-1 / forward+grad", "<= 1.05", one, ref),
        ("camlens top-5 / forward + 5 grads", "", five, "forward + 5 grads to layer"),
        ("forward + 5 grads / forward + grad", "", "forward + 5 grads to layer", ref),
        (
            "camlens top-5 / pytorch-grad-cam (5 classes)",
            "",
            five,
            "pytorch-grad-cam GradCAM, 5 classes",
        ),
    ]


def score_variants(model: camlens.Model, layer: str, x: torch.Tensor) -> list[Variant]:
    import pytorch_grad_cam
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = model.net
    module = dict(net.named_modules())[layer]
    with torch.no_grad():
        top1 = [ClassifierOutputTarget(int(c)) for c in net(x).argmax(1)]

    def forward() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = net(x)
        return out

    def ours(method: str, top: int, **options: float) -> Callable[[], object]:
        explainer = camlens.Explainer(model, method=method, layer=layer, **options)
        return lambda: explainer.explain(x, top=top)

    def pgc(kind: type) -> Callable[[], object]:
        def run() -> object:
            with kind(model=net, target_layers=[module]) as cam:
                cam.batch_size = PEER_BATCH
                return cam(input_tensor=x, targets=top1)

        return run

    def tcam() -> object:
        with torchcam.methods.ScoreCAM(net, layer, batch_size=PEER_BATCH) as extractor:
            scores = net(x)
            return extractor(class_idx=scores.argmax(1).tolist(), scores=scores)

    return [
        Variant("forward", forward),
        Variant("camlens Score-CAM top-1", ours("scorecam", 1)),
        Variant("camlens Score-CAM top-5", ours("scorecam", 5)),
        Variant(
            f"camlens Score-CAM top-1 fast ({FAST_CHANNELS} channels)",
            ours("scorecam", 1, fast_channels=FAST_CHANNELS),
        ),
        Variant(
            f"camlens Score-CAM top-1 fast (resolution {FAST_RESOLUTION})",
            ours("scorecam", 1, fast_resolution=FAST_RESOLUTION),
        ),
        Variant("camlens Ablation-CAM top-1", ours("ablationcam", 1)),
        Variant("pytorch-grad-cam ScoreCAM", pgc(pytorch_grad_cam.ScoreCAM)),
        Variant("torchcam ScoreCAM", tcam),
        Variant("pytorch-grad-cam AblationCAM", pgc(pytorch_grad_cam.AblationCAM)),
    ]


def fast_correlations(model: camlens.Model, layer: str, x: torch.Tensor) -> dict[str, float]:
    """Pearson correlation of each fast Score-CAM mode's map with the exact one (top-1 class, at
    the input's resolution): the measured error of the knobs."""

    def flat_map(**options: float) -> torch.Tensor:
        explainer = camlens.Explainer(model, method="scorecam", layer=layer, **options)
        return explainer.explain(x[0], top=1).map_at_input().flatten()

    exact = flat_map()
    modes = {
        f"{FAST_CHANNELS} channels": flat_map(fast_channels=FAST_CHANNELS),
        f"resolution {FAST_RESOLUTION}": flat_map(fast_resolution=FAST_RESOLUTION),
    }
    return {
        mode: float(torch.corrcoef(torch.stack([exact, fast]))[0, 1])
        for mode, fast in modes.items()
    }


@dataclass
class Suite:
    models: tuple[str, ...]
    batches: tuple[int, ...]
    variants: Callable[[camlens.Model, str, torch.Tensor], list[Variant]]
    rows: list[tuple[str, str, str, str]]  # label, goal, numerator, denominator
    rounds: Callable[[int], int]  # the full run's timed rounds for a batch size
    warmup: int
    memory_calls: int


def gradient_rows() -> list[tuple[str, str, str, str]]:
    fwd, ref = "forward", "forward + grad to layer"
    head, auto = "camlens Grad-CAM top-1 (head)", "camlens Grad-CAM top-1 (autograd)"
    pgc, tcam = "pytorch-grad-cam GradCAM", "torchcam GradCAM"
    return [
        ("camlens Grad-CAM (head) / forward+grad", "<= 1.05", head, ref),
        ("camlens Grad-CAM (autograd) / forward+grad", "<= 1.05", auto, ref),
        ("top-5 / top-1 (head)", "<= 1.3", "camlens Grad-CAM top-5 (head)", head),
        ("top-5 / top-1 (autograd)", "<= 1.3", "camlens Grad-CAM top-5 (autograd)", auto),
        ("CAM / forward", "<= 1.05", "camlens CAM top-1", fwd),
        ("camlens Grad-CAM (head) / pytorch-grad-cam", "", head, pgc),
        ("camlens Grad-CAM (autograd) / pytorch-grad-cam", "", auto, pgc),
        ("camlens Grad-CAM (head) / torchcam", "", head, tcam),
        ("camlens Grad-CAM (autograd) / torchcam", "", auto, tcam),
        ("pytorch-grad-cam / forward+grad", "", pgc, ref),
        ("torchcam / forward+grad", "", tcam, ref),
    ]


def score_rows() -> list[tuple[str, str, str, str]]:
    one = "camlens Score-CAM top-1"
    fast = f"camlens Score-CAM top-1 fast ({FAST_CHANNELS} channels)"
    pgc, tcam = "pytorch-grad-cam ScoreCAM", "torchcam ScoreCAM"
    ablation, pgc_ablation = "camlens Ablation-CAM top-1", "pytorch-grad-cam AblationCAM"
    return [
        ("Score-CAM / pytorch-grad-cam", "<= 1", one, pgc),
        ("Score-CAM / torchcam", "<= 1", one, tcam),
        ("Score-CAM top-5 / top-1", "<= 1.1", "camlens Score-CAM top-5", one),
        ("Score-CAM fast / pytorch-grad-cam", "<= 0.2", fast, pgc),
        ("Score-CAM fast / torchcam", "<= 0.2", fast, tcam),
        (
            "Score-CAM half resolution / top-1",
            "",
            f"camlens Score-CAM top-1 fast (resolution {FAST_RESOLUTION})",
            one,
        ),
        ("Ablation-CAM / pytorch-grad-cam", "<= 0.1", ablation, pgc_ablation),
        ("Ablation-CAM / forward", "", ablation, "forward"),
    ]


SUITES = {
    "gradients": Suite(
        ("resnet50", "efficientnet_lite0"),
        (1, 16),
        gradient_variants,
        gradient_rows(),
        lambda batch: 25 if batch == 1 else 7,
        2,
        2,
    ),
    "scores": Suite(
        ("resnet18", "efficientnet_lite0"), (1,), score_variants, score_rows(), lambda _: 3, 1, 1
    ),
    "vgg": Suite(
        ("vgg16",), (1, 8), vgg_variants, vgg_rows(), lambda batch: 15 if batch == 1 else 7, 1, 1
    ),
}


def time_round_robin(items: list[Variant], rounds: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v.name: [] for v in items}
    for r in range(warmup + rounds):
        # rotate the order each round, so no variant always runs right after the same one
        for v in items[r % len(items) :] + items[: r % len(items)]:
            gc.collect()
            start = time.perf_counter()
            v.run()
            elapsed = time.perf_counter() - start
            if v.after is not None:
                v.after()
            if r >= warmup:
                times[v.name].append(elapsed * 1000)
    return times


def peak_memory(suite: str, model_key: str, batch: int, name: str, threads: int) -> float:
    """Peak RSS (MB) one variant needs above what the process holds once the model, input and
    explainers are ready: two calls in a fresh process."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--suite",
            suite,
            "--child",
            model_key,
            str(batch),
            name,
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mb"])


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


def child(suite: Suite, model_key: str, batch: int, name: str) -> None:
    model, layer = load(model_key)
    x = make_input(model, batch)
    variant = {v.name: v for v in suite.variants(model, layer, x)}[name]
    gc.collect()
    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # Linux: reset the peak (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    for _ in range(suite.memory_calls):
        variant.run()
        if variant.after is not None:
            variant.after()
    print(json.dumps({"mb": (_status_kib("VmHWM") - before) / 1024}))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def medians_and_ratios(
    table: dict[str, dict[str, float]], ratios: list[tuple[str, str, str, str]], digits: int = 2
) -> list[str]:
    """Two markdown tables: the medians of ``table`` (a column per key, a row per variant; ``-``
    where a column has no such variant), then each ratio ``(label, goal, variant, over
    variant)`` of the medians, column by column."""
    columns = list(table)
    rows = list(dict.fromkeys(key for c in columns for key in table[c]))
    lines = ["| median seconds | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key in rows:
        values = " | ".join(
            f"{table[c][key]:.{digits}f}" if key in table[c] else "-" for c in columns
        )
        lines.append(f"| {key} | {values} |")
    lines += ["", "| ratio of medians | goal | " + " | ".join(columns) + " |"]
    lines.append("|---|---|" + "---:|" * len(columns))
    for label, goal, top, bottom in ratios:
        values = " | ".join(
            f"{table[c][top] / table[c][bottom]:.2f}"
            if top in table[c] and bottom in table[c]
            else "-"
            for c in columns
        )
        lines.append(f"| {label} | {goal} | {values} |")
    return lines


def ratio(a: float, b: float, limit: float = float("inf")) -> str:
    """``a / b``, in bold when it misses its goal (is above ``limit``)."""
    value = a / b
    return f"**{value:.2f}**" if value > limit else f"{value:.2f}"


def report(
    results: dict[tuple[str, int], dict[str, list[float]]],
    memory: dict[tuple[str, int, str], float],
    header: list[str],
    rows: list[tuple[str, str, str, str]],
    notes: list[str],
) -> str:
    lines = [*header, ""]
    cols = [f"{m} b{b}" for m, b in results]
    lines += ["### Median time per call (ms)", ""]
    lines.append("| variant | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    names = list(next(iter(results.values())))
    med = {key: {n: statistics.median(t) for n, t in r.items()} for key, r in results.items()}
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{med[key][n]:.1f}" for key in results) + " |")
    lines += ["", "### Ratios of medians (lower is better; bold: goal missed)", ""]
    lines.append("| ratio | goal | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---:|" * len(cols))
    for label, goal, a, b in rows:
        limit = float(goal.removeprefix("<= ")) if goal else float("inf")
        cells = " | ".join(ratio(med[key][a], med[key][b], limit) for key in results)
        lines.append(f"| {label} | {goal} | {cells} |")
    if memory:
        lines += ["", "### Peak memory of a call above the ready process's RSS (MB)", ""]
        mcols = [(m, b) for m, b in results if (m, b, names[0]) in memory]
        lines.append("| variant | " + " | ".join(f"{m} b{b}" for m, b in mcols) + " |")
        lines.append("|---|" + "---:|" * len(mcols))
        for n in names:
            lines.append(
                f"| {n} | " + " | ".join(f"{memory[(m, b, n)]:.0f}" for m, b in mcols) + " |"
            )
    spread = [
        f"{m} b{b}: {n} {min(t):.1f}..{max(t):.1f}"
        for (m, b), r in results.items()
        for n, t in r.items()
        if n == "forward"
    ]
    lines += ["", "Spread of the bare forward (min..max ms): " + "; ".join(spread)]
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite", choices=SUITES, default="gradients", help="which methods to time"
    )
    parser.add_argument("--quick", action="store_true", help="few rounds: a check that it runs")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="timed rounds (quick: 3 (1 for scores); gradients: 25 at batch 1, 7 at 16; scores: 3; "
        "vgg: 15 at batch 1, 7 at 8)",
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS per variant, largest batch (Linux)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    if args.child:
        child(suite, args.child[0], int(args.child[1]), args.child[2])
        return

    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    memory: dict[tuple[str, int, str], float] = {}
    notes: list[str] = []
    for model_key in suite.models:
        model, layer = load(model_key)
        for batch in suite.batches:
            x = make_input(model, batch)
            items = suite.variants(model, layer, x)
            if args.rounds:
                rounds = args.rounds
            elif args.quick:
                rounds = 1 if args.suite == "scores" else 3
            else:
                rounds = suite.rounds(batch)
            print(f"{model_key} batch {batch}: {rounds} rounds", file=sys.stderr, flush=True)
            warmup = 1 if args.quick else suite.warmup
            results[(model_key, batch)] = time_round_robin(items, rounds, warmup)
            if args.memory and batch == max(suite.batches):
                for v in items:
                    memory[(model_key, batch, v.name)] = peak_memory(
                        args.suite, model_key, batch, v.name, args.threads
                    )
        if args.suite == "scores":
            for mode, corr in fast_correlations(model, layer, make_input(model, 1)).items():
                notes.append(
                    f"{model_key} ({layer}): correlation of the fast Score-CAM map ({mode}) "
                    f"with the exact one, top-1 class: {corr:.4f}"
                )
    load_after = os.getloadavg()
    header = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} with "
        f"{args.threads} threads; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
        f"Peers: grad-cam {version('grad-cam')}, torchcam {version('torchcam')}; "
        f"camlens {camlens.__version__}",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; command: python benchmarks/run.py {' '.join(sys.argv[1:])}",
    ]
    text = report(results, memory, header, suite.rows, notes)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
