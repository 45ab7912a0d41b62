"""Where the maps of a segmentation model and of a detector fall, per method and layer: models
trained here on synthetic shapes pasted on photos, whose masks and boxes are known.

    PYTHONPATH=src python benchmarks/kinds.py [--quick] [--kinds segmentation detection]
        [--methods ...] [--layers ...] [--models DIR] [--out FILE.md]
    PYTHONPATH=src python benchmarks/kinds.py --render RUN.json [RUN.json ...] --out FILE.md

(``--models DIR`` keeps the trained models and reuses them with the same settings; ``--render``
makes one page of runs' JSON files, written beside their Markdown.)

1. writes two seeded synthetic sets (``camlens.datasets.make_synthetic(masks=True)``: two shapes
   of the four classes on a crop of a sample photo, 256 x 256 pixels, each object's mask and box):
   a training set (seed S) and a held-out set (seed S + 1);
2. builds both models on the embedded EfficientNet-Lite0's ImageNet weights (its stem and blocks
   as stages ``stem``, ``stage0`` ... ``stage6``, strides 2 to 32):
   - segmentation: torchvision's LR-ASPP head (``LRASPP``) on ``stage2`` (stride 8) and
     ``stage6`` (stride 32), 5 classes (background and the four shapes);
   - detection: torchvision's Faster R-CNN on an FPN (``BackboneWithFPN``) over ``stage2``,
     ``stage4`` and ``stage6`` (strides 8, 16, 32; 64 channels), 5 classes;
   and trains each on the training set (seeded, CPU; the stem and the first two stages frozen,
   batch norms at their ImageNet statistics), then measures it on the held-out set (segmentation:
   pixel accuracy and the mean IoU of the four shapes; detection: the objects found with a
   detection of their class, IoU >= 0.5, score >= 0.5, and the false detections);
3. explains the held-out images with camlens (``Explainer`` on a ``Model`` of kind
   ``segmentation`` or ``detection``) with each method at each candidate layer:
   - segmentation: each object whose class the model predicts somewhere, its class's segment
     (the pixels the model assigns to it, ``Segment(class)``); the object is its mask;
   - detection: each detection scored at least 0.5 (``min_score``), its own score (a
     ``Detection`` target); the object is the detection's own box;
4. per method and layer, over the maps: the pointing game (the map's peak, at the photo's size,
   inside the object) and the energy inside the object (the share of the map's sum inside it,
   Wang et al.'s energy-based pointing game); beside them what a uniform map gives (the objects'
   mean share of the image).

Seeded throughout: the same arguments give the same table (up to the float sums of threads).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens.datasets import make_synthetic, read_dataset
from camlens.errors import FlatMapWarning
from camlens.images import PreprocessConfig
from camlens.layers import auto_layer
from camlens.models.architectures import default_network
from camlens.models.synthetic import SYNTHETIC_CLASSES

CLASSES = ("background", *SYNTHETIC_CLASSES)
"""Both models' classes: 0 the background, then the shapes in the synthetic set's order (the
category ids of its JSON and the values of its masks)."""

GRADIENT_METHODS = (
    "gradcam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam_elementwise",
    "eigengradcam",
    "eigencam",
)
"""The methods of a default run: those one forward and one backward pass give (Eigen-CAM none)."""
SEGMENTATION_LAYERS = (
    "backbone.stage2",
    "backbone.stage3",
    "backbone.stage4",
    "backbone.stage5",
    "backbone.stage6",
    "classifier.cbr",
    "classifier",
)
DETECTION_LAYERS = (
    "backbone.body.stage2",
    "backbone.body.stage4",
    "backbone.body.stage6",
    "backbone.fpn.layer_blocks.0",
    "backbone.fpn.layer_blocks.1",
    "backbone.fpn.layer_blocks.2",
)
FPN_CHANNELS = 64
#: The EfficientNet-Lite0's normalization (timm's ``tf_efficientnet_lite0``).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


# --- the models ------------------------------------------------------------------------------------


@functools.cache
def _imagenet() -> nn.Module:
    return default_network()


def stages() -> nn.Module:
    """The embedded EfficientNet-Lite0 (ImageNet weights) as a sequence of named stages: ``stem``
    (stride 2), ``stage0`` ... ``stage6`` (16, 24, 40, 80, 112, 192, 320 channels; strides 2, 4,
    8, 16, 16, 32, 32), without its head; a new copy each call."""
    net = copy.deepcopy(_imagenet())
    parts: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(net.conv_stem, net.bn1))
    for i, block in enumerate(net.blocks):
        parts[f"stage{i}"] = block
    return nn.Sequential(parts)


CHANNELS = {"stage2": 40, "stage4": 112, "stage6": 320}


def freeze(net: nn.Module, body: nn.Module) -> None:
    """The stem and the first two stages of ``body`` frozen, and every batch norm of ``net`` in
    eval mode (its ImageNet statistics: batches of a few images would not estimate them)."""
    for name in ("stem", "stage0", "stage1"):
        for p in getattr(body, name).parameters():
            p.requires_grad_(False)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def segmentation_net(classes: int = len(CLASSES)) -> nn.Module:
    """torchvision's LR-ASPP (its ``LRASPP``: ``backbone`` giving ``low`` and ``high``,
    ``classifier`` the head) on the EfficientNet-Lite0's ``stage2`` and ``stage6``."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    body = IntermediateLayerGetter(stages(), return_layers={"stage2": "low", "stage6": "high"})
    return LRASPP(body, CHANNELS["stage2"], CHANNELS["stage6"], classes, inter_channels=64)


def detection_net(size: int, classes: int = len(CLASSES)) -> nn.Module:
    """torchvision's Faster R-CNN on an FPN over the EfficientNet-Lite0's ``stage2``, ``stage4``
    and ``stage6`` (and the FPN's max-pooled level), its transform fixed to ``size`` pixels (an
    input of that size is neither resized nor padded) with the backbone's normalization."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    names = ("stage2", "stage4", "stage6")
    backbone = BackboneWithFPN(
        stages(),
        return_layers={name: str(i) for i, name in enumerate(names)},
        in_channels_list=[CHANNELS[n] for n in names],
        out_channels=FPN_CHANNELS,
    )
    anchors = AnchorGenerator(
        sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=size,
        max_size=size,
        image_mean=list(MEAN),
        image_std=list(STD),
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=128,
    )


# --- the data --------------------------------------------------------------------------------------


@dataclass
class Item:
    path: Path
    image: torch.Tensor  # [3, H, W] in [0, 1]
    mask: np.ndarray  # [H, W] uint8: the category id of each pixel's object, 0 background
    boxes: list[tuple[int, int, int, int]]
    labels: list[int]  # category ids, as in CLASSES


def read_items(annotations: Path) -> list[Item]:
    """The images, masks, boxes and labels of a synthetic set written with masks."""
    coco = json.loads(annotations.read_text())
    mask_of = {e["file_name"]: e["mask_file"] for e in coco["images"]}
    data = read_dataset(annotations)
    items = []
    for a in data.items:
        rgb = np.asarray(Image.open(a.image).convert("RGB"), dtype=np.float32) / 255.0
        name = a.image.relative_to(annotations.parent).as_posix()
        mask = np.asarray(Image.open(annotations.parent / mask_of[name]))
        items.append(
            Item(
                a.image,
                torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
                mask,
                [tuple(int(v) for v in o.box.xyxy) for o in a.objects],  # type: ignore[misc]
                [CLASSES.index(o.label) for o in a.objects],
            )
        )
    return items


def make_sets(
    root: Path, train: int, test: int, size: int, seed: int, backgrounds: Any = None
) -> tuple[Path, Path]:
    """A training set (seed ``seed``) and a held-out set (``seed + 1``) of two shapes per image,
    with masks (``backgrounds``: :func:`make_synthetic`'s, by default the sample photos)."""
    kw: dict[str, Any] = {"size": size, "objects": 2, "masks": True, "backgrounds": backgrounds}
    return (
        make_synthetic(root / "train", train, seed=seed, **kw),
        make_synthetic(root / "test", test, seed=seed + 1, **kw),
    )


# --- training ----------------------------------------------------------------------------------------


@dataclass
class Trained:
    net: nn.Module
    seconds: float
    steps: int
    losses: list[float] = field(default_factory=list)


def _optimizer(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches of indices into ``n`` items: shuffled epochs, seeded."""
    order: list[int] = []
    out = []
    for _ in range(steps):
        while len(order) < batch:
            order += torch.randperm(n, generator=gen).tolist()
        out.append(torch.tensor(order[:batch]))
        order = order[batch:]
    return out


def _flip(items: list[Item], index: torch.Tensor, gen: torch.Generator) -> list[Item]:
    """The items, each mirrored left-right with probability 1/2 (seeded)."""
    out = []
    for i in index.tolist():
        it = items[i]
        if torch.rand((), generator=gen) < 0.5:
            w = it.image.shape[2]
            it = Item(
                it.path,
                it.image.flip(-1),
                it.mask[:, ::-1].copy(),
                [(w - x1, y0, w - x0, y1) for x0, y0, x1, y1 in it.boxes],
                it.labels,
            )
        out.append(it)
    return out


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
        ),
    )


def train_segmenter(
    items: list[Item],
    steps: int,
    *,
    batch: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Trained:
    """LR-ASPP on EfficientNet-Lite0 trained with the pixels' cross-entropy (AdamW, warm-up then
    cosine, random left-right flips)."""
    torch.manual_seed(seed)
    net = segmentation_net()
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(net, lr)
    sched = _schedule(opt, steps)
    net.train()
    freeze(net, net.backbone)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    started = time.perf_counter()
    losses = []
    for step, index in enumerate(_batches(len(items), batch, steps, gen)):
        chosen = _flip(items, index, gen)
        x = (torch.stack([it.image for it in chosen]) - mean) / std
        y = torch.from_numpy(np.stack([it.mask for it in chosen])).long()
        loss = nn.functional.cross_entropy(net(x)["out"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            log(f"segmentation step {step + 1}/{steps}: loss {np.mean(losses[-25:]):.3f}")
    net.eval()
    return Trained(net, time.perf_counter() - started, steps, losses)


def train_detector(
    items: list[Item],
    steps: int,
    size: int,
    *,
    batch: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Trained:
    """Faster R-CNN (FPN on EfficientNet-Lite0) trained with torchvision's own losses (the RPN's
    and the box head's; AdamW, warm-up then cosine, random left-right flips)."""
    torch.manual_seed(seed)
    net = detection_net(size)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(net, lr)
    sched = _schedule(opt, steps)
    net.train()
    freeze(net, net.backbone.body)
    started = time.perf_counter()
    losses = []
    for step, index in enumerate(_batches(len(items), batch, steps, gen)):
        chosen = _flip(items, index, gen)
        targets = [
            {
                "boxes": torch.tensor(it.boxes, dtype=torch.float32).view(-1, 4),
                "labels": torch.tensor(it.labels, dtype=torch.int64),
            }
            for it in chosen
        ]
        parts = net([it.image for it in chosen], targets)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            log(f"detection step {step + 1}/{steps}: loss {np.mean(losses[-25:]):.3f}")
    net.eval()
    return Trained(net, time.perf_counter() - started, steps, losses)


# --- how good the models are -----------------------------------------------------------------------


def _normalized(items: Sequence[Item]) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (torch.stack([it.image for it in items]) - mean) / std


def predicted_masks(net: nn.Module, items: Sequence[Item], batch: int = 16) -> np.ndarray:
    """The segmentation net's classes [N, H, W] on ``items``."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(items), batch):
            out.append(net(_normalized(items[i : i + batch]))["out"].argmax(1).numpy())
    return np.concatenate(out)


def segmentation_quality(predicted: np.ndarray, items: Sequence[Item]) -> dict[str, Any]:
    """Pixel accuracy, and each shape's IoU (predicted and true pixels of the class over the
    held-out set) and their mean."""
    truth = np.stack([it.mask for it in items])
    ious = {}
    for k in range(1, len(CLASSES)):
        inter = int(((predicted == k) & (truth == k)).sum())
        union = int(((predicted == k) | (truth == k)).sum())
        ious[CLASSES[k]] = inter / union if union else 0.0
    return {
        "pixel_accuracy": float((predicted == truth).mean()),
        "iou": ious,
        "mean_iou": float(np.mean(list(ious.values()))),
    }


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    from camlens.metrics import iou

    return iou(tuple(a), tuple(b))  # type: ignore[arg-type]


def detections(
    net: nn.Module, items: Sequence[Item], min_score: float
) -> list[list[dict[str, Any]]]:
    """The detector's detections scored at least ``min_score`` on each item (its own output:
    ``box`` xyxy, ``label``, ``score``)."""
    out = []
    with torch.inference_mode():
        for it in items:
            (found,) = net([it.image])
            keep = found["scores"] >= min_score
            out.append(
                [
                    {"box": b.tolist(), "label": int(k), "score": float(s)}
                    for b, k, s in zip(
                        found["boxes"][keep],
                        found["labels"][keep],
                        found["scores"][keep],
                        strict=True,
                    )
                ]
            )
    return out


def detection_quality(found: list[list[dict[str, Any]]], items: Sequence[Item]) -> dict[str, Any]:
    """Of the held-out objects, those matched by a detection of their class with IoU >= 0.5 (each
    detection matching one object at most, best score first), and the detections that match none."""
    objects = matched = false = 0
    ious = []
    for dets, it in zip(found, items, strict=True):
        taken: set[int] = set()
        for d in sorted(dets, key=lambda d: -d["score"]):
            best, where = 0.0, -1
            for j, (box, label) in enumerate(zip(it.boxes, it.labels, strict=True)):
                v = box_iou(d["box"], box)
                if j not in taken and label == d["label"] and v > best:
                    best, where = v, j
            if best >= 0.5:
                taken.add(where)
                ious.append(best)
            else:
                false += 1
        objects += len(it.boxes)
        matched += len(taken)
    return {
        "objects": objects,
        "found": matched,
        "recall": matched / objects if objects else 0.0,
        "false_detections": false,
        "mean_iou_found": float(np.mean(ious)) if ious else 0.0,
    }


# --- where the maps fall ---------------------------------------------------------------------------


@dataclass
class Tally:
    maps: int = 0
    hits: int = 0
    energy: float = 0.0
    flat: int = 0
    flat_by_class: dict[str, int] = field(default_factory=dict)

    def add(
        self, full: np.ndarray, inside: np.ndarray, flat: bool, label: str | None = None
    ) -> None:
        """One map at the photo's size and the object's pixels (a boolean mask); ``label``: the
        object's class, to count the flat maps by class."""
        self.maps += 1
        total = float(full.sum())
        if flat or total <= 0:
            self.flat += 1  # a miss, no energy inside
            if label is not None:
                self.flat_by_class[label] = self.flat_by_class.get(label, 0) + 1
            return
        y, x = np.unravel_index(int(np.argmax(full)), full.shape)
        self.hits += bool(inside[y, x])
        self.energy += float(full[inside].sum()) / total

    def row(self) -> dict[str, Any]:
        n = max(self.maps, 1)
        return {
            "maps": self.maps,
            "pointing": self.hits / n,
            "energy": self.energy / n,
            "flat": self.flat,
            **(
                {"flat_by_class": dict(sorted(self.flat_by_class.items()))}
                if self.flat_by_class
                else {}
            ),
        }


def tally(
    results: Sequence[Any], inside_of: Callable[[int, Any], np.ndarray]
) -> dict[tuple[str, str], Tally]:
    """Per (method, layer), the pointing game and the energy of ``results``' maps (explanations
    of consecutive images); ``inside_of(n, map)``: the object of the ``n``-th result's map."""
    out: dict[tuple[str, str], Tally] = {}
    for n, result in enumerate(results):
        for i, m in enumerate(result.maps):
            full = result.map_at_image(i).numpy()
            label = CLASSES[m.class_index] if 0 <= m.class_index < len(CLASSES) else None
            out.setdefault((m.method, m.layer), Tally()).add(full, inside_of(n, m), m.flat, label)
    return out


def explain_segments(
    model: Any,
    items: Sequence[Item],
    predicted: np.ndarray,
    methods: Sequence[str],
    layers: Sequence[str],
    batch: int = 8,
) -> tuple[dict[tuple[str, str], Tally], dict[str, Any]]:
    """Each object whose class the model predicts somewhere in its image: its class's segment,
    explained by every method at every layer; the object is its mask."""
    import camlens

    explainer = camlens.Explainer(model, method=list(methods), layer=list(layers), batch_size=batch)
    chosen = [
        [k for k in it.labels if (pred == k).any()]
        for it, pred in zip(items, predicted, strict=True)
    ]
    kept = [i for i, c in enumerate(chosen) if c]
    with warnings.catch_warnings():  # flat maps are counted in the table
        warnings.simplefilter("ignore", FlatMapWarning)
        results = explainer.explain(
            [items[i].path for i in kept], classes=[chosen[i] for i in kept]
        )
    masks = [items[i].mask for i in kept]
    table = tally(results, lambda n, m: masks[n] == m.class_index)
    objects = sum(len(it.labels) for it in items)
    explained = sum(len(c) for c in chosen)
    shares = [float((it.mask == k).mean()) for it, c in zip(items, chosen, strict=True) for k in c]
    return table, {
        "objects": objects,
        "explained": explained,
        "uniform_energy": float(np.mean(shares)) if shares else 0.0,
    }


def roi_level(box: Sequence[float]) -> int:
    """The FPN level (0, 1, 2: ``backbone.fpn.layer_blocks.K``) Faster R-CNN's box head pools a
    box from: torchvision's ``LevelMapper`` (Lin et al., FPN, eq. 1), ``floor(4 + log2(sqrt(wh)
    / 224))`` clamped to levels 3..5 of strides 8..32, here stages 2, 4 and 6."""
    x0, y0, x1, y1 = box
    side = math.sqrt(max((x1 - x0) * (y1 - y0), 1e-6))
    return int(min(max(math.floor(4 + math.log2(side / 224) + 1e-6), 3), 5)) - 3


def explain_detections(
    model: Any,
    items: Sequence[Item],
    methods: Sequence[str],
    layers: Sequence[str],
    min_score: float = 0.5,
    batch: int = 4,
    best: int | None = None,
) -> tuple[dict[tuple[str, str], Tally], dict[str, Any]]:
    """Each detection scored at least ``min_score`` (the ``best`` of them in each image, if
    given): its score, explained by every method at every layer; the object is the detection's
    own box (at the photo's size)."""
    import camlens
    from camlens.metrics import box_mask

    explainer = camlens.Explainer(
        model,
        method=list(methods),
        layer=list(layers),
        batch_size=batch,
        min_score=min_score,
        detections=best,
    )
    with warnings.catch_warnings():  # flat maps are counted in the table
        warnings.simplefilter("ignore", FlatMapWarning)
        results = explainer.explain([it.path for it in items])
    shape = items[0].mask.shape

    def inside(n: int, m: Any) -> np.ndarray:
        assert m.target is not None and m.target["kind"] == "detection", m.target
        return box_mask(shape, [tuple(m.target["box"])])

    table = tally(results, inside)
    first = [  # each detection's map by the first method at the first layer
        m for r in results for m in r.maps if (m.method, m.layer) == (methods[0], layers[0])
    ]
    shares = [float(box_mask(shape, [tuple(m.target["box"])]).mean()) for m in first]
    levels = [roi_level(m.target["box"]) for m in first]
    return table, {
        "detections": len(first),
        "roi_levels": {str(k): levels.count(k) for k in sorted(set(levels))},
        "uniform_energy": float(np.mean(shares)) if shares else 0.0,
    }


def sheet(
    model: Any, item: Item, methods: Sequence[str], layers: Sequence[str], min_score: float = 0.5
) -> Image.Image:
    """A methods x layers grid of the maps of ``item``'s best detection, its box drawn on the
    photo, each titled with its energy inside the box."""
    import camlens
    from camlens import render
    from camlens.metrics import energy_pointing_game

    explainer = camlens.Explainer(
        model, method=list(methods), layer=list(layers), min_score=min_score, detections=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatMapWarning)
        result = explainer.explain(str(item.path))
    maps = {(m.method, m.layer): i for i, m in enumerate(result.maps)}
    first = result.maps[0].target
    assert first is not None
    box = tuple(first["box"])
    photo = render.draw_boxes(result.image, [box], labels=[CLASSES[first["label"]]])
    rows = []
    for method in methods:
        row = []
        for layer in layers:
            full = result.map_at_image(maps[method, layer]).numpy()
            energy = energy_pointing_game(full, [box]) if full.max() > 0 else 0.0
            title = f"{energy:.2f} inside" + ("" if full.max() > 0 else " (flat)")
            row.append(render.GridCell(photo, full, title))
        rows.append(row)
    return render.grid(rows, row_titles=list(methods), col_titles=list(layers), tile=200)


# --- the run -----------------------------------------------------------------------------------------


def segmentation_camlens_model(net: nn.Module, size: int) -> Any:
    from camlens.models.segmentation import segmentation_model

    pre = PreprocessConfig(input_size=(size, size), interpolation="bilinear", mean=MEAN, std=STD)
    return segmentation_model(net, pre, CLASSES, "synthetic shapes LR-ASPP (EfficientNet-Lite0)")


def detection_camlens_model(net: nn.Module, size: int) -> Any:
    """The detector as a camlens ``Model`` of kind ``detection``, its transform made to
    normalize only (``exact_transform``: the input is the photo at ``size`` pixels)."""
    from camlens.models.detection import detection_model, exact_transform

    exact_transform(net)

    pre = PreprocessConfig(
        input_size=(size, size), interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    return detection_model(
        net, pre, CLASSES, "synthetic shapes Faster R-CNN (EfficientNet-Lite0 FPN)"
    )


def table_rows(
    table: dict[tuple[str, str], Tally],
    methods: Sequence[str],
    layers: Sequence[str],
    auto: str | None = None,
) -> list[str]:
    """A Markdown table, a row per method and layer, the best energy of each method in bold;
    ``auto``: camlens's automatic layer, marked."""
    lines = [
        "| method | layer | maps | pointing game | energy inside | flat maps |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method in methods:
        rows = [(layer, table[method, layer].row()) for layer in layers if (method, layer) in table]
        if not rows:
            continue
        best = max(r["energy"] for _, r in rows)
        for layer, r in rows:
            energy = f"{r['energy']:.3f}"
            energy = f"**{energy}**" if r["energy"] == best else energy
            name = f"`{layer}`" + (" (automatic)" if layer == auto else "")
            lines.append(
                f"| {method} | {name} | {r['maps']} | {r['pointing']:.3f} | {energy} | "
                f"{r['flat']} |"
            )
    return lines


def _tallies(kind: dict[str, Any]) -> dict[tuple[str, str], Tally]:
    """The tallies of a run's JSON (``"method @ layer"`` -> its row)."""
    out = {}
    for key, row in kind["table"].items():
        method, layer = key.split(" @ ")
        n = row["maps"]
        out[method, layer] = Tally(n, round(row["pointing"] * n), row["energy"] * n, row["flat"])
    return out


def matrix_rows(kind: dict[str, Any], key: str) -> list[str]:
    """A method x layer table of ``key`` (``energy`` or ``pointing``), each method's best layer
    in bold."""
    what = {"energy": "energy inside", "pointing": "pointing game"}[key]
    layers, auto = kind["layers"], kind["automatic_layer"]
    names = [f"`{lay}`" + (" (auto)" if lay == auto else "") for lay in layers]
    lines = [f"| {what} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(layers)]
    for method in kind["methods"]:
        values = [kind["table"].get(f"{method} @ {lay}", {}).get(key) for lay in layers]
        best = max((v for v in values if v is not None), default=None)
        cells = ["" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}") for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def by_layer(table: dict[tuple[str, str], Tally], layers: Sequence[str]) -> list[dict[str, Any]]:
    """Per layer, the mean over methods of the pointing game and the energy."""
    out = []
    for layer in layers:
        rows = [t.row() for (_, lay), t in table.items() if lay == layer]
        if rows:
            out.append(
                {
                    "layer": layer,
                    "pointing": float(np.mean([r["pointing"] for r in rows])),
                    "energy": float(np.mean([r["energy"] for r in rows])),
                }
            )
    return out


def flat_lines(kind: dict[str, Any]) -> list[str]:
    """The flat maps by class, for each method and layer that gave some."""
    lines = []
    for key, row in kind["table"].items():
        if row.get("flat_by_class"):
            by = ", ".join(f"{c} {n}" for c, n in row["flat_by_class"].items())
            lines.append(f"- {key}: {row['flat']} of {row['maps']} ({by})")
    return ["Flat maps by class (of the object explained):", "", *lines] if lines else []


def layer_rows(summary: list[dict[str, Any]], auto: str | None = None) -> list[str]:
    best = max(r["energy"] for r in summary)
    lines = [
        "| layer | pointing game, mean of the methods | energy inside, mean of the methods |",
        "|---|---:|---:|",
    ]
    for r in summary:
        energy = f"{r['energy']:.3f}"
        name = f"`{r['layer']}`" + (" (automatic)" if r["layer"] == auto else "")
        lines.append(
            f"| {name} | {r['pointing']:.3f} | "
            + (f"**{energy}** |" if r["energy"] == best else f"{energy} |")
        )
    return lines


QUICK = {
    "train": 16,
    "test": 3,
    "size": 128,
    "seg_steps": 2,
    "det_steps": 2,
    "methods": ("gradcam", "eigencam"),
}


def kind_result(
    run: Trained,
    quality: dict[str, Any],
    counts: dict[str, Any],
    started: float,
    table: dict[tuple[str, str], Tally],
    auto: str,
    methods: list[str],
    layers: list[str],
) -> dict[str, Any]:
    """What the results file keeps of one kind's model: its training, its quality and its maps'
    tally by method and layer (``started``: when its explaining began)."""
    return {
        "training_seconds": round(run.seconds, 1),
        "steps": run.steps,
        "final_loss": float(np.mean(run.losses[-25:])),
        "quality": quality,
        **counts,
        "explain_seconds": round(time.perf_counter() - started, 1),
        "table": {f"{m} @ {lay}": t.row() for (m, lay), t in table.items()},
        "automatic_layer": auto,
        "by_layer": by_layer(table, layers),
        "methods": methods,
        "layers": layers,
    }


def trained(
    args: argparse.Namespace,
    kind: str,
    build: Callable[[], nn.Module],
    train: Callable[[], Trained],
) -> Trained:
    """``train()``, or with ``--models DIR`` the model ``DIR/KIND.pt`` trained earlier with the
    same settings (saved there after training): the perturbation methods' run on a few images
    explains the same models as the main run."""
    settings = {k: getattr(args, k) for k in ("train", "size", "seed", f"{kind[:3]}_steps")}
    path = None if args.models is None else args.models / f"{kind}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["settings"] == settings:
            net = build()
            net.load_state_dict(saved["state"])
            net.eval()
            return Trained(net, saved["seconds"], saved["steps"], saved["losses"])
    result = train()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "settings": settings,
                "state": result.net.state_dict(),
                "seconds": result.seconds,
                "steps": result.steps,
                "losses": result.losses,
            },
            path,
        )
    return result


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; returns its figures (and the Markdown lines under ``"markdown"``)."""
    import tempfile

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = _load()
    seg_methods = list(args.methods or GRADIENT_METHODS)
    det_methods = list(args.methods or GRADIENT_METHODS)
    seg_layers = list(args.layers or SEGMENTATION_LAYERS)
    det_layers = list(args.layers or DETECTION_LAYERS)
    with tempfile.TemporaryDirectory() as scratch:
        train_json, test_json = make_sets(
            Path(scratch), args.train, args.test, args.size, args.seed
        )
        train_items, test_items = read_items(train_json), read_items(test_json)
        log(f"sets: {len(train_items)} training, {len(test_items)} held-out images")
        out: dict[str, Any] = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "models", "sheet")}
        }
        if "segmentation" in args.kinds:
            seg = trained(
                args,
                "segmentation",
                segmentation_net,
                lambda: train_segmenter(train_items, args.seg_steps, seed=args.seed, log=log),
            )
            predicted = predicted_masks(seg.net, test_items)
            quality = segmentation_quality(predicted, test_items)
            log(f"segmentation: {seg.seconds:.0f} s of training, {quality}")
            t0 = time.perf_counter()
            model = segmentation_camlens_model(seg.net, args.size)
            auto = auto_layer(model)
            table, counts = explain_segments(model, test_items, predicted, seg_methods, seg_layers)
            out["segmentation"] = kind_result(
                seg, quality, counts, t0, table, auto, seg_methods, seg_layers
            )
        if "detection" in args.kinds:
            det = trained(
                args,
                "detection",
                lambda: detection_net(args.size),
                lambda: train_detector(
                    train_items, args.det_steps, args.size, seed=args.seed, log=log
                ),
            )
            found = detections(det.net, test_items, 0.5)
            quality = detection_quality(found, test_items)
            log(f"detection: {det.seconds:.0f} s of training, {quality}")
            t0 = time.perf_counter()
            model = detection_camlens_model(det.net, args.size)
            auto = auto_layer(model)
            table, counts = explain_detections(model, test_items, det_methods, det_layers)
            if args.sheet is not None:
                picture = sheet(
                    model, test_items[0], ("gradcam", "hirescam", "eigencam"), det_layers
                )
                picture.save(args.sheet, quality=85)
            out["detection"] = kind_result(
                det, quality, counts, t0, table, auto, det_methods, det_layers
            )
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    out["load_average"] = [load_before, _load()]
    out["markdown"] = markdown(out)
    return out


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return math.nan


def _command(settings: dict[str, Any]) -> str:
    """The command line that runs ``settings``."""
    words = ["PYTHONPATH=src python benchmarks/kinds.py"]
    defaults = vars(parser().parse_args([]))
    for key, value in settings.items():
        if key in ("quick", "render") or (value == defaults.get(key) and key != "threads"):
            continue
        flag = "--" + key.replace("_", "-")
        words.append(
            f"{flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
        )
    return " ".join(words)


def _fill(kind: dict[str, Any]) -> dict[str, Any]:
    """A run's JSON with its methods and layers (in the table's order when not listed)."""
    keys = [k.split(" @ ") for k in kind["table"]]
    kind.setdefault("methods", list(dict.fromkeys(m for m, _ in keys)))
    kind.setdefault("layers", list(dict.fromkeys(lay for _, lay in keys)))
    return kind


def markdown(out: dict[str, Any], title: bool = True) -> list[str]:
    """The Markdown of a run's figures: the title and what the figures mean (``title``), then a
    section per kind of model, each with the command and the machine of its run."""
    s = out["settings"]
    for kind in ("segmentation", "detection"):
        if kind in out:
            _fill(out[kind])
    run = [
        f"`{_command(s)}`",
        "",
        f"{out.get('finished', '')}; {out.get('machine', '')}, "
        f"{s['threads']} torch thread(s), load average {out['load_average'][0]:.1f} before, "
        f"{out['load_average'][1]:.1f} after; {out['seconds']:.0f} s in all. Synthetic sets "
        f"({s['size']} x {s['size']} pixels, two shapes per image): {s['train']} training images "
        f"(seed {s['seed']}), {s['test']} held-out (seed {s['seed'] + 1}).",
        "",
    ]
    lines = []
    if title:
        lines = [
            "# Maps of a segmentation model and a detector, per method and layer",
            "",
            "Pointing game: the share of maps whose peak (at the photo's size) lies inside the "
            "object; energy inside: the mean share of a map's sum inside the object. A flat map "
            "counts as a miss with no energy inside.",
        ]
    if "segmentation" in out:
        seg = out["segmentation"]
        q = seg["quality"]
        lines += [
            "",
            "## Segmentation (LR-ASPP on EfficientNet-Lite0)",
            "",
            *run,
            f"Trained {seg['steps']} steps of 8 images in {seg['training_seconds']:.0f} s (final "
            f"loss {seg['final_loss']:.3f}). Held out: pixel accuracy {q['pixel_accuracy']:.3f}, "
            f"mean IoU of the shapes {q['mean_iou']:.3f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in q["iou"].items())
            + f"). Explained: {seg['explained']} of the {seg['objects']} objects (the others' class "
            f"is predicted nowhere in their image), each its class's segment (`Segment(class)`: the "
            f"pixels the model gives the class); the object is its mask. A uniform map would put "
            f"{seg['uniform_energy']:.3f} of its energy inside. Explaining took "
            f"{seg['explain_seconds']:.0f} s.",
            "",
            *matrix_rows(seg, "energy"),
            "",
            *matrix_rows(seg, "pointing"),
            "",
            *table_rows(_tallies(seg), seg["methods"], seg["layers"], seg["automatic_layer"]),
            "",
            *layer_rows(seg["by_layer"], seg["automatic_layer"]),
            "",
            *flat_lines(seg),
        ]
    if "detection" in out:
        det = out["detection"]
        q = det["quality"]
        lines += [
            "",
            "## Detection (Faster R-CNN, FPN on EfficientNet-Lite0)",
            "",
            *run,
            f"Trained {det['steps']} steps of 4 images in {det['training_seconds']:.0f} s (final "
            f"loss {det['final_loss']:.3f}). Held out, detections scored >= 0.5: {q['found']} of "
            f"{q['objects']} objects found (IoU >= 0.5 and the right class; recall "
            f"{q['recall']:.3f}, mean IoU {q['mean_iou_found']:.3f}), {q['false_detections']} "
            f"false detections. Explained: each of the {det['detections']} detections (score >= "
            f"0.5), its own score (a `Detection` target); the object is the detection's own box. "
            f"A uniform map would put {det['uniform_energy']:.3f} of its energy inside. The box "
            f"head pools each detection from one FPN level by its size (torchvision's "
            f"`LevelMapper`): "
            + ", ".join(f"level {k}: {v}" for k, v in det["roi_levels"].items())
            + "; the score of a detection depends on the other levels only through the "
            f"proposals, which carry no gradient. "
            f"Explaining took {det['explain_seconds']:.0f} s.",
            "",
            *matrix_rows(det, "energy"),
            "",
            *matrix_rows(det, "pointing"),
            "",
            *table_rows(_tallies(det), det["methods"], det["layers"], det["automatic_layer"]),
            "",
            *layer_rows(det["by_layer"], det["automatic_layer"]),
            "",
            *flat_lines(det),
        ]
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sets, 2 steps each")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here (and .json)")
    p.add_argument("--train", type=int, default=300, help="training images")
    p.add_argument("--test", type=int, default=40, help="held-out images")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seg-steps", type=int, default=80)
    p.add_argument("--det-steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--methods", nargs="+", default=None, help="default: the gradient family")
    p.add_argument("--layers", nargs="+", default=None, help="default: the candidate layers")
    p.add_argument(
        "--sheet", type=Path, default=None, help="a PNG of the first held-out image's detection"
    )
    p.add_argument(
        "--render", type=Path, nargs="+", default=None, help="the Markdown of runs' JSON files"
    )
    p.add_argument(
        "--models", type=Path, default=None, help="keep the trained models here, and reuse them"
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["segmentation", "detection"],
        choices=["segmentation", "detection"],
    )
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.render:  # the Markdown of earlier runs' JSON, one after the other
        lines = []
        for n, path in enumerate(args.render):
            out = json.loads(path.read_text())
            written = time.gmtime(path.stat().st_mtime)  # a run of before these were kept
            out.setdefault("finished", time.strftime("%Y-%m-%d %H:%M UTC", written))
            out.setdefault(
                "machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            )
            lines += markdown(out, title=n == 0)
        print("\n".join(lines))
        if args.out is not None:
            args.out.write_text("\n".join(lines) + "\n")
        return out
    if args.quick:
        for key, value in QUICK.items():
            if key != "methods" or args.methods is None:
                setattr(args, key, value)
    out = run(args)
    print("\n".join(out["markdown"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(out["markdown"]) + "\n")
        figures = {k: v for k, v in out.items() if k != "markdown"}
        args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
