"""Segmentation models and the segment target: torchvision's four VOC segmentation models by spec
(with a local weights file, ``aux`` not explained) and any module giving ``[N, classes, H, W]``;
a class's logits summed over the pixels the model assigns to it, a box or a mask. Checked by hand
on a tiny segmentation net (Grad-CAM and Ablation-CAM by their formulas) and against
pytorch-grad-cam's ``SemanticSegmentationTarget`` with its GradCAM on deeplabv3_mobilenet_v3_large,
lraspp_mobilenet_v3_large and fcn_resnet50 (seeded random weights, 128 pixels): correlation
>= 0.999 at the photo's size (0.99991, 0.99996 and 0.99977 at the worst target when written)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_targets import camlens_maps
from test_targets_oracles import LEAST, at_photo, correlation, peer_maps
from torch import nn

import camlens
from camlens.images import PreprocessConfig, preprocess
from camlens.maps import normalize
from camlens.models.segmentation import VOC_LABELS
from camlens.scoring import TargetPlan
from camlens.targets import ClassScore, Contrast, Segment, TargetError, target_from_dict

SIZE = (128, 128)
NAMES = [
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]


def quiet_load(spec: str, **kwargs: object) -> camlens.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return camlens.load_model(spec, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def segmenter() -> camlens.Model:
    """LR-ASPP MobileNetV3 with seeded random weights at 128 pixels: the lightest of the four,
    and its output depends on the input (random DeepLabV3-MobileNet's does not: its masked
    passes would all score the same)."""
    torch.manual_seed(0)
    model = quiet_load("torchvision:lraspp_mobilenet_v3_large")
    model.preprocess = PreprocessConfig(input_size=SIZE, interpolation="bilinear")
    return model


@pytest.fixture(scope="module")
def photo(chelsea: np.ndarray) -> Image.Image:
    return Image.fromarray(chelsea).resize((180, 120))


class TinySeg(nn.Module):
    """conv(3 -> 4, 3x3) -> ReLU -> 1x1 conv classifier (4 -> 3) -> nearest upsample x2, as a
    dict with ``out`` (and an ``aux`` that is not explained)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.classifier(self.relu(self.conv(x)))
        return {"out": nn.functional.interpolate(y, scale_factor=2), "aux": y * 0}


def tiny() -> camlens.Model:
    torch.manual_seed(3)
    return camlens.load_model(
        TinySeg(), preprocess=PreprocessConfig(input_size=(8, 8), interpolation="bilinear")
    )


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_segmentation_specs(name: str) -> None:
    model = quiet_load(f"torchvision:{name}")
    assert model.kind == "segmentation"
    assert model.labels == VOC_LABELS
    assert model.preprocess.input_size == (520, 520)
    assert model.default_layer is not None
    model.net.get_submodule(model.default_layer)  # named as in torchvision's network
    out = model.net(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 21, 64, 64)


def test_weights_file_with_aux_head(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.get_model(
        "deeplabv3_mobilenet_v3_large",
        weights=None,
        weights_backbone=None,
        aux_loss=True,
        num_classes=5,
    ).eval()
    path = tmp_path / "seg.pth"
    torch.save(net.state_dict(), path)
    model = camlens.load_model("torchvision:deeplabv3_mobilenet_v3_large", weights=path)
    assert model.kind == "segmentation" and model.num_classes == 5
    assert model.weights == path
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.net(x), net(x)["out"], atol=1e-5)  # `out`, not `aux`


def test_any_module_with_pixel_logits() -> None:
    model = tiny()
    assert model.kind == "segmentation"
    assert model.labels == ("class 0", "class 1", "class 2")
    assert model.net(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 16, 16)
    classifier = quiet_load("torchvision:resnet18")
    assert classifier.kind == "classifier"
    pooled = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1))  # [N, 4, 1, 1]
    assert quiet_load(pooled).kind == "classifier"


def test_predictions_are_pixel_shares() -> None:
    model = tiny()
    y = torch.zeros(1, 3, 2, 2)
    y[0, 1, 0, :] = 5  # class 1 on the top row
    y[0, 2, 1, 0] = 5  # class 2 on one pixel
    assert model.predict(y).tolist() == [[0.25, 0.5, 0.25]]


# --- the target, by hand ---------------------------------------------------------------------


def test_gradcam_by_hand_on_a_tiny_segmenter() -> None:
    """s = sum over R of y[c] with y = up2(W relu(A) + b): dS/dA[k, p, q] = W[c, k] times the
    number of R's output pixels that (p, q) covers, so alpha_k = W[c, k] |R| / (h w); Grad-CAM =
    relu(sum_k alpha_k A_k) at the ReLU's output."""
    model = tiny()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model.net.relu(model.net.conv(x))[0]  # [4, 8, 8]
        y = model.net(x)[0]  # [3, 16, 16]
    weight = model.net.classifier.weight[:, :, 0, 0].detach()
    predicted = y.argmax(dim=0)
    for target, region in [
        (Segment(1), predicted == 1),
        (Segment(2, box=(2, 4, 9, 12)), None),
    ]:
        if region is None:  # photo = output grid here: the box's own pixels
            region = torch.zeros(16, 16, dtype=torch.bool)
            region[4:12, 2:9] = True
        c = target.cls
        assert isinstance(c, int)
        alpha = weight[c] * float(region.sum()) / (8 * 8)
        expected = torch.relu((alpha[:, None, None] * a).sum(0))
        maps, capture = camlens_maps(model, x, "relu", "gradcam", [[target]])
        raw, _ = normalize(expected[None])
        assert torch.allclose(maps[0, 0], raw[0], atol=1e-5)
        goals = capture.goals([[target]])
        assert float(goals.values[0, 0]) == pytest.approx(float(y[c][region].sum()), rel=1e-5)


def test_ablationcam_by_hand_on_a_tiny_segmenter() -> None:
    """Zeroing channel k of the ReLU's output takes W[c, k] sum_pq A_k[p, q] n_R(p, q) from the
    segment's score s (n_R: the output pixels of R that (p, q) covers): w_k = that / s."""
    model = tiny()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model.net.relu(model.net.conv(x))[0]
        y = model.net(x)[0]
    weight = model.net.classifier.weight[:, :, 0, 0].detach()
    c = 2
    region = torch.zeros(16, 16)
    region[4:12, 2:9] = 1
    covered = nn.functional.avg_pool2d(region[None, None], 2)[0, 0] * 4  # n_R(p, q)
    s = float(y[c][region.bool()].sum())
    w = torch.stack([weight[c, k] * (a[k] * covered).sum() for k in range(4)]) / s
    expected, _ = normalize(torch.relu((w[:, None, None] * a).sum(0))[None])
    maps, _ = camlens_maps(model, x, "relu", "ablationcam", [[Segment(c, box=(2, 4, 9, 12))]])
    assert torch.allclose(maps[0, 0], expected[0], atol=1e-5)


def test_regions_stay_those_of_the_unperturbed_pass() -> None:
    model = tiny()
    plan = TargetPlan(model, [])
    y = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    goals = plan.goals(y, [[Segment(0)]])
    other = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(9))  # a perturbed pass
    region = y[0].argmax(0) == 0
    score = goals.score(other, torch.tensor([0]))
    assert float(score[0, 0]) == pytest.approx(float(other[0, 0][region].sum()), rel=1e-5)
    assert goals.explained[0][0].data == {
        "kind": "segment",
        "classes": [0],
        "region": "predicted",
        "pixels": int(region.sum()),
    }


def test_a_box_counts_the_output_pixels_it_meets() -> None:
    """A 2x2 output grid on a 100x60 photo: output pixel (i, j) covers x in [50 j, 50 (j + 1)),
    y in [30 i, 30 (i + 1))."""
    model = tiny()
    plan = TargetPlan(model, [])
    y = torch.arange(12.0).reshape(1, 3, 2, 2)
    goals = plan.goals(y, [[Segment(1, box=(10, 5, 49, 40))]], sizes=[(100, 60)])
    assert goals.regions is not None
    assert goals.regions[0, 0].tolist() == [[1, 0], [1, 0]]
    assert float(goals.values[0, 0]) == 4 + 6
    with pytest.raises(TargetError, match="outside the 100x60 image"):
        plan.goals(y, [[Segment(1, box=(10, 5, 101, 40))]], sizes=[(100, 60)])


# --- against pytorch-grad-cam ----------------------------------------------------------------


pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402


@pytest.mark.parametrize(
    "spec",
    [
        "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
        pytest.param("fcn_resnet50", marks=pytest.mark.slow),  # 12 s; three classes present
    ],
)
def test_same_map_as_pytorch_grad_cam(spec: str, photo: Image.Image) -> None:
    torch.manual_seed(0)
    model = quiet_load(f"torchvision:{spec}")
    model.preprocess = PreprocessConfig(input_size=SIZE, interpolation="bilinear")
    layer = model.default_layer
    assert layer is not None
    x = preprocess([photo], model.preprocess)
    with torch.no_grad():
        y = model.net(x)[0]
    predicted = y.argmax(0)
    present = predicted.unique().tolist()
    size = (photo.height, photo.width)
    box = np.zeros(SIZE, dtype=np.float32)
    box[32:96, 16:80] = 1  # the box 16,32,80,96 of a 128x128 photo
    cases = [(Segment(c), (predicted == c).float().numpy(), c) for c in present]
    cases.append((Segment(present[0], box=(16, 32, 80, 96)), box, present[0]))
    absent = next(c for c in range(21) if c not in present)  # a class over a region all the same
    cases.append((Segment(absent, box=(16, 32, 80, 96)), box, absent))
    for target, mask, c in cases:
        maps, _ = camlens_maps(model, x, layer, "gradcam", [[target]])
        # the box is in the photo's pixels: here the input's size (no photo sizes given)
        reference = peer_maps(
            model.net, model.net.get_submodule(layer), x, [SemanticSegmentationTarget(c, mask)]
        )
        found = correlation(at_photo(maps[:, 0], size), at_photo(reference, size))
        assert found >= LEAST, (target, found)


# --- through the Explainer -------------------------------------------------------------------


def test_explainer_top_leaves_background_out(segmenter: camlens.Model, photo: Image.Image) -> None:
    with pytest.warns(UserWarning, match="cam left out"):
        ex = camlens.Explainer(segmenter, method=["gradcam", "cam", "eigencam"])
    result = ex.explain(photo, top=3)
    shares = {p.label: p.score for p in result.predictions}
    assert sum(shares.values()) <= 1 + 1e-6
    explained = {m.class_index for m in result.maps}
    assert 0 not in explained
    assert {m.method for m in result.maps} == {"gradcam", "eigencam"}
    for m in result.maps:
        assert m.target is not None and m.target["kind"] == "segment"
        assert m.score == pytest.approx(shares[VOC_LABELS[m.class_index]])
    asked = ex.explain(photo, classes=["__background__"])
    assert [m.class_index for m in asked.maps] == [0, 0]


@pytest.mark.parametrize("method", ["ablationcam", "scorecam", "gradcampp", "layercam"])
def test_every_method_scores_segments(
    segmenter: camlens.Model, photo: Image.Image, method: str
) -> None:
    target = Segment("cat", box=(20, 10, 120, 90))
    ex = camlens.Explainer(
        segmenter,
        method=method,
        layer="backbone.4",  # the low branch: with random weights the high one barely counts
        targets=[target],
        fast_channels=8 if method in ("ablationcam", "scorecam") else None,
        relu=False,  # signed maps: a method that ignored the segment would give a flat one
    )
    result = ex.explain(photo)
    (m,) = result.maps
    assert not m.flat
    assert m.target is not None and m.target["region"] == [20, 10, 120, 90]
    assert m.label == "cat in 20,10,120,90"
    assert np.isfinite(m.map.numpy()).all()


def test_passes_at_a_lower_resolution_score_the_same_regions(
    segmenter: camlens.Model, photo: Image.Image
) -> None:
    """fast_resolution=0.5 runs the masked passes at 64 pixels: their 64x64 outputs are resized to
    the 128x128 regions of the unperturbed pass before the segment is summed."""
    target = Segment("cat", box=(20, 10, 120, 90))
    options = {"method": "scorecam", "targets": [target], "fast_channels": 32, "relu": False}
    full = camlens.Explainer(segmenter, **options).explain(photo)  # type: ignore[arg-type]
    fast = camlens.Explainer(segmenter, fast_resolution=0.5, **options).explain(photo)  # type: ignore[arg-type]
    assert fast.stats.perturbation_passes == full.stats.perturbation_passes
    a, b = full.maps[0].map.flatten(), fast.maps[0].map.flatten()
    assert np.isfinite(b.numpy()).all()
    assert not (full.maps[0].flat or fast.maps[0].flat)
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9


def test_mask_file_and_array(segmenter: camlens.Model, photo: Image.Image, tmp_path: Path) -> None:
    mask = np.zeros((photo.height, photo.width), dtype=bool)
    mask[20:80, 30:150] = True
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    by_file = camlens.Explainer(segmenter, targets=[Segment("dog", mask=str(path))]).explain(photo)
    by_array = camlens.Explainer(segmenter, targets=[Segment("dog", mask=mask)]).explain(photo)
    assert torch.allclose(by_file.maps[0].map, by_array.maps[0].map)
    assert by_file.maps[0].target is not None
    assert by_file.maps[0].target["mask"] == str(path)
    report = json.loads(by_file.save(tmp_path / "out", "photo").read_text())
    assert report["segments_overlay"] == "photo.segments.png"
    overlay = Image.open(tmp_path / "out" / "photo.segments.png")
    assert overlay.size == photo.size
    assert report["segmentation"] == by_file.segments.shares()  # type: ignore[union-attr]
    # VOC 12: dog, over a mask: named by its target, as a run names it
    assert report["explanations"][0]["overlay"].endswith(".12-mask.png")


# --- bad input -------------------------------------------------------------------------------


def test_bad_segments_are_named(
    segmenter: camlens.Model, photo: Image.Image, tmp_path: Path
) -> None:
    with pytest.raises(TargetError, match="outside the 180x120 image"):
        camlens.Explainer(segmenter, targets=[Segment(1, box=(0, 0, 181, 50))]).explain(photo)
    with pytest.raises(TargetError, match="the mask is empty"):
        Segment(1, mask=np.zeros((4, 4), dtype=bool))
    empty = tmp_path / "empty.png"
    Image.new("L", (180, 120)).save(empty)
    with pytest.raises(TargetError, match=r"empty\.png is empty"):
        camlens.Explainer(segmenter, targets=[Segment(1, mask=str(empty))])
    small = tmp_path / "small.png"
    Image.new("L", (18, 12), 255).save(small)
    with pytest.raises(TargetError, match=r"small\.png is 18x12, the image 180x120"):
        camlens.Explainer(segmenter, targets=[Segment(1, mask=str(small))]).explain(photo)
    with pytest.raises(camlens.errors.ClassError, match="'unicorn' is not one of"):
        camlens.Explainer(segmenter, targets=[Segment("unicorn")])
    with pytest.raises(TargetError, match="x0 < x1"):
        Segment(1, box=(5, 0, 5, 10))
    with pytest.raises(TargetError, match="box or a mask, not both"):
        Segment(1, box=(0, 0, 5, 10), mask=str(small))
    with pytest.raises(TargetError, match="is a segmentation model"):
        camlens.Explainer(segmenter, targets=[Contrast("cat", ("dog",))])
    classifier = quiet_load("torchvision:resnet18")
    with pytest.raises(TargetError, match="explains a segmentation model"):
        camlens.Explainer(classifier, targets=[Segment(1)])


def test_json_round_trip() -> None:
    for t in (Segment("cat"), Segment(3, box=(1, 2, 3, 4)), Segment("dog", mask="m.png")):
        assert target_from_dict(t.to_dict()) == t
    assert Segment("cat", box="1,2,3,4").box == (1, 2, 3, 4)
    with pytest.raises(TargetError, match="cannot be written as JSON"):
        Segment(1, mask=np.ones((2, 2), dtype=bool)).to_dict()
    assert ClassScore("cat").to_dict() == {"kind": "class", "class": "cat"}


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_files(tmp_path_factory: pytest.TempPathFactory, photo: Image.Image) -> Path:
    import torchvision

    folder = tmp_path_factory.mktemp("seg")
    photo.save(folder / "cat.jpg")
    torch.manual_seed(0)
    net = torchvision.models.get_model(
        "deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None, aux_loss=True
    )
    torch.save(net.state_dict(), folder / "seg.pth")
    mask = np.zeros((photo.height, photo.width), dtype=np.uint8)
    mask[20:80, 30:150] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.new("L", photo.size).save(folder / "empty.png")
    return folder


def explain_cli(folder: Path, out: str, *args: str) -> tuple[int, str]:
    """``camlens explain cat.jpg`` (run in ``folder``: the reports land at OUT/cat.json)."""
    from typer.testing import CliRunner

    from camlens.cli import app

    spec = "torchvision:deeplabv3_mobilenet_v3_large"
    result = CliRunner().invoke(
        app,
        [
            *("explain", "cat.jpg", "--model", spec),
            *("--weights", str(folder / "seg.pth"), "--input-size", "128"),
            *("--out", str(folder / out), *args),
        ],
    )
    return result.exit_code, result.output


def test_cli_explains_the_segments(seg_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(seg_files)
    code, output = explain_cli(seg_files, "top", "--top", "2", "--method", "gradcam")
    assert code == 0, output
    report = json.loads((seg_files / "top" / "cat.json").read_text())
    shares = report["segmentation"]
    assert shares and sum(s["share"] for s in shares) == pytest.approx(1.0, abs=1e-4)
    assert [p["label"] for p in report["predictions"]] == [s["label"] for s in shares][:5]
    assert (seg_files / "top" / report["segments_overlay"]).is_file()
    present = [s["class_index"] for s in shares if s["label"] != "__background__"][:2]
    assert [e["class_index"] for e in report["explanations"]] == present
    for entry in report["explanations"]:
        assert entry["target"]["kind"] == "segment"
        assert entry["target"]["region"] == "predicted"
        assert (seg_files / "top" / entry["overlay"]).is_file()

    from typer.testing import CliRunner

    from camlens.cli import app

    listed = CliRunner().invoke(app, ["summary", "top"])
    assert listed.exit_code == 0, listed.output
    assert "segments: images with the class" in " ".join(listed.output.split())
    assert f"{shares[0]['label']} ({shares[0]['class_index']})" in listed.output

    code, output = explain_cli(
        seg_files, "region", "--class", "cat", "--class", "dog", "--region", "30,20,150,80"
    )
    assert code == 0, output
    report = json.loads((seg_files / "region" / "cat.json").read_text())
    assert [e["label"] for e in report["explanations"]] == [
        "cat in 30,20,150,80",
        "dog in 30,20,150,80",
    ]
    assert len({e["overlay"] for e in report["explanations"]}) == 2
    by_box = np.load(seg_files / "region" / report["explanations"][0]["map"])

    code, output = explain_cli(
        seg_files, "mask", "--class", "cat", "--mask", str(seg_files / "mask.png")
    )
    assert code == 0, output
    report = json.loads((seg_files / "mask" / "cat.json").read_text())
    (entry,) = report["explanations"]
    assert entry["target"]["region"] == "mask" and entry["label"] == "cat in mask.png"
    by_mask = np.load(seg_files / "mask" / entry["map"])
    assert by_mask.shape == by_box.shape == (120, 180)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--class", "cat", "--region", "30,20,181,80"], "outside the 180x120 image"),
        (["--class", "cat", "--region", "30,20,10"], "a region is x0,y0,x1,y1"),
        (["--class", "cat", "--mask", "EMPTY"], "empty.png is empty"),
        (["--class", "unicorn"], "'unicorn' is not one of"),
        (["--region", "1,2,3,4"], "--region needs --class"),
    ],
)
def test_cli_bad_segments_exit_2(
    seg_files: Path, args: list[str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(seg_files)
    args = [str(seg_files / "empty.png") if a == "EMPTY" else a for a in args]
    code, output = explain_cli(seg_files, "bad", *args)
    assert code == 2, output
    assert line in output
    assert "Traceback" not in output


def test_flipped_test_time_augmentation_mirrors_the_box(
    segmenter: camlens.Model, photo: Image.Image
) -> None:
    """With tta's flip, the mirrored input's map explains the mirrored box: the merged map is
    the mean of the photo's map and the mirrored photo's (box mirrored too), flipped back."""
    box = (10, 20, 70, 100)  # far from symmetric in the 180-pixel-wide photo
    mirrored_box = (180 - 70, 20, 180 - 10, 100)
    tta = camlens.Explainer(
        segmenter, targets=[Segment("cat", box=box)], smooth="tta", tta_scales=(1.0,)
    ).explain(photo)
    plain = camlens.Explainer(segmenter, targets=[Segment("cat", box=box)]).explain(photo)
    mirror = camlens.Explainer(segmenter, targets=[Segment("cat", box=mirrored_box)]).explain(
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    )
    expected, _ = normalize(((plain.maps[0].map + mirror.maps[0].map.flip(-1)) / 2)[None])
    assert torch.allclose(tta.maps[0].map, expected[0], atol=1e-3)
    assert tta.maps[0].target is not None and tta.maps[0].target["region"] == list(box)


def test_summary_lists_the_segments() -> None:
    from camlens.runs import summarize

    def row(image: str, shares: dict[int, float]) -> dict[str, object]:
        segmentation = [
            {"class_index": c, "label": VOC_LABELS[c], "share": v} for c, v in shares.items()
        ]
        predictions = [{**s, "score": s["share"]} for s in segmentation]
        return {"image": image, "predictions": predictions, "segmentation": segmentation}

    result = summarize([row("a", {0: 0.5, 8: 0.3, 12: 0.2}), row("b", {0: 0.9, 8: 0.1})])
    lines = [(s.label, s.images, round(s.share, 6)) for s in result.segments]
    assert lines == [("__background__", 2, 0.7), ("cat", 2, 0.2), ("dog", 1, 0.2)]


def test_config_round_trip_computes_the_same_maps(
    segmenter: camlens.Model, photo: Image.Image
) -> None:
    """A segment target goes through the config's JSON (as a Ray actor or a server worker
    rebuilds it) and gives the same bytes."""
    from camlens.config import ExplainConfig

    ex = camlens.Explainer(segmenter, targets=[Segment("cat", box=(20, 10, 120, 90))])
    again = camlens.Explainer.from_config(ExplainConfig.from_json(ex.config.to_json()), segmenter)
    assert again.config.targets == ex.config.targets
    assert torch.equal(ex.explain(photo).maps[0].map, again.explain(photo).maps[0].map)
