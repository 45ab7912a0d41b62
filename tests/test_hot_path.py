"""The per-call bookkeeping of the explainer: eval mode during the call with each module's own mode
restored after it, and layers found by name without scanning the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camlens
from camlens.errors import LayerError
from camlens.images import PreprocessConfig
from camlens.taps import resolve_layer


class Recorder(nn.Module):
    """Identity that records whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.rec = Recorder()
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.rec(self.body(x)))
        out: torch.Tensor = self.fc(self.pool(y).flatten(1))
        return out


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def modes(net: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in net.named_modules()}


@pytest.mark.parametrize("setting", ["eval", "train", "mixed"])
def test_eval_during_the_call_and_each_modules_mode_restored(net: Net, setting: str) -> None:
    model = camlens.load_model(net, preprocess=PreprocessConfig(input_size=(8, 8)))
    explainer = camlens.Explainer(model, method=["gradcam", "cam"], layer="body")
    if setting == "train":
        net.train()
    elif setting == "mixed":
        net.eval()
        net.drop.train()
        net.rec.train()
    before = modes(net)
    net.rec.seen.clear()
    x = torch.randn(2, 3, 8, 8)
    first = explainer.explain(x, top=2)
    second = explainer.explain(x, top=2)
    assert net.rec.seen == [False, False]  # eval mode inside every forward pass
    assert modes(net) == before
    for a, b in zip(first, second, strict=True):  # no dropout: the same maps twice
        for m, n in zip(a.maps, b.maps, strict=True):
            assert torch.equal(m.map, n.map)


def test_layers_by_name_and_by_module(net: Net) -> None:
    assert resolve_layer(net, "body.1") == ("body.1", net.body[1])
    assert resolve_layer(net, net.body[1]) == ("body.1", net.body[1])
    with pytest.raises(LayerError, match=r"no layer named 'body.2'.*body"):
        resolve_layer(net, "body.2")
    with pytest.raises(LayerError, match=r"no layer named 'fc\.weight'"):
        resolve_layer(net, "fc.weight")  # a parameter, not a module
    with pytest.raises(LayerError, match="no layer named ''"):
        resolve_layer(net, "")
