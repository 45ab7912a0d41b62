"""Bad input, tried as a new user would: no output lost, no traceback, no NaN in a report, and
answers that say what is wrong. One test (or more) per case found, mostly through the command
line with the synthetic benchmark's small CNN (random weights, 64x64 inputs) to stay fast;
tests/test_corpus.py runs many more cases of the same kinds."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from awkward import (
    assert_clean,
    cat,
    coco,
    cup,
    invoke,
    problems,
    strict_json,
    strict_reports,
    synthetic_weights,
    warnings_of,
)
from PIL import Image
from torch import nn

import camlens
from camlens.errors import CamlensError

GPU = torch.cuda.is_available()


def nothing_under(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


def leftovers(folder: Path) -> list[Path]:
    """Temporary files left behind by a write."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


# --- output lost or overwritten -------------------------------------------------------------------


def test_same_stem_other_extension_gets_its_own_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syn: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cat(tmp_path / "in" / "photo.tiff")
    cup(tmp_path / "in" / "photo.webp")
    result = invoke("explain", "in/photo.tiff", "in/photo.webp", "--out", "o", *syn)
    assert_clean(result, bad=0)
    reports = [strict_json(p.read_text()) for p in Path("o").rglob("*.json")]
    assert sorted(r["image"] for r in reports) == ["in/photo.tiff", "in/photo.webp"]
    result = invoke("localize", "in/photo.tiff", "in/photo.webp", "--out", "l", *syn, "--top", "2")
    assert_clean(result, bad=0)
    lines = [strict_json(line) for line in Path("l/boxes.jsonl").read_text().splitlines()]
    pictures = {line["picture"] for line in lines}
    assert len(lines) == 2 and len(pictures) == 2
    assert all((Path("l") / p).is_file() for p in pictures)


def test_a_failing_localize_keeps_the_earlier_boxes(photos: list[str], syn: list[str]) -> None:
    assert_clean(invoke("localize", "cat.jpg", "--out", "o", *syn, "--top", "2"), bad=0)
    before = Path("o/boxes.jsonl").read_text()
    assert "cat.jpg" in before
    result = invoke("localize", "typo.jpg", "--out", "o", *syn, "--top", "2")
    assert_clean(result, bad=1)
    assert "typo.jpg" in problems(result)[0]
    assert Path("o/boxes.jsonl").read_text() == before
    assert not leftovers(Path("o"))


def test_an_evaluation_of_nothing_keeps_the_earlier_report(
    photos: list[str], syn: list[str]
) -> None:
    data = coco(Path("set/annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    cat(Path("set/cat.jpg"))
    fast = ["--steps", "2", "--no-road"]
    good = invoke("evaluate", data, *syn, "--out", "ev", *fast)
    assert_clean(good, bad=0)
    before = Path("ev/evaluation.json").read_text()
    assert strict_json(before)["evaluated"] == 1
    plot = Path("ev/deletion_insertion.png").read_bytes()
    result = invoke("evaluate", data, "--images", "typo", *syn, "--out", "ev", *fast)
    assert_clean(result, bad=1)
    assert "typo" in problems(result)[0]
    assert Path("ev/evaluation.json").read_text() == before
    assert Path("ev/deletion_insertion.png").read_bytes() == plot
    assert "left as it was" in result.stdout
    assert not leftovers(Path("ev"))


def test_evaluate_writes_its_report_whole_and_strict(
    photos: list[str], syn: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from camlens.evaluate import evaluate

    data = coco(Path("set/annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    cat(Path("set/cat.jpg"))
    model = camlens.load_model("synthetic", weights=syn[-1])
    report = evaluate(model, data, "gradcam", faithfulness=False)
    Path("r.json").write_text("earlier")
    written = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        written(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched, pytest.raises(CamlensError, match=r"r\.json"):
        patched.setattr(Path, "write_text", disk_full)
        report.save("r.json")
    assert Path("r.json").read_text() == "earlier"
    assert not leftovers(Path("."))
    report.rows["gradcam"]["classification"] = float("nan")  # a metric that went wrong
    saved = strict_json(report.save("r.json").read_text())
    assert saved["methods"][0]["classification"] is None


@pytest.mark.parametrize(
    "options",
    [
        ["--alpha", "-0.5"],
        ["--alpha", "nan"],
        ["--cmap", "no-such-map"],
        ["--threshold", "1.5"],
        ["--top", "0"],
        ["--method", "gradcam", "--method", "nope"],
        ["--smooth", "blur"],
        ["--fast-resolution", "0"],
    ],
)
def test_every_option_is_checked_before_anything_runs(
    photos: list[str], syn: list[str], options: list[str]
) -> None:
    result = invoke("explain", *photos, "--out", "o", *syn, *options)
    assert_clean(result, bad=1)
    assert nothing_under(Path("o"))


# --- tracebacks instead of a message --------------------------------------------------------------


@pytest.mark.parametrize("command", ["explain", "localize", "evaluate"])
def test_an_output_place_that_cannot_be_used_is_said_first(
    photos: list[str], syn: list[str], command: str
) -> None:
    data = coco(Path("annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    target = [str(data)] if command == "evaluate" else photos
    if command == "localize":
        target = [*target, "--top", "2"]
    Path("taken").write_text("a file")
    for out, says in [("taken", "is a file, not a folder"), ("/proc/x", "cannot be created")]:
        result = invoke(command, *target, *syn, "--out", out)
        assert_clean(result, bad=1)
        assert f"--out {out} {says}" in problems(result)[0]
        assert result.stdout == ""  # nothing ran: no result line
    assert Path("taken").read_text() == "a file"


@pytest.fixture
def train_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two classes of two small photos each, in the current folder's ``data/``."""
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        cat(tmp_path / "data" / "cat" / f"{i}.jpg", size=(40 + 8 * i, 32))
        cup(tmp_path / "data" / "cup" / f"{i}.png", size=(36, 30 + 6 * i))
    return tmp_path / "data"


TRAIN_FAST = ["--epochs", "1", "--views", "1", "--val", "0"]


def test_train_checks_its_checkpoint_path_before_training(train_folder: Path) -> None:
    Path("folder.camlens").mkdir()
    for out, says in [
        ("/proc/x.camlens", "/proc/x.camlens"),
        ("folder.camlens", "folder.camlens is a folder"),
    ]:
        result = invoke("train", train_folder, *TRAIN_FAST, "--out", out)
        assert_clean(result, bad=1)
        assert says in problems(result)[0]
        assert ".tmp" not in result.stderr
        assert "epoch" not in result.stdout + result.stderr  # refused before training


def test_save_names_the_users_path() -> None:
    torch.manual_seed(0)
    model = camlens.build_cam_model(class_names=["a", "b"])
    with pytest.raises(CamlensError, match=r"/proc/x\.camlens") as caught:
        camlens.save(model, "/proc/x.camlens")
    assert ".tmp" not in str(caught.value)


def test_a_grid_that_is_a_folder_is_refused_first(photos: list[str], syn: list[str]) -> None:
    Path("grid.png").mkdir()
    result = invoke("explain", *photos, *syn, "--out", "o", "--grid", "grid.png")
    assert_clean(result, bad=1)
    assert "--grid grid.png is a folder" in problems(result)[0]
    assert nothing_under(Path("o"))


def device_cases() -> list[object]:
    cases: list[object] = [("banana", "unknown device 'banana'")]
    cases.append(
        pytest.param(
            "cuda", "device 'cuda' is not available", marks=pytest.mark.skipif(GPU, reason="GPU")
        )
    )
    return cases


@pytest.mark.parametrize(("device", "says"), device_cases())
@pytest.mark.parametrize("command", ["explain", "localize", "layers", "evaluate", "train"])
def test_a_device_that_is_not_there_is_one_line(
    train_folder: Path, syn: list[str], command: str, device: str, says: str
) -> None:
    cat(Path("cat.jpg"))
    data = coco(Path("annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    args = {
        "explain": ["cat.jpg", *syn, "--out", "o"],
        "localize": ["cat.jpg", *syn, "--out", "o", "--top", "2"],
        "layers": syn,
        "evaluate": [str(data), *syn, "--out", "o"],
        "train": [str(train_folder), *TRAIN_FAST, "--out", "m.camlens"],
    }[command]
    result = invoke(command, *args, "--device", device)
    assert_clean(result, bad=1)
    assert says in problems(result)[0]
    assert "available" in problems(result)[0]
    assert nothing_under(Path("o")) and not Path("m.camlens").exists()


@pytest.mark.parametrize(("device", "says"), device_cases())
def test_a_device_that_is_not_there_from_python(device: str, says: str) -> None:
    with pytest.raises(CamlensError, match=says):
        camlens.load_model(tiny_module(), preprocess=TINY, device=device)
    model = camlens.load_model(tiny_module(), preprocess=TINY)
    with pytest.raises(CamlensError, match=says):
        camlens.Explainer(model, device=device)
    with pytest.raises(CamlensError, match=says):
        camlens.build_cam_model(class_names=["a", "b"], device=device)


def test_bracketed_file_names_print_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syn: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cat(tmp_path / "[cat] photo.jpg")
    cup(tmp_path / "[" / "x].jpg")  # its path reads [/x].jpg
    Path("[bold]broken.jpg").write_text("not an image")
    names = ["[cat] photo.jpg", "[/x].jpg", "[bold]broken.jpg"]
    for command in ("explain", "localize"):
        result = invoke(command, *names, *syn, "--out", command, "--top", "2")
        assert_clean(result, bad=1)
        assert "[bold]broken.jpg" in problems(result)[0]
        assert "[cat] photo.jpg: " in result.stdout
        assert "[/x].jpg: " in result.stdout
    assert len(list(Path("explain").rglob("*.json"))) == 2


def test_evaluate_prints_its_messages_as_they_are(
    photos: list[str], syn: list[str], tmp_path: Path
) -> None:
    data = coco(
        Path("[set].json"),
        [
            ("cat.jpg", [("disc", [10, 10, 40, 30])]),
            ("cup.png", [("square", [1, 2])]),
            ("[/gone].jpg", [("disc", [1, 1, 5, 5])]),
        ],
    )
    result = invoke("evaluate", data, *syn, "--out", "ev", "--no-faithfulness")
    assert_clean(result, bad=2)
    said = "\n".join(problems(result))
    assert "has a malformed bbox [1, 2] (want [x, y, w, h])" in said
    assert "[/gone].jpg: named in [set].json" in said
    assert "[set].json: 1 of 3 images" in result.stdout


def test_train_prints_class_and_file_names_as_they_are(train_folder: Path) -> None:
    (train_folder / "cat").rename(train_folder / "[cat]")
    (train_folder / "[cup]").mkdir()
    for png in (train_folder / "cup").iterdir():
        png.rename(train_folder / "[cup]" / png.name)
    (train_folder / "cup").rmdir()
    (train_folder / "[cup]" / "[bold]x.jpg").write_text("not an image")
    out = Path("[m].camlens")
    result = invoke(
        "train", train_folder, "--epochs", "1", "--views", "1", "--val", "0.5", "--out", out
    )
    assert_clean(result, bad=1)
    assert "[bold]x.jpg" in problems(result)[0]
    assert "[cat]" in result.stdout and "[cup]" in result.stdout  # the confusion matrix
    assert "wrote [m].camlens" in result.stdout
    assert camlens.load_model(out).labels == ("[cat]", "[cup]")


def test_a_model_that_gives_nan_is_named(photos: list[str], tmp_path: Path, syn: list[str]) -> None:
    broken = synthetic_weights(tmp_path / "nan.pt", fill=float("nan"))
    data = coco(Path("annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    model = ["--model", "synthetic", "--weights", str(broken)]
    for args in (
        ["explain", *photos, "--out", "o"],
        ["explain", *photos, "--out", "o", "--method", "cam"],
        ["localize", *photos, "--out", "o", "--top", "2"],
        ["evaluate", str(data), "--out", "o"],
    ):
        result = invoke(*args, *model)
        assert_clean(result, bad=1)
        assert "synthetic gives NaN or infinite scores" in problems(result)[0]
        assert nothing_under(Path("o"))
    result = invoke("layers", *model)
    assert_clean(result, bad=0)
    assert "synthetic gives NaN or infinite scores" in warnings_of(result)[0]


# --- NaN in a report ------------------------------------------------------------------------------


class Tiny(nn.Module):
    """conv -> ReLU -> GAP -> linear, 3 classes."""

    def __init__(self, zero_head: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        if zero_head:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))
        return out


TINY = camlens.PreprocessConfig(input_size=(16, 16), interpolation="bilinear")


def tiny_module(zero_head: bool = False) -> Tiny:
    torch.manual_seed(0)
    return Tiny(zero_head)


def tiny(zero_head: bool = False) -> camlens.Model:
    return camlens.load_model(tiny_module(zero_head), preprocess=TINY, labels=["a", "b", "c"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused(value: float) -> None:
    explainer = camlens.Explainer(tiny())
    x = torch.zeros(2, 3, 16, 16)
    x[1, 0, 3, 4] = value
    with pytest.raises(CamlensError, match="NaN or infinite"):
        explainer.explain(x)


def test_a_report_is_strict_json(tmp_path: Path) -> None:
    from camlens.errors import FlatMapWarning

    explainer = camlens.Explainer(tiny(zero_head=True), method=["gradcam", "cam", "scorecam"])
    with pytest.warns(FlatMapWarning, match=r"<image 0>: 9 of 9 maps are flat"):
        result = explainer.explain(torch.zeros(3, 16, 16), top=3)  # every score equal: flat
    report = result.save(tmp_path)
    assert strict_reports(tmp_path) == 1
    assert all(e["flat"] for e in strict_json(report.read_text())["explanations"])


# --- confusing answers ----------------------------------------------------------------------------


def test_explain_each_keeps_the_good_results(tmp_path: Path) -> None:
    good = cat(tmp_path / "good.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_text("no")
    explainer = camlens.Explainer(tiny(), batch_size=2)
    with pytest.raises(CamlensError, match=r"broken\.jpg"):
        explainer.explain([good, broken])  # all or nothing
    each = explainer.explain_each([good, broken, str(tmp_path / "missing.jpg"), good])
    assert [type(r).__name__ for r in each] == [
        "Explanation",
        "ImageError",
        "ImageError",
        "Explanation",
    ]
    assert isinstance(each[0], camlens.Explanation) and each[0].source == str(good)
    assert "broken.jpg" in str(each[1]) and "missing.jpg" in str(each[2])
    alone = explainer.explain(good)
    assert torch.allclose(each[0].maps[0].map, alone.maps[0].map, atol=1e-6)


class Fragile(Tiny):
    """Tiny, but its scores overflow on a bright picture (the probe input is fine)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        bright = x.mean(dim=(1, 2, 3)) > 1.5
        return torch.where(bright[:, None], torch.full_like(out, float("inf")), out)


def test_a_model_failing_on_one_image_loses_only_that_image(tmp_path: Path) -> None:
    from camlens.batch import explain_files, localize_files
    from camlens.evaluate import evaluate

    torch.manual_seed(0)
    model = camlens.load_model(Fragile(), preprocess=TINY, labels=["a", "b", "c"])
    files = [cat(tmp_path / "cat.jpg"), tmp_path / "white.png", cup(tmp_path / "cup.png")]
    Image.new("RGB", (20, 20), "white").save(files[1])
    explainer = camlens.Explainer(model, batch_size=4)
    each = explainer.explain_each(files)
    assert isinstance(each[0], camlens.Explanation) and isinstance(each[2], camlens.Explanation)
    assert str(each[1]).startswith(f"{files[1]}: Fragile gives NaN or infinite scores")
    done = list(explain_files(files, explainer, tmp_path / "o"))
    assert [d.problem is None for d in done] == [True, False, True]
    assert "white.png" in str(done[1].problem)
    found = list(
        localize_files(
            files, explainer, tmp_path / "l", model=model, top=2, min_score=0, iou_threshold=0.5
        )
    )
    assert [d.problem is None for d in found] == [True, False, True]
    assert len((tmp_path / "l" / "boxes.jsonl").read_text().splitlines()) == 2
    data = coco(
        tmp_path / "set.json",
        [("cat.jpg", [("disc", [1, 1, 30, 30])]), ("white.png", [("disc", [1, 1, 9, 9])])],
    )
    model.labels = ("disc", "square", "triangle")
    report = evaluate(model, data, "gradcam", steps=2, road_percentages=())
    assert (report.images, report.evaluated) == (2, 1)
    assert any("white.png" in p and "left out" in p for p in report.problems)


def test_an_ambiguous_class_name_lists_its_classes(photos: list[str]) -> None:
    result = invoke("explain", "cat.jpg", "--class", "crane", "--out", "o")
    assert_clean(result, bad=1)
    assert "ambiguous" in problems(result)[0]
    assert "134" in problems(result)[0] and "517" in problems(result)[0]
    assert nothing_under(Path("o"))


def test_an_empty_folder_among_good_files_is_said(photos: list[str], syn: list[str]) -> None:
    Path("empty").mkdir()
    Path("notes").mkdir()
    Path("notes/readme.txt").write_text("no images here")
    result = invoke("explain", "cat.jpg", "empty", "notes", *syn, "--out", "o")
    assert_clean(result, bad=2)
    assert "empty: is a folder with no image files in it" in problems(result)[0]
    assert "notes: is a folder with no image files in it" in problems(result)[1]
    assert Path("o/cat.json").is_file()
    result = invoke("explain", "empty", *syn, "--out", "o2")
    assert_clean(result, bad=1)
    assert "no images found in empty" in problems(result)[0]


def test_a_single_pixel_image_gets_flat_maps_and_a_warning(
    photos: list[str], syn: list[str]
) -> None:
    cat(Path("dot.png"), size=(1, 1))
    result = invoke("explain", "dot.png", "cat.jpg", *syn, "--out", "o")
    assert_clean(result, bad=0)
    report = strict_json(Path("o/dot.json").read_text())
    assert report["size"] == [1, 1] and report["explanations"][0]["flat"] is True
    assert any("dot.png" in w and "flat" in w for w in warnings_of(result))
    assert not any("cat.jpg" in w for w in warnings_of(result))


def test_a_layer_with_a_single_location_is_refused(photos: list[str], syn: list[str]) -> None:
    result = invoke("explain", *photos, *syn, "--layer", "pool", "--out", "o")
    assert_clean(result, bad=1)
    assert "'pool'" in problems(result)[0] and "1x1" in problems(result)[0]
    assert nothing_under(Path("o"))


def test_all_zero_maps_come_with_a_warning(photos: list[str], tmp_path: Path) -> None:
    zero = synthetic_weights(tmp_path / "zero.pt", fill=0.0)
    result = invoke(
        "explain",
        *photos,
        "--model",
        "synthetic",
        "--weights",
        zero,
        "--method",
        "cam",
        "--out",
        "o",
    )
    assert_clean(result, bad=0)
    said = warnings_of(result)
    assert len(said) == 2 and all("flat" in w for w in said)
    assert "cat.jpg" in said[0] and "cup.png" in said[1]
    assert strict_json(Path("o/cat.json").read_text())["explanations"][0]["flat"] is True


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--min-score", "1.5"], "min_score"),
        (["--min-score", "-0.1"], "min_score"),
        (["--iou", "-1"], "iou"),
        (["--iou", "1.5"], "iou"),
    ],
)
def test_impossible_localize_values_are_refused(
    photos: list[str], syn: list[str], options: list[str], says: str
) -> None:
    result = invoke("localize", *photos, *syn, *options, "--top", "2", "--out", "o")
    assert_clean(result, bad=1)
    assert says in problems(result)[0]
    assert nothing_under(Path("o"))


def test_tensor_inputs_are_converted_or_refused_alike() -> None:
    explainer = camlens.Explainer(tiny())
    x = torch.rand(2, 3, 16, 16)
    as_float = explainer.explain(x)
    as_double = explainer.explain(x.double())  # converted
    assert torch.allclose(as_float[0].maps[0].map, as_double[0].maps[0].map, atol=1e-5)
    for bad, says in [
        ((x * 255).to(torch.uint8), "normalized floats"),
        (None, "no image given"),
        (torch.zeros(0, 3, 16, 16), "no images given"),
        ([], "no images given"),
        (torch.zeros(2, 16, 16), "must be [3, H, W] or [N, 3, H, W]"),
        (42, "cannot explain a int"),
    ]:
        with pytest.raises(CamlensError, match=says.replace("[", r"\[")):
            explainer.explain(bad)  # type: ignore[arg-type]
        with pytest.raises(CamlensError, match=says.replace("[", r"\[")):
            explainer.explain_each(bad)  # type: ignore[arg-type]


class Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_a_weights_file_camlens_cannot_load_safely(photos: list[str], tmp_path: Path) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    marker = tmp_path / "ran"
    trap = tmp_path / "trap.pt"
    torch.save({"w": torch.zeros(1), "x": Payload(marker)}, trap)
    for weights in (noise, trap):
        for command in (["explain", "cat.jpg", "--out", "o"], ["layers"]):
            result = invoke(*command, "--model", "synthetic", "--weights", weights)
            assert_clean(result, bad=1)
            said = problems(result)[0]
            assert f"{weights}: not a state dict camlens can load safely" in said
            for torch_text in ("weights_only", "file an issue", "pytorch.org", "Unsupported"):
                assert torch_text not in said
    assert not marker.exists()
    with pytest.raises(CamlensError, match="not a state dict camlens can load safely"):
        camlens.load_model("torchvision:resnet18", weights=trap)
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump({"w": 1}, handle)
    with pytest.raises(CamlensError, match=r"plain\.pkl: not a state dict"):
        camlens.load_model("synthetic", weights=tmp_path / "plain.pkl")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = camlens.build_cam_model(class_names=["a", "b"], dropout=0.0)
    return camlens.save(model, tmp_path_factory.mktemp("ckpt") / "good.camlens")


def edited(checkpoint: Path, out: Path, edit: dict[str, object]) -> Path:
    """``checkpoint`` with its header's entries updated from ``edit`` (one level deep)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(checkpoint), framework="pt") as f:  # type: ignore[no-untyped-call]
        header = json.loads(f.metadata()["camlens"])
    for key, value in edit.items():
        part, _, name = key.partition(".")
        if name:
            header[part][name] = value
        else:
            header[part] = value
    save_file(load_file(str(checkpoint)), str(out), metadata={"camlens": json.dumps(header)})
    return out


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"preprocess.std": [0.5, 0.0, 0.5]}, "std"),
        ({"preprocess.input_size": [0, 224]}, "input_size"),
        ({"preprocess.interpolation": "blurry"}, "blurry"),
        ({"model.backbone": "timm:resnet9000"}, "timm has no model named 'resnet9000'"),
    ],
)
def test_checkpoint_errors_name_the_checkpoint(
    checkpoint: Path, tmp_path: Path, edit: dict[str, object], says: str
) -> None:
    bad = edited(checkpoint, tmp_path / "bad.camlens", edit)
    with pytest.raises(CamlensError, match=f"^{bad}: .*{says}"):
        camlens.load_model(bad)
    cat(tmp_path / "cat.jpg")
    result = invoke("explain", tmp_path / "cat.jpg", "--model", bad, "--out", tmp_path / "o")
    assert_clean(result, bad=1)
    assert problems(result)[0].startswith(f"camlens: {bad}: ")


@pytest.mark.parametrize("method", ["scorecam", "sscam", "iscam", "ablationcam"])
def test_scores_that_carry_no_information_give_flat_maps(method: str) -> None:
    from camlens.errors import FlatMapWarning

    explainer = camlens.Explainer(tiny(zero_head=True), method=method)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.warns(FlatMapWarning) as said:
        results = explainer.explain(x, classes=[0, 2])
    assert [str(w.message).split(":")[0] for w in said] == ["<image 0>", "<image 1>"]
    for result in results:
        assert all(m.flat for m in result.maps)
        assert all(float(m.map.abs().max()) == 0 for m in result.maps)
    # the same network with a head that does tell the classes apart gives maps
    live = camlens.Explainer(tiny(), method=method).explain(x, classes=[0, 2])
    assert not any(m.flat for r in live for m in r.maps)


def test_a_warning_is_one_line(photos: list[str], syn: list[str]) -> None:
    result = invoke("layers", "--model", "torchvision:resnet18")
    assert_clean(result, bad=0)
    assert result.stderr.splitlines() == [
        "camlens: warning: torchvision:resnet18: no weights file given, the model has random "
        "weights and its maps mean nothing"
    ]


def test_evaluate_counts_the_images_it_lists(photos: list[str], syn: list[str]) -> None:
    cat(Path("more.jpg"))
    data = coco(
        Path("set.json"),
        [
            ("cat.jpg", [("disc", [10, 10, 40, 30])]),
            ("cup.png", [("square", [5, 5, 30, 30])]),
            ("more.jpg", [("disc", [1, 2])]),
            ("gone.jpg", [("disc", [1, 1, 5, 5])]),
        ],
    )
    result = invoke("evaluate", data, *syn, "--out", "ev", "--no-faithfulness")
    assert_clean(result, bad=2)
    assert "set.json: 2 of 4 images" in result.stdout
    assert "2 problems with set.json (on stderr); 2 of 4 images evaluated" in result.stdout
    report = strict_json(Path("ev/evaluation.json").read_text())
    assert (report["images"], report["evaluated"]) == (4, 2)
    data = coco(
        Path("one.json"),
        [("cat.jpg", [("disc", [10, 10, 40, 30])]), ("gone.jpg", [("disc", [1, 1, 5, 5])])],
    )
    result = invoke("evaluate", data, *syn, "--out", "ev1", "--no-faithfulness")
    assert_clean(result, bad=1)
    assert "1 problem with one.json (on stderr); 1 of 2 images evaluated" in result.stdout


def test_library_warnings_are_one_line_in_every_command(photos: list[str], tmp_path: Path) -> None:
    """A warning raised while the images are processed (a flat map), not only while the model
    loads, is one ``camlens: warning:`` line, in every command that explains."""
    zero = synthetic_weights(tmp_path / "zero.pt", fill=0.0)
    model = ["--model", "synthetic", "--weights", str(zero), "--method", "cam"]
    data = coco(Path("annotations.json"), [("cat.jpg", [("disc", [10, 10, 40, 30])])])
    for args in (
        ["explain", "cat.jpg", *model, "--out", "o"],
        ["localize", "cat.jpg", *model, "--out", "l", "--top", "2"],
        ["evaluate", str(data), *model, "--out", "e", "--no-faithfulness"],
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            result = invoke(*args)
        assert_clean(result, bad=0)
        assert any("flat" in w for w in warnings_of(result)), result.stderr
