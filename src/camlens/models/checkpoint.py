"""The ``.camlens`` checkpoint: one safetensors file whose header carries the model's description.

Format (version 1): a standard `safetensors <https://github.com/huggingface/safetensors>`_ file.
Its tensors are the whole network's state dict (backbone and head, float32 as trained, buffers
included), so a checkpoint never depends on the weights file its backbone came from. Its
``__metadata__`` holds one entry, ``"camlens"``, a JSON object::

    {"format": "camlens", "version": 1, "camlens_version": "0.1.0",
     "model": {"backbone": "efficientnet_lite0", "num_classes": 2, "channels": 1280, "dropout": 0.2},
     "class_names": ["cat", "coffee"],
     "preprocess": {"input_size": [224, 224], "interpolation": "bicubic",
                    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
     "training": {...},          # what camlens.train recorded: epochs, accuracy, confusion matrix
     "scores": "softmax"}        # how the outputs become predictions: softmax, sigmoid or raw
                                 # (absent in older files: softmax)

Why this and not a zip of ``header.json`` + ``weights.safetensors``: a single file that any
safetensors reader opens (``safe_open(path, "pt").metadata()`` shows the header), no pickle
anywhere, and safetensors itself checks that the header and the data cover the file exactly, so a
truncated copy is refused before any weight is used. Files are written to a temporary name and
renamed, so an interrupted save never leaves half a checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from camlens.errors import CamlensError, ModelError
from camlens.files import atomic_path, output_file
from camlens.images import PreprocessConfig, check_preprocess
from camlens.models.head import CamConfig, CamNet, config_from_json, header_json, skeleton
from camlens.models.model import Model
from camlens.models.weights import load_state
from camlens.targets import Scores, TargetError, check_scores
from camlens.version import __version__

CHECKPOINT_SUFFIX = ".camlens"
FORMAT = "camlens"
VERSION = 1
METADATA_KEY = "camlens"


@dataclass(frozen=True)
class Header:
    """The JSON header of a ``.camlens`` file."""

    config: CamConfig
    class_names: tuple[str, ...]
    preprocess: PreprocessConfig
    training: dict[str, Any]
    camlens_version: str
    scores: Scores = "softmax"

    def to_json(self) -> dict[str, Any]:
        p = self.preprocess
        return {
            "format": FORMAT,
            "version": VERSION,
            "camlens_version": self.camlens_version,
            "model": header_json(self.config),
            "class_names": list(self.class_names),
            "preprocess": {
                "input_size": list(p.input_size),
                "interpolation": p.interpolation,
                "mean": list(p.mean),
                "std": list(p.std),
            },
            "training": self.training,
            "scores": self.scores,
        }


def save(
    model: Model, path: str | os.PathLike[str], *, training: dict[str, Any] | None = None
) -> Path:
    """Writes ``model`` (from :func:`camlens.build_cam_model`) to ``path``, a ``.camlens`` file
    (the suffix is added when missing), and returns the path written.

    ``training``: a summary to store; by default what :func:`camlens.train` left on the model.
    ``camlens.load_model(path)`` gives back the same predictions and maps, bit for bit, so the
    path becomes the model's ``spec`` (and its ``weights`` ``None``).
    """
    net = model.net
    if not isinstance(net, CamNet):
        raise ModelError(
            f"save writes models made by camlens.build_cam_model; {model.name} is a "
            f"{type(net).__name__} (save its state dict with torch or safetensors instead)"
        )
    if len(model.labels) != net.config.num_classes:
        raise ModelError(
            f"{model.name}: {len(model.labels)} labels for {net.config.num_classes} outputs"
        )
    target = checkpoint_path(path)
    header = Header(
        net.config,
        tuple(model.labels),
        model.preprocess,
        dict(net.training_summary if training is None else training),
        __version__,
        model.scores,
    )
    metadata = {METADATA_KEY: json.dumps(header.to_json(), sort_keys=True)}
    # clones: safetensors refuses tensors that share memory, and wants them contiguous on the CPU
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    _write_atomically(state, metadata, target)
    model.spec, model.weights = str(target), None
    return target


def checkpoint_path(path: str | os.PathLike[str], what: str = "checkpoint") -> Path:
    """``path`` as :func:`save` writes it (``.camlens`` added when missing), once checked that a
    file can be written there: a :class:`~camlens.errors.CamlensError` naming ``what`` and the
    path when it is a folder or its folder cannot be created or written (so that ``camlens
    train --out`` is checked before any training)."""
    target = Path(path)
    if target.is_dir():  # not FOLDER.camlens beside it, unsaid
        raise CamlensError(
            f"{what} {target} is a folder: give the checkpoint's file name "
            f"({target / ('model' + CHECKPOINT_SUFFIX)}, say)"
        )
    if target.suffix != CHECKPOINT_SUFFIX:
        target = target.with_name(target.name + CHECKPOINT_SUFFIX)
    return output_file(target, what)


def _write_atomically(
    state: dict[str, torch.Tensor], metadata: dict[str, str], target: Path
) -> None:
    from safetensors.torch import save_file

    with atomic_path(target) as temp:  # errors name the target, never the temporary file
        try:
            save_file(state, str(temp), metadata=metadata)
        except OSError as exc:
            raise ModelError(f"cannot write {target} ({exc.strerror or exc})") from None


def read_header(path: str | os.PathLike[str]) -> Header:
    """The header of a ``.camlens`` file, read without its weights."""
    return _read(Path(path), weights=False)[0]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[Header, dict[str, torch.Tensor]]:
    """The header and the state dict of a ``.camlens`` file; a :class:`ModelError` naming the file
    when it is missing, truncated, corrupt, not a camlens checkpoint or from a newer version."""
    header, state = _read(Path(path), weights=True)
    assert state is not None
    return header, state


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """The :class:`Model` saved in ``path`` (in eval mode), named after the path, which is also
    its spec."""
    path = Path(path)
    header, state = read_checkpoint(path)
    try:
        net, _ = skeleton(header.config)
    except CamlensError as exc:  # a backbone this camlens cannot build: say which file names it
        raise ModelError(f"{path}: {exc}") from None
    load_state(
        net,
        state,
        f"{path}: its weights do not fit the backbone its header names ({header.config.backbone})",
    )
    net.training_summary = dict(header.training)
    net.eval()
    return Model(
        net, header.preprocess, header.class_names, str(path), spec=str(path), scores=header.scores
    ).to(device)


def _read(path: Path, *, weights: bool) -> tuple[Header, dict[str, torch.Tensor] | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ModelError(f"{path}: {problem}, not a camlens checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            metadata = f.metadata() or {}
        state = load_file(str(path)) if weights else None
    except Exception as exc:  # safetensors checks the header and that the data cover the file
        raise ModelError(
            f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelError(
            f"{path}: a safetensors file without a camlens header; if it holds a plain state dict, "
            "load it with load_model('timm:NAME' or 'torchvision:NAME', weights=...)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: the camlens header is not valid JSON ({exc})") from None
    return _parse_header(data, str(path)), state


def _parse_header(data: Any, where: str) -> Header:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{where}: not a camlens checkpoint (its header has no format 'camlens')")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ModelError(
            f"{where}: checkpoint format version {version!r}; this camlens reads up to {VERSION}"
        )
    config = config_from_json(data.get("model"), where)
    try:
        names = tuple(str(n) for n in data["class_names"])
        p = data["preprocess"]
        height, width = (int(n) for n in p["input_size"])
        preprocess = PreprocessConfig(
            input_size=(height, width),
            interpolation=str(p["interpolation"]),
            mean=_triple(p["mean"]),
            std=_triple(p["std"]),
        )
        training = dict(data.get("training") or {})
        scores = check_scores(data.get("scores", "softmax"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: the camlens header is incomplete ({exc!r})") from None
    except TargetError as exc:
        raise ModelError(f"{where}: the camlens header's {exc}") from None
    try:
        check_preprocess(preprocess)
    except CamlensError as exc:
        raise ModelError(f"{where}: the header's preprocessing is unusable: {exc}") from None
    if len(names) != config.num_classes:
        raise ModelError(
            f"{where}: the header names {len(names)} classes for {config.num_classes} outputs"
        )
    return Header(
        config, names, preprocess, training, str(data.get("camlens_version", "?")), scores
    )


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
