"""How much the feature cache saves: frozen-backbone epoch 1 against the epochs after it.

    PYTHONPATH=src python benchmarks/train_cache.py [--per-class 40] [--epochs 8] [--views 1 4]

Builds a two-class folder of objects pasted on photographs (tests/pasted.py: the cat of
``skimage.data.chelsea`` and the cup of ``skimage.data.coffee`` on offline sample photos), trains
the default backbone's head with :func:`camlens.train` and reports, for each number of cached
views:

- epoch 1: reading every image and running the backbone once per view (the cache), plus the first
  head epoch: what the first epoch costs;
- later epochs: the median of the head epochs after the first (cached pooled features only);
- an uncached epoch for reference: what every epoch would cost without the cache (the backbone and
  the head, forward and backward through the head, on every training image once);
- the validation accuracy and how often the CAM of the predicted class peaks inside the pasted
  object on the validation images.

Prints a Markdown table (pasted into benchmarks/README.md).

    PYTHONPATH=src python benchmarks/train_cache.py --test-setting [--budget 120]

times instead what tests/test_train.py trains once for its accuracy checks (the default backbone,
20 images per class, 6 epochs, half held out, 2 views): building the model and training it must
take less than ``--budget`` seconds (exit status 1 otherwise), so the test suite stays fast. The
tests themselves assert no times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the pasted-objects folder builder

from pasted import make_pasted_folder  # noqa: E402

import camlens  # noqa: E402
from camlens.images import load_image, preprocess  # noqa: E402


def uncached_epoch(model: camlens.Model, files: list[str], batch_size: int) -> float:
    """Seconds for one epoch that runs the frozen backbone on every image, as without a cache."""
    net = model.net
    optimizer = torch.optim.AdamW(net.fc.parameters(), lr=1e-3)  # type: ignore[union-attr]
    labels = {name: i for i, name in enumerate(model.labels)}
    start = time.perf_counter()
    for at in range(0, len(files), batch_size):
        chunk = files[at : at + batch_size]
        x = preprocess([load_image(f) for f in chunk], model.preprocess)
        y = torch.tensor([labels[Path(f).parent.name] for f in chunk])
        with torch.no_grad():
            pooled = net.pool(net.features(x)).flatten(1)  # type: ignore[operator, union-attr]
        loss = torch.nn.functional.cross_entropy(net.head(pooled), y)  # type: ignore[operator]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def test_setting(budget: float) -> int:
    """Times building and training the model of tests/test_train.py's ``trained`` fixture; returns
    the exit status (1 when over ``budget`` seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pets"
        make_pasted_folder(root, per_class=20, seed=0)
        start = time.perf_counter()
        torch.manual_seed(0)
        model = camlens.build_cam_model(num_classes=2)
        history = camlens.train(model, root, epochs=6, val=0.5, views=2, seed=0)
        seconds = time.perf_counter() - start
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    verdict = "within" if seconds < budget else "OVER"
    print(
        f"tests/test_train.py's training (cache {history.cache_seconds:.1f} s, "
        f"{len(history.epochs)} epochs, val accuracy {history.val_accuracy}): "
        f"{seconds:.1f} s, {verdict} the budget of {budget:.0f} s"
    )
    return 0 if seconds < budget else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--test-setting", action="store_true", help="time tests/test_train.py's training instead"
    )
    parser.add_argument("--budget", type=float, default=120.0, help="seconds, for --test-setting")
    args = parser.parse_args()
    if args.test_setting:
        sys.exit(test_setting(args.budget))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pets"
        boxes = make_pasted_folder(root, per_class=args.per_class, seed=0)
        for views in args.views:
            torch.manual_seed(0)
            model = camlens.build_cam_model(num_classes=2)
            history = camlens.train(
                model,
                root,
                epochs=args.epochs,
                val=0.25,
                views=views,
                augment=views > 1,
                patience=args.epochs,  # every epoch runs: the timing needs them all
                batch_size=args.batch_size,
            )
            first = history.cache_seconds + history.epochs[0].seconds
            later = statistics.median(r.seconds for r in history.epochs[1:])
            val_files = set(history.val_files)
            train_files = [str(p) for p in boxes if str(p) not in val_files]
            uncached = uncached_epoch(model, train_files, args.batch_size)
            results = camlens.Explainer(model, method="cam").explain(history.val_files)
            inside = 0
            for result in results:
                x, y = result.peak(0)
                x0, y0, x1, y1 = boxes[Path(result.source)]
                inside += x0 <= x < x1 and y0 <= y < y1
            rows.append(
                (
                    views,
                    history.train_images,
                    history.val_images,
                    first,
                    later,
                    uncached,
                    history.val_accuracy or 0.0,
                    inside / len(results),
                )
            )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        f"default backbone (EfficientNet-Lite0, 224x224), {args.epochs} epochs, "
        f"batch {args.batch_size}\n"
    )
    print(
        "| views | train / val images | epoch 1 (cache + head) | later epochs (median) "
        "| epoch 1 / later | uncached epoch | uncached / later | val accuracy | CAM peak inside |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for views, n_train, n_val, first, later, uncached, accuracy, inside in rows:
        print(
            f"| {views} | {n_train} / {n_val} | {first:.2f} s | {later * 1000:.1f} ms "
            f"| {first / later:,.0f}x | {uncached:.2f} s | {uncached / later:,.0f}x "
            f"| {accuracy:.3f} | {inside:.0%} |"
        )


if __name__ == "__main__":
    main()
