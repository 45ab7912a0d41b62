"""``camlens train``: a CAM-ready head on a frozen backbone, from a folder of images."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from camlens.cli.common import DeviceOpt, EventBars, app, bad_input, out_console, progress_bars, say

if TYPE_CHECKING:
    from camlens.train import EpochRecord, History


@app.command("train")
def train_command(
    folder: Annotated[
        Path,
        typer.Argument(
            help="training images, one subfolder per class (FOLDER/CLASS/*.jpg), or named after "
            "their class with --classes-from names (FOLDER/cat.1.jpg), or where the paths of "
            "--tags start"
        ),
    ],
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            "-b",
            help="efficientnet_lite0 (default, offline ImageNet weights), timm:NAME, torchvision:NAME, "
            "a .camlens checkpoint or a Keras .keras/.h5 file",
        ),
    ] = "efficientnet_lite0",
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="local state dict of the backbone (.pth/.safetensors)"),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="the checkpoint to write (.camlens)")
    ] = Path("model.camlens"),
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, help="head epochs")] = 10,
    val: Annotated[
        str,
        typer.Option("--val", help="validation: a fraction of each class (seeded), 0, or a folder"),
    ] = "0.2",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    lr: Annotated[float, typer.Option("--lr", help="learning rate of the head")] = 1e-2,
    classes_from: Annotated[
        str,
        typer.Option(
            "--classes-from",
            help="folders (FOLDER/CLASS/x.jpg) or names (FOLDER/CLASS.N.jpg: the file name up to "
            "its first dot, less a trailing number)",
        ),
    ] = "folders",
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd")] = "adamw",
    momentum: Annotated[
        float | None, typer.Option("--momentum", help="sgd's momentum (default 0)")
    ] = None,
    nesterov: Annotated[
        bool, typer.Option("--nesterov", help="sgd with Nesterov momentum")
    ] = False,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help="default: 0.01 with adamw, 0 with sgd"),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option("--augment/--no-augment", help="flips and random resized crops (default on)"),
    ] = None,
    views: Annotated[
        int | None,
        typer.Option("--views", min=1, help="cached views of each training image (default 4)"),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            "--patience", min=1, help="epochs without progress before stopping (default 3)"
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            help="the learning rate over the steps: cosine (default), step (/10 at 1/2 and 3/4 "
            "of them) or constant (default with --plain)",
        ),
    ] = None,
    lr_decay: Annotated[
        float | None,
        typer.Option(
            "--lr-decay",
            help="Keras's decay instead of a schedule: lr / (1 + DECAY * step) (1e-6 in the "
            "write-ups)",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss",
            help="softmax (default): cross-entropy over the classes; binary (two classes): one "
            "output with binary cross-entropy, as a Dense(1, sigmoid) head; sigmoid (the default "
            "and only one with --tags): binary cross-entropy per tag",
        ),
    ] = None,
    tags: Annotated[
        Path | None,
        typer.Option(
            "--tags",
            help="several tags per image: a CSV file with the header file,tags and a line per "
            "image (its path relative to FOLDER, its tags separated by ;), for a multi-label "
            "head scored by sigmoid",
        ),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help="train as the write-ups do: no dropout, augmentation, extra views, weight "
            "decay, schedule or early stopping (the last epoch is kept)",
        ),
    ] = False,
    fine_tune: Annotated[
        int, typer.Option("--fine-tune", min=0, help="then train the backbone's last N blocks")
    ] = 0,
    fine_tune_epochs: Annotated[int, typer.Option("--fine-tune-epochs", min=0)] = 3,
    fine_tune_lr: Annotated[
        float | None, typer.Option("--fine-tune-lr", help="default: lr / 100")
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            help="HEIGHTxWIDTH in pixels (128x68: 128 high, 68 wide) or one side for a square, "
            "instead of the backbone's",
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option("--dropout", help="before the linear layer (default 0.2, 0 with --plain)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Train a CAM-ready head (GAP -> Linear on a frozen backbone) on a folder of images.

    Writes OUT (a .camlens checkpoint, for `camlens explain --model OUT --method cam`) and
    OUT's stem + .training.png (the training curves); prints the validation accuracy and the
    confusion matrix (with --tags: the per-tag accuracy and the macro F1 at 0.5, and each tag's
    precision, recall and F1). Unreadable images are listed on stderr and skipped (exit status 2
    at the end).
    """
    import torch

    from camlens.devices import check_device
    from camlens.errors import CamlensError
    from camlens.images import parse_size
    from camlens.models import build_cam_model, save
    from camlens.models.checkpoint import checkpoint_path
    from camlens.train import (
        check_settings,
        check_training,
        optimizer_config,
        read_tags,
        scan_folder,
        train,
    )

    validation: float | Path
    try:
        validation = float(val)
    except ValueError:
        validation = Path(val)
    with bad_input(), _unreadable_listed(), progress_bars() as progress:
        # every setting, the device, the checkpoint's place and the folder before any model
        size = parse_size(input_size) if input_size is not None else None
        if plain:
            given = [
                name
                for name, value in (
                    ("--augment", augment),
                    ("--views", views),
                    ("--patience", patience),
                    ("--dropout", dropout if dropout else None),
                )
                if value
            ]
            if given:
                raise CamlensError(
                    f"--plain switches off {', '.join(given)}: give one or the other"
                )
        views = 1 if plain else 4 if views is None else views
        patience = 3 if patience is None else patience
        augment = not plain if augment is None else augment
        dropout = (0.0 if plain else 0.2) if dropout is None else dropout
        optimizer_config(optimizer, weight_decay, momentum, nesterov)
        check_settings(
            epochs, batch_size, lr, views, patience, fine_tune, fine_tune_epochs, fine_tune_lr
        )
        if tags is not None and classes_from != "folders":
            raise CamlensError(
                f"--classes-from {classes_from} and --tags: the tags of each image come from "
                f"{tags}; give one or the other"
            )
        if tags is not None and not isinstance(validation, float):
            raise CamlensError(
                f"--val {val} and --tags: with tags --val is a fraction of the images listed, "
                "or 0 (a validation folder has no tags)"
            )
        check_training(schedule, lr_decay, loss, tags=tags is not None)
        check_device(device)
        out = checkpoint_path(out, "--out")
        if tags is not None:
            classes = read_tags(tags, folder).tags
        else:
            classes = scan_folder(folder, classes_from=classes_from).classes
        check_training(schedule, lr_decay, loss, len(classes), tags=tags is not None)
        torch.manual_seed(seed)
        model = build_cam_model(
            backbone,
            class_names=classes,
            weights=weights,
            dropout=dropout,
            input_size=size,
            device=device,
        )
        history = train(
            model,
            folder,
            epochs=epochs,
            val=validation,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            nesterov=nesterov,
            classes_from=classes_from,
            augment=augment,
            views=views,
            patience=patience,
            fine_tune=fine_tune,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_lr=fine_tune_lr,
            schedule=schedule,
            lr_decay=lr_decay,
            loss=loss,
            plain=plain,
            seed=seed,
            tags=tags,
            progress=EventBars(progress),
            callback=lambda record: progress.console.print(
                _epoch_line(record), markup=False, highlight=False, soft_wrap=True
            ),
        )
        checkpoint = save(model, out)
        curve = history.plot(out.with_name(out.name[: -len(".camlens")] + ".training.png"))
    best = history.best
    if tags is not None:
        _tag_results(history, model.labels)
    elif best is not None and best.val_accuracy is not None:
        say(
            f"validation accuracy {best.val_accuracy:.3f}, loss {best.val_loss:.4g} "
            f"(best epoch {history.best_epoch} of {len(history.epochs)}; "
            f"{history.train_images} training, {history.val_images} validation images)"
        )
    if history.confusion is not None:
        table = Table(title="validation confusion matrix (rows: true class, columns: predicted)")
        table.add_column("true \\ predicted", style="bold")
        for name in model.labels:
            table.add_column(escape(name), justify="right")
        for name, row in zip(model.labels, history.confusion, strict=True):
            table.add_row(escape(name), *(str(v) for v in row))
        out_console.print(table)
    if history.interrupted:
        say(f"interrupted: kept the best epoch so far ({history.best_epoch})")
    say(f"wrote {checkpoint} and {curve}")
    if history.interrupted:
        raise typer.Exit(130)
    if history.skipped:
        raise typer.Exit(2)


def _tag_results(history: History, tags: tuple[str, ...]) -> None:
    """The validation of a multi-label head: per-tag accuracy and macro F1 at 0.5, and a table of
    each tag's counts, precision, recall and F1."""
    best = history.best
    if best is None or best.val_accuracy is None or history.tag_counts is None:
        return
    f1 = "-" if best.val_f1 is None else f"{best.val_f1:.3f}"
    say(
        f"validation at 0.5: per-tag accuracy {best.val_accuracy:.3f} (the image-tag decisions "
        f"right), macro F1 {f1}, loss {best.val_loss:.4g} (best epoch {history.best_epoch} of "
        f"{len(history.epochs)}; {history.train_images} training, {history.val_images} "
        "validation images)"
    )
    table = Table(title="validation per tag, at 0.5")
    for column in ("tag", "images with it", "found", "false alarms", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "tag" else "right")

    def ratio(a: int, b: int) -> str:
        return f"{a / b:.3f}" if b else "-"

    for name, (tp, fp, fn, _) in zip(tags, history.tag_counts, strict=True):
        row = [str(tp + fn), str(tp), str(fp), ratio(tp, tp + fp), ratio(tp, tp + fn)]
        table.add_row(escape(name), *row, ratio(2 * tp, 2 * tp + fp + fn))
    out_console.print(table)


@contextmanager
def _unreadable_listed() -> Iterator[None]:
    """Training's warning that lists the unreadable images, left out: they were said one a line
    as they were met."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped .* unreadable image")
        yield


def _epoch_line(record: EpochRecord) -> str:
    """``epoch 3 (head, 0.02 s): loss 0.41 acc 0.850  val loss 0.38 val acc 0.900``."""
    text = f"loss {record.train_loss:.4g} acc {record.train_accuracy:.3f}"
    if record.val_loss is not None and record.val_accuracy is not None:
        text += f"  val loss {record.val_loss:.4g} val acc {record.val_accuracy:.3f}"
    if record.val_f1 is not None:
        text += f" val F1 {record.val_f1:.3f}"
    return f"epoch {record.epoch} ({record.phase}, {record.seconds:.2f} s): {text}"
