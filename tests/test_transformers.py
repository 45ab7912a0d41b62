"""Vision transformers through the token and channels-last adapters: timm's ViT, DeiT (distilled:
two prefix tokens) and Swin (channels-last stages), with seeded random weights.

Grad-CAM is checked against pytorch-grad-cam run with the reshape transforms it ships for these
models (``vit_reshape_transform``: drop the class token, 14 x 14; ``swinT_reshape_transform``:
tokens on a 7 x 7 grid), at the input size (its ``__call__`` resizes with cv2, camlens's
``map_at_image`` with bilinear interpolation, hence a correlation, not equality). For the distilled
DeiT the peer's transform keeps one token too many, so it gets the same transform with two tokens
dropped; the same comparison with one dropped shows the test can tell.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import timm
import torch

import camlens
from camlens.adapters import CHANNELS_LAST, Tokens
from camlens.images import PreprocessConfig, load_image, preprocess
from camlens.layers import auto_layer, spatial_layers
from camlens.methods import METHODS
from camlens.replay import build_replay, plan_replay
from camlens.taps import Taps

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import (  # noqa: E402
    swinT_reshape_transform,
    vit_reshape_transform,
)

VIT = "vit_tiny_patch16_224"
DEIT = "deit_tiny_distilled_patch16_224"
SWIN = "swin_tiny_patch4_window7_224"
CLASS = 7  # any class: the weights are random


def load(name: str) -> camlens.Model:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: expected here
        return camlens.load_model(f"timm:{name}")


@pytest.fixture(scope="module")
def models() -> dict[str, camlens.Model]:
    return {name: load(name) for name in (VIT, DEIT, SWIN)}


@pytest.fixture(scope="module")
def x(chelsea: np.ndarray) -> torch.Tensor:
    return preprocess([load_image(chelsea)], PreprocessConfig(interpolation="bicubic"))


def correlation(a: Any, b: Any) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def ours(model: camlens.Model, x: torch.Tensor, layer: str, method: str = "gradcam") -> Any:
    with camlens.Explainer(model, method, layer) as explainer:
        result = explainer.explain(x[0], classes=CLASS)
    assert not result.maps[0].flat
    return result


def peer(
    model: camlens.Model, x: torch.Tensor, layer: str, transform: Callable[..., torch.Tensor]
) -> np.ndarray:
    cam = pgc.GradCAM(model.net, [model.net.get_submodule(layer)], reshape_transform=transform)
    try:
        out: np.ndarray = cam(x, targets=[ClassifierOutputTarget(CLASS)])[0]
    finally:
        cam.activations_and_grads.release()
        model.net.zero_grad(set_to_none=True)
    return out


def drop_tokens(count: int, grid: int = 14) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ViT transform with ``count`` prefix tokens dropped instead of one."""

    def transform(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, count : count + grid * grid]
        return patches.reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)

    return transform


PEER_CASES = [
    (VIT, "blocks.11.norm1", vit_reshape_transform),
    (DEIT, "blocks.11.norm1", drop_tokens(2)),
    (SWIN, "layers.3.blocks.1.norm2", swinT_reshape_transform),  # tokens [N, 49, C]
    (SWIN, "layers.3.blocks.1.norm1", lambda t: t.permute(0, 3, 1, 2)),  # [N, 7, 7, C]
    (SWIN, "norm", lambda t: t.permute(0, 3, 1, 2)),  # the automatic layer
]


@pytest.mark.parametrize(
    ("name", "layer", "transform"), PEER_CASES, ids=[f"{n}-{lay}" for n, lay, _ in PEER_CASES]
)
def test_gradcam_equals_the_peer(
    models: dict[str, camlens.Model],
    x: torch.Tensor,
    name: str,
    layer: str,
    transform: Callable[..., torch.Tensor],
) -> None:
    model = models[name]
    mine = ours(model, x, layer).map_at_image(0).numpy()
    theirs = peer(model, x, layer, transform)
    assert mine.shape == theirs.shape == (224, 224)
    assert correlation(mine, theirs) >= 0.999


def test_distilled_deit_drops_both_prefix_tokens(
    models: dict[str, camlens.Model], x: torch.Tensor
) -> None:
    model = models[DEIT]
    assert model.net.num_prefix_tokens == 2
    info = {i.name: i for i in spatial_layers(model)}["blocks.11.norm1"]
    assert info.adapter == "tokens (2 + 14x14)" and info.shape == (192, 14, 14)
    # the tokens put on the grid are the ones after the class and distillation tokens
    tokens = torch.arange(2 * 198 * 3, dtype=torch.float32).reshape(2, 198, 3)
    maps = Tokens(2, (14, 14)).to_maps(tokens)
    assert torch.equal(maps[:, :, 0, 0], tokens[:, 2])
    assert torch.equal(maps[:, :, 0, 13], tokens[:, 15])
    assert torch.equal(maps[:, :, 13, 13], tokens[:, 197])
    # keeping the distillation token shifts every patch by one: far from the peer's right map
    mine = ours(model, x, "blocks.11.norm1").map_at_image(0).numpy()
    assert correlation(mine, peer(model, x, "blocks.11.norm1", drop_tokens(1))) < 0.9


def test_token_adapters_round_trip() -> None:
    tokens = torch.randn(2, 1 + 6 * 10, 5)
    adapter = Tokens(1, (6, 10))
    maps = adapter.to_maps(tokens)
    assert maps.shape == (2, 5, 6, 10)
    assert torch.equal(maps[0, :, 1, 3], tokens[0, 1 + 1 * 10 + 3])  # row by row
    assert torch.equal(adapter.from_maps(maps, tokens), tokens)
    grid = torch.randn(2, 7, 9, 4)
    assert torch.equal(CHANNELS_LAST.to_maps(grid)[:, :, 2, 5], grid[:, 2, 5])
    assert torch.equal(CHANNELS_LAST.from_maps(CHANNELS_LAST.to_maps(grid), grid), grid)
    with pytest.raises(camlens.CamlensError, match="do not fit"):
        adapter.to_maps(torch.randn(2, 60, 5))


def test_automatic_layers(models: dict[str, camlens.Model]) -> None:
    assert auto_layer(models[VIT]) == "blocks.11.norm1"
    assert auto_layer(models[DEIT]) == "blocks.11.norm1"
    swin = spatial_layers(models[SWIN])
    assert auto_layer(models[SWIN], swin) == "norm"
    shapes = {i.name: (i.shape, i.adapter) for i in swin}
    assert shapes["norm"] == ((768, 7, 7), "channels-last")
    assert shapes["layers.0.blocks.0.norm2"] == ((96, 56, 56), "tokens (56x56)")
    assert shapes["patch_embed.proj"] == ((96, 56, 56), "conv")
    # the window attention's rows are windows, not images: no spatial layer
    assert "layers.0.blocks.0.attn" not in shapes


def test_after_the_last_attention_patch_tokens_do_not_reach_the_logits(
    models: dict[str, camlens.Model], x: torch.Tensor
) -> None:
    """Why ViT's automatic layer is blocks[-1].norm1: at blocks[-1] and norm the gradient of a
    class score with respect to every patch token is exactly zero, and the map is flat."""
    net = models[VIT].net
    layers = ["blocks.11.norm1", "blocks.11", "norm"]
    with Taps(net, layers, gradients=True, adapter=models[VIT].adapter) as taps, torch.no_grad():
        logits = net(x)
    grads = torch.autograd.grad(logits[0, CLASS], [taps.activations[n] for n in layers])
    assert grads[0].abs().amax() > 0
    assert torch.count_nonzero(grads[1]) == 0 and torch.count_nonzero(grads[2]) == 0
    with camlens.Explainer(models[VIT], "gradcam", layers) as explainer:
        flat = {m.layer: m.flat for m in explainer.explain(x[0], classes=CLASS).maps}
    assert flat == {"blocks.11.norm1": False, "blocks.11": True, "norm": True}


@pytest.fixture(scope="module")
def small_vit() -> camlens.Model:
    """A small ViT (3 blocks of width 48) at 64 x 112, a 4 x 7 grid (no square), given as a
    module of your own."""
    torch.manual_seed(0)
    net = timm.create_model(
        VIT, pretrained=False, img_size=(64, 112), num_classes=10, depth=3, embed_dim=48
    )
    return camlens.load_model(net, preprocess=PreprocessConfig(input_size=(64, 112)))


def test_grid_comes_from_the_patch_embedding(small_vit: camlens.Model) -> None:
    info = {i.name: i for i in spatial_layers(small_vit)}["blocks.2.norm1"]
    assert info.shape == (48, 4, 7) and info.adapter == "tokens (1 + 4x7)"


FEW_SAMPLES = {"sscam": {"samples": 2}, "iscam": {"samples": 2}}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cam"])
def test_every_method_gives_a_map(small_vit: camlens.Model, method: str) -> None:
    x = torch.randn(2, 3, 64, 112, generator=torch.Generator().manual_seed(1))
    chosen = METHODS[method].with_options(**FEW_SAMPLES.get(method, {}))
    with camlens.Explainer(small_vit, chosen) as explainer:
        results = explainer.explain(x, classes=[1, 4])
    for result in results:
        for m in result.maps:
            assert m.layer == "blocks.2.norm1" and m.map.shape == (4, 7)
            assert torch.isfinite(m.map).all() and not m.flat


def test_cam_on_swin_equals_gradcam(models: dict[str, camlens.Model], x: torch.Tensor) -> None:
    """Swin's final norm feeds global average pooling and a Linear layer: CAM applies there
    and Grad-CAM equals it."""
    with camlens.Explainer(models[SWIN], ["cam", "gradcam"], use_head_gradients=False) as ex:
        cam, gradcam = ex.explain(x[0], classes=CLASS).maps
    assert ex.heads["norm"] is not None and ex.heads["norm"].name == "head.fc"
    assert cam.layer == "norm" and not cam.flat
    assert float((cam.map - gradcam.map).abs().max()) < 1e-4


def test_ablation_replay_puts_the_class_token_back(small_vit: camlens.Model) -> None:
    """After blocks[-1] the network reads only the class token, which the maps do not hold: the
    graph replay from there reproduces the logits only if the adapter puts it back."""
    net = small_vit.net
    x = torch.randn(3, 3, 64, 112, generator=torch.Generator().manual_seed(2))
    with Taps(net, ["blocks.2"], adapter=small_vit.adapter) as taps, torch.inference_mode():
        logits = net(x)
    maps, output = taps.activations["blocks.2"], taps.outputs["blocks.2"]
    layer = net.get_submodule("blocks.2")
    plan = plan_replay(net, "blocks.2", layer, taps.adapters["blocks.2"])
    replay = build_replay(plan, net, x, maps, output, logits)
    assert replay.kind == "graph"
    rows = torch.tensor([2, 0])
    with torch.inference_mode():
        assert torch.allclose(replay(maps[rows], rows), logits[rows], atol=1e-5)


def test_ablationcam_through_tokens_equals_ablating_by_hand(small_vit: camlens.Model) -> None:
    """Ablation-CAM at blocks[-1].norm1 (replayed in full: a skip connection passes around the
    layer) against the formula, with each channel of the patch tokens zeroed by a hook here."""
    net = small_vit.net
    x = torch.randn(1, 3, 64, 112, generator=torch.Generator().manual_seed(3))
    layer = net.get_submodule("blocks.2.norm1")
    cls = 4
    with torch.inference_mode():
        base = float(net(x)[0, cls])
        kept: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda m, i, o: kept.append(o.clone()))
        net(x)
        handle.remove()
        a = kept[0][0, 1:].reshape(4, 7, -1).permute(2, 0, 1)  # [48, 4, 7]
        weights = torch.zeros(a.shape[0])
        for k in range(a.shape[0]):

            def ablate(m: Any, i: Any, o: torch.Tensor, k: int = k) -> torch.Tensor:
                o = o.clone()
                o[:, 1:, k] = 0
                return o

            handle = layer.register_forward_hook(ablate)
            weights[k] = (base - float(net(x)[0, cls])) / base
            handle.remove()
    expected = torch.einsum("k,khw->hw", weights, a).clamp(min=0)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    with camlens.Explainer(small_vit, "ablationcam") as explainer:
        result = explainer.explain(x[0], classes=cls)
    assert float((result.maps[0].map - expected).abs().max()) < 1e-4


def test_dynamic_size_keeps_the_models_aspect_ratio() -> None:
    """A ViT built for any input size, given twice its size: the grid doubles (8 x 14, not the
    14 x 8 or other factorizations of 112 tokens)."""
    torch.manual_seed(0)
    net = timm.create_model(
        VIT,
        pretrained=False,
        img_size=(64, 112),
        num_classes=10,
        depth=2,
        embed_dim=48,
        dynamic_img_size=True,
    )
    model = camlens.load_model(net, preprocess=PreprocessConfig(input_size=(64, 112)))
    x = torch.randn(1, 3, 128, 224, generator=torch.Generator().manual_seed(4))
    with camlens.Explainer(model, "gradcam") as explainer:
        result = explainer.explain(x[0], classes=2)
    assert result.maps[0].map.shape == (8, 14) and not result.maps[0].flat


def test_layers_command_shows_the_adapters() -> None:
    from typer.testing import CliRunner

    from camlens.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        result = CliRunner().invoke(app, ["layers", "--model", f"timm:{DEIT}"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if " blocks.11.norm1 " in line)
    assert row.lstrip().startswith("*") and "192x14x14" in row and "tokens (2 + 14x14)" in row
    assert "conv" in next(line for line in lines if " patch_embed.proj " in line)
    assert f"* automatic target layer of timm:{DEIT}: blocks.11.norm1" in lines


OTHER_FAMILIES = [
    # (timm name, shrinking options, automatic layer, its adapter)
    ("cait_xxs24_224", {"depth": 2}, "blocks_token_only.1.norm1", "tokens (1 + 14x14)"),
    ("xcit_nano_12_p16_224", {"depth": 2}, "cls_attn_blocks.1.norm1", "tokens (1 + 14x14)"),
    (
        "beit_base_patch16_224",
        {"depth": 2, "embed_dim": 48, "num_heads": 2},
        "blocks.1",
        "tokens (1 + 14x14)",
    ),
    ("eva02_tiny_patch14_224", {"depth": 2}, "blocks.1", "tokens (1 + 16x16)"),
    (
        "vit_base_patch16_reg4_gap_256",
        {"depth": 2, "embed_dim": 48},
        "blocks",
        "tokens (4 + 16x16)",
    ),
]


@pytest.mark.parametrize(
    ("name", "options", "layer", "adapter"), OTHER_FAMILIES, ids=[f[0] for f in OTHER_FAMILIES]
)
def test_other_token_families(name: str, options: dict[str, Any], layer: str, adapter: str) -> None:
    """Class-attention models (CaiT, XCiT) are explained at the input of their last class
    attention; models that average their patch tokens at their last block."""
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=5, **options)
    size = tuple(net.pretrained_cfg["input_size"][1:])
    model = camlens.load_model(net, preprocess=PreprocessConfig(input_size=size))
    infos = spatial_layers(model)
    assert auto_layer(model, infos) == layer
    info = {i.name: i for i in infos}[layer]
    assert info.adapter == adapter
    grid = info.shape[1:]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with camlens.Explainer(model, "gradcam") as explainer:
        m = explainer.explain(x[0], classes=1).maps[0]
    assert m.layer == layer and m.map.shape == grid and not m.flat


def test_tta_on_a_fixed_size_vit_is_refused_in_one_line() -> None:
    """Rescaling the input is what a ViT without dynamic_img_size cannot take: said when the
    Explainer is made, with what to do; the flips alone work."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = camlens.load_model("timm:vit_tiny_patch16_224")
    with pytest.raises(camlens.CamlensError, match=r"rescales the input by 1\.25.*flips alone"):
        camlens.Explainer(model, smooth="tta")
    result = camlens.Explainer(model, smooth="tta", tta_scales=(1.0,)).explain(
        torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))
    )
    assert result.stats.forward_passes == 2 and not result.maps[0].flat
