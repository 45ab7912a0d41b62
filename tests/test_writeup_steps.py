"""The write-ups' steps that each became one command: the raw map at the layer's grid, the
write-ups' normalization, Caffe layer names, training as the write-ups train (plain, Keras's
decay, one output with binary cross-entropy), Keras and .camlens backbones, and CAM on the
reader's own Keras models (a Lambda GAP, a nested base). Each follows the write-up's recipe by
hand where there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import camlens
from camlens.cli import app
from camlens.errors import ModelError
from camlens.images import PreprocessConfig
from camlens.models.keras import import_keras
from camlens.render import colorize, raw_map

runner = CliRunner()
RAW = PreprocessConfig((64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no preprocessing given.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`:UserWarning"),
]


class Patches(nn.Module):
    """conv 8x8 stride 8 [an 8x8 grid] -> ReLU [feat] -> GAP -> Linear(4, 2): a GAP model whose
    map is coarse enough to see its cells."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.feat = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():  # class 1's map positive everywhere: max and min-max differ
            self.conv.bias.fill_(0.5)
            self.fc.weight[1].abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.feat(self.conv(x))).flatten(1))
        return out


def patches() -> camlens.Model:
    return camlens.load_model(Patches(), preprocess=RAW, labels=["a", "b"])


def photo(side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 255, (side, side, 3), dtype=np.uint8)


def cam_by_hand(net: Patches, image: np.ndarray, cls: int) -> np.ndarray:
    """CAM as the write-ups compute it: the last conv's output, the class's weights, their dot
    product per cell."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        conv = net.feat(net.conv(x))[0].double().numpy()  # [K, h, w]
    weights = net.fc.weight[cls].detach().double().numpy()
    return np.einsum("k,khw->hw", weights, conv)


# --- 1. the raw map at the layer's grid ------------------------------------------------------------


def test_raw_map_draws_one_cell_per_value_nearest_neighbour() -> None:
    """``plt.matshow(cam)``: each value a square of its own colour, no blending between cells."""
    values = np.linspace(0, 1, 12).reshape(3, 4)
    tile = np.asarray(raw_map(values, 300))
    assert tile.shape[0] == 300 and tile.shape[1] > 300  # the grid, then the colorbar
    cell = 300 * 0.78 / 4  # the longer side of the grid over 4 columns
    for v in values.ravel():
        colour = colorize(np.array([[v]]))[0, 0].astype(int)
        # matplotlib's image drawing truncates where colorize rounds: within 1 per channel
        pixels = int((np.abs(tile.astype(int) - colour) <= 1).all(axis=-1).sum())
        assert pixels > 0.3 * cell * cell, (v, pixels)  # a cell, less its written value


def test_panel_raw_adds_the_layer_grid_as_a_fourth_tile(tmp_path: Path) -> None:
    model = patches()
    result = camlens.Explainer(model, method="cam").explain(photo(300), classes=[0])
    plain, raw = result.panel(0), result.panel(0, raw=True)
    assert plain.size == (3 * 300, plain.height)
    assert raw.height == plain.height and raw.width > plain.width
    tile = np.asarray(raw)[:, 3 * 300 :]
    peak = colorize(np.array([[1.0]]))[0, 0].astype(int)
    assert (np.abs(tile.astype(int) - peak) <= 1).all(
        axis=-1
    ).sum() > 100  # the map's maximum is drawn in its own colour
    result.save(tmp_path, raw_panels=True)
    (saved,) = tmp_path.glob("*.panel.png")
    assert Image.open(saved).size == raw.size


def test_cli_raw_panel(photo_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["explain", str(photo_files[0]), "--raw-panel", "--method", "cam", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (report,) = out.rglob("*.json")
    entry = json.loads(report.read_text())["explanations"][0]
    panel = Image.open(report.parent / entry["panel"])
    assert panel.size[0] > 3 * 451  # photo | heatmap | overlay | the 7x7 grid


# --- 6. normalization as the write-ups do it ---------------------------------------------------------


def test_normalize_max_is_the_writeups_heatmap_over_its_max() -> None:
    model = patches()
    image = photo()
    expected = cam_by_hand(model.net, image, 1)
    expected = np.maximum(expected, 0)
    expected /= expected.max()  # heatmap / np.max(heatmap)
    assert expected.min() > 0.02  # all positive: min-max would differ
    result = camlens.Explainer(model, method="cam", normalize="max").explain(image, classes=[1])
    np.testing.assert_allclose(result.maps[0].map.double().numpy(), expected, atol=1e-6)
    minmax = camlens.Explainer(model, method="cam").explain(image, classes=[1])
    assert float(minmax.maps[0].map.min()) == 0
    assert float(result.map_at_image(0).min()) > 0  # upsampling keeps the division by the max
    assert float(result.map_at_image(0).max()) == pytest.approx(1)
    config = camlens.Explainer(model, method="cam", normalize="max").config
    assert camlens.config.ExplainConfig.from_json(config.to_json()).normalize == "max"


def test_normalize_is_checked() -> None:
    from camlens.config import ExplainConfig

    with pytest.raises(camlens.CamlensError, match="normalize must be 'minmax' or 'max'"):
        ExplainConfig(normalize="l2")
    with pytest.raises(camlens.CamlensError, match="signed map"):
        ExplainConfig(normalize="max", relu=False)
    assert ExplainConfig(normalize="MAX").normalize == "max"


def test_cli_normalize(photo_files: list[Path], tmp_path: Path) -> None:
    bad = runner.invoke(app, ["explain", str(photo_files[0]), "--normalize", "max", "--no-relu"])
    assert bad.exit_code == 2 and "signed map" in bad.stderr
    out = tmp_path / "o"
    good = runner.invoke(
        app, ["explain", str(photo_files[0]), "--normalize", "max", "--out", str(out)]
    )
    assert good.exit_code == 0, good.output
    (npy,) = out.rglob("*.npy")
    assert float(np.load(npy).max()) == pytest.approx(1)


# --- 7. Caffe names, layers --all ------------------------------------------------------------------


class TinyVgg(nn.Module):
    """A VGG-shaped ``features``: two blocks of 3x3 conv + ReLU closed by max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x).flatten(1))
        return out


def test_caffe_names_of_vgg_layers() -> None:
    from camlens.keras_names import vgg_names

    names = vgg_names(TinyVgg())
    assert names["conv2_2"] == names["block2_conv2"] == "features.6"
    assert names["pool1"] == names["block1_pool"] == "features.2"
    model = camlens.load_model(TinyVgg(), preprocess=RAW, labels=["a", "b", "c"])
    explainer = camlens.Explainer(model, method="gradcam", layer="conv2_2")
    assert explainer.layers == ["features.6"]


# --- 2. and 5. training: Keras and .camlens backbones, as the write-ups train ------------------------


@pytest.fixture(scope="module")
def keras() -> Any:
    try:
        return import_keras()
    except ModelError as exc:
        pytest.skip(str(exc))


def colour_folders(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for cls, channel in (("red", 0), ("blue", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            img[8:30, 8:30, channel] = 250
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return root


def keras_base(keras: Any, path: Path) -> Path:
    """A headless base (as ``include_top=False`` saves it): two convs, 32x32 channels-last."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="block1_conv2")(x)
    keras.Model(inp, x, name="base").save(path)
    path.with_name(path.name + ".json").write_text(json.dumps({"mode": "tf"}))
    return path


def test_train_plain_binary_with_keras_decay_on_a_keras_base(keras: Any, tmp_path: Path) -> None:
    """The person / not-person write-up's training: a Keras base, one output with binary
    cross-entropy, SGD with Keras's ``decay``, nothing added (no dropout, augmentation, weight
    decay or early stopping)."""
    data = colour_folders(tmp_path / "data")
    held_out = colour_folders(tmp_path / "val", n=2)
    base = keras_base(keras, tmp_path / "base.keras")
    out = tmp_path / "m.camlens"
    args = ["train", str(data), "--backbone", str(base), "--epochs", "3", "--val", str(held_out)]
    args += ["--plain", "--loss", "binary", "--optimizer", "sgd", "--momentum", "0.9"]
    args += ["--nesterov", "--lr", "0.1", "--lr-decay", "0.05", "--batch-size", "4"]
    trained = runner.invoke(app, [*args, "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    model = camlens.load_model(out)
    net = model.net
    assert net.dropout.p == 0
    # one output stored as two rows -w/2, w/2: softmax(z)[1] == sigmoid(w . GAP(A) + b)
    torch.testing.assert_close(net.fc.weight[0], -net.fc.weight[1])
    torch.testing.assert_close(net.fc.bias[0], -net.fc.bias[1])
    summary = net.training_summary
    settings = summary["settings"]
    text = json.dumps(settings)
    for key, value in (("loss", "binary"), ("plain", True), ("lr_decay", 0.05)):
        assert f'"{key}": {json.dumps(value)}' in text
    assert '"augment": false' in text and '"patience": null' in text
    # Keras's decay, by hand: lr / (1 + decay * iterations) after 3 epochs of 3 steps (12 images)
    assert summary["epochs"][-1]["lr"] == pytest.approx(0.1 / (1 + 0.05 * 9))
    assert summary["best_epoch"] == 3  # the last epoch, whatever its validation loss
    history = [line for line in trained.output.splitlines() if line.startswith("epoch ")]
    assert len(history) == 3  # no early stopping
    # the validation loss is the binary cross-entropy of the one output, by hand
    from camlens.images import load_image, preprocess

    val = sorted(held_out.rglob("*.png"))
    x = preprocess([load_image(p) for p in val], model.preprocess)
    y = torch.tensor([0.0 if p.parent.name == "blue" else 1.0 for p in val])
    with torch.no_grad():
        pooled = net.pool(net.features(x)).flatten(1)
        d = pooled @ (2 * net.fc.weight[1]) + 2 * net.fc.bias[1]
    bce = float(nn.functional.binary_cross_entropy_with_logits(d, y))
    assert f"val loss {bce:.4g}" in history[-1]
    explained = camlens.Explainer(model, method="cam").explain(
        str(data / "red" / "0.png"), classes=["red"]
    )
    assert explained.maps[0].map.shape == (32, 32) and explained.maps[0].layer == "features"


def test_lr_decay_is_keras_decay_per_step() -> None:
    from camlens.train import _scheduler

    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    schedule = _scheduler(optimizer, "constant", 1e-2, 100)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.1 / (1 + 1e-2 * t) for t in range(5)])
    step = torch.optim.SGD([param], lr=1.0)
    steps = _scheduler(step, "step", None, 8)
    rates = []
    for _ in range(8):
        rates.append(step.param_groups[0]["lr"])
        step.step()
        steps.step()
    assert rates == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_training_options_are_checked(tmp_path: Path) -> None:
    data = colour_folders(tmp_path / "data", n=2)
    (data / "green").mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(data / "green" / "0.png")
    cases = [
        (["--plain", "--dropout", "0.5"], "--plain switches off --dropout"),
        (["--plain", "--views", "3"], "--plain switches off --views"),
        (["--schedule", "linear"], "schedule must be one of cosine, step, constant"),
        (["--schedule", "step", "--lr-decay", "1e-6"], "give it or a schedule, not both"),
        (["--loss", "binary"], "is for two classes, not 3"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)
    with pytest.raises(camlens.CamlensError, match="build it with dropout=0"):
        camlens.train(camlens.build_cam_model(num_classes=2), data, plain=True)


def test_train_on_a_camlens_backbone(keras: Any, tmp_path: Path) -> None:
    """A checkpoint as the backbone: its trained features, input size and preprocessing."""
    data = colour_folders(tmp_path / "data", n=3)
    base = keras_base(keras, tmp_path / "base.keras")
    first = tmp_path / "first.camlens"
    common = ["--epochs", "1", "--val", "0", "--views", "1"]
    assert (
        runner.invoke(
            app, ["train", str(data), "--backbone", str(base), *common, "--out", str(first)]
        ).exit_code
        == 0
    )
    second = tmp_path / "second.camlens"
    result = runner.invoke(
        app, ["train", str(data), "--backbone", str(first), *common, "--out", str(second)]
    )
    assert result.exit_code == 0, result.output
    a, b = camlens.load_model(first), camlens.load_model(second)
    assert b.preprocess == a.preprocess
    fa, fb = a.net.features.state_dict(), b.net.features.state_dict()
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    refused = runner.invoke(
        app, ["train", str(data), "--backbone", str(first), "--weights", str(first)]
    )
    assert refused.exit_code == 2 and "give no weights file" in refused.stderr


# --- 3. CAM on the reader's own Keras models ---------------------------------------------------------


def keras_cam_model(keras: Any) -> Any:
    """keras-cam's model: channels-first VGG-style convs (conv5_3 last, no final pooling), a
    ``Lambda(global_average_pooling)`` and ``Dense(2, softmax)``."""
    layers = keras.layers
    keras.utils.set_random_seed(1)
    fmt = "channels_first"

    def global_average_pooling(x: Any) -> Any:
        return keras.ops.mean(x, axis=(2, 3))

    return keras.Sequential(
        [
            keras.Input((3, 32, 32)),
            layers.ZeroPadding2D((1, 1), data_format=fmt),
            layers.Conv2D(6, 3, activation="relu", name="conv5_3", data_format=fmt),
            layers.Lambda(global_average_pooling, output_shape=lambda s: s[0:2]),
            layers.Dense(2, activation="softmax"),
        ]
    )


def test_lambda_gap_in_memory_explains_with_cam(keras: Any, tmp_path: Path) -> None:
    net = keras_cam_model(keras)
    model = camlens.load_model(net, preprocess="raw")
    image = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    result = camlens.Explainer(model, method="cam", normalize="max").explain(image, classes=[1])
    assert result.maps[0].layer == "conv5_3"
    # keras-cam's recipe: conv5_3's output [K, h, w] dotted with the Dense weights of the class
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    conv = keras.Model(net.inputs, net.get_layer("conv5_3").output)(x)[0].detach().double()
    weights = torch.as_tensor(np.asarray(net.layers[-1].get_weights()[0]))[:, 1].double()
    cam = torch.einsum("k,khw->hw", weights, conv).clamp(min=0)
    np.testing.assert_allclose(result.maps[0].map.double(), cam / cam.max(), atol=1e-5)
    net.save(tmp_path / "cam.keras")
    with pytest.raises(
        ModelError, match=r"rebuild the model with keras\.layers\.GlobalAveragePooling2D"
    ):
        camlens.load_model(tmp_path / "cam.keras")


@pytest.mark.parametrize(("pool", "grid"), [(True, 8), (False, 16)])
def test_nested_base_the_automatic_layer_feeds_the_gap(
    keras: Any, tmp_path: Path, pool: bool, grid: int
) -> None:
    """``Sequential([base, GlobalAveragePooling2D(), Dense(n)])``: the layer that feeds the GAP,
    the base's output, at 8x8 with its last pooling and at 16x16 without it."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="block2_conv1")(x)
    if pool:
        x = layers.MaxPooling2D(name="block2_pool")(x)
    base = keras.Model(inp, x, name="vgg19")
    net = keras.Sequential(
        [keras.Input((32, 32, 3)), base, layers.GlobalAveragePooling2D(), layers.Dense(3)]
    )
    path = tmp_path / "nested.keras"
    net.save(path)
    explainer = camlens.Explainer(camlens.load_model(path), method="cam")
    assert explainer.layers == ["vgg19"]
    (head,) = explainer.heads.values()
    assert head is not None
    result = explainer.explain(np.zeros((32, 32, 3), np.uint8) + 100, classes=[0])
    assert tuple(result.maps[0].map.shape) == (grid, grid)
    shown = runner.invoke(app, ["layers", "--model", str(path)])
    assert shown.exit_code == 0, shown.output
    assert f"vgg19 (it feeds the GAP -> Linear head {head.name!r}" in " ".join(shown.output.split())
    every = runner.invoke(app, ["layers", "--model", str(path), "--all"])
    assert every.exit_code == 0, every.output
    for kind, shape in (("GlobalAveragePooling2D", "[4]"), ("Dense", "[3]")):  # not spatial
        (row,) = [line for line in every.stdout.splitlines() if f" {kind} " in line]
        assert shape in row


# --- 4. two objects, two boxes ---------------------------------------------------------------------


def blobs(*centers: tuple[float, float], sigma: float = 12.0) -> np.ndarray:
    y, x = np.mgrid[0:60, 0:100]
    return sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centers)


def test_all_boxes_cut_a_region_at_the_saddle_between_two_peaks() -> None:
    from camlens.localize import SADDLE_DEPTH, boxes_from_map

    two = blobs((30, 30), (70, 30))  # touching: one region above 0.2, a saddle at half the peaks
    assert two[30, 50] / two[30, 30] == pytest.approx(0.5, abs=0.01)
    assert len(boxes_from_map(two, mode="all", saddle=None)) == 1  # the threshold alone: one box
    left, right = sorted(boxes_from_map(two, mode="all"), key=lambda b: b.x0)
    assert left.x1 == right.x0 == 51  # cut at the saddle, at the middle
    assert (left.y0, left.y1) == (right.y0, right.y1)
    # one object with a shallow dip (the saddle 10% below its lower peak) stays one box
    shallow = blobs((35, 30), (65, 30))
    dip = 1 - shallow[30, 50] / shallow.max()
    assert 0 < dip < SADDLE_DEPTH
    assert len(boxes_from_map(shallow, mode="all")) == 1
    assert len(boxes_from_map(shallow, mode="all", saddle=dip / 2)) == 2
    assert len(boxes_from_map(blobs((50, 30)), mode="all")) == 1
    assert len(boxes_from_map(two)) == 1  # the largest region: the cut is for all boxes only


def test_server_normalize_field(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from camlens.serve import create_app

    buffer = io.BytesIO()
    Image.fromarray(chelsea).save(buffer, format="PNG")
    upload = {"image": ("cat.png", buffer.getvalue(), "image/png")}
    expected = camlens.Explainer(default_model, method="cam", normalize="max").explain(chelsea)
    with TestClient(create_app(default_model)) as client:
        answer = client.post(
            "/api/explain", files=upload, data={"methods": "cam", "normalize": "max"}
        )
        assert answer.status_code == 200, answer.text
        got = np.load(io.BytesIO(client.get(answer.json()["explanations"][0]["map"]).content))
        bad = client.post("/api/explain", files=upload, data={"normalize": "l2"})
    np.testing.assert_allclose(got, expected.map_at_image(0).numpy(), atol=1e-6)
    assert float(got.min()) > 0  # CAM of the default model is positive everywhere on this photo
    assert bad.status_code == 422 and bad.json()["parameter"] == "normalize"
