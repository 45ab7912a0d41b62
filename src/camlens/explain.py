"""`Explainer`: runs the model once per batch, takes the gradients the methods need, and returns an
`Explanation` per image."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens import smoothing
from camlens.adapters import LayerAdapter
from camlens.errors import CamlensError, ClassError, MethodError
from camlens.explanation import ClassMap, Explanation, Prediction
from camlens.images import load_image, preprocess, tensor_to_image
from camlens.layers import CamHead, auto_layer, find_cam_head, probe_input, require_cam_head
from camlens.maps import normalize
from camlens.methods import Method, get_method
from camlens.methods.perturbation import Progress, Scorer
from camlens.models import Model, load_model
from camlens.replay import Replay, build_replay, forward_bytes
from camlens.taps import LayerSpec, Taps

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
ClassSpec = int | str
TOP_PREDICTIONS = 5


class Explainer:
    """Explains a classifier's decisions with one or more methods at one or more layers.

    >>> model = camlens.load_model()                                  # doctest: +SKIP
    >>> with camlens.Explainer(model, method="gradcam") as ex:         # doctest: +SKIP
    ...     result = ex.explain("photo.jpg", top=3)
    ...     result.save("out/")

    ``model``: a :class:`Model`, a spec for :func:`load_model` or an ``nn.Module``.
    ``method``: a name or several (see ``camlens methods``). ``layer``: a name or module, or several;
    the last spatial layer by default (see ``camlens layers``).

    One forward pass per batch serves every class, layer and method. Gradients are taken with
    ``torch.autograd.grad`` with respect to the tapped activations only, and the autograd graph
    covers only the layers after them. Where a layer feeds a GAP -> Linear head (checked
    numerically), the gradient of every class is known from the head's weights, so CAM and the
    gradient methods there need no backward pass at all, whatever the number of classes.

    The perturbation methods (Score-CAM, Ablation-CAM...) run further passes after that one: the
    logits of each masked input (or ablated activation) serve every requested class of every
    image, batched across images, at most ``max_batch_memory`` bytes at a time (an estimate), in
    inference mode. ``fast_channels`` and ``fast_resolution`` trade accuracy for speed there (off by
    default; see :class:`~camlens.methods.perturbation.Scorer`); ``progress(done, total)`` is called
    as their passes go. ``channels_last``: the masked inputs go to the model in the channels-last
    memory format, which takes 27-42% less time on the CPU here (benchmarks/channels_last.py).

    ``smooth``: ``"tta"`` (test-time augmentation: the maps of flipped and rescaled inputs,
    ``augmentations``, undone and averaged) and/or ``"pca"`` (the first principal component of the
    weighted activations instead of their sum); see :mod:`camlens.smoothing`.
    """

    def __init__(
        self,
        model: Model | nn.Module | str | None = None,
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        use_head_gradients: bool = True,
        smooth: str | Sequence[str] | None = None,
        augmentations: Sequence[smoothing.Augmentation] = smoothing.DEFAULT_AUGMENTATIONS,
        max_batch_memory: int = 512 * 2**20,
        fast_channels: int | None = None,
        fast_resolution: float | None = None,
        channels_last: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.model = model if isinstance(model, Model) else load_model(model)
        if device is not None:
            self.model.to(device)
        names = [method] if isinstance(method, str | Method) else list(method)
        if not names:
            raise MethodError("no method given")
        self.methods: list[Method] = [m if isinstance(m, Method) else get_method(m) for m in names]
        self.smooth = {smooth} if isinstance(smooth, str) else set(smooth or ())
        if self.smooth - set(smoothing.SMOOTHERS):
            raise MethodError(
                f"unknown smoothing {sorted(self.smooth - set(smoothing.SMOOTHERS))}: "
                f"choose from {', '.join(smoothing.SMOOTHERS)}"
            )
        self.augmentations = (
            smoothing.Augmentation(),
            *[a for a in augmentations if a != smoothing.Augmentation()],
        )
        if max_batch_memory < 1:
            raise MethodError(f"max_batch_memory must be positive, not {max_batch_memory}")
        if fast_channels is not None and fast_channels < 1:
            raise MethodError(f"fast_channels must be at least 1, not {fast_channels}")
        if fast_resolution is not None and not 0 < fast_resolution <= 1:
            raise MethodError(f"fast_resolution must be in (0, 1], not {fast_resolution}")
        self.max_batch_memory = max_batch_memory
        self.fast_channels = fast_channels
        self.fast_resolution = fast_resolution
        self.progress = progress
        self.channels_last = channels_last
        self.passes = 0  # rows the perturbation methods have run through the model so far
        self._row_bytes: int | None = None
        self._replays: dict[str, Replay] = {}
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        if layer is None:
            layers: list[LayerSpec] = [auto_layer(self.model)]
        elif isinstance(layer, str | nn.Module):
            layers = [layer]
        else:
            layers = list(layer)
        self.layers = Taps(self.model.net, layers).names  # resolves names, raises LayerError
        self.heads = self._probe_heads()
        for name in self.layers:
            if any(m.needs == "head" for m in self.methods):
                require_cam_head(self.heads[name], self.model, name, self._channels[name])
        # Layers whose class-score gradients come from the head's weights, with no backward pass.
        self.head_gradients = {
            n for n, h in self.heads.items() if h is not None and use_head_gradients
        }

    def __enter__(self) -> Explainer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass  # hooks live only inside each call; nothing to release

    def _probe_heads(self) -> dict[str, CamHead | None]:
        """One probe forward pass: checks every layer gives a spatial map and finds the GAP ->
        Linear head each layer feeds, if any."""
        net = self.model.net
        with (
            _eval_mode(net),
            Taps(net, self.layers, adapter=self.model.adapter) as taps,
            torch.inference_mode(),
        ):
            logits = net(probe_input(self.model))
        self._channels = {name: int(a.shape[1]) for name, a in taps.activations.items()}
        return {
            name: find_cam_head(self.model, name, taps.activations[name], logits)
            for name in self.layers
        }

    @overload
    def explain(  # type: ignore[overload-overlap]  # a str is a Sequence too: this one wins
        self,
        inputs: str | Path | Image.Image | np.ndarray,
        *,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> Explanation: ...

    @overload
    def explain(
        self,
        inputs: Sequence[ImageInput],
        *,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Explanation]: ...

    @overload
    def explain(
        self,
        inputs: torch.Tensor,
        *,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> Explanation | list[Explanation]: ...

    def explain(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        *,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> Explanation | list[Explanation]:
        """Maps for ``inputs``: a path, a PIL image, an RGB array, a normalized [3, H, W] tensor
        (one image -> one :class:`Explanation`), or a list of those or an [N, 3, H, W] batch
        (-> a list).

        ``classes``: class indices or names for every image (``[285, "espresso"]``), or one list per
        image (a list of lists, as long as the inputs); otherwise the ``top`` (default 1) predicted
        classes of each image. ``names``: how reports name the inputs (default: their paths, or
        ``<image N>``).
        """
        single = isinstance(inputs, str | Path | Image.Image | np.ndarray) or (
            isinstance(inputs, torch.Tensor) and inputs.ndim == 3
        )
        items = _as_items(inputs, names)
        per_image = self.resolve_classes(classes, top, len(items))
        results: list[Explanation] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            wanted = per_image[start : start + self.batch_size] if per_image else None
            results.extend(self._explain_batch(chunk, wanted, top or 1, start))
        return results[0] if single else results

    def iter_explain(
        self,
        inputs: Sequence[ImageInput],
        *,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None = None,
        top: int | None = None,
        names: Sequence[str] | None = None,
    ) -> Iterator[list[Explanation]]:
        """Like :meth:`explain` for a list, but yields each batch's explanations as it is done."""
        items = _as_items(inputs, names)
        per_image = self.resolve_classes(classes, top, len(items))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            wanted = per_image[start : start + self.batch_size] if per_image else None
            yield self._explain_batch(chunk, wanted, top or 1, start)

    def resolve_classes(
        self,
        classes: ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec]] | None,
        top: int | None,
        count: int,
    ) -> list[list[int]] | None:
        """The class indices to explain for each of ``count`` images, or None for the top classes;
        raises ClassError for unknown classes, a list of lists of the wrong length, or both
        ``classes`` and ``top``."""
        if classes is None:
            if top is not None and not 1 <= top <= self.model.num_classes:
                raise ClassError(f"top must be between 1 and {self.model.num_classes}, not {top}")
            return None
        if top is not None:
            raise ClassError("give classes or top, not both")
        given = [classes] if isinstance(classes, int | str) else list(classes)
        if not given:
            raise ClassError("an empty list of classes")
        if all(isinstance(c, Sequence) and not isinstance(c, str) for c in given):
            if len(given) != count:
                raise ClassError(
                    f"{len(given)} class lists given for {count} images: give one list per image, "
                    "or one flat list for all"
                )
            lists = [[self.model.class_index(c) for c in cs] for cs in given]  # type: ignore[union-attr]
            if any(not cs for cs in lists):
                raise ClassError("an image was given an empty list of classes")
            return lists
        flat = [self.model.class_index(c) for c in given]  # type: ignore[arg-type]
        return [flat] * count

    def _explain_batch(
        self, items: list[_Item], wanted: list[list[int]] | None, top: int, offset: int
    ) -> list[Explanation]:
        model = self.model
        photos = [item.image for item in items]
        if all(item.tensor is None for item in items):
            x = preprocess([p for p in photos if p is not None], model.preprocess)
        else:
            x = torch.stack([item.tensor_or(model) for item in items])
        x = x.to(model.device)
        probs, chosen, per_image = self._class_maps(x, wanted, top)
        if "tta" in self.smooth:  # the same classes, explained on each augmented input
            runs = [per_image]
            runs += [
                self._class_maps(aug.apply(x), chosen, top)[2] for aug in self.augmentations[1:]
            ]
            per_image = smoothing.merge_augmented(runs, self.augmentations)
        results = []
        top_p, top_i = probs.topk(min(TOP_PREDICTIONS, model.num_classes), dim=1)
        for b, item in enumerate(items):
            predictions = [
                Prediction(int(i), model.labels[int(i)], float(p))
                for p, i in zip(top_p[b], top_i[b], strict=True)
            ]
            # a tensor input's picture is made on first use, from its own CPU copy (a view would
            # keep the whole batch, or device memory, alive as long as any explanation)
            photo = (
                item.image
                if item.image is not None
                else partial(tensor_to_image, x[b].to("cpu", copy=True), model.preprocess)
            )
            results.append(
                Explanation(
                    source=item.source or f"<image {offset + b}>",
                    image=photo,
                    input_size=model.preprocess.input_size,
                    model=model.name,
                    predictions=predictions,
                    maps=per_image[b],
                )
            )
        return results

    def _class_maps(
        self, x: torch.Tensor, wanted: list[list[int]] | None, top: int
    ) -> tuple[torch.Tensor, list[list[int]], list[list[ClassMap]]]:
        """One forward pass on ``x`` (plus backward or perturbation passes where methods need
        them) -> (probabilities, the classes explained per image, the maps per image)."""
        model = self.model
        grad_layers = [
            name
            for name in self.layers
            if name not in self.head_gradients and any(m.needs == "gradients" for m in self.methods)
        ]
        with (
            _eval_mode(model.net),
            Taps(
                model.net, self.layers, gradients=bool(grad_layers), adapter=model.adapter
            ) as taps,
        ):
            if grad_layers:
                with torch.no_grad():
                    logits = model.net(x)
            else:
                with torch.inference_mode():
                    logits = model.net(x)
            acts = dict(taps.activations)
            layouts = {name: (taps.adapters[name], taps.outputs[name]) for name in self.layers}
        probs = torch.softmax(logits.detach().float(), dim=1)
        chosen = probs.topk(top, dim=1).indices.tolist() if wanted is None else wanted
        depth = max(len(cs) for cs in chosen)
        index = torch.tensor([cs + [cs[-1]] * (depth - len(cs)) for cs in chosen], device=x.device)
        valid = torch.tensor([[j < len(cs) for j in range(depth)] for cs in chosen])

        # gradients[layer][j]: d score(class chosen[:, j]) / d activations, for every rank j
        gradients: dict[str, list[torch.Tensor]] = {name: [] for name in grad_layers}
        for j in range(depth):
            if not grad_layers:
                break
            score = (logits.gather(1, index[:, j : j + 1]) * valid[:, j : j + 1].to(x.device)).sum()
            grads = torch.autograd.grad(
                score, [acts[name] for name in grad_layers], retain_graph=j < depth - 1
            )
            for name, g in zip(grad_layers, grads, strict=True):
                gradients[name].append(g)

        per_image: list[list[ClassMap]] = [[] for _ in chosen]
        for name in self.layers:
            a = acts[name].detach()
            with _eval_mode(model.net):
                raws = [
                    self._raw_maps(
                        m,
                        name,
                        a,
                        gradients.get(name, []),
                        index,
                        x,
                        logits.detach(),
                        layouts[name],
                    )
                    for m in self.methods
                ]
            for j in range(depth):
                for method, raw in zip(self.methods, raws, strict=True):
                    maps, flat = normalize(raw[:, j].detach())
                    for b, cs in enumerate(chosen):
                        if j < len(cs):
                            c = cs[j]
                            per_image[b].append(
                                ClassMap(
                                    c,
                                    model.labels[c],
                                    float(probs[b, c]),
                                    method.name,
                                    name,
                                    maps[b],
                                    bool(flat[b]),
                                )
                            )
        return probs, chosen, per_image

    def _raw_maps(
        self,
        method: Method,
        layer: str,
        a: torch.Tensor,
        gradients: list[torch.Tensor],
        index: torch.Tensor,
        x: torch.Tensor,
        logits: torch.Tensor,
        layout: tuple[LayerAdapter, torch.Tensor],
    ) -> torch.Tensor:
        """``method``'s maps before ReLU and normalization for every rank of ``index`` [N, D]:
        [N, D, h, w]. With "pca" smoothing, a separable method's per-channel terms are reduced to
        their first principal component instead of summed. ``layout``: the layer's adapter and raw
        output (for the Ablation-CAM replay)."""
        pca = "pca" in self.smooth and method.separable
        options = dict(method.options)
        if method.needs == "activations":
            raw: torch.Tensor = method.fn(a, **options)
            return raw[:, None].expand(-1, index.shape[1], -1, -1)
        if method.needs == "scores":
            scorer = self._scorer(layer, x, logits, index, a, layout)
            weights = method.fn(a, scorer, **options).to(a.dtype)
            self.passes += scorer.passes
            if pca:
                per_rank = [weights[:, j, :, None, None] * a for j in range(index.shape[1])]
                return torch.stack([smoothing.pca_map(t) for t in per_rank], dim=1)
            return torch.einsum("ndk,nkhw->ndhw", weights, a)
        maps = []
        for j in range(index.shape[1]):
            if method.needs == "head" or layer in self.head_gradients:
                head = self.heads[layer]
                assert head is not None  # checked in __init__
                operand = _head_operand(method, a, head.weight[index[:, j]])
            else:
                operand = gradients[j]
            if pca:
                terms = smoothing.channel_terms(method.fn, a, operand, **options)
                maps.append(smoothing.pca_map(terms))
            else:
                maps.append(method.fn(a, operand, **options))
        return torch.stack(maps, dim=1)

    def _scorer(
        self,
        layer: str,
        x: torch.Tensor,
        logits: torch.Tensor,
        index: torch.Tensor,
        a: torch.Tensor,
        layout: tuple[LayerAdapter, torch.Tensor],
    ) -> Scorer:
        """What the perturbation methods run the model with, for this batch and layer."""
        net = self.model.net
        if self._row_bytes is None:
            self._row_bytes = forward_bytes(net, probe_input(self.model))
        height, width = self.model.preprocess.input_size
        row_bytes = int(self._row_bytes * x.shape[-2] * x.shape[-1] / (height * width))

        def replay() -> Replay:
            found = build_replay(
                net,
                layer,
                self.heads[layer],
                x,
                a,
                logits,
                self._replays.get(layer),
                adapter=layout[0],
                output=layout[1],
            )
            if found.kind != "full":  # kept without this batch's layer output
                self._replays[layer] = dataclasses.replace(found, output=None)
            return found

        return Scorer(
            net,
            x,
            logits,
            index,
            a,
            replay=replay,
            row_bytes=row_bytes,
            max_batch_memory=self.max_batch_memory,
            channels=self.fast_channels,
            resolution=self.fast_resolution,
            channels_last=self.channels_last,
            progress=self.progress,
        )


def _head_operand(method: Method, activations: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """What a method takes when the layer feeds a GAP -> Linear head whose class rows are ``rows``
    [N, K]: CAM takes them as they are; a gradient method takes the exact gradient of the logit,
    ``W[c, k] / (h * w)`` at every location."""
    rows = rows.to(activations.dtype)
    if method.needs == "head":
        return rows
    h, w = activations.shape[-2:]
    return (rows / (h * w))[:, :, None, None].expand_as(activations)


@contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Runs in eval mode (batch norm statistics, no dropout) and restores each module's mode.

    A model already in eval mode (the usual case) is left alone: ``net.eval()`` and
    ``net.train(...)`` walk every module through ``nn.Module.__setattr__``, which cost as much as
    a tenth of EfficientNet-Lite0's forward pass at batch 1. Otherwise the modules that were
    training are switched back one by one, so a model with some modules in each mode gets its
    own mix back."""
    training = [module for module in net.modules() if module.training]
    if not training:
        yield
        return
    net.eval()
    try:
        yield
    finally:
        for module in training:
            module.training = True


class _Item:
    """One input: a photo (with its source) or an already normalized tensor."""

    def __init__(
        self, image: Image.Image | None, source: str | None, tensor: torch.Tensor | None = None
    ) -> None:
        self.image = image
        self.source = source
        self.tensor = tensor

    def tensor_or(self, model: Model) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.image is not None
        x: torch.Tensor = preprocess([self.image], model.preprocess)[0]
        return x


def _as_items(inputs: Any, names: Sequence[str] | None = None) -> list[_Item]:
    items = _items(inputs)
    if names is not None:
        if len(names) != len(items):
            raise CamlensError(f"{len(names)} names given for {len(items)} images")
        for item, name in zip(items, names, strict=True):
            item.source = name
    return items


def _items(inputs: Any) -> list[_Item]:
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 3:
            inputs = inputs[None]
        if inputs.ndim != 4 or inputs.shape[1] != 3:
            raise CamlensError(
                f"a tensor input must be [3, H, W] or [N, 3, H, W], not {list(inputs.shape)}"
            )
        return [_Item(None, None, t) for t in inputs.detach()]
    if isinstance(inputs, str | Path | Image.Image | np.ndarray):
        inputs = [inputs]
    items = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            items.extend(_items(x))
        else:
            source = str(x) if isinstance(x, str | Path) else None
            items.append(_Item(load_image(x), source))
    if not items:
        raise CamlensError("no images given")
    return items
