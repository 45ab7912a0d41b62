"""Keras 3 models: ``.keras`` files and legacy ``.h5`` files, run on Keras's torch backend.

``camlens.load_model("model.keras")`` loads the file with ``keras.saving.load_model`` in safe mode
(a file that needs arbitrary Python code to load, such as a ``Lambda`` layer's function, is
refused), on the torch backend: ``KERAS_BACKEND=torch`` is set before Keras is imported, and a
Keras already imported with another backend is an error. The model becomes a :class:`KerasNet`,
a torch module whose children are the Keras layers under their Keras names (``block5_conv3``; a
nested model's layers as ``vgg16/block5_conv3``; a ``.`` in a name, which torch does not allow
there, becomes ``_``). It takes the ``[N, 3, H, W]`` batches every camlens model takes and hands
them to Keras channels-last. A final softmax is left out, so the model gives logits, as the
gradient methods need.

Layers output channels-last ``[N, H, W, C]`` maps, turned into ``[N, C, H, W]`` by the
:class:`~camlens.adapters.ChannelsLast` adapter (:func:`keras_rule`); pooling, dropout and
flattening layers are not candidate target layers, so the automatic layer follows the rule it
follows for torch models: the last layer with a spatial map (``block5_conv3`` in VGG16). ``Dense``
layers are the candidate CAM heads (:func:`keras_linear_heads`): a GAP -> Dense classifier
explains with CAM.

**Preprocessing** follows one of the modes of ``keras.applications`` (:data:`PREPROCESS_MODES`):
``caffe`` (RGB -> BGR, ImageNet mean subtracted on 0..255: VGG, ResNet), ``tf`` (``x / 127.5 - 1``:
MobileNet, Inception, Xception), ``torch`` (ImageNet mean and std on [0, 1]: DenseNet), or ``raw``
(0..255 as is, for models with their own rescaling: EfficientNet, ConvNeXt). It is taken, first
found first, from ``preprocess=`` (a mode or a :class:`~camlens.images.PreprocessConfig`), from a
JSON file beside the model named as the model plus ``.json`` (``model.keras.json``; see
:func:`read_sidecar`), or else guessed from the model's name, with a warning.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from camlens.adapters import CHANNELS_LAST, CONV, LayerAdapter
from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.labels import default_labels
from camlens.models.model import LinearHead, Model
from camlens.targets import check_scores

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
"""The file suffixes :func:`camlens.load_model` reads as Keras models (lower case)."""

__all__ = [
    "KERAS_SUFFIXES",
    "PREPROCESS_MODES",
    "KerasNet",
    "from_keras",
    "keras_linear_heads",
    "keras_rule",
    "load_keras",
    "preprocess_mode",
    "read_sidecar",
]

EXTRA = "pip install 'camlens[keras]'"

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, on 0..255

PREPROCESS_MODES: dict[str, tuple[tuple[float, ...], tuple[float, ...], str]] = {
    "caffe": (tuple(m / 255 for m in _CAFFE_MEAN_BGR), (1 / 255,) * 3, "BGR"),
    "tf": ((0.5,) * 3, (0.5,) * 3, "RGB"),
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB"),
    "raw": ((0.0,) * 3, (1 / 255,) * 3, "RGB"),
}
"""The preprocessing modes of ``keras.applications`` as (mean, std, channel order) on pixels in
[0, 1]: ``(x / 255 - mean) / std`` is ``caffe``'s ``x[..., ::-1] - mean_bgr``, ``tf``'s
``x / 127.5 - 1``, ``torch``'s ``(x / 255 - mean) / std``, and ``raw``'s ``x`` (0..255)."""

# keras.applications model names (lower case, by prefix, first match wins) -> their mode.
_APPLICATION_MODES = (
    ("vgg", "caffe"),
    ("resnet-rs", "raw"),
    ("resnet50v2", "tf"),
    ("resnet101v2", "tf"),
    ("resnet152v2", "tf"),
    ("resnet", "caffe"),
    ("inception", "tf"),
    ("xception", "tf"),
    ("mobilenetv3", "raw"),
    ("mobilenet", "tf"),
    ("nasnet", "tf"),
    ("densenet", "torch"),
    ("efficientnet", "raw"),
    ("convnext", "raw"),
    ("regnet", "raw"),
)

_SIDECAR_KEYS = {
    "mode",
    "input_size",
    "interpolation",
    "mean",
    "std",
    "channel_order",
    "labels",
    "scores",
}


def preprocess_mode(
    mode: str, input_size: tuple[int, int] = (224, 224), interpolation: str = "bilinear"
) -> PreprocessConfig:
    """The :class:`~camlens.images.PreprocessConfig` of a ``keras.applications`` preprocessing
    mode: ``caffe``, ``tf``, ``torch`` or ``raw`` (see :data:`PREPROCESS_MODES`)."""
    try:
        mean, std, order = PREPROCESS_MODES[mode]
    except KeyError:
        raise ModelError(
            f"unknown preprocessing mode {mode!r}: use one of {', '.join(PREPROCESS_MODES)}"
        ) from None
    return PreprocessConfig(
        input_size=input_size,
        interpolation=interpolation,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        channel_order=order,
    )


def import_keras() -> ModuleType:
    """Keras 3 on the torch backend: ``KERAS_BACKEND=torch`` is set before the first import;
    a Keras already imported with another backend, or none installed, is a ModelError."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        raise ModelError(f"Keras models need Keras 3: {EXTRA}") from None
    version = str(getattr(keras, "__version__", "0"))
    if not version[:1].isdigit() or int(version.split(".")[0]) < 3:
        raise ModelError(f"Keras models need Keras 3, not Keras {version}: {EXTRA}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelError(
            f"keras was imported with the {backend!r} backend before camlens loaded a Keras model; "
            "camlens runs Keras models on the torch backend: set KERAS_BACKEND=torch before "
            "keras is imported"
        )
    module: ModuleType = keras
    return module


class KerasNet(nn.Module):
    """A Keras model as a torch module: ``[N, 3, H, W]`` in, logits ``[N, classes]`` out.

    The Keras layers are its children under their Keras names (a nested model's layers as
    ``outer/inner``), so torch forward hooks, ``get_submodule`` and ``camlens layers`` see them;
    the input goes to Keras in the model's own data format (channels-last by default). When the
    model ends in a softmax (a ``Dense`` layer with a softmax activation, or a softmax layer), the
    softmax is left out: the module gives the logits, so that gradients are those of the class
    scores, not of the probabilities. A final sigmoid (a multi-label or binary head) is left out
    the same way, and ``scores`` is then ``"sigmoid"`` (else ``"softmax"``). ``keras_model`` is
    the model itself, left as it was loaded.
    """

    keras_model: Any  # plain attributes, not children: their layers are the children
    keras_body: Any  # the model up to its logits

    def __init__(self, model: Any) -> None:
        super().__init__()
        keras = import_keras()
        try:
            inputs, outputs = list(model.inputs), list(model.outputs)
        except (AttributeError, ValueError, TypeError):
            raise ModelError(
                f"the Keras model {model.name!r} has no inputs and outputs known to Keras (not "
                "built, or subclassed): camlens takes built functional and Sequential models"
            ) from None
        if len(outputs) != 1 or len(inputs) != 1:
            raise ModelError(
                f"the Keras model has {len(model.inputs)} inputs and {len(model.outputs)} "
                "outputs; camlens explains classifiers with one image input and one output"
            )
        object.__setattr__(self, "keras_model", model)
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4:
            raise ModelError(f"the Keras model takes {shape}, not images [N, H, W, 3]")
        self.channels_first = shape[1] == 3 and shape[3] != 3
        self.input_size: tuple[int, int] | None = None
        spatial = shape[2:4] if self.channels_first else shape[1:3]
        if all(isinstance(n, int) for n in spatial):
            self.input_size = (int(spatial[0]), int(spatial[1]))
        self.names: dict[str, Any] = {}
        for name, layer in _named_layers(keras, model):
            self.add_module(name, layer)
            self.names.setdefault(name, layer)
        last = model.layers[-1]
        self.dense: Any = None  # the final Dense whose softmax is left out
        body = model
        activation = getattr(last, "activation", None)
        self.scores = "sigmoid" if _is_sigmoid(activation) else "softmax"
        if (_is_softmax(activation) or _is_sigmoid(activation)) and isinstance(
            last, keras.layers.Dense
        ):
            self.dense = last
            body = keras.Model(model.inputs, last.input)
        elif isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation)
            and (_is_softmax(last.activation) or _is_sigmoid(last.activation))
        ):
            body = keras.Model(model.inputs, last.input)
        object.__setattr__(self, "keras_body", body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):  # Keras layers cannot be traced symbolically
            raise TypeError("a Keras model cannot be traced with torch.fx")
        if not self.channels_first:
            x = x.permute(0, 2, 3, 1)
        out: torch.Tensor = self.keras_body(x)
        if self.dense is not None:
            out = _dense(self.dense, out)
        return out


def _dense(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """A Dense layer without its activation: ``x @ kernel + bias``."""
    out: torch.Tensor = x @ layer.kernel.value.to(x.dtype)
    if layer.bias is not None:
        out = out + layer.bias.value.to(x.dtype)
    return out


def _is_softmax(activation: Any) -> bool:
    return getattr(activation, "__name__", "") == "softmax"


def _is_sigmoid(activation: Any) -> bool:
    return getattr(activation, "__name__", "") == "sigmoid"


def _named_layers(keras: ModuleType, model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        name = prefix + layer.name.replace(".", "_")
        yield name, layer
        if isinstance(layer, keras.Model):
            yield from _named_layers(keras, layer, name + "/")


def keras_rule(name: str, module: nn.Module, output: object) -> LayerAdapter | None:
    """The adapter rule of a :class:`KerasNet`: a Keras layer's 4-D output is a channels-last map
    (or a conv map for a layer with ``data_format="channels_first"``); pooling, dropout,
    flattening and identity layers give no candidate map, nor does anything else."""
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        return None
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    layers = keras.layers
    skip = (
        layers.MaxPooling2D,
        layers.AveragePooling2D,
        layers.GlobalAveragePooling2D,
        layers.GlobalMaxPooling2D,
        layers.Dropout,
        layers.SpatialDropout2D,
        layers.Flatten,
        layers.Identity,
        layers.InputLayer,
    )
    if isinstance(module, skip):
        return None
    data_format = getattr(module, "data_format", None) or keras.config.image_data_format()
    return CONV if data_format == "channels_first" else CHANNELS_LAST


def keras_linear_heads(net: nn.Module) -> list[LinearHead]:
    """The candidate CAM heads of a :class:`KerasNet`: its ``Dense`` layers without an activation,
    and the final one whose softmax it leaves out, as ``weight = kernel.T`` [classes, K]."""
    if not isinstance(net, KerasNet):
        return []
    keras = import_keras()
    heads = []
    for name, layer in net.names.items():
        if not isinstance(layer, keras.layers.Dense) or len(layer.kernel.shape) != 2:
            continue
        if layer is not net.dense and getattr(layer.activation, "__name__", "") != "linear":
            continue
        bias = None if layer.bias is None else layer.bias.value.detach()
        heads.append(LinearHead(name, layer.kernel.value.detach().T, bias))
    return heads


def read_sidecar(path: Path) -> dict[str, Any]:
    """The settings in ``path`` (``model.keras.json``), checked. All keys are optional::

        {"mode": "caffe",                 # caffe, tf, torch or raw (PREPROCESS_MODES)
         "input_size": [224, 224],        # height, width (default: the model's input shape)
         "interpolation": "bilinear",     # PIL resampling name (default bilinear)
         "mean": [0.485, 0.456, 0.406],   # instead of a mode: on [0, 1], in channel order
         "std": [0.229, 0.224, 0.225],
         "channel_order": "RGB",          # or BGR
         "labels": "labels.txt",          # class names: a list, or a file beside the JSON
         "scores": "sigmoid"}             # softmax, sigmoid or raw (default: sigmoid after a
                                          # final sigmoid, else softmax)

    Unknown keys are an error, so that a misspelt one is not silently ignored.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object with keys {sorted(_SIDECAR_KEYS)}")
    unknown = sorted(set(data) - _SIDECAR_KEYS)
    if unknown:
        raise ModelError(f"{path}: unknown keys {unknown}; known: {sorted(_SIDECAR_KEYS)}")
    if "mode" in data and ("mean" in data or "std" in data):
        raise ModelError(f"{path}: give a mode or mean and std, not both")
    if ("mean" in data) != ("std" in data):
        raise ModelError(f"{path}: give both mean and std")
    return data


def _config_from(
    settings: dict[str, Any], input_size: tuple[int, int], where: Path
) -> PreprocessConfig:
    try:
        size = settings.get("input_size", input_size)
        height, width = (int(n) for n in size)
        interpolation = str(settings.get("interpolation", "bilinear"))
        if "mode" in settings:
            return preprocess_mode(str(settings["mode"]), (height, width), interpolation)
        mean = tuple(float(v) for v in settings.get("mean", PreprocessConfig.mean))
        std = tuple(float(v) for v in settings.get("std", PreprocessConfig.std))
        order = str(settings.get("channel_order", "RGB")).upper()
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: bad preprocessing settings ({exc})") from None
    if len(mean) != 3 or len(std) != 3 or order not in ("RGB", "BGR"):
        raise ModelError(f"{where}: mean and std need 3 values each, channel_order RGB or BGR")
    return PreprocessConfig(
        (height, width), interpolation, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), order
    )


def _readable_as_keras(path: Path) -> bool:
    """Whether ``path`` begins as a ``.keras`` (zip) or ``.h5`` (HDF5) file does."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x89HDF\r\n\x1a\n")


def _check_input_size(net: KerasNet, size: tuple[int, int], where: Path) -> None:
    """A :class:`~camlens.errors.ModelError` naming ``where`` when the model cannot run at
    ``size`` (height, width) as a JSON beside it asks: one pass of a blank input, as
    ``--input-size`` is checked, so that the first explanation does not fail in Keras."""
    height, width = size
    if min(height, width) < 1:
        raise ModelError(f"{where}: input_size must be positive, not {[height, width]}")
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, height, width))
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise ModelError(
            f"{where}: input_size {height}x{width}: the model cannot take it "
            f"({type(exc).__name__}: {text}); give the size it was built for"
        ) from None


def guess_mode(keras: ModuleType, model: Any) -> tuple[str, str]:
    """A preprocessing mode guessed from the model: (mode, why)."""
    names = [model.name] + [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    for name in names:
        for prefix, mode in _APPLICATION_MODES:
            if name.lower().startswith(prefix):
                return mode, f"the name {name!r} (keras.applications)"
    if any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers[:4]):
        return "raw", "its Rescaling layer at the input"
    return "raw", "nothing (0..255, as Keras's image loaders give)"


def load_keras(
    path: str | os.PathLike[str], *, preprocess: PreprocessConfig | str | None = None
) -> Model:
    """A :class:`~camlens.models.Model` of the Keras model in ``path`` (``.keras`` or ``.h5``),
    loaded in safe mode on the torch backend, with the settings of the JSON file beside it
    (:func:`read_sidecar`). Use :func:`camlens.load_model`, which calls this for those files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such Keras model file")
    keras = import_keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras's notes on optimizers and compiled metrics
            loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # every reader failure is a bad file, said in one line
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "arbitrary code" in text:
            what = "a Lambda layer's Python function" if "Lambda" in text else "Python code"
            raise ModelError(
                f"{path}: refused: loading it would run {what} stored in the file, and camlens "
                "loads Keras files in safe mode only"
            ) from None
        if "File not found" in text or not _readable_as_keras(path):  # the file is there
            raise ModelError(
                f"{path}: cannot load the Keras model: not a file Keras can read (a .keras "
                "file is a zip archive, a .h5 an HDF5 file): damaged, or another kind of file"
            ) from None
        raise ModelError(
            f"{path}: cannot load the Keras model ({type(exc).__name__}: {text[:300]})"
        ) from None
    sidecar = path.with_name(path.name + ".json")
    settings = read_sidecar(sidecar) if sidecar.is_file() else {}
    model = from_keras(
        loaded, preprocess=preprocess, name=str(path), settings=settings, sidecar=sidecar
    )
    model.spec = str(path)  # load_model(model.spec) loads it back (the JSON beside it included)
    return model


def from_keras(
    model: Any,
    *,
    preprocess: PreprocessConfig | str | None = None,
    name: str | None = None,
    settings: dict[str, Any] | None = None,
    sidecar: Path | None = None,
) -> Model:
    """A :class:`~camlens.models.Model` of a Keras model object (``camlens.load_model(model)``
    calls this): a :class:`KerasNet` with the channels-last adapter rule and ``Dense`` heads.
    ``settings`` are those of :func:`read_sidecar` (read from ``sidecar``)."""
    keras = import_keras()
    net = KerasNet(model)
    settings = settings or {}
    name = name or str(model.name)
    where = sidecar or Path(name)
    try:
        height, width = (int(n) for n in settings.get("input_size", net.input_size or (224, 224)))
    except (TypeError, ValueError):
        raise ModelError(f"{where}: input_size must be [height, width]") from None
    if isinstance(preprocess, PreprocessConfig):
        config = preprocess
    elif isinstance(preprocess, str):
        interpolation = str(settings.get("interpolation", "bilinear"))
        config = preprocess_mode(preprocess, (height, width), interpolation)
    elif settings.keys() & {"mode", "mean"}:
        config = _config_from(settings, (height, width), where)
    else:
        mode, why = guess_mode(keras, model)
        config = _config_from({**settings, "mode": mode}, (height, width), where)
        size = "" if net.input_size or "input_size" in settings else ", 224x224"
        there = sidecar is not None and sidecar.is_file()
        missing = f"no {sidecar.name} beside it, " if sidecar and not there else ""
        if sidecar is None:
            hint = "pass preprocess= with the"
        else:
            hint = f"add to {sidecar.name} its" if there else f"write {sidecar.name} with its"
        warnings.warn(
            f"{name}: no preprocessing given ({missing}no preprocess=): guessed {mode!r}{size} "
            f'from {why}; {hint} "mode" if the model was trained otherwise',
            stacklevel=3,
        )
    if "input_size" in settings and (height, width) != net.input_size:
        _check_input_size(net, (height, width), where)
    outputs = int(model.outputs[0].shape[-1])
    names = settings.get("labels")
    if isinstance(names, str):
        file = where.parent / names
        try:
            names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ModelError(f"{file}: cannot read labels ({exc.strerror})") from None
    if names is not None and not isinstance(names, list):
        raise ModelError(f"{where}: labels must be a list of names or a file name")
    classes = tuple(str(n) for n in names) if names is not None else default_labels(outputs)
    if len(classes) != outputs:
        raise ModelError(f"{where}: {len(classes)} labels given, the model has {outputs} outputs")
    scores = check_scores(settings.get("scores", net.scores))
    return Model(
        net,
        config,
        classes,
        name,
        adapter=keras_rule,
        linear_heads=keras_linear_heads,
        scores=scores,
    )
