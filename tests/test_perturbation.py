"""Score-CAM, SS-CAM, IS-CAM and Ablation-CAM: exact values on a small hand-built network computed
independently here (masks with a bilinear written out in numpy, weights in loops), the
baseline-cancels proof, the sharing of passes across classes and images, the replay after the
target layer, and oracles (torchcam, pytorch-grad-cam) on the default model and resnet18."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import Progress
from torch import nn
from typer.testing import CliRunner

import camlens
from camlens.cli import EventBars, app
from camlens.images import PreprocessConfig, preprocess
from camlens.maps import upsample
from camlens.methods import get_method
from camlens.methods.perturbation import Scorer, channel_masks, masked_scores, noise, scorecam
from camlens.progress import Event
from camlens.replay import build_replay, plan_replay
from camlens.scoring import Goals
from camlens.taps import Taps

runner = CliRunner()
SIZE = 8  # input 8x8; the "feat" layer is 4x4 (stride 2), so masks are really upsampled


class Small(nn.Module):
    """x -> conv 3x3 stride 2 (3->4) -> ReLU [feat] -> conv 1x1 (4->5) -> ReLU [top] -> GAP ->
    Linear (5->3). Channel 3 of feat is dead (bias -100): all zero, a constant map."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.feat = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.top = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.conv1.bias[:3] += 0.5
            self.conv1.bias[3] = -100.0
            self.conv2.bias += 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.top(self.conv2(self.feat(self.conv1(x))))
        out: torch.Tensor = self.fc(self.pool(y).flatten(1))
        return out


@pytest.fixture(scope="module")
def small() -> camlens.Model:
    config = PreprocessConfig(input_size=(SIZE, SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return camlens.load_model(Small(), preprocess=config, labels=["a", "b", "c"])


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


# ---------------------------------------------------------------- independent computations


def bilinear(a: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize of a square [h, h] array to [size, size], written out."""
    n = a.shape[0]
    if align_corners:
        src = np.arange(size) * (n - 1) / (size - 1)
    else:
        src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    t = src - i0
    rows = a[i0] * (1 - t)[:, None] + a[i1] * t[:, None]
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i1] * t[None, :]


def minmax(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def feat_of(net: Small, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, stride=2, padding=1)).numpy()


def logits_of(net: Small, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def final_map(weights: np.ndarray, a: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k), min-max to [0, 1]."""
    m = np.maximum(np.tensordot(weights, a, axes=1), 0)
    return minmax(m)


def mask_scores(
    net: Small,
    xn: np.ndarray,
    a: np.ndarray,
    c: int,
    *,
    align_corners: bool = False,
    order: str = "upsampled",
    coefficient: float = 1.0,
    grain: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Y_c(x * (coefficient * H_k + grain_k)) for every channel k of one image."""
    out = []
    for k in range(a.shape[0]):
        if order == "upsampled":
            mask = minmax(bilinear(a[k], SIZE, align_corners))
        else:
            mask = bilinear(minmax(a[k]), SIZE, align_corners)
        mask = coefficient * mask + (0 if grain is None else grain[k])
        out.append(logits_of(net, (xn * mask)[None])[0, c])
    return np.array(out)


def explained(model: camlens.Model, method: str | object, x: torch.Tensor, **kw: object) -> list:
    return camlens.Explainer(model, method=method, layer="feat", **kw).explain(x, top=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- exact values


@pytest.mark.parametrize(
    ("options", "align_corners", "order"),
    [
        ({}, False, "upsampled"),
        ({"mask_align_corners": True}, True, "upsampled"),
        ({"mask_normalize": "activations"}, False, "activations"),
    ],
)
def test_scorecam_by_hand(
    small: camlens.Model, x: torch.Tensor, options: dict, align_corners: bool, order: str
) -> None:
    net = small.net
    method = get_method("scorecam").with_options(**options)
    results = explained(small, method, x)
    a = feat_of(net, x)
    assert np.all(a[:, 3] == 0)  # the dead channel
    for n, result in enumerate(results):
        assert len(result.maps) == 3
        for m in result.maps:
            s = mask_scores(
                net, x[n].numpy(), a[n], m.class_index, align_corners=align_corners, order=order
            )
            expected = final_map(softmax(s), a[n])
            assert np.abs(m.map.numpy() - expected).max() < 1e-5, (n, m.class_index)


def test_constant_channels_are_scored_once(small: camlens.Model, x: torch.Tensor) -> None:
    """The dead channel's mask is zero, its masked input all zeros: one pass serves it for every
    image; the other 3 channels of 2 images take 6 passes, whatever the number of classes."""
    totals: list[int | None] = []
    for top in (1, 3):
        explainer = camlens.Explainer(small, method="scorecam", layer="feat")
        results = explainer.explain(x, top=top, progress=lambda e: totals.append(e.total))
        assert results[0].stats.perturbation_passes == 2 * 3 + 1
    assert set(totals) == {6}


def test_chunks_do_not_change_the_result(small: camlens.Model, x: torch.Tensor) -> None:
    calls: list[tuple[int, int | None]] = []
    one = camlens.Explainer(
        small, method=["scorecam", "ablationcam"], layer="feat", max_batch_memory=1
    ).explain(x, top=3, progress=lambda e: calls.append((e.done, e.total)))
    many = explained(small, ["scorecam", "ablationcam"], x)
    assert calls[:7] == [(i, 6) for i in range(7)]  # Score-CAM: one row at a time
    for r1, r2 in zip(one, many, strict=True):
        for m1, m2 in zip(r1.maps, r2.maps, strict=True):
            assert torch.allclose(m1.map, m2.map, atol=1e-6), m1.method


def test_baseline_cancels_in_the_softmax(small: camlens.Model, x: torch.Tensor) -> None:
    """softmax_k(s_k - b) = softmax_k(s_k): torchcam's baseline (the unmasked input's score), the
    paper's black image and none at all give the same weights."""
    net = small.net
    with Taps(net, ["feat"]) as taps, torch.inference_mode():
        logits = net(x)
    a = taps.activations["feat"]
    classes = torch.tensor([[0, 1, 2], [2, 0, 1]])
    scorer = Scorer(net, x, logits, Goals.classes(classes, logits.shape[1]).score, 3, a)
    scores = masked_scores(a, scorer)  # [N, D, K], no baseline
    ours = scorecam(a, scorer)
    with torch.inference_mode():
        black = net(torch.zeros(1, 3, SIZE, SIZE)).expand(2, -1)
    for baseline in (logits, black, torch.full_like(logits, 123.0)):
        b = baseline.gather(1, classes)[:, :, None]
        assert torch.allclose(torch.softmax(scores - b, dim=-1), ours, atol=1e-7)
    # and the raw scores are the masked inputs' logits
    mask = minmax(bilinear(a[1, 0].numpy(), SIZE, False))
    assert abs(scores[1, 0, 0] - logits_of(net, (x[1].numpy() * mask)[None])[0, 2]) < 1e-5


def test_iscam_by_hand(small: camlens.Model, x: torch.Tensor) -> None:
    samples = 4
    results = explained(small, get_method("iscam").with_options(samples=samples), x)
    a = feat_of(small.net, x)
    coefficients = np.cumsum(np.arange(1, samples + 1) / samples)  # 1/4, 3/4, 6/4, 10/4
    for n, result in enumerate(results):
        for m in result.maps:
            s = np.mean(
                [
                    mask_scores(small.net, x[n].numpy(), a[n], m.class_index, coefficient=c)
                    for c in coefficients
                ],
                axis=0,
            )
            assert np.abs(m.map.numpy() - final_map(softmax(s), a[n])).max() < 1e-5


def test_sscam_by_hand(small: camlens.Model, x: torch.Tensor) -> None:
    samples, std = 3, 0.5
    results = explained(small, get_method("sscam").with_options(samples=samples, std=std), x)
    a = feat_of(small.net, x)
    for n, result in enumerate(results):
        for m in result.maps:
            s = np.mean(
                [
                    mask_scores(
                        small.net,
                        x[n].numpy(),
                        a[n],
                        m.class_index,
                        grain=[noise(0, i, k, (SIZE, SIZE), std).numpy() for k in range(4)],
                    )
                    for i in range(samples)
                ],
                axis=0,
            )
            assert np.abs(m.map.numpy() - final_map(softmax(s), a[n])).max() < 1e-5
    # without noise it is Score-CAM
    quiet = explained(small, get_method("sscam").with_options(samples=2, std=0.0), x)
    plain = explained(small, "scorecam", x)
    for r1, r2 in zip(quiet, plain, strict=True):
        for m1, m2 in zip(r1.maps, r2.maps, strict=True):
            assert torch.allclose(m1.map, m2.map, atol=1e-6)


def test_ablationcam_by_hand(small: camlens.Model, x: torch.Tensor) -> None:
    net = small.net

    def after_feat(a: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            y = F.relu(F.conv2d(a, net.conv2.weight, net.conv2.bias))
            return F.linear(y.mean(dim=(2, 3)), net.fc.weight, net.fc.bias).double().numpy()

    def after_top(a: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return F.linear(a.mean(dim=(2, 3)), net.fc.weight, net.fc.bias).double().numpy()

    a = torch.as_tensor(feat_of(net, x))
    with torch.no_grad():
        top = F.relu(F.conv2d(a, net.conv2.weight, net.conv2.bias))
    for layer, acts, tail in [("feat", a, after_feat), ("top", top, after_top)]:
        results = camlens.Explainer(small, method="ablationcam", layer=layer).explain(x, top=3)
        for n, result in enumerate(results):
            y = tail(acts[n : n + 1])[0]
            for m in result.maps:
                c = m.class_index
                drops = []
                for k in range(acts.shape[1]):
                    ablated = acts[n : n + 1].clone()
                    ablated[0, k] = 0
                    drops.append((y[c] - tail(ablated)[0, c]) / y[c])
                expected = final_map(np.array(drops), acts[n].numpy())
                assert np.abs(m.map.numpy() - expected).max() < 1e-5, (layer, n, c)


def test_fast_channels_keep_the_most_varied(small: camlens.Model, x: torch.Tensor) -> None:
    """fast_channels=2: only the two channels of largest variance are masked; the softmax runs
    over them alone."""
    results = explained(small, "scorecam", x, fast_channels=2)
    a = feat_of(small.net, x)
    for n, result in enumerate(results):
        keep = np.argsort(-a[n].reshape(4, -1).var(axis=1), kind="stable")[:2]
        for m in result.maps:
            s = mask_scores(small.net, x[n].numpy(), a[n], m.class_index)
            weights = np.zeros(4)
            weights[keep] = softmax(s[keep])
            assert np.abs(m.map.numpy() - final_map(weights, a[n])).max() < 1e-5
    low = camlens.Explainer(small, method="scorecam", layer="feat", fast_resolution=0.5)
    assert low.explain(x)[0].stats.perturbation_passes == 7  # same passes, at 4x4, not 8x8


# ---------------------------------------------------------------- replay after the layer


class Skip(nn.Module):
    """A skip connection around ``mid``: the network cannot be cut there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        out: torch.Tensor = self.fc((torch.relu(self.mid(a)) + a).mean(dim=(2, 3)))
        return out


@pytest.mark.parametrize(
    ("net", "layer", "kind"),
    [(Small(), "top", "head"), (Small(), "feat", "graph"), (Skip(), "mid", "full")],
)
def test_replay_kinds(net: nn.Module, layer: str, kind: str) -> None:
    model = camlens.load_model(net, preprocess=PreprocessConfig(input_size=(SIZE, SIZE)))
    explainer = camlens.Explainer(model, method="gradcam", layer=layer)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with Taps(net, [layer]) as taps, torch.inference_mode():
        logits = net(x)
    a = taps.activations[layer]
    module = net.get_submodule(layer)
    plan = plan_replay(net, layer, module, head=explainer.heads[layer])
    replay = build_replay(plan, net, x, a, taps.outputs[layer], logits)
    assert replay.kind == kind
    edited = a.clone()
    edited[:, 1] = 0
    rows = torch.tensor([2, 0, 1])
    with Taps(net, [layer]), torch.inference_mode():

        def swap(_m: nn.Module, _i: object, _o: object) -> torch.Tensor:
            return edited

        handle = dict(net.named_modules())[layer].register_forward_hook(swap)
        try:
            expected = net(x)
        finally:
            handle.remove()
    got = replay(edited[rows], rows)
    assert torch.allclose(got, expected[rows], atol=1e-5)


# ---------------------------------------------------------------- oracles


def small_input(model: camlens.Model, photo: np.ndarray, size: int) -> torch.Tensor:
    config = dataclasses.replace(model.preprocess, input_size=(size, size))
    return preprocess([Image.fromarray(photo)], config)


def ours(
    model: camlens.Model, method: object, layer: str, x: torch.Tensor, c: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(map at the layer, map at the input) for class c."""
    m = camlens.Explainer(model, method=method, layer=layer).explain(x[0], classes=[c]).maps[0]  # type: ignore[arg-type]
    return m.map, upsample(m.map, (size, size))


def test_scorecam_tiny_oracles(small: camlens.Model, x: torch.Tensor) -> None:
    """On the small network: torchcam's Score-CAM and IS-CAM with its mask order, and
    pytorch-grad-cam's Score-CAM and Ablation-CAM with its upsampling."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import ISCAM
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    net = small.net
    for name, peer, options in [
        ("scorecam", TorchcamScoreCAM, {"mask_normalize": "activations"}),
        ("iscam", ISCAM, {"mask_normalize": "activations", "samples": 10}),
    ]:
        with peer(net, "feat", input_shape=(3, SIZE, SIZE)) as extractor:
            out = net(x)
            theirs = extractor(class_idx=[1, 2], scores=out)[0]
        results = explained(small, get_method(name).with_options(**options), x)
        for n, c in enumerate([1, 2]):
            m = next(m for m in results[n].maps if m.class_index == c)
            assert float((m.map - theirs[n]).abs().max()) < 1e-5, (name, n)
    for peer, method in [
        (ScoreCAM, get_method("scorecam").with_options(mask_align_corners=True)),
        (AblationCAM, "ablationcam"),
    ]:
        with peer(model=net, target_layers=[net.feat]) as cam:
            theirs_np = cam(
                input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
            )
        results = explained(small, method, x)
        for n, c in enumerate([1, 2]):
            m = next(m for m in results[n].maps if m.class_index == c)
            ours_up = upsample(m.map, (SIZE, SIZE)).numpy()
            assert np.abs(ours_up - theirs_np[n]).max() < 1e-4, (peer.__name__, n)


@pytest.fixture(scope="module")
def cases(default_model: camlens.Model, resnet18: camlens.Model, chelsea: np.ndarray) -> list:
    """(model, layer, Ablation-CAM layer, class, input at 64x64). Inner layers keep the peers' one pass per channel
    affordable (112 and 128 channels) and make Ablation-CAM replay a traced graph. The default
    model's Ablation-CAM layer is the expansion inside blocks.2.0 (144 channels after ReLU6):
    blocks.4 ends in a linear bottleneck whose values go negative, where pytorch-grad-cam does not
    zero a channel but sets it to min - 1e7 (see test_ablation_differs_where_activations_go_negative).
    """
    out = []
    for model, layer, ablation_layer in [
        (default_model, "blocks.4", "blocks.2.0.bn1"),
        (resnet18, "layer2", "layer2"),
    ]:
        x = small_input(model, chelsea, 64)
        with torch.inference_mode():
            c = int(model.net(x)[0].abs().argmax())  # the largest logit: (y - y_k) / y is stable
        out.append((model, layer, ablation_layer, c, x))
    return out


def test_scorecam_equals_torchcam(cases: list) -> None:
    from torchcam.methods import ScoreCAM

    for model, layer, _, c, x in cases:
        with ScoreCAM(model.net, layer, batch_size=64, input_shape=(3, 64, 64)) as extractor:
            out = model.net(x)
            theirs = extractor(class_idx=c, scores=out)[0][0]
        method = get_method("scorecam").with_options(mask_normalize="activations")
        mine, _ = ours(model, method, layer, x, c, 64)
        assert float((mine - theirs).abs().max()) < 1e-4, model.name


def test_scorecam_equals_pytorch_grad_cam(cases: list) -> None:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for model, layer, _, c, x in cases:
        module = dict(model.net.named_modules())[layer]
        with ScoreCAM(model=model.net, target_layers=[module]) as cam:
            cam.batch_size = 64
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        method = get_method("scorecam").with_options(mask_align_corners=True)
        _, mine = ours(model, method, layer, x, c, 64)
        assert float(np.abs(mine.numpy() - theirs).max()) < 1e-4, model.name


def grad_cam_ablation(model: camlens.Model, layer: str, x: torch.Tensor, c: int) -> np.ndarray:
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.net.named_modules())[layer]
    with AblationCAM(model=model.net, target_layers=[module], batch_size=64) as cam:
        out: np.ndarray = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
    return out


def test_ablationcam_equals_pytorch_grad_cam(cases: list) -> None:
    for model, _, layer, c, x in cases:
        explainer = camlens.Explainer(model, method="ablationcam", layer=layer)
        result = explainer.explain(x[0], classes=[c])
        mine = upsample(result.maps[0].map, (64, 64))
        assert dict(result.stats.replays)[layer] == "graph"
        theirs = grad_cam_ablation(model, layer, x, c)
        assert float(np.abs(mine.numpy() - theirs).max()) < 1e-4, model.name


def test_ablation_differs_where_activations_go_negative(
    default_model: camlens.Model, chelsea: np.ndarray
) -> None:
    """Pinned: on blocks.4 of the default model (a linear bottleneck, minimum < 0)
    pytorch-grad-cam ablates a channel by setting it to min - 1e7, not 0, and its map is another
    one; camlens zeroes the channel as the paper says. (32x32 input: a 1x1 map would do.)"""
    model, layer = default_model, "blocks.4"
    x = small_input(model, chelsea, 32)
    with Taps(model.net, [layer]) as taps, torch.inference_mode():
        model.net(x)
    assert float(taps.activations[layer].min()) < 0
    _, mine = ours(model, "ablationcam", layer, x, 285, 32)
    theirs = grad_cam_ablation(model, layer, x, 285)
    assert float(np.abs(mine.numpy() - theirs).max()) > 0.1


def test_mask_conventions_differ(cases: list) -> None:
    """Pinned: the three mask conventions give different masks (so the options above matter),
    here by more than 0.02 somewhere on the default model's blocks.4 masks."""
    model, layer, _, _, x = cases[0]
    with Taps(model.net, [layer]) as taps, torch.inference_mode():
        model.net(x)
    a = taps.activations[layer][0]
    paper = channel_masks(a, (64, 64))
    peer1 = channel_masks(a, (64, 64), align_corners=True)
    peer2 = channel_masks(a, (64, 64), normalize="activations")
    assert float((paper - peer1).abs().max()) > 0.02
    assert float((paper - peer2).abs().max()) > 0.02
    live = a.flatten(1).amax(1) > a.flatten(1).amin(1)
    assert torch.all(paper[live].flatten(1).amax(1) == 1)  # the paper's masks span [0, 1]
    assert torch.any(peer2[live].flatten(1).amax(1) < 1)  # torchcam's peaks fall between pixels


# ---------------------------------------------------------------- command line


def test_cli_explains_with_the_new_methods(photo_files: list, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["explain", str(photo_files[0]), "--top", "2", "--out", str(out)]
    for name in ("scorecam", "ablationcam", "eigencam"):
        args += ["--method", name]
    args += ["--fast-channels", "8", "--fast-resolution", "0.25", "--smooth", "pca"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(next(out.rglob("0.json")).read_text())
    found = [(e["method"], e["class_index"]) for e in report["explanations"]]
    assert sorted(found) == sorted(
        (m, c) for m in ("scorecam", "ablationcam", "eigencam") for c in (285, 282)
    )
    for entry in report["explanations"]:
        saved = np.load(next(out.rglob(entry["map"])))
        assert saved.shape == (300, 451) and saved.max() == 1.0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--fast-resolution", "2"], "fast_resolution must be in (0, 1], not 2.0"),
        (["--smooth", "blur"], "unknown smoothing ['blur']"),
        (["--method", "scorecamm"], "unknown method 'scorecamm'"),
    ],
)
def test_cli_refuses_bad_options(photo_files: list, option: list, message: str) -> None:
    result = runner.invoke(app, ["explain", str(photo_files[0]), "--method", "scorecam", *option])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_lists_the_new_methods() -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("scorecam", "sscam", "iscam", "ablationcam", "eigencam", "eigengradcam"):
        assert name in result.stdout


def test_pass_progress_shows_only_slow_passes() -> None:
    """The bar appears once a method's passes have run for more than a second, follows them,
    and goes when they are done."""
    now = [0.0]
    progress = Progress(disable=True)
    bars = EventBars(progress, clock=lambda: now[0])

    def bar(done: int, total: int) -> None:
        bars(Event("passes", done, total))

    bar(0, 100)
    now[0] = 0.5
    bar(10, 100)
    assert not progress.tasks  # fast so far: no bar
    now[0] = 1.5
    bar(20, 100)
    assert [(t.completed, t.total) for t in progress.tasks] == [(20, 100)]
    bar(60, 100)
    assert progress.tasks[0].completed == 60
    bar(100, 100)
    assert not progress.tasks
    bar(0, 5)  # a quick method: never shown
    bar(5, 5)
    assert not progress.tasks


def test_a_fast_resolution_too_small_for_the_model_names_it(weights: Path) -> None:
    """At 1x1 pixels the synthetic CNN's pooling has nothing left: the model's RuntimeError
    becomes a MethodError naming fast_resolution (a 422 from the server, found by schemathesis)."""
    from camlens.errors import MethodError

    model = camlens.load_model("synthetic", weights=weights)
    photo = np.full((40, 50, 3), 128, dtype=np.uint8)
    tiny = camlens.Explainer(model, "scorecam", fast_resolution=1e-7)
    with pytest.raises(MethodError) as caught:
        tiny.explain(photo)
    assert caught.value.option == "fast_resolution"
    assert str(caught.value).startswith(
        "fast_resolution 1e-07 runs the masked passes at 1x1 pixels, which this model cannot take"
    )
    assert camlens.Explainer(model, "scorecam", fast_resolution=0.5).explain(photo).maps
