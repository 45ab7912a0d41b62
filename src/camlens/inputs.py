"""What an :class:`~camlens.explain.Explainer` call is given, turned into what it runs: images
(paths, PIL images, RGB arrays, normalized tensors, or lists of those) into named
:class:`Item` s and model input batches, and classes (indices or names, for every image or per
image, or the top K) into class indices.

What is wrong with one input (a file that cannot be read, a tensor row with NaN values) is that
input's :class:`~camlens.errors.CamlensError`; what is wrong with the call (``None``, an empty
list, a tensor that is not [N, 3, H, W] floats, too few names, unknown classes) raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from camlens.errors import CamlensError, ClassError
from camlens.images import PreprocessConfig, load_image, preprocess, tensor_to_image
from camlens.models import Model
from camlens.targets import Target

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
ClassSpec = int | str
Classes = ClassSpec | Sequence[ClassSpec] | Sequence[Sequence[ClassSpec | Target]]
"""Classes for every image, or a list per image (which may hold targets: ``VersusTrue(t)``)."""


@dataclass
class Item:
    """One input: its name in reports (``source``), and either its ``photo`` (preprocessed when
    it runs) or row ``row`` of the normalized batch ``batch``, or both (a photo preprocessed
    elsewhere: the batch is its model input, the photo what the explanation shows)."""

    source: str
    photo: Image.Image | None = None
    batch: torch.Tensor | None = None
    row: int = 0

    def pixels(self) -> int:
        """How many pixels the input's own picture has."""
        if self.photo is not None:
            return self.photo.width * self.photo.height
        assert self.batch is not None
        return int(self.batch.shape[-1] * self.batch.shape[-2])


def is_single(inputs: Any) -> bool:
    """True for one image given alone (an explanation, not a list, comes back)."""
    return isinstance(inputs, str | Path | Image.Image | np.ndarray) or (
        isinstance(inputs, torch.Tensor) and inputs.ndim == 3
    )


def read(inputs: Any, names: Sequence[str] | None, max_pixels: int) -> list[Item | CamlensError]:
    """Each input read as an :class:`Item`, or its own problem in its place; every input named
    (``names``, its path, or ``<image N>`` by its place)."""
    if inputs is None:
        raise CamlensError(
            "no image given (None): pass a path, a PIL image, an RGB array or a tensor"
        )
    if is_single(inputs) or isinstance(inputs, torch.Tensor):
        pieces: list[Any] = [inputs]
    elif isinstance(inputs, Sequence):
        pieces = list(inputs)
    else:
        raise CamlensError(
            f"cannot explain a {type(inputs).__name__}: pass a path, a PIL image, an RGB array, "
            "a tensor, or a list of those"
        )
    entries: list[Item | CamlensError] = []
    nonfinite = set()
    for piece in pieces:
        if isinstance(piece, torch.Tensor):  # a malformed tensor: a malformed call
            x = tensor_batch(piece)
            for row, finite in enumerate(torch.isfinite(x).flatten(1).all(1).tolist()):
                if not finite:
                    nonfinite.add(len(entries))
                entries.append(Item("", batch=x, row=row))
            continue
        try:
            photo = load_image(piece, max_pixels=max_pixels)
        except CamlensError as exc:
            entries.append(exc)
        else:
            entries.append(Item(str(piece) if isinstance(piece, str | Path) else "", photo))
    entries = _named(entries, names)
    for i in nonfinite:
        source = cast(Item, entries[i]).source
        entries[i] = CamlensError(f"{source}: the input has NaN or infinite values")
    return entries


def prepared(
    inputs: torch.Tensor, photos: Sequence[Image.Image], names: Sequence[str] | None
) -> list[Item | CamlensError]:
    """Photos already preprocessed elsewhere: ``inputs`` is their [N, 3, H, W] batch."""
    x = tensor_batch(inputs)
    if len(photos) != len(x):
        raise CamlensError(f"{len(photos)} photos given for {len(x)} inputs")
    return _named([Item("", photo, x, row) for row, photo in enumerate(photos)], names)


def _named(
    entries: list[Item | CamlensError], names: Sequence[str] | None
) -> list[Item | CamlensError]:
    """Every input named: ``names``, its path, or ``<image N>`` by its place."""
    if not entries:
        raise CamlensError("no images given")
    if names is not None and len(names) != len(entries):
        raise CamlensError(f"{len(names)} names given for {len(entries)} images")
    for i, entry in enumerate(entries):
        if isinstance(entry, Item):
            entry.source = names[i] if names is not None else entry.source or f"<image {i}>"
    return entries


def model_input(items: Sequence[Item], settings: PreprocessConfig) -> torch.Tensor:
    """The [N, 3, H, W] model input of ``items``: consecutive rows of one batch as a view of it,
    photos preprocessed together, anything else row by row."""
    first = items[0].batch
    rows = [item.row for item in items]
    if first is not None and all(item.batch is first for item in items):
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return first[rows[0] : rows[0] + len(rows)]
        return first[rows]
    if all(item.batch is None for item in items):
        return preprocess([item.photo for item in items if item.photo is not None], settings)
    return torch.cat([model_input([item], settings) for item in items])


def picture(
    item: Item, x: torch.Tensor, settings: PreprocessConfig
) -> Image.Image | Callable[[], Image.Image]:
    """What an explanation shows: the photo, or, for a tensor input, the picture made on first
    use from its own CPU copy (a view would keep the batch, or device memory, alive)."""
    if item.photo is not None:
        return item.photo
    return partial(tensor_to_image, x.to("cpu", copy=True), settings)


def tensor_batch(x: torch.Tensor) -> torch.Tensor:
    """A tensor input as a float32 [N, 3, H, W] batch of normalized images."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise CamlensError(f"a tensor input must be [3, H, W] or [N, 3, H, W], not {list(x.shape)}")
    if not x.is_floating_point():
        raise CamlensError(
            f"a tensor input must hold normalized floats, not {x.dtype}: pass pixels as a PIL "
            "image or a numpy array, or normalize them (camlens.images.preprocess)"
        )
    if x.shape[0] == 0:
        raise CamlensError("no images given (an empty batch)")
    return x.detach().to(torch.float32)


def class_lists(
    model: Model, classes: Classes | None, top: int | None, count: int
) -> list[list[int]] | None:
    """The class indices to explain for each of ``count`` images, or None for the top classes;
    raises ClassError for unknown classes, a list of lists of the wrong length, or both
    ``classes`` and ``top``. A list per image may hold targets (:mod:`camlens.targets`, such
    as the ``VersusTrue(t)`` of a run over folders named by class): they are kept as given."""
    if classes is None:
        if top is not None and (
            isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= model.num_classes
        ):
            raise ClassError(f"top must be between 1 and {model.num_classes}, not {top}")
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
        lists = [[_class_or_target(model, c) for c in cs] for cs in given]  # type: ignore[union-attr]
        if any(not cs for cs in lists):
            raise ClassError("an image was given an empty list of classes")
        return lists
    flat = [model.class_index(c) for c in given]  # type: ignore[arg-type]
    return [flat] * count


def _class_or_target(model: Model, value: Any) -> Any:
    """A class's index, or a target as it is (checked when the batch's targets are planned)."""
    if isinstance(value, Target):
        return value
    return model.class_index(value)
