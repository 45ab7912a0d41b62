"""``camlens synthetic``: a synthetic localization set, and a model trained on it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from camlens.cli.common import EventBars, app, bad_input, fail, progress_bars, say


@app.command("synthetic")
def synthetic_command(
    out: Annotated[Path, typer.Argument(help="output folder")],
    count: Annotated[int, typer.Option("--count", min=1, help="number of images")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    size: Annotated[int, typer.Option("--size", min=8, help="image side in pixels")] = 64,
    objects: Annotated[int, typer.Option("--objects", min=1, help="objects per image")] = 1,
    masks: Annotated[
        bool,
        typer.Option(
            "--masks",
            help="also write each image's mask, masks/NNNNN.png: per pixel the category id of "
            "its object, 0 on the background",
        ),
    ] = False,
    train_model: Annotated[
        bool,
        typer.Option(
            "--train",
            help="also train the synthetic CNN on OUT/train (--count images) and write "
            "OUT/model.pt, for `camlens evaluate OUT/test/annotations.json --model synthetic "
            "--weights OUT/model.pt`",
        ),
    ] = False,
) -> None:
    """Write a synthetic localization set (COCO JSON); with --train, a training set, a held-out
    set and a model trained on the first (OUT/train, OUT/test, OUT/model.pt)."""
    import torch

    from camlens.datasets import make_synthetic
    from camlens.files import atomic_write, output_folder
    from camlens.train import train_synthetic_model

    if train_model and objects != 1:
        fail(
            "--train makes one object per image (the CNN learns each image's class): drop --objects"
        )
    with bad_input():
        out = output_folder(out, "OUT")
        if not train_model:
            written = make_synthetic(out, count, seed=seed, size=size, objects=objects, masks=masks)
            say(str(written))
            return
        train_set = make_synthetic(out / "train", count, seed=seed, size=size, masks=masks)
        test_set = make_synthetic(
            out / "test", max(count // 4, 1), seed=seed + 1, size=size, masks=masks
        )
        with progress_bars() as progress:
            model = train_synthetic_model(
                train_set, seed=seed, threads=1, progress=EventBars(progress)
            )
        weights = atomic_write(out / "model.pt", partial(torch.save, model.net.state_dict()))
    say(f"training set: {train_set}")
    say(f"held-out set: {test_set}")
    say(f"model: {weights}")
