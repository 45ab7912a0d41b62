"""`Model`: a network together with what it takes to use it (preprocessing, labels, a name)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from camlens.adapters import AdapterRule, default_rule
from camlens.errors import ClassError
from camlens.images import PreprocessConfig


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

    ``labels[i]`` names class ``i``; ``preprocess`` says how photos become inputs; ``name`` is the spec
    it was loaded from (written into reports). ``adapter`` chooses how each layer's output becomes
    ``[N, K, h, w]`` maps (see :mod:`camlens.adapters`; convolutional layers by default).
    ``linear_heads`` lists the linear layers a GAP -> Linear CAM head may end in (the
    ``nn.Linear`` modules by default; a Keras model's ``Dense`` layers). ``default_layer``, when a
    model family sets it, is the automatic target layer (a ViT's ``blocks.11.norm1``); otherwise
    the last spatial layer is.
    """

    net: nn.Module
    preprocess: PreprocessConfig
    labels: tuple[str, ...]
    name: str
    adapter: AdapterRule = field(default=default_rule, repr=False, compare=False)
    linear_heads: Callable[[nn.Module], list[LinearHead]] = field(
        default=torch_linear_heads, repr=False, compare=False
    )
    default_layer: str | None = None

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

    def to(self, device: str | torch.device) -> Model:
        """Moves the network to ``device`` (in place) and returns ``self``."""
        self.net.to(device)
        return self

    def class_index(self, cls: int | str) -> int:
        """The index of a class given by index or by name (exact, then case-insensitive match)."""
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
        if text.lstrip("-").isdigit():
            return self.class_index(int(text))
        if text in self.labels:
            return self.labels.index(text)
        folded = [label.casefold() for label in self.labels]
        if text.casefold() in folded:
            return folded.index(text.casefold())
        close = [label for label in self.labels if text.casefold() in label.casefold()][:5]
        close = close or difflib.get_close_matches(text, self.labels, n=5, cutoff=0.7)
        hint = f"; did you mean one of: {', '.join(repr(c) for c in close)}" if close else ""
        raise ClassError(f"class name {text!r} is not one of {self.name}'s {n} class names{hint}")
