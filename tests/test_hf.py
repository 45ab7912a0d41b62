"""Hugging Face ``transformers`` classifiers from a local folder (``hf:FOLDER``): small ViT, DeiT,
Swin, ResNet and ConvNeXt models made here from configs with seeded random weights, saved with
``save_pretrained`` beside an image processor.

Grad-CAM is checked against pytorch-grad-cam run as its Hugging Face tutorial runs it (a wrapper
that returns ``.logits``, the reshape transforms it ships: ``vit_reshape_transform`` drops the class
token, ``swinT_reshape_transform`` puts the tokens on the last stage's grid; none for the CNNs), at
the same layer, correlation of the maps at the input size at least 0.999. A ViT is also checked
against the same weights in timm's ``VisionTransformer``: same logits, same maps.
"""

from __future__ import annotations

import functools
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
from camlens.images import PreprocessConfig, load_image, preprocess
from camlens.layers import auto_layer, spatial_layers

transformers = pytest.importorskip("transformers")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import (  # noqa: E402
    swinT_reshape_transform,
    vit_reshape_transform,
)

SIZE = 64
CLASS = 3
LABELS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
VIT = {
    "image_size": SIZE,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-6,
}


def configs() -> dict[str, Any]:
    t = transformers
    common = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    return {
        "vit": t.ViTForImageClassification(t.ViTConfig(**VIT, **common)),
        "deit": t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**VIT, **common)),
        "swin": t.SwinForImageClassification(
            t.SwinConfig(
                image_size=SIZE,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1, 2],
                num_heads=[2, 2, 2],
                window_size=4,
                **common,
            )
        ),
        "resnet": t.ResNetForImageClassification(
            t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **common)
        ),
        "convnext": t.ConvNextForImageClassification(
            t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **common)
        ),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    for name, net in configs().items():
        folder = base / name
        net.save_pretrained(folder)
        transformers.ViTImageProcessor(
            size={"height": SIZE, "width": SIZE}, image_mean=[0.5, 0.4, 0.3]
        ).save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, camlens.Model]:
    return {name: camlens.load_model(f"hf:{folder}") for name, folder in folders.items()}


@pytest.fixture(scope="module")
def x(chelsea: np.ndarray) -> torch.Tensor:
    config = PreprocessConfig(input_size=(SIZE, SIZE), mean=(0.5, 0.4, 0.3), std=(0.5,) * 3)
    return preprocess([load_image(chelsea)], config)


def correlation(a: Any, b: Any) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


class Logits(nn.Module):
    """pytorch-grad-cam's tutorial wrapper: the model's ``.logits``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(pixel_values=x).logits
        return out


def peer(folder: Path, x: torch.Tensor, layer: str, transform: Any) -> np.ndarray:
    net = transformers.AutoModelForImageClassification.from_pretrained(
        folder, local_files_only=True
    ).eval()
    cam = pgc.GradCAM(Logits(net), [net.get_submodule(layer)], reshape_transform=transform)
    try:
        out: np.ndarray = cam(x, targets=[ClassifierOutputTarget(CLASS)])[0]
    finally:
        cam.activations_and_grads.release()
    return out


PEER_CASES = [
    (
        "vit",
        "vit.layers.1.layernorm_before",
        functools.partial(vit_reshape_transform, height=8, width=8),
    ),
    ("swin", "swin.layernorm", functools.partial(swinT_reshape_transform, height=4, width=4)),
    ("resnet", "resnet.encoder.stages.1", None),
    ("convnext", "convnext.encoder.stages.1", None),
]


@pytest.mark.parametrize(("name", "layer", "transform"), PEER_CASES, ids=[c[0] for c in PEER_CASES])
def test_gradcam_equals_the_peer(
    models: dict[str, camlens.Model],
    folders: dict[str, Path],
    x: torch.Tensor,
    name: str,
    layer: str,
    transform: Any,
) -> None:
    model = models[name]
    assert auto_layer(model) == layer  # the automatic layer is the one the tutorial uses
    result = camlens.Explainer(model, "gradcam").explain(x[0], classes=CLASS)
    assert result.maps[0].layer == layer and not result.maps[0].flat
    mine = result.map_at_input(0).numpy()
    theirs = peer(folders[name], x, layer, transform)
    assert mine.shape == theirs.shape == (SIZE, SIZE)
    assert correlation(mine, theirs) >= 0.999


def test_labels_preprocessing_layers_and_spec(
    models: dict[str, camlens.Model], folders: dict[str, Path]
) -> None:
    vit = models["vit"]
    assert vit.labels == tuple(LABELS.values())
    assert vit.class_index("three") == 3
    assert vit.preprocess.input_size == (SIZE, SIZE)
    assert vit.preprocess.mean == pytest.approx((0.5, 0.4, 0.3))
    assert vit.preprocess.std == pytest.approx((0.5, 0.5, 0.5))
    assert vit.preprocess.interpolation == "bilinear"  # ViTImageProcessor's resample=2
    info = {i.name: i for i in spatial_layers(vit)}
    assert info["vit.layers.1.layernorm_before"].adapter == "tokens (1 + 8x8)"
    assert info["vit.embeddings.patch_embeddings.projection"].adapter == "conv"
    deit = {i.name: i for i in spatial_layers(models["deit"])}
    assert deit["deit.layers.1.layernorm_before"].adapter == "tokens (2 + 8x8)"
    assert auto_layer(models["deit"]) == "deit.layers.1.layernorm_before"
    swin = {i.name: i for i in spatial_layers(models["swin"])}
    assert swin["swin.encoder.layers.0.blocks.0.layernorm_before"].shape == (16, 16, 16)
    assert swin["swin.layernorm"].adapter == "tokens (4x4)"
    convnext = {i.name: i for i in spatial_layers(models["convnext"])}
    block = "convnext.encoder.stages.1.layers.0"
    assert convnext[f"{block}.pwconv1"].adapter == "channels-last"
    assert convnext[f"{block}.pwconv1"].shape == (64, 8, 8)
    again = camlens.load_model(vit.spec)
    assert again.spec == f"hf:{folders['vit']}" and again.labels == vit.labels


def test_the_processors_resize_rescale_and_normalization(tmp_path: Path) -> None:
    torch.manual_seed(0)
    configs()["resnet"].save_pretrained(tmp_path)
    transformers.ConvNextImageProcessor(
        size={"shortest_edge": 48}, resample=3, do_rescale=False, do_normalize=False
    ).save_pretrained(tmp_path)
    config = camlens.load_model(f"hf:{tmp_path}").preprocess
    assert config.input_size == (48, 48) and config.interpolation == "bicubic"
    # no rescaling: the model reads 0..255, which is (x - 0) / (1 / 255) of camlens's [0, 1]
    assert config.mean == (0.0, 0.0, 0.0) and config.std == pytest.approx((1 / 255,) * 3)


def timm_vit(hf: nn.Module) -> nn.Module:
    """timm's VisionTransformer with the weights of the transformers ViT ``hf``."""
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(
        img_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=5
    )
    s = hf.state_dict()
    state = {
        "cls_token": s["vit.embeddings.cls_token"],
        "pos_embed": s["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": s["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": s["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": s["vit.layernorm.weight"],
        "norm.bias": s["vit.layernorm.bias"],
        "head.weight": s["classifier.weight"],
        "head.bias": s["classifier.bias"],
    }
    for i in range(2):
        a, b = f"vit.layers.{i}.", f"blocks.{i}."
        for ours, theirs in [
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
            ("attention.o_proj", "attn.proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ]:
            for p in ("weight", "bias"):
                state[f"{b}{theirs}.{p}"] = s[f"{a}{ours}.{p}"]
        for p in ("weight", "bias"):
            qkv = [s[f"{a}attention.{q}_proj.{p}"] for q in "qkv"]
            state[f"{b}attn.qkv.{p}"] = torch.cat(qkv)
    net.load_state_dict(state)
    return net.eval()


def test_a_vit_explains_as_the_same_weights_in_timm(
    models: dict[str, camlens.Model], chelsea: np.ndarray
) -> None:
    hf = models["vit"]
    timm = camlens.load_model(timm_vit(hf.net), preprocess=hf.preprocess, labels=hf.labels)
    assert auto_layer(timm) == "blocks.1.norm1"
    ours = camlens.Explainer(hf, ["gradcam", "scorecam"]).explain(chelsea, top=2)
    theirs = camlens.Explainer(timm, ["gradcam", "scorecam"]).explain(chelsea, top=2)
    assert [p.class_index for p in ours.predictions] == [p.class_index for p in theirs.predictions]
    for a, b in zip(ours.predictions, theirs.predictions, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
    assert len(ours.maps) == 4
    for a, b in zip(ours.maps, theirs.maps, strict=True):
        assert (a.method, a.class_index) == (b.method, b.class_index)
        assert torch.allclose(a.map, b.map, atol=1e-4), (a.method, a.class_index)


runner = CliRunner()


def test_cli_layers_and_explain(
    folders: dict[str, Path], tmp_path: Path, chelsea: np.ndarray
) -> None:
    from camlens.cli import app

    spec = f"hf:{folders['swin']}"
    result = runner.invoke(app, ["layers", "--model", spec])
    assert result.exit_code == 0, result.output
    assert "swin.layernorm" in result.stdout and "tokens (4x4)" in result.stdout
    photo = tmp_path / "cat.jpg"
    Image.fromarray(chelsea).save(photo)
    result = runner.invoke(
        app,
        ["explain", str(photo), "--model", spec, "--class", "two", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "o").rglob("cat.json")
    report = json.loads(path.read_text())
    (entry,) = report["explanations"]
    assert (entry["label"], entry["layer"], entry["map_shape"]) == ("two", "swin.layernorm", [4, 4])
    assert report["size"] == [451, 300]


def test_bad_folders_are_clear_errors(tmp_path: Path, folders: dict[str, Path]) -> None:
    with pytest.raises(camlens.CamlensError, match=r"no config\.json"):
        camlens.load_model(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(camlens.CamlensError, match="own weights"):
        camlens.load_model(f"hf:{folders['vit']}", weights="w.safetensors")
    bare = tmp_path / "bare"
    torch.manual_seed(0)
    configs()["resnet"].save_pretrained(bare)
    with pytest.raises(camlens.CamlensError, match="no image processor"):
        camlens.load_model(f"hf:{bare}")
