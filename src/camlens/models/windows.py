"""Windows: an explained detection's score computed again from the region of features it reads,
so that its backward pass covers that region, not every position of every pyramid level.

A detector's backward pass for one detection runs through dense convolutions: the 3 x 3
convolution of a feature pyramid's level (256 -> 256 channels over the whole level, the finest of
stride 4) and a RetinaNet's head (five such convolutions over every level). Yet a detection reads
a small part of them: a Faster R-CNN's box the region of one level that RoIAlign samples, a
RetinaNet's logit the 11 x 11 window of features around its anchor. Both computations here give
the same values as the whole maps (the convolutions run unpadded on the window, with the zeros of
their padding where the window leaves the map), and with them gradients equal to the whole
pass's, at a fraction of the arithmetic.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LOCAL = ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros")
"""The shape of a convolution a window can run: 3 x 3, stride 1, padded by 1 with zeros."""


def _local(m: nn.Module) -> bool:
    """A 3 x 3 convolution of stride 1 padded by 1 with zeros (see :data:`LOCAL`)."""
    if not isinstance(m, nn.Conv2d):
        return False
    return (m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode) == LOCAL


# --- RetinaNet: a logit from the window around its anchor --------------------------------------


def head_layers(net: Any) -> list[nn.Module] | None:
    """A RetinaNet's classification head as the list of its layers when each is a 3 x 3
    convolution of stride 1 padded by 1 or a ReLU (torchvision's ``retinanet_resnet50_fpn``; its
    v2 normalizes over the whole map, and then None): a class logit at a position then reads
    only the ``(2R + 1) x (2R + 1)`` features around it, ``R`` the number of convolutions."""
    head = getattr(getattr(net, "head", None), "classification_head", None)
    tower, last = getattr(head, "conv", None), getattr(head, "cls_logits", None)
    if not isinstance(tower, nn.Module) or not isinstance(last, nn.Conv2d):
        return None
    layers = [m for m in tower.modules() if next(m.children(), None) is None] + [last]
    if all(_local(m) or isinstance(m, nn.ReLU) for m in layers):
        return layers
    return None


def head_logits(
    layers: list[nn.Module], features: list[torch.Tensor], places: torch.Tensor, per_anchor: int
) -> torch.Tensor:
    """The class logits ``[G, classes]`` of the head's rows ``places`` (over the levels of one
    image's ``features``, ``[C, H, W]`` each; a row is ``(y * W + x) * per_anchor + anchor``),
    computed from the window of features around each: the head's convolutions run unpadded on
    the window, the positions outside the map set to zero before each, as its padding has them.
    Equal to the whole head's logits there; a detection's backward then covers its window, not
    every position of every level."""
    radius = sum(isinstance(m, nn.Conv2d) for m in layers)
    side = 2 * radius + 1
    counts = [f[0].numel() * per_anchor for f in features]
    starts = list(itertools.accumulate(counts))
    padded: dict[int, torch.Tensor] = {}
    crops, insides, anchors = [], [], []
    steps = torch.arange(side, device=places.device) - radius
    for place in places.tolist():
        level = next(i for i, end in enumerate(starts) if place < end)
        cell, anchor = divmod(place - (starts[level] - counts[level]), per_anchor)
        height, width = features[level].shape[-2:]
        y, x = divmod(cell, width)
        if level not in padded:
            padded[level] = F.pad(features[level], (radius,) * 4)
        crops.append(padded[level][:, y : y + side, x : x + side])
        rows, columns = steps + y, steps + x
        insides.append(
            ((rows >= 0) & (rows < height))[:, None] & ((columns >= 0) & (columns < width))[None]
        )
        anchors.append(anchor)
    out = torch.stack(crops)
    inside = torch.stack(insides)[:, None].to(out.dtype)
    cut = 0
    for m in layers:
        if isinstance(m, nn.Conv2d):
            out = F.conv2d(out * inside[..., cut : side - cut, cut : side - cut], m.weight, m.bias)
            cut += 1
        else:
            out = m(out)
    logits = out[:, :, 0, 0].reshape(len(anchors), per_anchor, -1)
    each = torch.arange(len(anchors), device=out.device)
    return logits[each, torch.tensor(anchors, dtype=torch.long, device=out.device)]


# --- Faster R-CNN: a box's pooled features from the region of its pyramid level -----------------


def pyramid_blocks(net: Any) -> list[list[nn.Module]] | None:
    """A Faster R-CNN's feature pyramid's output convolutions (``backbone.fpn.layer_blocks``),
    each as the list of its layers, when each block is a 3 x 3 convolution of stride 1 padded by
    1, then batch norms in eval mode at most (torchvision's ``FeaturePyramidNetwork`` of its
    Faster R-CNNs, v2's included), and the box head pools the levels with ``MultiScaleRoIAlign``
    from those blocks only (not the ``pool`` level); else None. A level's value at a position
    then reads the 3 x 3 neighbours of the pyramid's inner map there (:func:`pyramid_inners`)."""
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

    backbone = getattr(net, "backbone", None)
    fpn, body = getattr(backbone, "fpn", None), getattr(backbone, "body", None)
    pooler = getattr(getattr(net, "roi_heads", None), "box_roi_pool", None)
    if not isinstance(fpn, FeaturePyramidNetwork) or type(fpn) is not FeaturePyramidNetwork:
        return None  # a subclass may compute otherwise
    if not isinstance(body, nn.Module):
        return None
    if not isinstance(pooler, MultiScaleRoIAlign):
        return None
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if fpn.extra_blocks is not None and type(fpn.extra_blocks) is not LastLevelMaxPool:
        return None
    if "pool" in pooler.featmap_names or not _levels(net):
        return None
    blocks = []
    for block in fpn.layer_blocks:
        layers = [m for m in block.modules() if next(m.children(), None) is None]
        if not layers or not _local(layers[0]):
            return None
        if not all(isinstance(m, nn.BatchNorm2d) and not m.training for m in layers[1:]):
            return None
        blocks.append(layers)
    return blocks


def _levels(net: Any) -> list[int]:
    """The pyramid levels a Faster R-CNN's box pooler reads, as indices of the body's outputs
    (it reads the levels whose names it lists, in the pyramid's order)."""
    names = list(getattr(net.backbone.body, "return_layers", {}).values())
    return [i for i, name in enumerate(names) if name in net.roi_heads.box_roi_pool.featmap_names]


def pyramid_inners(
    net: Any, images: torch.Tensor
) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor] | None]:
    """A Faster R-CNN's backbone on ``images`` as torchvision's ``FeaturePyramidNetwork`` computes
    it, and the inner maps the levels are made from (the lateral 1 x 1 convolutions plus the
    coarser map upsampled), one per level, with their graph. When windows pay
    (:func:`windows_pay`), the levels have no graph: they feed the proposals and the scoring of
    every one of them (both without a graph), and an explained box's features are computed again
    from the inner maps (:func:`pyramid_pooled`); else the levels have their graph, and no inner
    maps are given (None)."""
    fpn = net.backbone.fpn
    body = net.backbone.body(images)
    names, x = list(body.keys()), list(body.values())
    last = fpn.get_result_from_inner_blocks(x[-1], -1)
    inners = [last]
    for idx in range(len(x) - 2, -1, -1):
        lateral = fpn.get_result_from_inner_blocks(x[idx], idx)
        last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
        inners.insert(0, last)
    pays = windows_pay(net, [inner.shape for inner in inners])
    with torch.no_grad() if pays else contextlib.nullcontext():
        levels = [fpn.get_result_from_layer_blocks(inner, idx) for idx, inner in enumerate(inners)]
        if fpn.extra_blocks is not None:
            levels, names = fpn.extra_blocks(levels, x, names)
    return OrderedDict(zip(names, levels, strict=True)), inners if pays else None


READ = 100
"""About how many multiply-adds a CPU does in the time it reads one weight from memory: a
3 x 3 convolution's backward pass ran at 100 G multiply-adds a second on 2 cores of this
project's machines (256 -> 256 channels, 80 x 80), and the product of 10 rows with a Faster
R-CNN's 51 MB box head weight read 1.1 G weights a second."""


def windows_pay(net: Any, shapes: list[torch.Size]) -> bool:
    """Whether explained boxes scored from windows (:func:`pyramid_pooled`) cost less than from
    the whole levels, given the shapes of the pyramid's inner maps. Whole levels: each detection's
    backward pass runs every level's convolution back over the whole level (batched over the
    detections: the arithmetic of one pass each). Windows: one backward pass per detection, each
    reading the box head's weights again (a batched pass reads them once), about :data:`READ`
    multiply-adds a weight. So windows pay on fine levels (a ResNet-50's stride 4, 80 x 80 at 320
    pixels: 5.0 G multiply-adds a detection, against 1.4 G for reading its 13.9 M weights), not on
    coarse ones (a MobileNet's two levels, both of stride 32: 0.12 G at 320 pixels)."""
    blocks = pyramid_blocks(net) or []
    dense = 0
    for i in _levels(net):
        conv = blocks[i][0]
        assert isinstance(conv, nn.Conv2d)  # pyramid_blocks checked it
        dense += shapes[i][-2] * shapes[i][-1] * conv.weight.numel()
    heads = net.roi_heads
    weights = sum(p.numel() for m in (heads.box_head, heads.box_predictor) for p in m.parameters())
    return bool(dense > READ * weights)


def pyramid_pooled(
    net: Any,
    blocks: list[list[nn.Module]],
    inners: list[torch.Tensor],
    rows: list[torch.Tensor],
) -> torch.Tensor:
    """The box head's pooled features ``[R, C, h, w]`` of the boxes ``rows`` (per image, in the
    input's pixels), as ``MultiScaleRoIAlign`` gives them from the pyramid's levels, computed from
    the region of its level each box samples: its level's convolution runs on the inner map
    around that region (one more position on each side, zeros beyond the map), and RoIAlign on
    the result, the box moved by the region's corner (a whole number of the level's strides: the
    same sampling points). The pooler must have pooled the levels once before (its scales).

    Differentiable with respect to ``inners``, box by box (:class:`_Pooled`): a backward pass
    runs the regions of the boxes whose features get a gradient only. One backward pass per
    explained detection then covers its own region, not the whole level, nor the other
    detections' regions (a batched backward pass, ``is_grads_batched``, has no rule for it and
    takes one pass per detection: the same arithmetic, as the layers before are dense)."""
    pooler = net.roi_heads.box_roi_pool
    wanted = _levels(net)
    levels = pooler.map_levels(rows) if len(wanted) > 1 else None
    windows: list[_Window] = []
    for n, boxes in enumerate(rows):
        for box in boxes.detach():
            level = 0 if levels is None else int(levels[len(windows)])
            index, scale = wanted[level], pooler.scales[level]
            height, width = inners[index].shape[-2:]
            x0, y0, x1, y1 = (float(v) * scale for v in box)
            top, left = max(math.floor(y0) - 2, 0), max(math.floor(x0) - 2, 0)
            bottom = min(math.floor(max(y1, y0 + 1)) + 3, height)
            right = min(math.floor(max(x1, x0 + 1)) + 3, width)
            windows.append(_Window(n, index, scale, box, top, left, bottom, right))
    out: torch.Tensor = _Pooled.apply((net, blocks, windows), *inners)
    return out


class _Window(NamedTuple):
    """A box's region: image ``n``, pyramid level ``inner`` (of ``scale``), and the rows
    ``top:bottom``, columns ``left:right`` of the level that its RoIAlign samples (and more)."""

    n: int
    inner: int
    scale: float
    box: torch.Tensor
    top: int
    left: int
    bottom: int
    right: int


def _pool_window(
    net: Any, blocks: list[list[nn.Module]], w: _Window, inner: torch.Tensor
) -> torch.Tensor:
    """A box's pooled features ``[1, C, h, w]`` from ``inner``, the inner map of its image and
    level around its region (one more position on each side, zero-padded where beyond the map)."""
    from torchvision.ops import roi_align

    pooler = net.roi_heads.box_roi_pool
    conv, *norms = blocks[w.inner]
    assert isinstance(conv, nn.Conv2d)  # pyramid_blocks checked it
    level = F.conv2d(inner, conv.weight, conv.bias)
    for norm in norms:
        level = norm(level)
    stride = 1 / w.scale
    moved = torch.cat([w.box.new_zeros(1), w.box - w.box.new_tensor([w.left, w.top] * 2) * stride])
    pooled: torch.Tensor = roi_align(
        level,
        moved[None],
        output_size=pooler.output_size,
        spatial_scale=w.scale,
        sampling_ratio=pooler.sampling_ratio,
    )
    return pooled


class _Pooled(torch.autograd.Function):
    """:func:`pyramid_pooled` as one operation of the inner maps, whose backward pass runs the
    regions of the boxes with a nonzero gradient alone (their graphs are kept from the forward
    pass, a few small maps each). Which boxes those are depends on the gradient's values, which
    a batched backward pass (``is_grads_batched``) does not allow: it raises there, and the
    explainer takes one backward pass per detection (:class:`~camlens.capture.Capture`)."""

    @staticmethod
    def forward(
        ctx: Any, how: tuple[Any, Any, list[_Window]], *inners: torch.Tensor
    ) -> torch.Tensor:
        net, blocks, windows = how
        padded = {}
        ctx.windows, ctx.shapes, ctx.graphs = windows, [i.shape for i in inners], []
        out = []
        for w in windows:
            if (w.n, w.inner) not in padded:
                padded[(w.n, w.inner)] = F.pad(inners[w.inner][w.n], (1, 1, 1, 1))
            region = padded[(w.n, w.inner)][None, :, w.top : w.bottom + 2, w.left : w.right + 2]
            with torch.enable_grad():
                region = region.detach().requires_grad_(True)
                pooled = _pool_window(net, blocks, w, region)
            ctx.graphs.append((region, pooled))
            out.append(pooled.detach())
        return torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        found: dict[int, torch.Tensor] = {}
        for g, (w, (region, pooled)) in enumerate(zip(ctx.windows, ctx.graphs, strict=True)):
            if not bool(grad[g].any()):
                continue  # another detection's box
            (part,) = torch.autograd.grad(pooled, region, grad[g : g + 1], retain_graph=True)
            if w.inner not in found:
                found[w.inner] = grad.new_zeros(ctx.shapes[w.inner])
            height, width = ctx.shapes[w.inner][-2:]
            top, left = max(w.top - 1, 0), max(w.left - 1, 0)  # the region's rows in the map
            bottom, right = min(w.bottom + 1, height), min(w.right + 1, width)
            inside = part[
                0, :, top - w.top + 1 : bottom - w.top + 1, left - w.left + 1 : right - w.left + 1
            ]
            found[w.inner][w.n, :, top:bottom, left:right] += inside
        return (None, *(found.get(i) for i in range(len(ctx.shapes))))
