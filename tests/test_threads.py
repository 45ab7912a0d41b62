"""One Explainer shared by many threads: each call gets exactly what it gets alone, and the model
is left as it was found (no hooks, each module's own mode)."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import camlens
from camlens.images import PreprocessConfig

pytestmark = pytest.mark.slow  # about half a minute on 2 cores

THREADS = 8
CALLS = 30


@pytest.fixture(scope="module")
def model() -> camlens.Model:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return camlens.load_model(net, preprocess=PreprocessConfig(input_size=(64, 64)))


def photos() -> list[np.ndarray]:
    """Three photos at 64 x 64 (the model's input size keeps the calls cheap)."""
    from PIL import Image
    from skimage import data

    pictures = [data.chelsea(), data.coffee(), data.astronaut()]
    return [np.asarray(Image.fromarray(p).resize((64, 64))) for p in pictures]


def calls() -> list[dict[str, object]]:
    """Mixed inputs (one photo, several, a tensor batch) and classes (top 1..3, named indices)."""
    pics = photos()
    rng = np.random.default_rng(0)
    out: list[dict[str, object]] = []
    for i in range(THREADS * CALLS):
        kind = i % 4
        if kind == 0:
            out.append({"inputs": pics[i % 3], "top": 1 + i % 3})
        elif kind == 1:
            out.append({"inputs": [pics[0], pics[(i // 4) % 3]], "classes": [int(i % 10), 3]})
        elif kind == 2:
            x = torch.from_numpy(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
            out.append({"inputs": x, "top": 2})
        else:
            out.append({"inputs": [pics[2]], "classes": [[7, 1]]})
    return out


def maps_of(result: camlens.Explanation | list[camlens.Explanation]) -> list[torch.Tensor]:
    results = result if isinstance(result, list) else [result]
    return [m.map for r in results for m in r.maps]


def test_eight_threads_get_what_they_get_alone(model: camlens.Model) -> None:
    net = model.net
    net.layer2.train()  # a mixed mode: each module's own mode must come back
    explainer = camlens.Explainer(
        model,
        method=["gradcam", "layercam", "eigencam", "ablationcam"],
        layer=["layer3", "layer4"],
        use_head_gradients=False,  # real backward passes, also at layer4
        fast_channels=2,
        batch_size=2,
    )
    work = calls()
    alone = [maps_of(explainer.explain(**kw)) for kw in work]  # type: ignore[arg-type]
    started = threading.Barrier(THREADS)

    def run(indices: range) -> list[list[torch.Tensor]]:
        started.wait()  # all threads at once
        return [maps_of(explainer.explain(**work[i])) for i in indices]  # type: ignore[arg-type]

    with ThreadPoolExecutor(THREADS) as pool:
        parts = list(pool.map(run, [range(t * CALLS, (t + 1) * CALLS) for t in range(THREADS)]))
    together = [maps for part in parts for maps in part]
    assert len(together) == THREADS * CALLS
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert len(a) == len(b)
        for m1, m2 in zip(a, b, strict=True):
            assert float((m1 - m2).abs().max()) == 0.0, i
    assert all(not m._forward_hooks for m in net.modules())
    assert net.layer2.training and all(m.training for m in net.layer2.modules())
    assert not net.training and not net.layer3.training
    assert all(p.grad is None for p in net.parameters())


def test_explainers_built_while_others_run(model: camlens.Model) -> None:
    """Building an Explainer (Ablation-CAM traces the network) while another thread explains:
    the tracing never sees the other thread's passes."""
    pics = photos()
    first = camlens.Explainer(model, method="gradcam", layer="layer3", use_head_gradients=False)
    expected = maps_of(first.explain(pics[0], top=2))
    stop = threading.Event()
    seen: list[list[torch.Tensor]] = []

    def keep_explaining() -> None:
        while not stop.is_set():
            seen.append(maps_of(first.explain(pics[0], top=2)))

    worker = threading.Thread(target=keep_explaining)
    worker.start()
    try:
        built = [
            camlens.Explainer(model, method="ablationcam", layer=layer)
            for layer in ("layer3", "layer4", "layer2")
        ]
    finally:
        stop.set()
        worker.join()
    assert seen
    for maps in seen:
        assert all(float((a - b).abs().max()) == 0.0 for a, b in zip(maps, expected, strict=True))
    result = built[0].explain(pics[1], top=1)
    assert dict(result.stats.replays)["layer3"] == "graph"
