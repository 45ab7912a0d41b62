"""ExplainConfig and OutputConfig: every option survives a JSON round trip, and every bad value is
refused on construction with a message naming the option."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import camlens
from camlens.config import METHOD_GROUPS, ExplainConfig, OutputConfig, resolve_methods
from camlens.methods import METHODS

EVERY_OPTION = ExplainConfig(
    model="timm:resnet18",
    weights="weights.safetensors",
    device="cpu",
    methods=("scorecam", "gradcam++", "eigencam"),
    method_options={"Score-CAM": {"mask_align_corners": True}},
    layers=("layer3", "layer4"),
    classes=(285, "espresso"),
    smooth=("tta", "pca"),
    tta_flips=False,
    tta_scales=(1.0, 0.75),
    batch_size=3,
    max_batch_memory=2**20,
    fast_channels=64,
    fast_resolution=0.5,
    use_head_gradients=False,
    channels_last=False,
    input_size=(448, 320),
    max_pixels=1000,
    relu=False,
    scores="sigmoid",
    min_score=0.25,
    detections=3,
)


def test_every_option_differs_from_its_default_and_survives_json() -> None:
    default = ExplainConfig()
    for field in dataclasses.fields(ExplainConfig):
        # cpu is the only device; top, targets and above exclude classes; normalize "max" needs
        # relu, off here
        if field.name not in ("device", "top", "targets", "above", "normalize"):
            assert getattr(EVERY_OPTION, field.name) != getattr(default, field.name), field.name
    text = EVERY_OPTION.to_json()
    assert ExplainConfig.from_json(text) == EVERY_OPTION
    by_max = ExplainConfig(normalize="max")
    assert ExplainConfig.from_json(by_max.to_json()) == by_max != default
    assert json.loads(text)["methods"] == ["scorecam", "gradcampp", "eigencam"]  # canonical
    top = ExplainConfig(top=3)
    assert ExplainConfig.from_json(top.to_json()) == top
    targets = ExplainConfig(targets=({"kind": "contrast", "class": 282, "versus": [285]},))
    assert ExplainConfig.from_json(targets.to_json()) == targets
    above = ExplainConfig(above=0.5)
    assert ExplainConfig.from_json(above.to_json()) == above
    bounded = ExplainConfig(above=0.5, top=3)  # at most 3 of the classes over 0.5
    assert ExplainConfig.from_json(bounded.to_json()) == bounded != above


def test_output_config_round_trip() -> None:
    output = OutputConfig(
        cmap="viridis", alpha=0.25, boxes="all", threshold="otsu", panels=True, grids=True
    )
    assert OutputConfig.from_json(output.to_json()) == output
    assert OutputConfig.from_dict({"threshold": "0.15"}).threshold == 0.15


def test_groups_resolve_for_everyone() -> None:
    assert resolve_methods("all") == tuple(METHODS)
    assert resolve_methods(["gradients", "gradcam"]) == METHOD_GROUPS["gradients"]
    assert set(METHOD_GROUPS["scores"]) == {"scorecam", "sscam", "iscam", "ablationcam"}
    assert resolve_methods(["Grad-CAM", "cam", "gradcam"]) == ("gradcam", "cam")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top": 0}, "top must be at least 1"),
        ({"top": 2, "classes": [1]}, "give classes or top, not both"),
        ({"methods": ["gradcan"]}, "unknown method 'gradcan'"),
        ({"methods": []}, "no method given"),
        ({"smooth": ["blur"]}, "unknown smoothing"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_size": True}, "batch_size must be a whole number"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"max_batch_memory": 0}, "max_batch_memory must be at least 1"),
        ({"fast_channels": 0}, "fast_channels must be at least 1"),
        ({"fast_resolution": 0}, "fast_resolution must be in (0, 1]"),
        ({"fast_resolution": float("nan")}, "fast_resolution must be a finite number"),
        ({"tta_scales": [1.0, -2.0]}, "tta_scales must be positive"),
        ({"input_size": [224]}, "input_size must be (height, width)"),
        ({"input_size": [4, 224]}, "input_size must be at least 8"),
        ({"device": "banana"}, "unknown device 'banana'"),
        ({"device": "cuda"}, "device 'cuda' is not available"),
        ({"classes": [True]}, "a class is an index or a name"),
        ({"classes": [" "]}, "an empty class name"),
        ({"model": ""}, "model must be a non-empty string"),
        ({"use_head_gradients": "yes"}, "use_head_gradients must be true or false"),
        ({"max_pixels": 0}, "max_pixels must be at least 1"),
        ({"layers": ["all", "layer4"]}, "'all' stands for every layer"),
        ({"method_options": {"scorecam": {"samples": 2}}}, "'scorecam' is not one of the methods"),
        ({"methods": ["sscam"], "method_options": {"sscam": [2]}}, "options are a mapping"),
        ({"methods": ["sscam"], "method_options": {"sscam": {"std": [2]}}}, "sscam's std must"),
        ({"method_options": [1]}, "method_options must map method names"),
    ],
)
def test_bad_values_are_refused_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(camlens.CamlensError) as caught:
        ExplainConfig(**options)  # type: ignore[arg-type]
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -0.5}, "alpha must be a number in [0, 1]"),
        ({"alpha": float("nan")}, "alpha must be a number in [0, 1]"),
        ({"cmap": "jett"}, "unknown colormap 'jett'"),
        ({"boxes": "some"}, "boxes must be 'largest' or 'all'"),
        ({"threshold": 1.5}, "threshold 1.5 is outside [0, 1)"),
        ({"threshold": "half"}, "threshold 'half' is neither"),
    ],
)
def test_bad_output_values_are_refused_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(camlens.CamlensError) as caught:
        OutputConfig(**options)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_unknown_keys_and_bad_json() -> None:
    with pytest.raises(camlens.CamlensError, match=r"unknown ExplainConfig option.*modle"):
        ExplainConfig.from_dict({"modle": "x"})
    with pytest.raises(camlens.CamlensError, match="not a ExplainConfig in JSON"):
        ExplainConfig.from_json("{")
    with pytest.raises(camlens.CamlensError, match="is an object"):
        ExplainConfig.from_json("[1]")


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "batch_size": st.one_of(st.integers(-5, 64), st.floats(allow_nan=True), st.booleans()),
            "top": st.one_of(st.none(), st.integers(-3, 2000)),
            "fast_resolution": st.one_of(st.none(), st.floats(allow_nan=True)),
            "fast_channels": st.one_of(st.none(), st.integers(-3, 3000)),
            "methods": st.lists(st.sampled_from([*METHODS, "all", "gradients", "nope", ""])),
            "smooth": st.lists(st.sampled_from(["tta", "pca", "TTA", "x"])),
            "input_size": st.one_of(st.none(), st.lists(st.integers(-10, 4000), max_size=3)),
        },
    )
)
def test_any_options_either_work_and_round_trip_or_are_refused(options: dict) -> None:
    """Whatever the values: refused (a CamlensError) exactly when a rule of the documented
    options is broken, else a config that survives JSON unchanged."""
    try:
        config = ExplainConfig(**options)
    except camlens.CamlensError:
        assert not acceptable(options), options
        return
    assert acceptable(options), options
    assert ExplainConfig.from_json(config.to_json()) == config


def acceptable(options: dict) -> bool:
    """The rules of :class:`ExplainConfig`'s options, written out apart from its checks."""

    def whole(value: object, least: int) -> bool:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    batch = options.get("batch_size", 16)
    top = options.get("top")
    resolution = options.get("fast_resolution")
    channels = options.get("fast_channels")
    methods = options.get("methods", ["gradcam"])
    size = options.get("input_size")
    return (
        whole(batch, 1)
        and (top is None or whole(top, 1))
        and (resolution is None or (math.isfinite(resolution) and 0 < resolution <= 1))
        and (channels is None or whole(channels, 1))
        and bool(methods)
        and all(m in (*METHODS, "all", "gradients") for m in methods)
        and all(s.lower() in ("tta", "pca") for s in options.get("smooth", []))
        and (size is None or (len(size) == 2 and all(whole(n, 8) for n in size)))
    )
