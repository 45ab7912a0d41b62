"""`Model`: a network together with what it takes to use it (preprocessing, labels, a name)."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from camlens.adapters import AdapterRule, default_rule
from camlens.errors import ClassError
from camlens.images import PreprocessConfig
from camlens.keras_names import caffe_names, keras_names
from camlens.targets import Scores, TargetError
from camlens.types import class_number

AliasRule = Callable[[nn.Module], dict[str, str]]
"""Other names of a network's layers -> their dotted names in it (empty when it has none)."""

ALIAS_RULES: tuple[AliasRule, ...] = (keras_names, caffe_names)
"""The other names every model's layers may be given by, one rule per naming: Keras's names of a
VGG's layers (``block5_conv3``) and the Caffe names of the original VGG release (``conv5_3``), see
:mod:`camlens.keras_names`. A new naming is one entry here."""


def layer_aliases(net: nn.Module) -> dict[str, str]:
    """The names of every rule of :data:`ALIAS_RULES` for ``net``'s layers (the first rule to
    give a name keeps it)."""
    found: dict[str, str] = {}
    for rule in ALIAS_RULES:
        for alias, name in rule(net).items():
            found.setdefault(alias, name)
    return found


class Wrapped(nn.Module):
    """A network ``inner`` whose output a subclass's ``forward`` gives in another form (a
    segmentation model's logits out of its dict, a detector's detections as rows). ``inner``'s
    children are this module's, under the same names (``backbone.layer4``), so its layers are
    named, hooked and listed as in ``inner``; the mode follows: ``train`` and ``eval`` set both."""

    inner: nn.Module

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.__dict__["inner"] = inner  # not a child: its children are ours
        for name, child in inner.named_children():
            self.add_module(name, child)
        self.training = inner.training  # the mode it was given in

    def train(self, mode: bool = True) -> Wrapped:
        super().train(mode)
        self.inner.training = mode
        return self


@dataclass(frozen=True)
class LinearHead:
    """A linear layer that may serve as a CAM head: ``out = x @ weight.T + bias``."""

    name: str  # the layer's name in the model
    weight: torch.Tensor  # [outputs, features], detached
    bias: torch.Tensor | None  # [outputs]


def torch_linear_heads(net: nn.Module) -> list[LinearHead]:
    """The ``nn.Linear`` modules of ``net``, in the order of ``named_modules()``."""
    return [
        LinearHead(
            name, module.weight.detach(), None if module.bias is None else module.bias.detach()
        )
        for name, module in net.named_modules()
        if isinstance(module, nn.Linear)
    ]


@dataclass
class Model:
    """A classifier ready to explain: ``net`` maps a normalized [N, 3, H, W] batch to logits.

    ``labels[i]`` names class ``i``; ``preprocess`` says how photos become inputs; ``name`` names
    the model in reports. ``adapter`` chooses how each layer's output becomes ``[N, K, h, w]`` maps
    (see :mod:`camlens.adapters`; convolutional layers by default).

    ``spec`` and ``weights`` load the model back: ``camlens.load_model(model.spec,
    weights=model.weights)`` rebuilds the same network with the same preprocessing and labels (see
    :func:`camlens.load_model` for each kind of model). ``spec`` is ``None`` for a network given
    as an ``nn.Module``, which camlens cannot build again.
    ``linear_heads`` lists the linear layers a GAP -> Linear CAM head may end in (the
    ``nn.Linear`` modules by default; a Keras model's ``Dense`` layers). ``default_layer``, when a
    model family sets it, is the automatic target layer (a ViT's ``blocks.11.norm1``); otherwise
    the rule of :func:`camlens.layers.auto_layer` chooses. ``scores`` says how the outputs
    become predictions (:meth:`predict`): ``softmax`` (single-label), ``sigmoid`` (multi-label
    and one-output binary heads) or ``raw`` (regression outputs, as they are). ``aliases`` gives
    the other names its layers may be given by (``--layer block5_conv3`` for a VGG's
    ``features.29``; :func:`layer_aliases` by default), beside the adapters: see
    :meth:`layer_names`. ``kind``: ``"classifier"`` (logits ``[N, classes]``),
    ``"segmentation"`` (logits ``[N, classes, H, W]``, see :mod:`camlens.models.segmentation`) or
    ``"detection"`` (detections ``[N, K, 6]``, see :mod:`camlens.models.detection`).
    """

    net: nn.Module
    preprocess: PreprocessConfig
    labels: tuple[str, ...]
    name: str
    adapter: AdapterRule = field(default=default_rule, repr=False, compare=False)
    spec: str | None = None
    weights: Path | None = None
    linear_heads: Callable[[nn.Module], list[LinearHead]] = field(
        default=torch_linear_heads, repr=False, compare=False
    )
    default_layer: str | None = None
    scores: Scores = "softmax"
    aliases: AliasRule = field(default=layer_aliases, repr=False, compare=False)
    kind: str = "classifier"

    def layer_names(self) -> dict[str, str]:
        """Other names of the network's layers -> their dotted names (``block5_conv3`` ->
        ``features.29`` in a VGG)."""
        return self.aliases(self.net)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        for b in self.net.buffers():
            return b.device
        return torch.device("cpu")

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """The predictions [N, outputs] the model's outputs [N, outputs] give, as it scores them:
        softmax probabilities, per-output sigmoid probabilities, or the raw values. A
        segmentation model's [N, classes, H, W] give its predicted segmentation: each class's
        share of the pixels (where it has the highest logit). A detector's detections
        [N, K, 6] give each class's best detection score (0 for a class not detected)."""
        outputs = outputs.float()
        if outputs.ndim == 3:
            best = torch.zeros(len(outputs), self.num_classes + 1, device=outputs.device)
            labels = outputs[:, :, 5].long().clamp(-1, self.num_classes - 1) % (
                self.num_classes + 1
            )
            best.scatter_reduce_(1, labels, outputs[:, :, 4], reduce="amax")
            return best[:, : self.num_classes]
        if outputs.ndim == 4:
            chosen = outputs.argmax(dim=1).flatten(1)  # [N, H * W]
            counts = torch.zeros(len(outputs), outputs.shape[1], device=outputs.device)
            counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=counts.dtype))
            return counts / chosen.shape[1]
        if self.scores == "softmax":
            return torch.softmax(outputs, dim=1)
        if self.scores == "sigmoid":
            return torch.sigmoid(outputs)
        if self.scores == "raw":
            return outputs
        raise TargetError(f"{self.name}: unknown scoring {self.scores!r}")

    def to(self, device: str | torch.device) -> Model:
        """Moves the network to ``device`` (in place) and returns ``self``."""
        self.net.to(device)
        return self

    def class_index(self, cls: int | str) -> int:
        """The index of a class given by index or by name, as people type it.

        A name matches, in this order, the first rule that finds anything:

        1. a whole label, exactly (``"tiger cat"``);
        2. a whole label, ignoring case, with underscores for spaces (``"Tiger_Cat"``);
        3. one synonym of a label, the same way: ImageNet's labels list several, separated by
           commas, so ``"cab"``, ``"taxi"`` and ``"Taxicab"`` all name 468, "cab, hack, taxi,
           taxicab";
        4. for an ImageNet-1k model, a WordNet id (``"n02930766"``, 468).

        A name that matches several classes under its rule is an error listing them with their
        indices (ImageNet's ``"crane"`` is the bird, 134, and the machine, 517), never the first.
        """
        n = self.num_classes
        if isinstance(cls, bool):
            raise ClassError(f"class {cls!r} is not a class index or name")
        if isinstance(cls, int):
            if not 0 <= cls < n:
                raise ClassError(
                    f"class index {cls} is out of range: {self.name} has {n} classes (0..{n - 1})"
                )
            return cls
        text = str(cls).strip()
        number = class_number(text)
        if number is not None:
            return self.class_index(number)
        found = label_matches(self.labels, text)
        if len(found) == 1:
            return found[0]
        if found:
            wnids = _wnids(self.labels)
            listed = ", ".join(
                f"{i} {self.labels[i]!r}" + (f" ({wnids[i]})" if wnids else "") for i in found
            )
            raise ClassError(
                f"class name {text!r} is ambiguous in {self.name}: it names {listed}; "
                "give the index" + (" or the WordNet id" if wnids else "")
            )
        close = suggest_labels(self.labels, text)
        hint = f"; did you mean one of: {', '.join(repr(c) for c in close)}" if close else ""
        raise ClassError(f"class name {text!r} is not one of {self.name}'s {n} class names{hint}")


def suggest_labels(labels: Sequence[str], text: str, n: int = 5) -> list[str]:
    """Up to ``n`` labels a name that matched none may have meant, best first: the labels that
    have the name's words as whole words (of the label or of a synonym: ``cat`` gives ``tiger
    cat`` and ``Egyptian cat``), then those with words starting so (``catcher``), then the
    closest by spelling (``espreso`` gives ``espresso``)."""
    key = _normal(text).split()
    if not key:
        return []
    found: list[str] = []
    for whole in (True, False):
        for label in labels:
            words = re.findall(r"\w+", _normal(label))
            if label not in found and all(
                (k in words) if whole else any(w.startswith(k) for w in words) for k in key
            ):
                found.append(label)
            if len(found) >= n:
                return found
    spelled = [
        label
        for label in difflib.get_close_matches(text, labels, n=n, cutoff=0.7)
        if label not in found
    ]
    return (found + spelled)[:n]


def _normal(name: str) -> str:
    """A name as compared: case folded, underscores as spaces, runs of spaces as one."""
    return " ".join(name.replace("_", " ").casefold().split())


@functools.lru_cache(maxsize=8)
def _label_keys(labels: tuple[str, ...]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(whole, synonym)``: the classes of each normalized whole label and of each synonym."""
    whole: dict[str, list[int]] = {}
    synonym: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        whole.setdefault(_normal(label), []).append(index)
        for part in dict.fromkeys(_normal(p) for p in label.split(",")):
            if part:
                synonym.setdefault(part, []).append(index)
    return whole, synonym


def _wnids(labels: tuple[str, ...]) -> tuple[str, ...] | None:
    """ImageNet's WordNet ids when ``labels`` are ImageNet-1k's, else None."""
    if len(labels) != 1000:
        return None
    from camlens.models.labels import imagenet_labels, imagenet_wnids

    return imagenet_wnids() if labels == imagenet_labels() else None


def label_matches(labels: tuple[str, ...], text: str) -> list[int]:
    """The classes ``text`` names under the first rule of :meth:`Model.class_index` that finds any."""
    exact = [i for i, label in enumerate(labels) if label == text]
    if exact:
        return exact
    whole, synonym = _label_keys(tuple(labels))
    key = _normal(text)
    if key in whole:
        return whole[key]
    if key in synonym:
        return synonym[key]
    if re.fullmatch(r"n\d{8}", key):
        wnids = _wnids(tuple(labels))
        if wnids is not None and key in wnids:
            return [wnids.index(key)]
    return []
