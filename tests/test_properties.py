"""Properties of the checks on bad input, with hypothesis: every option either gives a usable
value or a CamlensError naming it (never another exception, never a NaN let through), and file
names of any kind (brackets, spaces, unicode, leading dashes, dots, control characters, very long,
the same stem in several folders or with several extensions) get outputs of their own, inside
``--out``, and print on one line."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from awkward import assert_clean, cat, invoke, problems, strict_json, synthetic_weights
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import camlens
from camlens.batch import Stems, output_stem
from camlens.cli import one_line
from camlens.config import ExplainConfig, OutputConfig
from camlens.devices import check_device
from camlens.errors import CamlensError
from camlens.evaluate import check_evaluate_options
from camlens.files import NAME_MAX, fit_stem
from camlens.images import IMAGE_SUFFIXES, find_images, parse_size
from camlens.localize import check_localize_options, parse_threshold
from camlens.train import check_settings, optimizer_config

# Derandomized: the same examples on every run, so that a run of the suite cannot fail by chance.
QUICK = settings(max_examples=150, deadline=None, derandomize=True, database=None)
SLOW = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Values a user or a config file may give anything: numbers of every kind, text, lists, None.
NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1.0, 1.5, -0.0, 1e-300, 2**63]),
)
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=12),
    st.lists(st.one_of(NUMBERS, st.text(max_size=4)), max_size=3),
    st.tuples(st.integers(-5, 500), st.integers(-5, 500)),
)


def refused_or(check: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """(True, value) when ``check`` accepts, (False, None) when it raises a CamlensError; any
    other exception fails the test."""
    try:
        return True, check(*args, **kwargs)
    except CamlensError as exc:
        assert str(exc) and "\n" not in str(exc)
        return False, None


def finite_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(finite_numbers(v) for v in value)
    return True


EXPLAIN_FIELDS = [
    "model",
    "weights",
    "device",
    "methods",
    "method_options",
    "layers",
    "classes",
    "top",
    "smooth",
    "tta_flips",
    "tta_scales",
    "batch_size",
    "max_batch_memory",
    "fast_channels",
    "fast_resolution",
    "use_head_gradients",
    "channels_last",
    "input_size",
    "max_pixels",
]


@QUICK
@given(field=st.sampled_from(EXPLAIN_FIELDS), value=ANYTHING)
def test_explain_config_accepts_or_names_the_option(field: str, value: Any) -> None:
    ok, config = refused_or(ExplainConfig, **{field: value})
    if not ok:
        return
    data = config.to_dict()
    assert finite_numbers(list(data.values()))
    assert ExplainConfig.from_json(config.to_json()) == config  # strict JSON, same options
    for name in ("batch_size", "max_batch_memory", "max_pixels"):
        assert isinstance(data[name], int) and data[name] >= 1
    if config.top is not None:
        assert isinstance(config.top, int) and config.top >= 1
    if config.fast_resolution is not None:
        assert 0 < config.fast_resolution <= 1
    if config.input_size is not None:
        assert all(isinstance(n, int) and n >= 8 for n in config.input_size)


@QUICK
@given(
    cmap=st.one_of(st.sampled_from(["jet", "viridis", "", "nope"]), ANYTHING),
    alpha=st.one_of(st.floats(0, 1), ANYTHING),
    boxes=st.one_of(st.sampled_from(["largest", "all", "none"]), ANYTHING),
    threshold=st.one_of(st.sampled_from(["otsu", "0.2", "2", "nan"]), st.floats(0, 0.99), ANYTHING),
)
@example(cmap="viridis", alpha=0.3, boxes="all", threshold="otsu")  # the accepted branch, surely
def test_output_config_accepts_or_names_the_option(
    cmap: Any, alpha: Any, boxes: Any, threshold: Any
) -> None:
    ok, config = refused_or(OutputConfig, cmap=cmap, alpha=alpha, boxes=boxes, threshold=threshold)
    if (cmap, alpha, boxes, threshold) == ("viridis", 0.3, "all", "otsu"):
        assert ok
    if ok:
        assert 0 <= config.alpha <= 1 and math.isfinite(config.alpha)
        assert config.threshold == "otsu" or 0 <= config.threshold < 1
        assert OutputConfig.from_json(config.to_json()) == config
    else:
        assert not (
            cmap in ("jet", "viridis")
            and number(alpha)
            and 0 <= alpha <= 1
            and boxes in ("largest", "all", "none")
            and (threshold in ("otsu", "0.2") or (number(threshold) and 0 <= threshold < 1))
        ), "refused good options"


@QUICK
@given(min_score=ANYTHING, iou=ANYTHING)
def test_localize_options(min_score: Any, iou: Any) -> None:
    ok, _ = refused_or(check_localize_options, min_score=min_score, iou_threshold=iou)
    assert ok == all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
        for v in (min_score, iou)
    )


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


COUNTS = st.one_of(st.integers(-2, 40), ANYTHING)
RATES = st.one_of(st.floats(-1, 1), ANYTHING)


@QUICK
@given(tolerance=RATES, iou=RATES, steps=COUNTS, batch=COUNTS, limit=COUNTS)
def test_evaluate_options(tolerance: Any, iou: Any, steps: Any, batch: Any, limit: Any) -> None:
    ok, _ = refused_or(
        check_evaluate_options,
        tolerance=tolerance,
        iou_threshold=iou,
        steps=steps,
        batch_size=batch,
        limit=limit,
    )
    assert ok == (
        number(tolerance)
        and 0 <= tolerance < math.inf
        and number(iou)
        and 0 < iou <= 1
        and whole(steps, 1)
        and whole(batch, 1)
        and (limit is None or whole(limit, 1))
    )


@QUICK
@given(
    name=st.one_of(st.sampled_from(["adamw", "sgd", "SGD ", "adam"]), ANYTHING),
    decay=st.one_of(st.none(), st.floats(0, 1), ANYTHING),
    momentum=st.one_of(st.none(), st.floats(0, 0.99), ANYTHING),
    nesterov=st.booleans(),
)
def test_optimizer_settings(name: Any, decay: Any, momentum: Any, nesterov: bool) -> None:
    ok, config = refused_or(optimizer_config, name, decay, momentum, nesterov)
    if ok:
        assert math.isfinite(config.weight_decay) and config.weight_decay >= 0
        assert 0 <= config.momentum < 1


@QUICK
@given(counts=st.lists(COUNTS, min_size=6, max_size=6), lr=RATES, fine_tune_lr=RATES)
def test_training_settings(counts: list[Any], lr: Any, fine_tune_lr: Any) -> None:
    epochs, batch, views, patience, fine_tune, fine_tune_epochs = counts
    ok, _ = refused_or(
        check_settings,
        epochs,
        batch,
        lr,
        views,
        patience,
        fine_tune,
        fine_tune_epochs,
        fine_tune_lr,
    )
    lows = (1, 1, 1, 1, 0, 0)
    assert ok == (
        all(whole(v, low) for v, low in zip(counts, lows, strict=True))
        and number(lr)
        and math.isfinite(lr)
        and lr > 0
        and (
            fine_tune_lr is None
            or (number(fine_tune_lr) and math.isfinite(fine_tune_lr) and fine_tune_lr > 0)
        )
    )


@QUICK
@given(size=st.one_of(ANYTHING, st.from_regex(r"\A-?\d{0,5}([x×X, ]-?\d{0,5})?\Z")))
def test_input_sizes(size: Any) -> None:
    ok, pair = refused_or(parse_size, size)
    if ok:
        assert len(pair) == 2 and all(isinstance(n, int) and n > 0 for n in pair)


@QUICK
@given(text=st.one_of(st.text(max_size=8), st.sampled_from(["otsu", "OTSU", "0.15", "1", "-0"])))
def test_thresholds(text: str) -> None:
    ok, value = refused_or(parse_threshold, text)
    if ok:
        assert value == "otsu" or (math.isfinite(value) and 0 <= value < 1)


@QUICK
@given(
    device=st.one_of(
        st.text(max_size=10), st.sampled_from(["cpu", "cuda", "cuda:1", "mps", "cpu:0", "meta"])
    )
)
def test_devices(device: str) -> None:
    ok, parsed = refused_or(check_device, device)
    if ok:
        assert str(parsed.type) in {d.split(":")[0] for d in camlens.devices.available_devices()}


@pytest.fixture(scope="module")
def imagenet() -> camlens.Model:
    from camlens.models.labels import imagenet_labels

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model = camlens.load_model(net, preprocess=camlens.PreprocessConfig(input_size=(8, 8)))
    model.labels = imagenet_labels()
    return model


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.one_of(
        st.text(max_size=15),
        st.integers(-2000, 2000),
        st.sampled_from(["crane", "Crane", "cab", "n02930766", "tiger_cat", "espresso ", "-1"]),
    )
)
def test_class_names(imagenet: camlens.Model, name: str | int) -> None:
    ok, index = refused_or(imagenet.class_index, name)
    if ok:
        assert 0 <= index < 1000
    if isinstance(name, str) and name.strip().lower() == "crane":
        assert not ok  # the bird and the machine


# --- file names ----------------------------------------------------------------------------------

NAME_CHARS = st.characters(
    codec="utf-8",
    exclude_characters="/\x00",
    exclude_categories=("Cs",),
)
# Names people and tools make: brackets, spaces, unicode, leading dashes and dots, %, {}, tabs...
SPICE = st.sampled_from(
    ["[", "]", "[/x]", "[bold]", " ", "-", ".", "..", "%s", "{0}", "é", "日", "\t"]
)
STEMS = st.lists(
    st.one_of(st.text(NAME_CHARS, min_size=1, max_size=12), SPICE), min_size=1, max_size=5
).map("".join)
SUFFIXES = st.sampled_from([*sorted(IMAGE_SUFFIXES), ".JPG", ".Png"])


def usable(name: str) -> bool:
    return name not in (".", "..") and 0 < len(name.encode()) <= NAME_MAX


@st.composite
def file_names(draw: Any, long: bool = True) -> str:
    stem = draw(STEMS)
    if long and draw(st.booleans()):
        stem = stem * (200 // len(stem.encode()) + 1)
    suffix = draw(SUFFIXES)
    name = stem[: 255 - len(suffix.encode()) - 8] + suffix
    while len(name.encode()) > NAME_MAX:
        name = name[1:]
    assume(usable(name))
    return name


@contextmanager
def inside(folder: Path) -> Iterator[Path]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(before)


@QUICK
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(["", "a", "b", "a/b", "[x]", "-", "é é"]), file_names()),
        min_size=1,
        max_size=6,
    )
)
def test_every_input_gets_its_own_outputs_inside_out(entries: list[tuple[str, str]]) -> None:
    """Files in several folders, with the same stems and several suffixes: every input claims
    an output stem of its own, inside ``out``, whose report name and cut outputs fit."""
    with tempfile.TemporaryDirectory() as root, inside(Path(root)):
        given = []
        for folder, name in entries:
            path = Path(folder) / name if folder else Path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            given.append(path)
        files = find_images(given)
        assert len(files) == len({os.path.realpath(p) for p in given})
        out = Path("out")
        stems = Stems(out, files)
        claimed = {}
        for path in files:
            stem = stems.claim(path)
            assert stem not in claimed, (path, claimed.get(stem))
            claimed[stem] = path
            assert os.path.realpath(stem).startswith(os.path.realpath(out) + os.sep)
            assert stem == output_stem(path, out)  # the same alone as among others
            short = fit_stem(stem.name, ".gradcam.features.0.png")
            assert len((short + ".gradcam.features.0.png").encode()) <= NAME_MAX


@QUICK
@given(stems=st.lists(STEMS.map(lambda s: s * 40), min_size=2, max_size=4, unique=True))
def test_cut_stems_stay_apart(stems: list[str]) -> None:
    cut = [fit_stem(s, ".boxes.png") for s in stems]
    assert len(set(cut)) == len(stems)
    for short, stem in zip(cut, stems, strict=True):
        assert len((short + ".boxes.png").encode()) <= NAME_MAX
        if short != stem:  # its beginning, then "~" and 8 hex digits of its own SHA-1
            tag = "~" + hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            assert short.endswith(tag) and stem.startswith(short[: -len(tag)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_weights(tmp_path_factory.mktemp("weights") / "synthetic.pt")


@SLOW
@given(names=st.lists(file_names(), min_size=1, max_size=3, unique_by=lambda n: n.lower()))
def test_the_command_explains_any_file_name(weights: Path, names: list[str]) -> None:
    """Any file names through ``camlens explain`` (after ``--``, for a leading dash): each gets
    its report (naming it), each prints on one line, and nothing is lost or read as markup."""
    with tempfile.TemporaryDirectory() as root, inside(Path(root)):
        for name in names:
            cat(Path(name))
        result = invoke(
            "explain", "--model", "synthetic", "--weights", weights, "--out", "o", "--", *names
        )
        assert_clean(result, bad=0)
        reports = [strict_json(p.read_text()) for p in Path("o").rglob("*.json")]
        assert sorted(r["image"] for r in reports) == sorted(names)
        lines = result.stdout.splitlines()
        assert len(lines) == len(names)
        for name, line in zip(names, lines, strict=True):
            assert line.startswith(f"{one_line(name)}: ")


@SLOW
@given(
    option=st.sampled_from(
        ["--alpha", "--threshold", "--top", "--batch-size", "--fast-resolution", "--class"]
    ),
    value=st.one_of(
        st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "1e9", "0.5", "", "x"]),
        st.text(NAME_CHARS, max_size=6),
    ),
)
def test_any_option_value_is_used_or_one_line(weights: Path, option: str, value: str) -> None:
    assume(not value.startswith("-") or value.lstrip("-").replace(".", "").isalnum())
    with tempfile.TemporaryDirectory() as root, inside(Path(root)):
        cat(Path("cat.jpg"))
        args = ["explain", "cat.jpg", "--model", "synthetic", "--weights", weights, "--out", "o"]
        extra = ["--boxes"] if option == "--threshold" else []
        result = invoke(*args, *extra, f"{option}={value}")
        assert_clean(result)
        if result.exit_code == 2:
            assert len(problems(result)) == 1
            assert not Path("o").exists() or not any(Path("o").rglob("*"))
        else:
            assert Path("o/cat.json").is_file()
