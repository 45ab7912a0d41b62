"""Grad-CAM on other model families, timed side by side in one process, rounds round-robin:

- **Keras**: ``keras.applications.VGG16`` (random weights, seeded) run by camlens on Keras's torch
  backend at ``block5_conv3``, against the same weights copied into torchvision's ``vgg16`` and
  explained by camlens at ``features.29`` (the same layer: the ReLU after the last conv). The
  ratio is what Keras's layer-by-layer execution costs on top of the same computation.
- **Transformers**: timm ``vit_tiny_patch16_224`` at ``blocks.11.norm1`` and
  ``swin_tiny_patch4_window7_224`` at ``layers.3.blocks.1.norm2`` (random weights), camlens
  Grad-CAM against pytorch-grad-cam's ``GradCAM`` with the reshape transforms it ships for them
  (created and released inside each call, as its documentation uses it).

Every variant explains the top-1 class of the same pre-processed batch; each also has the bare
forward pass (``torch.no_grad``) for scale.

    python benchmarks/families.py        # batch 1 and 16 (Keras: 1 and 8), 11 rounds: ~20 min
    python benchmarks/families.py --quick            # a short run, to check it works
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a machine shared with other jobs, OpenMP threads that spin while
# waiting slow some passes down many times over (see tests/conftest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import statistics
import warnings
from collections.abc import Callable

import torch
import torchvision
from run import Variant, time_round_robin  # benchmarks/run.py

import camlens
from camlens.images import preprocess
from camlens.models.keras import import_keras, preprocess_mode


def photos(batch: int, size: int = 224) -> list[object]:
    from skimage import data

    pictures = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return [camlens.load_image(pictures[i % len(pictures)]) for i in range(batch)]


def forward(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return net(x)

    return run


def explain(model: camlens.Model, layer: str, x: torch.Tensor) -> Callable[[], object]:
    explainer = camlens.Explainer(model, "gradcam", layer, batch_size=len(x))
    return lambda: explainer.explain(x, top=1)


def keras_variants(batch: int) -> list[Variant]:
    keras = import_keras()
    keras.utils.set_random_seed(0)
    kmodel = keras.applications.VGG16(weights=None)
    with torch.device("meta"):
        tnet = torchvision.models.vgg16(weights=None)
    tnet = tnet.to_empty(device="cpu").eval()
    convs = [m for m in tnet.features if isinstance(m, torch.nn.Conv2d)]
    kconvs = [layer for layer in kmodel.layers if isinstance(layer, keras.layers.Conv2D)]
    linears = [m for m in tnet.classifier if isinstance(m, torch.nn.Linear)]
    dense = [kmodel.get_layer(n) for n in ("fc1", "fc2", "predictions")]
    with torch.no_grad():
        for conv, k in zip(convs, kconvs, strict=True):
            conv.weight.copy_(k.kernel.value.permute(3, 2, 0, 1))
            conv.bias.copy_(k.bias.value)
        for i, (linear, k) in enumerate(zip(linears, dense, strict=True)):
            kernel = k.kernel.value
            if i == 0:
                kernel = kernel.reshape(7, 7, 512, -1).permute(2, 0, 1, 3).reshape(25088, -1)
            linear.weight.copy_(kernel.T)
            linear.bias.copy_(k.bias.value)
    config = preprocess_mode("caffe")
    ours_keras = camlens.load_model(kmodel, preprocess=config)
    ours_torch = camlens.load_model(tnet, preprocess=config)
    x = preprocess(photos(batch), config)
    with torch.no_grad():  # the same network: the same predictions
        assert torch.equal(ours_keras.net(x).argmax(1), tnet(x).argmax(1))
    return [
        Variant("keras forward", forward(ours_keras.net, x)),
        Variant("torchvision forward", forward(tnet, x)),
        Variant("camlens Grad-CAM, Keras", explain(ours_keras, "block5_conv3", x)),
        Variant("camlens Grad-CAM, torchvision", explain(ours_torch, "features.29", x)),
    ]


def transformer_variants(name: str, layer: str, batch: int) -> list[Variant]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.reshape_transforms import (
        swinT_reshape_transform,
        vit_reshape_transform,
    )

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: speed does not depend on them
        model = camlens.load_model(f"timm:{name}")
    net = model.net
    module = net.get_submodule(layer)
    transform = vit_reshape_transform if name.startswith("vit") else swinT_reshape_transform
    x = preprocess(photos(batch), model.preprocess)

    def pgc() -> object:
        with pytorch_grad_cam.GradCAM(net, [module], reshape_transform=transform) as cam:
            return cam(input_tensor=x, targets=None)

    def pgc_after() -> None:
        net.zero_grad(set_to_none=True)  # it leaves gradients on every parameter

    return [
        Variant(f"{name} forward", forward(net, x)),
        Variant(f"camlens Grad-CAM, {name}", explain(model, layer, x)),
        Variant(f"pytorch-grad-cam GradCAM, {name}", pgc, pgc_after),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--keras-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds, batch 1")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.batches, args.keras_batches = 3, 1, [1], [1]
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    cases = [
        ("keras", lambda b: keras_variants(b)),
        ("vit", lambda b: transformer_variants("vit_tiny_patch16_224", "blocks.11.norm1", b)),
        (
            "swin",
            lambda b: transformer_variants(
                "swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm2", b
            ),
        ),
    ]
    print("\n| case | batch | variant | median ms | ratio |")
    print("|---|---:|---|---:|---:|")
    for key, make in cases:
        for batch in args.keras_batches if key == "keras" else args.batches:
            variants = make(batch)
            times = time_round_robin(variants, args.rounds, args.warmup)
            median = {name: statistics.median(values) for name, values in times.items()}
            names = list(median)
            if key == "keras":
                ratios = {
                    names[0]: median[names[0]] / median[names[1]],
                    names[2]: median[names[2]] / median[names[3]],
                }
                what = {names[0]: "/ torchvision forward", names[2]: "/ camlens on torchvision"}
            else:
                ratios = {names[1]: median[names[1]] / median[names[2]]}
                what = {names[1]: "/ pytorch-grad-cam"}
            for name in names:
                ratio = f"{ratios[name]:.2f} {what[name]}" if name in ratios else ""
                print(f"| {key} | {batch} | {name} | {median[name]:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
