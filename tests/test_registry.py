"""Models from a registry: a new family of model specs is one entry of `FAMILIES`; a layer's other
names hang on the model (`Model.aliases`, one rule per naming in `ALIAS_RULES`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.errors import LayerError, ModelError
from camlens.images import PreprocessConfig
from camlens.models import loading
from camlens.models import model as model_module
from camlens.models.model import Model

SMALL = PreprocessConfig(input_size=(32, 32), interpolation="bilinear")


def small_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )


def test_a_new_family_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_toy(spec: str, weights: object, preprocess: object) -> Model:
        classes = int(spec.removeprefix("toy:"))
        return Model(small_net(classes), SMALL, tuple(f"c{i}" for i in range(classes)), spec)

    with pytest.raises(ModelError, match="unknown model spec 'toy:5'") as before:
        camlens.load_model("toy:5")
    assert "toy:N" not in str(before.value)
    entry = loading.Family("'toy:N' (a toy of N classes)", loading.prefix("toy:"), load_toy)
    monkeypatch.setattr(loading, "FAMILIES", [*loading.FAMILIES, entry])
    model = camlens.load_model("toy:5")
    assert model.num_classes == 5 and model.name == "toy:5"
    with pytest.raises(ModelError, match=r"unknown model spec 'toy5'.*'toy:N' \(a toy"):
        camlens.load_model("toy5")


def test_files_with_their_own_weights_refuse_weights() -> None:
    for spec, what in [("m.camlens", "camlens checkpoint"), ("m.keras", "Keras model file")]:
        with pytest.raises(ModelError, match=f"is a {what} with its own weights; drop w.pt"):
            camlens.load_model(spec, weights="w.pt")


def test_timm_and_torchvision_names_load_through_one_loader() -> None:
    families = {f.forms.split()[0]: f for f in loading.FAMILIES}
    timm, torchvision = families["'timm:NAME'"], families["'torchvision:NAME'"]
    assert timm.load.func is torchvision.load.func is loading._load_named  # type: ignore[attr-defined]


def test_aliases_hang_on_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    model = camlens.load_model(small_net(), preprocess=SMALL)
    with pytest.raises(LayerError, match="no layer named 'features'"):
        camlens.Explainer(model, layer="features").explain(image, classes=[1])
    by_name = camlens.Explainer(model, layer="1").explain(image, classes=[1])

    model.aliases = lambda net: {"features": "1"}  # the model's own naming
    by_alias = camlens.Explainer(model, layer="features").explain(image, classes=[1])
    assert by_alias.maps[0].layer == "1"
    np.testing.assert_array_equal(by_alias.maps[0].map, by_name.maps[0].map)

    # a naming for every model is one entry of ALIAS_RULES
    monkeypatch.setattr(model_module, "ALIAS_RULES", (lambda net: {"last_relu": "1"},))
    other = camlens.load_model(small_net(), preprocess=SMALL)
    assert other.layer_names() == {"last_relu": "1"}
    found = camlens.Explainer(other, layer="last_relu").explain(image, classes=[1])
    assert found.maps[0].layer == "1"
