"""Keras 3 models on the torch backend, checked across frameworks.

The oracle: ``keras.applications.VGG16(weights=None)`` with seeded weights, copied into
torchvision's ``vgg16`` (conv kernels [kh, kw, in, out] -> [out, in, kh, kw], dense kernels
transposed, and the rows of the first dense layer reordered from Keras's channels-last flattening
(h, w, c) to torch's (c, h, w)). Both get the same input tensor; the torchvision side's Grad-CAM
is computed here by hand (activations of ``features.29``, the ReLU after the last conv, and the
gradient of the class logit from torch autograd). The preprocessing modes are checked on their own
against ``keras.applications.imagenet_utils.preprocess_input``.
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.errors import ModelError
from camlens.images import PreprocessConfig, denormalize, load_image, preprocess
from camlens.layers import auto_layer, spatial_layers
from camlens.methods import METHODS
from camlens.models.keras import KerasNet, import_keras, preprocess_mode

try:
    keras = import_keras()  # on the torch backend: sets KERAS_BACKEND before the import
except ModelError as exc:
    pytest.skip(str(exc), allow_module_level=True)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no preprocessing given.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # Keras's
]

LAYER, TORCH_LAYER = "block5_conv3", 29  # features.29: the ReLU after the last conv


@pytest.fixture(scope="module")
def keras_vgg16() -> Any:
    keras.utils.set_random_seed(0)
    return keras.applications.VGG16(weights=None)


@pytest.fixture(scope="module")
def torch_vgg16(keras_vgg16: Any) -> torch.nn.Module:
    """torchvision's VGG16 with the Keras model's weights."""
    with torch.device("meta"):  # no random init: every weight is copied below
        net = torchvision.models.vgg16(weights=None)
    net = net.to_empty(device="cpu").eval()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    kconvs = [layer for layer in keras_vgg16.layers if isinstance(layer, keras.layers.Conv2D)]
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    dense = [keras_vgg16.get_layer(n) for n in ("fc1", "fc2", "predictions")]
    with torch.no_grad():
        for conv, k in zip(convs, kconvs, strict=True):
            conv.weight.copy_(k.kernel.value.permute(3, 2, 0, 1))
            conv.bias.copy_(k.bias.value)
        for i, (linear, k) in enumerate(zip(linears, dense, strict=True)):
            kernel = k.kernel.value  # [in, out]
            if i == 0:  # rows in (h, w, c) order -> (c, h, w)
                kernel = kernel.reshape(7, 7, 512, -1).permute(2, 0, 1, 3).reshape(25088, -1)
            linear.weight.copy_(kernel.T)
            linear.bias.copy_(k.bias.value)
    return net


@pytest.fixture(scope="module")
def x(chelsea: np.ndarray) -> torch.Tensor:
    return preprocess([load_image(chelsea)], preprocess_mode("caffe"))


def torch_gradcam(net: torch.nn.Module, x: torch.Tensor, cls: int) -> np.ndarray:
    """Grad-CAM of torchvision's VGG16 at features.29, by hand: ReLU(sum_k mean(dY/dA_k) A_k),
    min-max normalized."""
    with torch.no_grad():
        a = net.features[: TORCH_LAYER + 1](x)
    a.requires_grad_(True)
    logits = net.classifier(torch.flatten(net.avgpool(net.features[TORCH_LAYER + 1 :](a)), 1))
    (g,) = torch.autograd.grad(logits[0, cls], a)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)[0].detach().clamp(min=0).double()
    return ((cam - cam.min()) / (cam.max() - cam.min())).numpy()


def check_against_torch(
    model: camlens.Model, torch_vgg16: torch.nn.Module, x: torch.Tensor
) -> None:
    """Same top-5 as torchvision, and Grad-CAM at block5_conv3 equal to features.29's."""
    with torch.no_grad():
        expected = torch_vgg16(x)
    top5 = expected[0].topk(5).indices.tolist()
    with camlens.Explainer(model, "gradcam", LAYER) as explainer:
        result = explainer.explain(x[0], classes=top5[:2])
    assert [p.class_index for p in result.predictions] == top5
    probs = torch.softmax(expected[0], 0)[top5]
    assert np.allclose([p.score for p in result.predictions], probs.numpy(), rtol=1e-4)
    for m, cls in zip(result.maps, top5[:2], strict=True):
        assert m.layer == LAYER and m.map.shape == (14, 14) and not m.flat
        assert np.abs(m.map.double().numpy() - torch_gradcam(torch_vgg16, x, cls)).max() < 1e-4


def test_vgg16_equals_torchvision(
    keras_vgg16: Any, torch_vgg16: torch.nn.Module, x: torch.Tensor
) -> None:
    model = camlens.load_model(keras_vgg16, preprocess="caffe")
    with torch.no_grad():  # the softmax is left out: logits, as torchvision's
        assert torch.allclose(model.net(x), torch_vgg16(x), rtol=1e-4, atol=1e-4)
    check_against_torch(model, torch_vgg16, x)


@pytest.fixture(scope="module")
def vgg16_files(
    keras_vgg16: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("keras")
    files = {suffix: folder / f"vgg16.{suffix}" for suffix in ("keras", "h5")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: the legacy .h5 format
        for path in files.values():
            keras_vgg16.save(path)
    yield files
    for path in files.values():  # 550 MB each: not left for pytest's kept temporary folders
        path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_vgg16_file_round_trip(
    vgg16_files: dict[str, Path], torch_vgg16: torch.nn.Module, x: torch.Tensor, suffix: str
) -> None:
    with pytest.warns(UserWarning, match="guessed 'caffe' from the name 'vgg16'"):
        model = camlens.load_model(vgg16_files[suffix])
    assert model.preprocess == preprocess_mode("caffe")
    assert model.labels[468] == "cab, hack, taxi, taxicab"  # 1000 outputs: ImageNet's names
    check_against_torch(model, torch_vgg16, x)
    infos = spatial_layers(model)
    assert auto_layer(model, infos) == LAYER  # block5_pool is pooling: not a candidate
    last = infos[-1]
    assert (last.name, last.kind, last.shape, last.adapter) == (
        LAYER,
        "Conv2D",
        (512, 14, 14),
        "channels-last",
    )


@pytest.mark.slow
def test_command_line(vgg16_files: dict[str, Path], tmp_path: Path, chelsea: np.ndarray) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(chelsea).save(photo)
    (tmp_path / "vgg16.keras").symlink_to(vgg16_files["keras"])
    (tmp_path / "vgg16.keras.json").write_text(json.dumps({"mode": "caffe"}))
    runner = CliRunner()
    args = ["explain", str(photo), "--model", str(tmp_path / "vgg16.keras")]
    args += ["--layer", LAYER, "--class", "468", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(
        (tmp_path / "out" / photo.relative_to("/").with_suffix(".json")).read_text()
    )
    (explanation,) = report["explanations"]
    assert (explanation["class_index"], explanation["label"], explanation["layer"]) == (
        468,
        "cab, hack, taxi, taxicab",
        LAYER,
    )
    saved = np.load(tmp_path / "out" / photo.relative_to("/").parent / explanation["map"])
    assert saved.shape == chelsea.shape[:2] and saved.max() == pytest.approx(1.0)


def test_cam_on_a_gap_dense_head(chelsea: np.ndarray) -> None:
    """A VGG16 base (nested, as keras.applications builds them) -> GAP -> Dense(2, softmax):
    CAM at the automatic layer (the base's output) is the Dense layer's W[c] . A."""
    keras.utils.set_random_seed(1)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(128, 128, 3))
    model = keras.Sequential(
        [
            keras.Input((128, 128, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax", name="cats"),
        ]
    )
    # mostly positive weights on the (non-negative) pooled features: no map is all negative
    kernel = np.random.default_rng(0).uniform(-0.5, 1.0, (512, 2)).astype(np.float32)
    model.get_layer("cats").kernel.assign(kernel)
    loaded = camlens.load_model(model, preprocess="caffe")
    assert auto_layer(loaded) == "vgg16"  # the nested model: a container that ends in pooling
    assert "vgg16/block5_conv3" in dict(loaded.net.named_modules())
    x = preprocess([load_image(chelsea)], loaded.preprocess)
    with camlens.Explainer(loaded, ["cam", "gradcam"]) as explainer:
        maps = explainer.explain(x[0], classes=[0, 1]).maps
    assert explainer.heads["vgg16"] is not None and explainer.heads["vgg16"].name == "cats"
    with torch.no_grad():
        a = base(x.permute(0, 2, 3, 1))[0]  # [4, 4, 512], channels-last
        probs = model(x.permute(0, 2, 3, 1))[0]
    for m in maps:
        cam = (a @ torch.from_numpy(kernel[:, m.class_index])).clamp(min=0).double()
        expected = (cam - cam.min()) / (cam.max() - cam.min())
        assert m.map.shape == (4, 4) and not m.flat
        assert np.abs(m.map.double().numpy() - expected.numpy()).max() < 1e-5
        assert m.score == pytest.approx(float(probs[m.class_index]), rel=1e-5)


def tiny_keras(flatten: bool = False) -> Any:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((24, 24, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv2")(h)
    if flatten:  # no GAP -> Dense head: nothing to shortcut the replay with
        h = keras.layers.Flatten()(keras.layers.MaxPooling2D(name="pool")(h))
    else:
        h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def test_ablationcam_through_channels_last(chelsea: np.ndarray) -> None:
    """Ablation-CAM on a Keras layer (the whole model replayed, Keras cannot be traced), against
    ablating each channel of the layer's channels-last output by hand."""
    km = tiny_keras(flatten=True)
    model = camlens.load_model(km, preprocess="tf")
    x = preprocess([load_image(chelsea)], model.preprocess)
    layer = km.get_layer("conv2")
    cls = 1
    with torch.no_grad():
        base = float(km(x.permute(0, 2, 3, 1))[0, cls])
        a = keras.Model(km.inputs, layer.output)(x.permute(0, 2, 3, 1))[0]  # [20, 20, 6]
        weights = []
        for k in range(6):

            def ablate(m: Any, i: Any, o: torch.Tensor, k: int = k) -> torch.Tensor:
                o = o.clone()
                o[..., k] = 0
                return o

            handle = layer.register_forward_hook(ablate)
            weights.append((base - float(km(x.permute(0, 2, 3, 1))[0, cls])) / base)
            handle.remove()
    expected = (a @ torch.tensor(weights)).clamp(min=0)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    with camlens.Explainer(model, "ablationcam", "conv2") as explainer:
        result = explainer.explain(x[0], classes=cls)
    assert float((result.maps[0].map - expected).abs().max()) < 1e-5


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cam"])
def test_every_method_gives_a_map(method: str) -> None:
    model = camlens.load_model(tiny_keras(), preprocess="raw")
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    chosen = METHODS[method].with_options(**{"samples": 2} if method in ("sscam", "iscam") else {})
    with camlens.Explainer(model, chosen) as explainer:
        for result in explainer.explain(x, classes=[0, 2]):
            for m in result.maps:
                assert m.layer == "conv2" and m.map.shape == (20, 20)
                assert torch.isfinite(m.map).all() and not m.flat


@pytest.mark.parametrize(
    ("mode", "application"), [("caffe", "vgg16"), ("tf", "mobilenet_v2"), ("torch", "densenet")]
)
def test_preprocessing_modes_match_keras(mode: str, application: str, chelsea: np.ndarray) -> None:
    """Each mode against the preprocess_input of a keras.applications model that uses it."""
    config = preprocess_mode(mode, (40, 56))
    photo = load_image(chelsea)
    x = preprocess([photo], config)
    pixels = np.asarray(photo.resize((56, 40), Image.Resampling.BILINEAR), dtype=np.float32)
    module = getattr(keras.applications, application)
    expected = module.preprocess_input(pixels[None].copy())
    assert np.abs(x.permute(0, 2, 3, 1).numpy() - np.asarray(expected)).max() < 1e-3
    # back to the photo's own RGB pixels
    assert np.abs(denormalize(x, config)[0].permute(1, 2, 0).numpy() * 255 - pixels).max() < 1e-3


def test_sidecar_json(tmp_path: Path) -> None:
    path = tmp_path / "tiny.keras"
    tiny_keras().save(path)
    sidecar = tmp_path / "tiny.keras.json"
    (tmp_path / "names.txt").write_text("cat\ndog\ncow\n")
    sidecar.write_text(json.dumps({"mode": "tf", "labels": "names.txt"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing guessed: no warning
        model = camlens.load_model(path)
    assert model.preprocess == preprocess_mode("tf", (24, 24))
    assert model.labels == ("cat", "dog", "cow")
    sidecar.write_text(
        json.dumps({"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "channel_order": "BGR"})
    )
    model = camlens.load_model(path)
    assert model.preprocess == PreprocessConfig(
        (24, 24), "bilinear", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "BGR"
    )
    assert camlens.load_model(path, preprocess="torch").preprocess.mean == (0.485, 0.456, 0.406)
    sidecar.write_text(json.dumps({"mdoe": "tf"}))
    with pytest.raises(ModelError, match=r"tiny.keras.json: unknown keys \['mdoe'\]"):
        camlens.load_model(path)
    sidecar.unlink()
    with pytest.warns(UserWarning, match="guessed 'raw'"):
        camlens.load_model(path)


def test_lambda_layers_are_refused(tmp_path: Path) -> None:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Lambda(lambda t: t * 2)(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    for suffix in ("keras", "h5"):
        path = tmp_path / f"lambda.{suffix}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
        with pytest.raises(ModelError) as info:
            camlens.load_model(path)
        message = str(info.value)
        assert "refused" in message and "Lambda" in message and "safe mode" in message
        assert "safe_mode=False" not in message and "\n" not in message


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="no such Keras model file"):
        camlens.load_model(tmp_path / "missing.keras")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot load the Keras model"):
        camlens.load_model(tmp_path / "bad.keras")
    with pytest.raises(ModelError, match="its own weights"):
        camlens.load_model(tmp_path / "bad.keras", weights=tmp_path / "w.pth")
    fake = types.ModuleType("keras")
    fake.__version__ = "3.15.1"  # type: ignore[attr-defined]
    fake.backend = types.SimpleNamespace(backend=lambda: "jax")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(ModelError, match=r"imported with the 'jax' backend.*KERAS_BACKEND=torch"):
        import_keras()
    monkeypatch.setitem(sys.modules, "keras", None)  # not installed
    with pytest.raises(ModelError, match=r"pip install 'camlens\[keras\]'"):
        import_keras()


def test_keras_net_is_a_torch_module_named_as_in_keras(keras_vgg16: Any) -> None:
    net = KerasNet(keras_vgg16)
    names = [n for n, _ in net.named_children()]
    assert names[:3] == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert net.get_submodule(LAYER) is keras_vgg16.get_layer(LAYER)
    assert sum(p.numel() for p in net.parameters()) == keras_vgg16.count_params()


def test_models_without_a_graph_are_refused() -> None:
    class Subclassed(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.dense = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.dense(keras.ops.mean(self.conv(x), axis=(1, 2)))

    subclassed = Subclassed()
    subclassed(torch.zeros(1, 8, 8, 3))
    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.Dense(2)])
    for model in (subclassed, unbuilt):
        with pytest.raises(ModelError, match="no inputs and outputs known to Keras"):
            camlens.load_model(model, preprocess="tf")
