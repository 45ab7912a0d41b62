"""Weights files: reading a state dict safely, and filling a network from one with a single report
of what does not fit.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never with pickle. Every
loader of camlens (``timm:`` and ``torchvision:`` specs, the synthetic CNN, a built model's network,
a backbone, a ``.camlens`` checkpoint) fills its network through :func:`load_state`, so a file that
does not fit is always reported the same way::

    w.pth: does not fit torchvision:resnet18: 2 missing (e.g. fc.weight), 30 unexpected
    (e.g. layer1.2.conv1.weight), 1 of another shape (e.g. conv1.weight (64, 1, 7, 7) instead of
    (64, 3, 7, 7))
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError

#: What is said of a weights file that is not a state dict, or not one that can be read without
#: running code in it (a pickle of other objects): camlens never offers to read it unsafely.
NOT_SAFE = "not a state dict camlens can load safely"

#: Keys under which training scripts often nest the state dict in a saved dictionary.
NESTED_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a safetensors file, or a ``torch.save`` file read with
    ``weights_only=True`` (a dictionary of tensors, possibly under ``state_dict``, ``model`` or
    ``model_state_dict``; a ``module.`` prefix that ``DataParallel`` adds to every key is removed).
    A :class:`ModelError` naming the file when it is missing, unreadable or not a state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read weights ({exc.strerror or exc})") from None
    except Exception as exc:  # any reader failure is a bad file, said in one line
        raise ModelError(f"{path}: {NOT_SAFE} ({_what_failed(path, exc)})") from None
    for key in NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path}: {NOT_SAFE} (it holds no mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _what_failed(path: Path, exc: Exception) -> str:
    """What ``path`` seemed to be, in camlens's words: never the reader's own text, which for a
    pickle suggests reading it with ``weights_only=False`` (running any code in it)."""
    if path.suffix == ".safetensors":
        return "a truncated or corrupt safetensors file"
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        start = b""
    if not start:
        return "the file is empty"
    if start.startswith(b"PK"):  # torch.save's zip archive
        if isinstance(exc, pickle.UnpicklingError):
            return "a torch.save file of objects other than tensors, which could run code if read"
        return "a truncated or corrupt torch.save file"
    if start.startswith(b"\x80"):  # a plain pickle
        return "a pickle, not a torch.save file of tensors; reading it could run code"
    return "neither a torch.save file of tensors nor a safetensors file"


def classifier_size(state: Mapping[str, torch.Tensor]) -> int:
    """The number of classes: rows of the last 2-D weight (the classifier) in the state dict."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not matrices:
        raise ModelError("the weights have no 2-D classifier weight: is this a classifier?")
    return int(matrices[-1].shape[0])


def mismatches(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Matches the tensors of a file (``given``) to a module's state dict (``expected``).

    A key of the file is ``prefix + key`` of the module (a key without the prefix is taken as it
    is); keys starting with one of ``ignore`` are skipped (a classifier's head, say). Returns the
    module's state dict as far as the file fills it, and the problems, each "N missing (e.g. K)",
    "N unexpected (e.g. K)" or "N of another shape (e.g. K (shape) instead of (shape))", keys
    named as in the file; no problems means the file fills the module exactly."""
    picked: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in given.items():
        if ignore and key.startswith(tuple(ignore)):
            continue
        short = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if short in expected:
            picked[short] = tensor
        else:
            unexpected.append(key)
    missing = [k for k in expected if k not in picked]
    wrong = [
        f"{prefix}{k} {tuple(v.shape)} instead of {tuple(expected[k].shape)}"
        for k, v in picked.items()
        if v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
    return picked, problems


def load_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    failure: str,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
) -> None:
    """Fills ``module`` from ``state`` (see :func:`mismatches` for ``prefix`` and ``ignore``), or
    raises a :class:`ModelError` ``"{failure}: N missing (e.g. ...), ..."`` naming every kind of
    mismatch, before any weight is changed."""
    picked, problems = mismatches(module.state_dict(), state, prefix=prefix, ignore=ignore)
    if problems:
        raise ModelError(f"{failure}: " + ", ".join(problems))
    module.load_state_dict(picked, strict=True)


__all__ = ["classifier_size", "load_state", "mismatches", "read_state_dict"]
