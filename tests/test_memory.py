"""Many explain calls in a row leave nothing behind: no hooks on any module (also after a forward
pass that raised inside the model), no gradient mode or parameter state changed, and no growth of
the process's memory (RSS) beyond noise once warmed up."""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.images import PreprocessConfig, load_image, preprocess

psutil = pytest.importorskip("psutil")

MB = 2**20
RSS_NOISE = 15 * MB


class Small(nn.Module):
    """conv (3->8, stride 2) -> ReLU [act1] -> conv (8->16, stride 2) -> ReLU [feat] -> GAP -> Linear
    (16->10); ``fail`` makes the forward raise before (``"before"``) or after (``"after"``) the
    target layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.feat = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.fail: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail == "before":
            raise RuntimeError("failing before the target layers")
        y = self.feat(self.conv2(self.act1(self.conv1(x))))
        if self.fail == "after":
            raise RuntimeError("failing after the target layers")
        out: torch.Tensor = self.fc(self.pool(y).flatten(1))
        return out


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def assert_clean(net: nn.Module) -> None:
    """No hook of any kind on any module, gradients on, parameters as they were."""
    for name, module in net.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
        assert not module._backward_pre_hooks, name
    assert torch.is_grad_enabled()
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
    assert not net.training


def call(explain: Callable[[], object], net: Small, fail: str | None) -> None:
    """One explain call; with ``fail``, the model raises inside its forward pass and the error must
    come out unchanged."""
    net.fail = fail
    try:
        if fail is None:
            explain()
        else:
            with pytest.raises(RuntimeError, match=f"failing {fail}"):
                explain()
    finally:
        net.fail = None
    assert_clean(net)


def test_500_calls_leave_no_hooks_and_no_growth() -> None:
    torch.manual_seed(0)
    net = Small()
    model = camlens.load_model(net, preprocess=PreprocessConfig(input_size=(32, 32)))
    head = camlens.Explainer(model, method=["gradcam", "cam", "gradcampp"], layer="feat")
    autograd = camlens.Explainer(model, method=["gradcam", "layercam"], layer=["act1", "feat"])
    assert head.head_gradients == {"feat"} and autograd.head_gradients == {"feat"}
    forced = camlens.Explainer(
        model, method=["gradcam", "hirescam"], layer="feat", use_head_gradients=False
    )
    assert not forced.head_gradients
    x = torch.randn(2, 3, 32, 32)
    explainers = [head, autograd, forced]
    sizes = []
    for i in range(500):
        explainer = explainers[i % 3]
        fail = ("before", "after")[(i // 25) % 2] if i % 25 == 24 else None
        call(lambda explainer=explainer: explainer.explain(x, top=2), net, fail)
        if i % 50 == 49:
            sizes.append(rss())
    growth = sizes[-1] - sizes[1]  # after 100 calls of warm-up, over the last 400
    print(f"small net RSS after calls 100..500, MB: {[round(s / MB, 1) for s in sizes[1:]]}")
    assert growth < RSS_NOISE, f"RSS grew {growth / MB:.1f} MB over 400 calls"


def test_default_model_50_calls(default_model: camlens.Model, chelsea: np.ndarray) -> None:
    net = default_model.net
    net.zero_grad(set_to_none=True)  # the peers' backward passes in other tests leave some
    x = preprocess([load_image(chelsea)], default_model.preprocess)
    fast = camlens.Explainer(default_model, method=["gradcam", "cam"])
    slow = camlens.Explainer(default_model, method="gradcam", use_head_gradients=False)
    assert fast.head_gradients == {"bn2"} and not slow.head_gradients

    def raising(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("failing after bn2")

    sizes = []
    for i in range(50):
        explainer = fast if i % 2 else slow
        if i % 10 == 9:  # the classifier (after the tapped bn2) raises
            net.classifier.forward = raising  # type: ignore[method-assign]
            try:
                with pytest.raises(RuntimeError, match="failing after bn2"):
                    explainer.explain(x[0], top=1)
            finally:
                del net.classifier.forward
        else:
            result = explainer.explain(x[0], top=2)
            assert result.maps[0].class_index == 285
        assert_clean(net)
        if i % 10 == 9:
            sizes.append(rss())
    growth = sizes[-1] - sizes[0]
    print(f"default model RSS after calls 10..50, MB: {[round(s / MB, 1) for s in sizes]}")
    assert growth < RSS_NOISE, f"RSS grew {growth / MB:.1f} MB over 40 calls"
