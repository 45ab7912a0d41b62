"""Which layer should explain a ViT? Grad-CAM at the candidate layers of a class-token ViT, on
"hidden-box photos" (an object pasted at a known box on a photograph, ``tests/pasted.py``).

There is no ViT with trained weights offline here, so two measurements:

1. **Random weights** (timm ``vit_tiny_patch16_224`` and ``deit_tiny_distilled_patch16_224``,
   seeded), where localization means nothing but a map can still be *degenerate*: the share of flat
   maps, the share of images whose class-score gradient is exactly zero on every patch token, and
   the agreement (Pearson correlation at 224 x 224) with pytorch-grad-cam at the same layer.
2. **Trained here** (``--train``): a small ViT of the same design (4 blocks of width 64, patches
   of 8 at 96 x 96, a 12 x 12 grid, class token) trained from scratch, seeded, on 300 pasted
   images of two classes (cat head, coffee cup) and measured on 100 held-out ones: whether the
   map's peak falls inside the object's box (pointing game) and the share of the map's mass inside
   it (energy), per layer. The boxes cover about a quarter of each image: a map that ignores the
   image scores that much.

    PYTHONPATH=src python benchmarks/vit_layers.py            # random weights only (a few minutes)
    PYTHONPATH=src python benchmarks/vit_layers.py --train    # + the trained model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the pasted-objects builder
from pasted import Box, pasted_image  # noqa: E402

import camlens  # noqa: E402
from camlens.images import PreprocessConfig, preprocess  # noqa: E402
from camlens.maps import upsample  # noqa: E402

CLASSES = ("cat", "coffee")


def pasted(count: int, seed: int, size: int) -> tuple[list[object], list[Box], list[int]]:
    rng = np.random.default_rng(seed)
    images, boxes, labels = [], [], []
    for i in range(count):
        image, box = pasted_image(CLASSES[i % 2], rng, size)
        images.append(image)
        boxes.append(box)
        labels.append(i % 2)
    return images, boxes, labels


def candidates(depth: int) -> list[str]:
    last = depth - 1
    return [f"blocks.{last}.norm1", f"blocks.{last - 1}", f"blocks.{last}", "norm"]


def box_scores(maps: torch.Tensor, boxes: list[Box]) -> tuple[float, float]:
    """(pointing game %, mean energy in the box %) of maps [N, H, W] in [0, 1] at the image size."""
    hits, energy = [], []
    for m, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        peak = int(m.flatten().argmax())
        y, x = divmod(peak, m.shape[1])
        hits.append(x0 <= x < x1 and y0 <= y < y1)
        total = float(m.sum())
        energy.append(float(m[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0)
    return 100 * statistics.mean(hits), 100 * statistics.mean(energy)


def explain_layers(
    model: camlens.Model, layers: list[str], x: torch.Tensor, classes: list[int]
) -> dict[str, list[camlens.ClassMap]]:
    with camlens.Explainer(model, "gradcam", layers, batch_size=16) as explainer:
        results = explainer.explain(x, classes=[[c] for c in classes])
    return {layer: [m for r in results for m in r.maps if m.layer == layer] for layer in layers}


def zero_patch_gradients(model: camlens.Model, layer: str, x: torch.Tensor) -> float:
    """% of images whose top-1 score has a gradient of exactly zero on every patch token."""
    from camlens.taps import Taps

    net = model.net
    zero = 0
    for row in x.split(1):
        with Taps(net, [layer], gradients=True, adapter=model.adapter) as taps, torch.no_grad():
            logits = net(row)
        (grad,) = torch.autograd.grad(logits[0].max(), taps.activations[layer])
        zero += int(torch.count_nonzero(grad) == 0)
    return 100 * zero / len(x)


def peer_correlation(
    model: camlens.Model, layer: str, x: torch.Tensor, ours: list[camlens.ClassMap]
) -> float:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prefix = model.net.num_prefix_tokens
    grid = model.net.patch_embed.grid_size

    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.size(0), *grid, t.size(2)).permute(0, 3, 1, 2)

    module = model.net.get_submodule(layer)
    targets = [ClassifierOutputTarget(m.class_index) for m in ours]
    with pytorch_grad_cam.GradCAM(model.net, [module], reshape_transform=transform) as cam:
        theirs = cam(x, targets=targets)
    model.net.zero_grad(set_to_none=True)
    size = tuple(x.shape[-2:])
    values = []
    for m, t in zip(ours, theirs, strict=True):
        a = upsample(m.map, size).numpy().ravel()  # type: ignore[arg-type]
        if a.std() > 0 and t.std() > 0:
            values.append(float(np.corrcoef(a, t.ravel())[0, 1]))
    return statistics.mean(values) if values else float("nan")  # nan: both maps flat


def random_weights(count: int) -> None:
    print("\n### Random weights\n")
    print("| model | layer | flat maps % | zero patch gradients % | corr. with pytorch-grad-cam |")
    print("|---|---|---:|---:|---:|")
    for name in ("vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = camlens.load_model(f"timm:{name}")
        images, _, _ = pasted(count, seed=1, size=224)
        x = preprocess(images, model.preprocess)  # type: ignore[arg-type]
        with torch.no_grad():
            top = model.net(x).argmax(1).tolist()
        layers = candidates(len(model.net.blocks))
        found = explain_layers(model, layers, x, top)
        for layer in layers:
            flat = 100 * statistics.mean(m.flat for m in found[layer])
            zero = zero_patch_gradients(model, layer, x)
            corr = peer_correlation(model, layer, x, found[layer])
            mark = " (automatic)" if layer == camlens.layers.auto_layer(model) else ""
            agree = f"{corr:.4f}" if corr == corr else "both flat"
            print(f"| {name} | {layer}{mark} | {flat:.0f} | {zero:.0f} | {agree} |", flush=True)


def train_small_vit(epochs: int, train: int, size: int) -> camlens.Model:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=size,
        patch_size=8,
        depth=4,
        embed_dim=64,
        num_heads=2,
        num_classes=2,
    )
    config = PreprocessConfig(input_size=(size, size), interpolation="bilinear")
    images, _, labels = pasted(train, seed=0, size=size)
    x = preprocess(images, config)  # type: ignore[arg-type]
    y = torch.tensor(labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05)
    steps = epochs * ((len(x) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    net.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for batch in order.split(32):
            xb = x[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1}: loss {statistics.mean(losses):.3f}", file=sys.stderr)
    net.eval()
    print(f"trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return camlens.load_model(net, preprocess=config, labels=list(CLASSES))


def trained(epochs: int, train: int, test: int, size: int) -> None:
    model = train_small_vit(epochs, train, size)
    images, boxes, labels = pasted(test, seed=1, size=size)
    x = preprocess(images, model.preprocess)  # type: ignore[arg-type]
    with torch.no_grad():
        accuracy = 100 * float((model.net(x).argmax(1) == torch.tensor(labels)).float().mean())
    chance = 100 * statistics.mean((b[2] - b[0]) * (b[3] - b[1]) / size**2 for b in boxes)
    print(f"\n### Trained here ({train} images, {epochs} epochs)\n")
    print(
        f"held-out accuracy {accuracy:.1f}% on {test} images; boxes cover {chance:.0f}% of an image"
    )
    print("\n| layer | flat maps % | pointing game % | energy in the box % |")
    print("|---|---:|---:|---:|")
    layers = candidates(len(model.net.blocks))
    found = explain_layers(model, layers, x, labels)  # the true class
    for layer in layers:
        maps = found[layer]
        flat = 100 * statistics.mean(m.flat for m in maps)
        big = torch.stack([upsample(m.map, (size, size)) for m in maps])
        pointing, energy = box_scores(big, boxes)
        mark = " (automatic)" if layer == camlens.layers.auto_layer(model) else ""
        print(f"| {layer}{mark} | {flat:.0f} | {pointing:.0f} | {energy:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="random-weights part")
    parser.add_argument("--train", action="store_true", help="also train a small ViT and measure")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random_weights(args.images)
    if args.train:
        trained(args.epochs, train=300, test=100, size=96)


if __name__ == "__main__":
    main()
