"""Training a CAM-ready head on a folder of images (one subfolder per class).

The workflow of the CAM posts: a pretrained backbone, frozen; global average pooling and one
linear layer on its last convolutional features (:func:`camlens.build_cam_model`); the head trained
on your classes; the class activation maps read from its weights.

Data
    ``FOLDER/CLASS/*.jpg``, the layout of torchvision's ``ImageFolder``: class names are the
    subfolder names, sorted. Or, with ``classes_from="names"``, the images of one folder named after
    their class, as in Kaggle's cats vs dogs (``train/cat.123.jpg``, ``train/dog.7.jpg``): the class
    is the file name up to its first dot, less a trailing number and the ``_``, ``-`` or space
    before it (:func:`class_from_name`: ``cat.123.jpg`` -> ``cat``, ``Abyssinian_12.jpg`` ->
    ``Abyssinian``). Files are found as ``camlens explain`` finds them
    (:func:`camlens.images.find_images`: recursive, hidden files skipped, the suffixes of
    :data:`camlens.images.IMAGE_SUFFIXES`). Images are read with :func:`camlens.images.load_image`
    and become inputs with :func:`camlens.images.preprocess` (the whole image resized, the model's
    mean and std), exactly as when the model is explained later. A file that cannot be read is
    skipped and listed once (a warning, and ``History.skipped``), never silently. Validation: a
    seeded, per-class split (``val=0.2``) or a separate folder of the same layout (``val=DIR``).

Tags (multi-label)
    ``tags="tags.csv"``: several tags per image, from a CSV file (:func:`read_tags`) with a header
    line and the columns ``file`` (the image's path, relative to the folder given to
    :func:`train`, or absolute) and ``tags`` (its tags, separated by ``;``)::

        file,tags
        beach/001.jpg,sea;sky;people
        002.jpg,sky

    Only the images the CSV lists are used, in any layout except a folder per class (a subfolder
    named after a tag is refused: the folders and the tags would both say what an image is).
    The model gets an output per tag (sorted), each trained as an independent binary decision:
    binary cross-entropy on the logits (``loss="sigmoid"``, the default with tags) against the
    image's multi-hot vector, and the model is scored by ``sigmoid`` (stored in its checkpoint,
    so ``camlens explain --above 0.5`` explains every tag it sees without ``--scores``). The
    validation split is a seeded fraction of all the images. Accuracy means, with tags, the
    *per-tag accuracy*: the share of (image, tag) decisions right at 0.5 (score >= 0.5 said
    present), averaged over images and tags; the validation also reports the *macro F1* at 0.5
    (the mean over tags of each tag's F1, over the tags present in validation or predicted
    there), which, unlike accuracy, is not flattered by rare tags, and per tag the counts of
    true and false positives and negatives (``History.tag_counts``).

Caching and augmentation
    With the backbone frozen its output never changes, and the head only sees its global average
    ``p = GAP(features(x))`` (a vector of ``K`` numbers). So the backbone runs once per image, at
    the start, and every epoch after that trains ``fc(dropout(p))`` on the cached vectors: an
    epoch costs a few matrix products. Augmentation is reconciled with the cache by caching
    ``views`` fixed versions of every training image (default 4): the image itself, its mirror
    image, and random resized crops (scale 0.5 to 1 of the area, aspect 3/4 to 4/3, mirrored with
    probability 1/2), drawn once from the seed. Each epoch shows every training image once, in one
    of its views picked at random. Validation images are cached once, unaugmented. The first pass
    costs ``views`` backbone passes per training image; ``augment=False`` caches one.

Training
    Cross-entropy; AdamW (weight decay 0.01), or SGD with ``optimizer="sgd"`` (``momentum``,
    ``nesterov``; no weight decay unless given), as the person / not-person write-up trains; a
    cosine learning rate over all the steps, early stopping when the
    validation loss has not improved for ``patience`` epochs; the best epoch's weights (lowest
    validation loss) are kept. ``schedule``: ``cosine`` (the default), ``step`` (the rate divided
    by 10 at half and at three quarters of the steps) or ``constant``; ``lr_decay=d`` is Keras's
    ``decay`` instead, ``lr / (1 + d * t)`` at step ``t``. ``loss="binary"`` (two classes): the
    head is trained as one output ``d`` with binary cross-entropy, as a ``Dense(1, sigmoid)``
    head is, and stored as the two rows ``-w/2, w/2`` (softmax of those is ``1 - sigmoid(d),
    sigmoid(d)``, and class 1's CAM is ``w . A`` up to scale). ``loss="sigmoid"``: tags (above). ``plain=True`` switches off what
    camlens adds to a write-up's plain training: augmentation and extra views (one view), weight
    decay (0 unless given), the schedule (constant unless given), early stopping and the choice
    of the best epoch (the last is kept); the model's dropout must be 0 too
    (``build_cam_model(dropout=0)``, or ``--plain`` on the command line). ``fine_tune=N`` then unfreezes the last ``N`` blocks of the
    backbone (see :func:`backbone_blocks`) and trains them with the head at a lower learning rate,
    on freshly augmented images every epoch (a changing backbone cannot be cached); batch norm
    statistics stay frozen. Everything random is drawn from ``seed`` (the global RNG state is
    restored afterwards), and every module gets its own mode back at the end. Ctrl-C stops
    training and keeps the best weights so far (saved to ``checkpoint`` when given);
    ``History.interrupted`` says so.

Progress
    Reported as :class:`camlens.progress.Event` s to ``progress``, never drawn here: ``"features"``
    (images whose features are cached, training and validation; an unreadable one comes with a
    ``problem``), then ``"head epochs"`` and ``"fine-tune epochs"``.

The synthetic benchmark's CNN
    :func:`train_synthetic_model` trains :class:`camlens.models.synthetic.SyntheticCNN` on a
    synthetic set held in memory, with the same optimizer step as the heads.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from camlens.datasets.readers import Dataset, read_dataset
from camlens.errors import CamlensError, DatasetError, ImageError, ModelError
from camlens.files import atomic_write
from camlens.images import PreprocessConfig, find_images, load_image, preprocess
from camlens.models.checkpoint import save
from camlens.models.head import CamNet, TimmFeatures
from camlens.models.model import Model
from camlens.models.synthetic import SYNTHETIC_PREPROCESS, SYNTHETIC_SPEC, SyntheticCNN
from camlens.modes import eval_mode, keep_modes
from camlens.progress import Event, Progress

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

Label = int | tuple[float, ...]
"""An image's label in training: its class index, or with tags its multi-hot vector."""


@dataclass(frozen=True)
class ImageFolderData:
    """The images of an ImageFolder-style folder: ``samples[i] = (path, class index)``."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[Path, int], ...]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss and accuracy (dropout on, augmented views), validation loss
    and accuracy (``None`` without validation), the learning rate at its end, its wall time.
    With tags, accuracy is the per-tag accuracy and ``val_f1`` the macro F1, both at 0.5 (see
    :mod:`camlens.train`); ``val_f1`` is ``None`` otherwise."""

    epoch: int
    phase: str  # "head" or "fine-tune"
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    val_f1: float | None = None


@dataclass
class History:
    """What :func:`train` did. ``confusion[i][j]``: validation images of class ``i`` predicted as
    ``j``, at the best epoch (``None`` with tags: then ``tag_counts[k]`` is tag ``k``'s true
    positives, false positives, false negatives and true negatives at 0.5). ``cache_seconds``: the first pass (reading the images and running the
    backbone once on every view)."""

    classes: tuple[str, ...]
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_images: int = 0
    val_images: int = 0
    views: int = 1
    cache_seconds: float = 0.0
    fine_tuned: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    tag_counts: list[list[int]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    val_files: list[str] = field(default_factory=list)  # the held-out images, as read

    @property
    def best(self) -> EpochRecord | None:
        return next((r for r in self.epochs if r.epoch == self.best_epoch), None)

    @property
    def val_f1(self) -> float | None:
        """With tags: the validation's macro F1 at 0.5 at the best epoch (else ``None``)."""
        best = self.best
        return None if best is None else best.val_f1

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy at the best epoch (``None`` without validation)."""
        best = self.best
        return None if best is None else best.val_accuracy

    def summary(self) -> dict[str, Any]:
        """JSON-ready: stored in the checkpoint's header as ``training``."""
        best = self.best
        return {
            "classes": list(self.classes),
            "train_images": self.train_images,
            "val_images": self.val_images,
            "views": self.views,
            "best_epoch": self.best_epoch,
            "val_accuracy": None if best is None else best.val_accuracy,
            "val_loss": None if best is None else best.val_loss,
            "stopped_early": self.stopped_early,
            "interrupted": self.interrupted,
            "fine_tuned": list(self.fine_tuned),
            "confusion": self.confusion,
            "val_f1": None if best is None else best.val_f1,
            "tag_counts": self.tag_counts,
            "skipped": [path for path, _ in self.skipped],
            "cache_seconds": round(self.cache_seconds, 3),
            "settings": dict(self.settings),
            "epochs": [asdict(r) for r in self.epochs],
        }

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Writes the training curves (loss and accuracy, training and validation, by epoch; the
        best epoch marked, fine-tuning epochs shaded; with tags the validation's macro F1 too) to
        a PNG file."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        figure = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
        axes = figure.subplots(1, 2)
        x = [r.epoch for r in self.epochs]
        for ax, what in zip(axes, ("loss", "accuracy"), strict=True):
            ax.plot(x, [getattr(r, f"train_{what}") for r in self.epochs], "o-", label="train")
            val = [getattr(r, f"val_{what}") for r in self.epochs]
            if any(v is not None for v in val):
                ax.plot(x, [math.nan if v is None else v for v in val], "s-", label="validation")
            tuned = [r.epoch for r in self.epochs if r.phase == "fine-tune"]
            if tuned:
                ax.axvspan(min(tuned) - 0.5, max(tuned) + 0.5, color="0.9", label="fine-tuning")
            if self.best_epoch:
                ax.axvline(self.best_epoch, color="0.5", linestyle="--", label="best")
            ax.set_xlabel("epoch")
            ax.set_title(what)
            ax.grid(alpha=0.3)
        f1 = [r.val_f1 for r in self.epochs]
        if any(v is not None for v in f1):  # tags: the macro F1 beside the per-tag accuracy
            axes[1].plot(x, [math.nan if v is None else v for v in f1], "^-", label="validation F1")
            axes[1].set_title("per-tag accuracy and macro F1, at 0.5")
            axes[1].legend(fontsize="small")
        axes[1].set_ylim(-0.02, 1.02)
        axes[0].legend(fontsize="small")
        out = Path(path)
        kind = out.suffix[1:].lower() or "png"
        return atomic_write(out, lambda temp: figure.savefig(temp, format=kind))


# --- the folder ----------------------------------------------------------------------------------


CLASSES_FROM = ("folders", "names")
"""Where :func:`scan_folder` reads the classes: subfolder names, or file names."""

_TRAILING_NUMBER = re.compile(r"[_\- ]?[0-9]+$")


def class_from_name(path: str | os.PathLike[str]) -> str:
    """The class an image's file name gives: the name up to its first dot, less a trailing number
    and the ``_``, ``-`` or space before it (when something is left).

    >>> [class_from_name(n) for n in ("cat.123.jpg", "Abyssinian_12.jpg", "dog-7.png", "car.jpg")]
    ['cat', 'Abyssinian', 'dog', 'car']
    """
    first = Path(path).name.split(".", 1)[0]
    return _TRAILING_NUMBER.sub("", first) or first


def scan_folder(
    folder: str | os.PathLike[str], *, min_classes: int = 2, classes_from: str = "folders"
) -> ImageFolderData:
    """The classes (subfolder names, sorted) and image files of ``folder``; a :class:`DatasetError`
    when it is missing, has no class subfolders, fewer than ``min_classes`` classes, or a class
    subfolder without image files.

    ``classes_from="names"``: the classes are read from the file names of the images under
    ``folder`` (:func:`class_from_name`, sorted), for a folder such as Kaggle's cats vs dogs
    ``train/`` (``cat.0.jpg``, ``dog.0.jpg``...)."""
    root = Path(folder)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "no such folder"
        raise DatasetError(f"{root}: {problem}")
    if classes_from == "names":
        return _scan_names(root, min_classes)
    if classes_from != "folders":
        raise CamlensError(
            f"classes_from must be one of {', '.join(CLASSES_FROM)}, not {classes_from!r}"
        )
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        loose = find_images([root])
        if loose:
            raise DatasetError(
                f"{root}: {len(loose)} images lie directly in the folder; put each class in its "
                f"own subfolder ({root}/CLASS/image.jpg)"
            )
        raise DatasetError(f"{root}: empty: no class subfolders ({root}/CLASS/image.jpg expected)")
    if len(subfolders) < min_classes:
        raise DatasetError(
            f"{root}: only one class folder ({subfolders[0].name!r}); a classifier needs at least "
            "two classes, one subfolder each"
        )
    samples: list[tuple[Path, int]] = []
    for index, sub in enumerate(subfolders):
        files = find_images([sub])
        if not files:
            raise DatasetError(f"{sub}: no image files in class folder {sub.name!r}")
        samples.extend((f, index) for f in files)
    return ImageFolderData(root, tuple(p.name for p in subfolders), tuple(samples))


def _scan_names(root: Path, min_classes: int) -> ImageFolderData:
    files = find_images([root])
    if not files:
        raise DatasetError(f"{root}: no image files (CLASS.N.jpg expected, e.g. cat.1.jpg)")
    names = [class_from_name(f) for f in files]
    classes = tuple(sorted(set(names)))
    if len(classes) < min_classes:
        raise DatasetError(
            f"{root}: the file names give one class only ({classes[0]!r}); with classes from "
            "names a file is named CLASS.N.jpg (cat.1.jpg, dog.1.jpg)"
        )
    if len(classes) > max(2, len(files) // 2):
        raise DatasetError(
            f"{root}: the file names give {len(classes)} classes for {len(files)} images (e.g. "
            f"{files[0].name!r} -> {names[0]!r}); with classes from names a file is named "
            "CLASS.N.jpg (cat.1.jpg, dog.1.jpg)"
        )
    _check_folders_of_names(root, files, names)
    index = {name: i for i, name in enumerate(classes)}
    samples = tuple((f, index[n]) for f, n in zip(files, names, strict=True))
    return ImageFolderData(root, classes, samples)


def _check_folders_of_names(root: Path, files: Sequence[Path], names: Sequence[str]) -> None:
    """Classes from names on a folder-per-class tree (``a/0.jpg``, ``b/0.jpg``...): refused
    when the file names are mere numbers, a warning when a class of the names lies in several
    subfolders; either way the subfolders look like the classes."""
    folders: dict[str, set[str]] = {}
    for path, name in zip(files, names, strict=True):
        parts = path.relative_to(root).parts
        if len(parts) > 1:
            folders.setdefault(name, set()).add(parts[0])
    every = sorted(set().union(*folders.values()))
    spread = sorted(name for name, where in folders.items() if len(where) > 1)
    if len(every) < 2 or not spread:
        return
    shown = ", ".join(every[:4]) + (", ..." if len(every) > 4 else "")
    folders_say = (
        f"the images lie in {len(every)} subfolders that look like classes ({shown}): "
        "--classes-from folders reads the classes from them"
    )
    if all(f.stem.isdigit() for f in files):
        raise DatasetError(
            f"{root}: the file names are numbers ({files[0].name!r}), not classes, and "
            f"{folders_say}"
        )
    where = ", ".join(sorted(folders[spread[0]]))
    warnings.warn(
        f"{root}: the file names give classes found in several subfolders ({spread[0]!r} in "
        f"{where}), and {folders_say}",
        UserWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class TagData:
    """The images a CSV of tags lists: ``tags`` (sorted) and ``samples[i] = (path, indices of its
    tags)``."""

    root: Path
    csv: Path
    tags: tuple[str, ...]
    samples: tuple[tuple[Path, tuple[int, ...]], ...]


TAGS_HEADER = ("file", "tags")
TAG_SEPARATOR = ";"


def read_tags(
    csv_file: str | os.PathLike[str], folder: str | os.PathLike[str], *, min_tags: int = 2
) -> TagData:
    """The images and tags of ``csv_file`` (see :mod:`camlens.train`: a header line with the
    columns ``file`` and ``tags``, tags separated by ``;``, files relative to ``folder``). A
    :class:`DatasetError` naming the file (and the line) when it is missing, not UTF-8 CSV, has
    no ``file`` or ``tags`` column, lists no image, has a line without a file or without a tag,
    lists a file twice or a file that does not exist, gives fewer than ``min_tags`` tags, or
    when ``folder`` is missing or is a folder per class (a subfolder named after a tag)."""
    import csv

    table, root = Path(csv_file), Path(folder)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "no such folder"
        raise DatasetError(f"{root}: {problem}")
    if not table.is_file():
        problem = "is a folder, not a CSV file" if table.exists() else "no such file"
        raise DatasetError(f"{table}: {problem} (the tags: a CSV file with the columns file,tags)")
    rows: list[tuple[int, str, list[str]]] = []
    try:
        with table.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            names = [h.strip().casefold() for h in header or ()]
            missing = [c for c in TAGS_HEADER if c not in names]
            if missing:
                found = ",".join(header or ()) or "nothing"
                raise DatasetError(
                    f"{table}: no {' or '.join(map(repr, missing))} column (its first line: "
                    f"{found[:80]}); the first line names the columns: file,tags"
                )
            at_file, at_tags = names.index("file"), names.index("tags")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                cells = row + [""] * (max(at_file, at_tags) + 1 - len(row))
                tags = [t.strip() for t in cells[at_tags].split(TAG_SEPARATOR)]
                unique = list(dict.fromkeys(t for t in tags if t))
                rows.append((reader.line_num, cells[at_file].strip(), unique))
    except UnicodeDecodeError:
        raise DatasetError(f"{table}: not UTF-8 text (save the CSV as UTF-8)") from None
    except csv.Error as exc:
        raise DatasetError(f"{table}: not a CSV file ({exc})") from None
    if not rows:
        raise DatasetError(
            f"{table}: no images listed (a line per image after the header: file,tags)"
        )
    seen: dict[Path, int] = {}
    absent: list[tuple[int, Path]] = []
    for line, name, tags in rows:
        if not name:
            raise DatasetError(f"{table} line {line}: no file name")
        if not tags:
            raise DatasetError(
                f"{table} line {line}: no tag for {name} (one or more a line, separated by "
                f"{TAG_SEPARATOR!r})"
            )
        path = Path(os.path.normpath(root / name))
        if path in seen:
            raise DatasetError(f"{table} line {line}: {name} is listed twice (line {seen[path]})")
        seen[path] = line
        if not path.is_file():
            absent.append((line, path))
    if absent:
        (line, path), more = absent[0], len(absent) - 1
        also = f" (and {more} more of the {len(rows)} files listed)" if more else ""
        problem = "a folder, not an image" if path.is_dir() else "no such file"
        raise DatasetError(f"{table} line {line}: {path}: {problem}{also}")
    names = sorted({t for _, _, tags in rows for t in tags})
    if len(names) < min_tags:
        raise DatasetError(
            f"{table}: {len(names)} tag{'s' if len(names) != 1 else ''} "
            f"({', '.join(map(repr, names))}); a multi-label head needs at least {min_tags}"
        )
    folded = {t.casefold() for t in names}
    per_class = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.casefold() in folded)
    if per_class:
        raise DatasetError(
            f"{root}: a folder per class ({', '.join(f'{n}/' for n in per_class[:3])}) and the "
            f"tags of {table}: give one or the other (a folder per class for one class per "
            "image, or tags for several)"
        )
    index = {t: i for i, t in enumerate(names)}
    samples = tuple(
        (Path(os.path.normpath(root / name)), tuple(sorted(index[t] for t in tags)))
        for _, name, tags in rows
    )
    return TagData(root, table, tuple(names), samples)


def split(
    samples: Sequence[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """A seeded validation split, per class: ``round(fraction * n)`` images of each class (at
    least one, and at least one left for training) go to validation."""
    if not 0.0 < fraction < 1.0:
        raise CamlensError(f"the validation fraction must be between 0 and 1, not {fraction}")
    generator = torch.Generator().manual_seed(seed)
    train_part: list[tuple[Path, int]] = []
    val_part: list[tuple[Path, int]] = []
    for cls in sorted({c for _, c in samples}):
        members = [s for s in samples if s[1] == cls]
        if len(members) < 2:
            raise DatasetError(
                f"{members[0][0].parent}: only one image; a validation split needs two per class "
                "(or give a separate validation folder, or val=0)"
            )
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1)
        val_part.extend(members[i] for i in sorted(order[:n_val]))
        train_part.extend(members[i] for i in sorted(order[n_val:]))
    return train_part, val_part


# --- fine-tuning blocks --------------------------------------------------------------------------


def backbone_blocks(net: CamNet) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks, first to last: its children (a container of stages, such as timm's
    ``blocks`` or a ResNet's ``layer1``, opened one level), those without parameters dropped, a
    normalization layer joined to the block before it. EfficientNet-Lite0 has 9: the stem,
    ``blocks.0`` ... ``blocks.6``, and the 1x1 head conv with its batch norm; ResNet50 5: the
    stem and ``layer1`` ... ``layer4``; VGG16 one per conv layer."""
    root = net.features.body if isinstance(net.features, TimmFeatures) else net.features
    base = "features.body" if isinstance(net.features, TimmFeatures) else "features"
    units: list[tuple[str, nn.Module]] = []
    for name, child in root.named_children():
        grand = list(child.named_children())
        if (
            isinstance(child, nn.Sequential | nn.ModuleList)
            and grand
            and all(isinstance(g, nn.Sequential | nn.ModuleList) for _, g in grand)
        ):
            units.extend((f"{base}.{name}.{g}", m) for g, m in grand)
        else:
            units.append((f"{base}.{name}", child))
    blocks: list[tuple[str, list[nn.Module]]] = []
    for name, module in units:
        owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
        if not owners:
            continue
        if blocks and all(isinstance(m, _NORMS) for m in owners):
            blocks[-1][1].append(module)
            blocks[-1] = (f"{blocks[-1][0]}+{name.rsplit('.', 1)[-1]}", blocks[-1][1])
        else:
            blocks.append((name, [module]))
    return [(name, _group(modules)) for name, modules in blocks]


def _group(modules: list[nn.Module]) -> nn.Module:
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer of both phases: AdamW, or SGD with momentum (Nesterov's, if asked)."""

    name: str
    weight_decay: float
    momentum: float
    nesterov: bool

    def make(self, params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(
                params,
                lr=lr,
                momentum=self.momentum,
                nesterov=self.nesterov,
                weight_decay=self.weight_decay,
            )
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)


def optimizer_config(
    name: str, weight_decay: float | None, momentum: float | None, nesterov: bool
) -> OptimizerConfig:
    """:func:`train`'s optimizer settings, checked (a :class:`CamlensError` naming the bad one):
    ``"adamw"`` (weight decay 0.01 unless given; momentum and Nesterov do not apply) or ``"sgd"``
    (weight decay 0 unless given, momentum 0 unless given, Nesterov only with a momentum)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise CamlensError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
    if key == "adamw" and (momentum is not None or nesterov):
        raise CamlensError("momentum and nesterov are settings of the sgd optimizer, not adamw")
    momentum = 0.0 if momentum is None else momentum
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise CamlensError(f"momentum must be in [0, 1), not {momentum!r}")
    if nesterov and momentum == 0:
        raise CamlensError("nesterov needs a momentum above 0 (e.g. momentum=0.9)")
    if weight_decay is None:
        weight_decay = 1e-2 if key == "adamw" else 0.0
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or not 0 <= weight_decay < math.inf
    ):
        raise CamlensError(f"weight_decay must be a finite number >= 0, not {weight_decay!r}")
    return OptimizerConfig(key, float(weight_decay), float(momentum), bool(nesterov))


SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("softmax", "binary", "sigmoid")


def check_training(
    schedule: str | None,
    lr_decay: float | None,
    loss: str | None,
    num_classes: int | None = None,
    *,
    tags: bool = False,
) -> str:
    """The schedule and loss settings of :func:`train`, checked (a :class:`CamlensError` naming
    the bad one): ``schedule`` one of :data:`SCHEDULES` (or None: the default), ``lr_decay`` a
    finite number >= 0 and not with a ``schedule``, ``loss`` one of :data:`LOSSES`, ``binary``
    for two classes only, ``sigmoid`` with ``tags`` only and the only one with them. Returns the
    loss, ``None`` made ``sigmoid`` with tags and ``softmax`` without."""
    if schedule is not None and schedule not in SCHEDULES:
        raise CamlensError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if lr_decay is not None:
        if (
            isinstance(lr_decay, bool)
            or not isinstance(lr_decay, int | float)
            or not 0 <= lr_decay < math.inf
        ):
            raise CamlensError(f"lr_decay must be a finite number >= 0, not {lr_decay!r}")
        if schedule is not None:
            raise CamlensError(
                "lr_decay is a schedule of its own (Keras's decay: lr / (1 + decay * step)); "
                "give it or a schedule, not both"
            )
    if loss is None:
        return "sigmoid" if tags else "softmax"
    if loss not in LOSSES:
        raise CamlensError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    if tags and loss != "sigmoid":
        raise CamlensError(
            f"loss {loss!r} is for one class per image; with tags each tag is an output of its "
            "own, trained with binary cross-entropy (loss 'sigmoid', the default with tags)"
        )
    if loss == "sigmoid" and not tags:
        raise CamlensError(
            "loss 'sigmoid' (independent tags, binary cross-entropy each) needs the tags of "
            "each image: a CSV of tags (--tags)"
        )
    if loss == "binary" and num_classes is not None and num_classes != 2:
        raise CamlensError(
            f"loss 'binary' (one output, binary cross-entropy) is for two classes, not "
            f"{num_classes}: use loss 'softmax'"
        )
    return loss


def _scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, lr_decay: float | None, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate per step: ``lr_decay`` (Keras's ``lr / (1 + decay * t)``) when given,
    else cosine annealing over ``steps``, steps of /10 at 1/2 and 3/4 of them, or constant."""
    lr_scheduler = torch.optim.lr_scheduler
    if lr_decay is not None:
        decay = float(lr_decay)
        return lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
    if schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if schedule == "step":
        return lr_scheduler.MultiStepLR(optimizer, [steps // 2, 3 * steps // 4], gamma=0.1)
    return lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)


def _two_from_one(d: torch.Tensor) -> torch.Tensor:
    """The logits ``[-d/2, d/2]`` of one output ``d`` [N, 1]: their softmax is ``1 - sigmoid(d),
    sigmoid(d)`` and their cross-entropy is the binary cross-entropy of ``d``."""
    return torch.cat([-d / 2, d / 2], dim=1)


def _step(
    logits: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, float]:
    """One optimizer and schedule step on the loss of ``logits`` (:func:`_loss`); returns the
    batch's mean loss and how many of its predictions were right (with tags, the sum over its
    images of the share of their tags decided right)."""
    loss = _loss(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return float(loss.detach()), float(_right(logits.detach(), y).sum())


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices ``y`` [N]; for multi-hot tags ``y`` [N, C], binary
    cross-entropy of each logit, averaged over images and tags."""
    if y.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


def _right(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image [N]: 1 when its top class is ``y``, or with tags the share of its tags decided
    right at 0.5 (``sigmoid(logit) >= 0.5``, that is ``logit >= 0``)."""
    if y.is_floating_point():
        return ((logits >= 0) == (y > 0.5)).float().mean(dim=1)
    return (logits.argmax(1) == y).float()


@contextmanager
def _only_trainable(net: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` on for ``params`` only, restored afterwards."""
    saved = {p: p.requires_grad for p in net.parameters()}
    chosen = {id(p) for p in params}
    try:
        for p in net.parameters():
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


# --- training ------------------------------------------------------------------------------------


def train(
    model: Model,
    folder: str | os.PathLike[str],
    *,
    epochs: int = 10,
    val: float | str | os.PathLike[str] = 0.2,
    batch_size: int = 16,
    lr: float = 1e-2,
    weight_decay: float | None = None,
    optimizer: str = "adamw",
    momentum: float | None = None,
    nesterov: bool = False,
    classes_from: str = "folders",
    augment: bool = True,
    views: int = 4,
    patience: int = 3,
    fine_tune: int = 0,
    fine_tune_epochs: int = 3,
    fine_tune_lr: float | None = None,
    schedule: str | None = None,
    lr_decay: float | None = None,
    loss: str | None = None,
    plain: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
    tags: str | os.PathLike[str] | None = None,
) -> History:
    """Trains ``model``'s head (from :func:`camlens.build_cam_model`) on ``folder``
    (``FOLDER/CLASS/*.jpg``) in place and returns the :class:`History`; see :mod:`camlens.train`
    for the data, the feature cache and the schedule.

    ``val``: the fraction of each class held out (seeded), a separate folder of the same layout,
    or 0 for none (then the last epoch is kept). ``classes_from``: ``"folders"`` (a subfolder per
    class) or ``"names"`` (one folder, the class in each file name: ``cat.123.jpg``; see
    :func:`class_from_name`). ``optimizer``: ``"adamw"`` (``weight_decay`` 0.01 by default) or
    ``"sgd"`` with ``momentum`` (0 by default) and ``nesterov`` (``weight_decay`` 0 by default). The model's classes: named after the folders when
    the model was built without ``class_names``, otherwise the folders must carry those names.
    ``fine_tune``: how many of the backbone's last blocks to train afterwards, for
    ``fine_tune_epochs`` at ``fine_tune_lr`` (default ``lr / 100``). ``schedule`` (``cosine``
    unless ``plain``), ``lr_decay``, ``loss`` (``softmax`` by default, ``sigmoid`` with tags) and
    ``plain``: see :mod:`camlens.train`. ``tags``: a CSV of tags (:func:`read_tags`; paths
    relative to ``folder``): a multi-label head, one output per tag, scored by ``sigmoid``
    afterwards; ``val`` is then a fraction of all the images, or 0. ``progress``: called with
    each :class:`~camlens.progress.Event` (see :mod:`camlens.train`). ``checkpoint``: a ``.camlens`` file to write the best
    model to at the end, also after Ctrl-C. ``callback``: called with each epoch's record.

    >>> model = camlens.build_cam_model(num_classes=2)          # doctest: +SKIP
    >>> history = camlens.train(model, "data/pets/", epochs=5)  # doctest: +SKIP
    >>> history.val_accuracy                                    # doctest: +SKIP
    0.975
    """
    net = model.net
    if not isinstance(net, CamNet):
        raise ModelError(
            f"train needs a model made by camlens.build_cam_model; {model.name} is a "
            f"{type(net).__name__}"
        )
    check_settings(
        epochs, batch_size, lr, views, patience, fine_tune, fine_tune_epochs, fine_tune_lr
    )
    loss = check_training(schedule, lr_decay, loss, model.num_classes, tags=tags is not None)
    if plain:
        if net.dropout.p:
            raise CamlensError(
                f"plain training has no dropout, and {model.name} has a dropout of "
                f"{net.dropout.p:g}: build it with dropout=0 (camlens train --plain does)"
            )
        augment, views, patience_off = False, 1, True
        weight_decay = 0.0 if weight_decay is None else weight_decay
    else:
        patience_off = False
    schedule = schedule or ("constant" if plain or lr_decay is not None else "cosine")
    optim = optimizer_config(optimizer, weight_decay, momentum, nesterov)
    if fine_tune and fine_tune > len(backbone_blocks(net)):  # before any epoch, not after
        raise CamlensError(
            f"fine_tune={fine_tune}: the backbone of {model.name} has "
            f"{len(backbone_blocks(net))} blocks"
        )
    train_items: list[tuple[Path, Label]]
    val_items: list[tuple[Path, Label]]
    if tags is None:
        data = scan_folder(folder, classes_from=classes_from)
        class_map = _class_map(model, data.classes, str(data.root))
        samples = [(path, class_map[c]) for path, c in data.samples]
        train_items, val_items = _validation(  # type: ignore[assignment]  # int labels
            samples, val, seed, model, str(data.root), classes_from
        )
        where = str(data.root)
    else:
        if classes_from != "folders":
            raise CamlensError(
                f"classes_from={classes_from!r} and tags: the tags of each image come from "
                f"{tags}; give one or the other"
            )
        tag_data = read_tags(tags, folder)
        tag_map = _class_map(model, tag_data.tags, str(tag_data.csv), what="tag")
        hot = [
            (path, tuple(float(i in {tag_map[t] for t in own}) for i in range(len(tag_map))))
            for path, own in tag_data.samples
        ]
        train_items, val_items = _tag_validation(hot, val, seed)  # type: ignore[assignment]
        where = str(tag_data.csv)
    n_views = views if augment else 1
    history = History(
        classes=tuple(model.labels),
        views=n_views,
        settings={
            "folder": str(Path(folder)),
            "val": val if isinstance(val, int | float) else str(val),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": optim.name,
            "weight_decay": optim.weight_decay,
            **(
                {"momentum": optim.momentum, "nesterov": optim.nesterov}
                if optim.name == "sgd"
                else {}
            ),
            "classes_from": classes_from,
            "tags": None if tags is None else str(tags),
            "augment": augment,
            "patience": None if patience_off else patience,
            "schedule": "lr_decay" if lr_decay is not None else schedule,
            "lr_decay": lr_decay,
            "loss": loss,
            "plain": plain,
            "fine_tune": fine_tune,
            "fine_tune_epochs": fine_tune_epochs if fine_tune else 0,
            "fine_tune_lr": (fine_tune_lr or lr / 100) if fine_tune else None,
            "seed": seed,
        },
    )
    device = model.device
    fork_devices: list[int] = [] if device.type != "cuda" else [device.index or 0]
    reporter = _Reporter(progress)
    with torch.random.fork_rng(devices=fork_devices), keep_modes(net):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        # Ctrl-C here, before any epoch, has nothing to keep: it propagates.
        start = time.perf_counter()
        reporter.task("features", len(train_items) + len(val_items))
        train_set = _cache(net, model, train_items, n_views, batch_size, history, reporter)
        val_set = _cache(net, model, val_items, 1, batch_size, history, reporter)
        history.cache_seconds = time.perf_counter() - start
        _warn_skipped(history.skipped)
        _require_each_class(train_set, model, where, tags is not None)
        history.train_images, history.val_images = len(train_set.labels), len(val_set.labels)
        history.val_files = [str(p) for p in val_set.paths]
        trainer = _Trainer(
            net, model.num_classes, history, reporter, None if patience_off else patience, callback
        )
        trainer.schedule, trainer.lr_decay, trainer.binary = schedule, lr_decay, loss == "binary"
        trainer.multi_label = tags is not None
        try:
            trainer.head_phase(train_set, val_set, epochs, batch_size, lr, optim, generator)
            if fine_tune:
                chosen = backbone_blocks(net)[-fine_tune:]
                history.fine_tuned = [name for name, _ in chosen]
                trainer.fine_tune_phase(
                    model,
                    [m for _, m in chosen],
                    train_set,
                    val_set,
                    fine_tune_epochs,
                    batch_size,
                    fine_tune_lr or lr / 100,
                    optim,
                    augment,
                    generator,
                )
        except KeyboardInterrupt:
            history.interrupted = True
        trainer.restore_best()
    if tags is not None:
        model.scores = "sigmoid"  # saved with it: explain reads it from the checkpoint
    net.training_summary = history.summary()
    if checkpoint is not None and history.epochs:
        save(model, checkpoint)
    return history


def check_settings(
    epochs: int,
    batch_size: int,
    lr: float,
    views: int,
    patience: int,
    fine_tune: int,
    fine_tune_epochs: int,
    fine_tune_lr: float | None = None,
) -> None:
    """:func:`train`'s counts and learning rates, checked: a :class:`CamlensError` naming the
    first that is not a whole number at least its minimum, or not a finite positive rate."""
    for name, value, low in (
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 1),
        ("views", views, 1),
        ("patience", patience, 1),
        ("fine_tune", fine_tune, 0),
        ("fine_tune_epochs", fine_tune_epochs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CamlensError(f"{name} must be an integer >= {low}, not {value!r}")
    for name, rate in (("lr", lr), ("fine_tune_lr", fine_tune_lr)):
        if rate is None and name == "fine_tune_lr":
            continue
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or not rate > 0
        ):
            raise CamlensError(f"{name} must be a positive finite number, not {rate!r}")


def _class_map(
    model: Model, classes: tuple[str, ...], where: str, what: str = "class folder"
) -> list[int]:
    """Model class index of each folder class (or tag, ``what="tag"``); names the model's
    classes after the folders (tags) when it was built without names."""
    placeholder = tuple(f"class {i}" for i in range(model.num_classes))
    if model.labels == placeholder:
        if len(classes) != model.num_classes:
            raise DatasetError(
                f"{where}: {len(classes)} {what}s ({', '.join(classes)}), but {model.name} "
                f"has {model.num_classes} outputs"
            )
        model.labels = classes
        return list(range(len(classes)))
    unknown = [c for c in classes if c not in model.labels]
    if unknown:
        raise DatasetError(
            f"{where}: {what}(s) {', '.join(map(repr, unknown))} are not among the model's "
            f"classes ({', '.join(model.labels)})"
        )
    if len(classes) != model.num_classes:
        missing = [c for c in model.labels if c not in classes]
        holder = "folder" if what == "class folder" else "image"
        raise DatasetError(f"{where}: no {holder} for class(es) {', '.join(map(repr, missing))}")
    return [model.labels.index(c) for c in classes]


def _tag_validation(
    samples: list[tuple[Path, tuple[float, ...]]], val: float | str | os.PathLike[str], seed: int
) -> tuple[list[tuple[Path, tuple[float, ...]]], list[tuple[Path, tuple[float, ...]]]]:
    """With tags: a seeded fraction of all the images (at least one, and one left to train on)
    held out, or none."""
    if isinstance(val, bool) or not isinstance(val, int | float):
        raise CamlensError(
            f"with tags, val is a fraction of the images listed, or 0, not {val!r} (a "
            "validation folder has no tags)"
        )
    if val == 0:
        return samples, []
    if not 0.0 < val < 1.0:
        raise CamlensError(f"the validation fraction must be between 0 and 1, not {val}")
    if len(samples) < 2:
        raise DatasetError("one image listed; a validation split needs two (or val=0)")
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(val * len(samples))), len(samples) - 1)
    held = set(order[:n_val])
    return (
        [s for i, s in enumerate(samples) if i not in held],
        [s for i, s in enumerate(samples) if i in held],
    )


def _validation(
    samples: list[tuple[Path, int]],
    val: float | str | os.PathLike[str],
    seed: int,
    model: Model,
    where: str,
    classes_from: str = "folders",
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    if isinstance(val, str | os.PathLike):
        extra = scan_folder(val, min_classes=1, classes_from=classes_from)
        unknown = [c for c in extra.classes if c not in model.labels]
        if unknown:
            raise DatasetError(
                f"{extra.root}: validation class folder(s) {', '.join(map(repr, unknown))} are not "
                f"among the training classes ({', '.join(model.labels)})"
            )
        return samples, [(p, model.labels.index(extra.classes[c])) for p, c in extra.samples]
    if isinstance(val, bool) or not isinstance(val, int | float):
        raise CamlensError(f"val must be a fraction or a folder, not {val!r}")
    if val == 0:
        return samples, []
    return split(samples, float(val), seed)


@dataclass
class _Cached:
    """Pooled backbone features of readable images: ``features`` [n, views, K], ``labels`` [n]."""

    features: torch.Tensor
    labels: torch.Tensor
    paths: list[Path]


def _views(image: Image.Image, count: int) -> list[Image.Image]:
    """The image, its mirror image, then random resized crops (randomly mirrored): ``count`` in all."""
    from torchvision.transforms import RandomResizedCrop

    out = [image, ImageOps.mirror(image)][:count]
    while len(out) < count:
        out.append(_random_view(image, RandomResizedCrop))
    return out


def _random_view(image: Image.Image, crop: Any) -> Image.Image:
    top, left, height, width = crop.get_params(image, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
    view = image.crop((left, top, left + width, top + height))
    return ImageOps.mirror(view) if bool(torch.rand(()) < 0.5) else view


def _cache(
    net: CamNet,
    model: Model,
    items: list[tuple[Path, Label]],
    views: int,
    batch_size: int,
    history: History,
    reporter: _Reporter,
) -> _Cached:
    """Reads every image once and keeps ``GAP(features(view))`` of each of its ``views``."""
    device = model.device
    pooled: list[torch.Tensor] = []
    labels: list[Label] = []
    paths: list[Path] = []
    with eval_mode(net):
        for start in range(0, len(items), batch_size):
            photos: list[Image.Image] = []
            chunk = items[start : start + batch_size]
            for path, label in chunk:
                try:
                    image = load_image(path)
                except ImageError as exc:
                    history.skipped.append((str(path), exc.problem))
                    reporter.problem("features", f"{path}: {exc.problem} (skipped)", str(path))
                    continue
                photos.extend(_views(image, views))
                labels.append(label)
                paths.append(path)
            for at in range(0, len(photos), batch_size):
                x = preprocess(photos[at : at + batch_size], model.preprocess).to(device)
                with torch.no_grad():
                    pooled.append(net.pool(net.features(x)).flatten(1).float())
            reporter.advance("features", len(chunk), str(chunk[-1][0]))
    channels = net.config.channels
    features = torch.cat(pooled) if pooled else torch.empty(0, channels, device=device)
    if model.num_classes and items and isinstance(items[0][1], tuple):  # multi-hot tags
        label_tensor = torch.tensor(labels, dtype=torch.float32, device=device)
        label_tensor = label_tensor.view(-1, model.num_classes)
    else:
        label_tensor = torch.tensor(labels, dtype=torch.long, device=device)
    return _Cached(features.view(-1, views, channels).clone(), label_tensor, paths)


def _warn_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        listing = "; ".join(f"{path}: {problem}" for path, problem in skipped)
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s): {listing}", UserWarning, stacklevel=3
        )


def _require_each_class(
    train_set: _Cached, model: Model, where: str, multi_label: bool = False
) -> None:
    if multi_label:
        carried = train_set.labels.sum(dim=0) if len(train_set.labels) else None
        for index, name in enumerate(model.labels):
            if carried is None or not carried[index] > 0:
                raise DatasetError(
                    f"{where}: no readable training image has the tag {name!r} (hold fewer "
                    "out for validation, or list more images with it)"
                )
        return
    present = set(train_set.labels.tolist())
    for index, name in enumerate(model.labels):
        if index not in present:
            raise DatasetError(
                f"{where}/{name}: no readable training image in class folder {name!r}"
            )


class _Trainer:
    """The loops; keeps the best weights (lowest validation loss) and when to stop."""

    def __init__(
        self,
        net: CamNet,
        num_classes: int,
        history: History,
        reporter: _Reporter,
        patience: int | None,
        callback: Callable[[EpochRecord], None] | None,
    ) -> None:
        self.schedule = "cosine"
        self.lr_decay: float | None = None
        self.binary = False  # the head trained as one output (loss "binary")
        self.multi_label = False  # tags: independent sigmoid outputs (loss "sigmoid")
        self.net = net
        self.num_classes = num_classes
        self.history = history
        self.reporter = reporter
        self.patience = patience
        self.callback = callback
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.stop = False  # early stopping of the current phase

    # the two phases

    def head_phase(
        self,
        train_set: _Cached,
        val_set: _Cached,
        epochs: int,
        batch_size: int,
        lr: float,
        optim: OptimizerConfig,
        generator: torch.Generator,
    ) -> None:
        net = self.net
        n, views = train_set.features.shape[:2]
        single = nn.Linear(net.fc.in_features, 1).to(net.fc.weight.device)  # loss "binary"

        def head(x: torch.Tensor) -> torch.Tensor:
            if self.binary:
                return _two_from_one(single(net.dropout(x)))
            return net.head(x)

        def store() -> None:  # the one output as fc's two rows, -w/2 and w/2
            if self.binary:
                with torch.no_grad():
                    net.fc.weight.copy_(_two_from_one(single.weight.T).T)
                    net.fc.bias.copy_(_two_from_one(single.bias[None])[0])

        params = list((single if self.binary else net.fc).parameters())
        optimizer = optim.make(params, lr)
        steps = epochs * math.ceil(n / batch_size)
        schedule = _scheduler(optimizer, self.schedule, self.lr_decay, steps)
        task = self.reporter.task("head epochs", epochs)
        self.stop, self.bad_epochs = False, 0
        # the inputs are cached tensors: only fc's parameters get gradients
        for _ in range(epochs):
            began = time.perf_counter()
            net.dropout.train()
            order = torch.randperm(n, generator=generator)
            pick = torch.randint(views, (n,), generator=generator)
            total, correct = 0.0, 0.0
            for at in range(0, n, batch_size):
                rows = order[at : at + batch_size].to(train_set.features.device)
                x = train_set.features[rows, pick[at : at + batch_size].to(rows.device)]
                y = train_set.labels[rows]
                loss, right = _step(head(x), y, optimizer, schedule)
                total += loss * len(rows)
                correct += right
            net.dropout.eval()
            store()
            with torch.no_grad():
                val_logits = net.head(val_set.features[:, 0]) if len(val_set.labels) else None
            self.end_epoch(
                "head",
                total / n,
                correct / n,
                val_logits,
                val_set.labels,
                optimizer,
                began,
                task,
                state=lambda: {f"fc.{k}": v.clone() for k, v in net.fc.state_dict().items()},
            )
            if self.stop:
                break

    def fine_tune_phase(
        self,
        model: Model,
        blocks: list[nn.Module],
        train_set: _Cached,
        val_set: _Cached,
        epochs: int,
        batch_size: int,
        lr: float,
        optim: OptimizerConfig,
        augment: bool,
        generator: torch.Generator,
    ) -> None:
        from torchvision.transforms import RandomResizedCrop

        if epochs == 0:
            return
        net = self.net
        self.restore_best()
        self.stop, self.bad_epochs = False, 0
        params = [p for block in blocks for p in block.parameters()] + list(net.fc.parameters())
        optimizer = optim.make(params, lr)
        n = len(train_set.paths)
        steps = epochs * math.ceil(n / batch_size)
        schedule = _scheduler(optimizer, self.schedule, self.lr_decay, steps)
        device = model.device
        task = self.reporter.task("fine-tune epochs", epochs)
        with _only_trainable(net, params):
            for _ in range(epochs):
                began = time.perf_counter()
                net.eval()  # batch norm statistics stay frozen...
                net.dropout.train()  # ...the head's dropout is on
                order = torch.randperm(n, generator=generator).tolist()
                total, correct = 0.0, 0.0
                for at in range(0, n, batch_size):
                    rows = order[at : at + batch_size]
                    photos = [load_image(train_set.paths[i]) for i in rows]
                    if augment:
                        photos = [_random_view(p, RandomResizedCrop) for p in photos]
                    x = preprocess(photos, model.preprocess).to(device)
                    y = train_set.labels[rows]
                    loss, right = _step(net(x), y, optimizer, schedule)
                    total += loss * len(rows)
                    correct += right
                net.eval()
                val_logits = self.full_logits(model, val_set.paths, batch_size)
                self.end_epoch(
                    "fine-tune",
                    total / n,
                    correct / n,
                    val_logits,
                    val_set.labels,
                    optimizer,
                    began,
                    task,
                    state=lambda: {k: v.clone() for k, v in net.state_dict().items()},
                )
                if self.stop:
                    break

    # shared steps

    def full_logits(self, model: Model, paths: list[Path], batch_size: int) -> torch.Tensor | None:
        if not paths:
            return None
        out = []
        for at in range(0, len(paths), batch_size):
            x = preprocess([load_image(p) for p in paths[at : at + batch_size]], model.preprocess)
            with torch.inference_mode():
                out.append(self.net(x.to(model.device)).float())
        return torch.cat(out)

    def end_epoch(
        self,
        phase: str,
        train_loss: float,
        train_accuracy: float,
        val_logits: torch.Tensor | None,
        val_labels: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        began: float,
        task: str,
        state: Callable[[], dict[str, torch.Tensor]],
    ) -> None:
        history = self.history
        val_loss = val_accuracy = val_f1 = None
        if val_logits is not None and len(val_labels):
            val_loss = float(_loss(val_logits, val_labels))
            val_accuracy = float(_right(val_logits, val_labels).mean())
            if val_labels.is_floating_point():
                val_f1 = _macro_f1(_tag_counts(val_logits, val_labels))
        record = EpochRecord(
            epoch=len(history.epochs) + 1,
            phase=phase,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=float(optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - began,
            val_f1=val_f1,
        )
        history.epochs.append(record)
        # no validation, or no early stopping (plain): the last epoch is kept
        score = val_loss if val_loss is not None and self.patience is not None else -record.epoch
        if score < self.best_loss:
            self.best_loss = score
            self.best_state = state()
            self.bad_epochs = 0
            history.best_epoch = record.epoch
            if val_logits is not None and val_labels.is_floating_point():
                history.tag_counts = _tag_counts(val_logits, val_labels)
            elif val_logits is not None:
                history.confusion = _confusion(val_logits, val_labels, self.num_classes)
        else:
            self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                history.stopped_early = True
                self.stop = True
        self.reporter.advance(task, 1, f"epoch {record.epoch}")
        if self.callback is not None:
            self.callback(record)

    def restore_best(self) -> None:
        if self.best_state is not None:  # all of the network, or the head only
            self.net.load_state_dict(self.best_state, strict=False)


def _confusion(logits: torch.Tensor, labels: torch.Tensor, n: int) -> list[list[int]]:
    """``m[i][j]``: images of class ``i`` predicted as ``j``."""
    predicted = logits.argmax(1).cpu()
    flat = labels.cpu() * n + predicted
    counts = torch.bincount(flat, minlength=n * n).view(n, n)
    return [[int(v) for v in row] for row in counts]


def _tag_counts(logits: torch.Tensor, tags: torch.Tensor) -> list[list[int]]:
    """Per tag: ``[true positives, false positives, false negatives, true negatives]`` of the
    decisions at 0.5 (``logit >= 0``) against the multi-hot ``tags`` [N, C]."""
    said, truth = (logits >= 0).cpu(), (tags > 0.5).cpu()
    counts = torch.stack(
        [
            (said & truth).sum(0),
            (said & ~truth).sum(0),
            (~said & truth).sum(0),
            (~said & ~truth).sum(0),
        ],
        dim=1,
    )
    return [[int(v) for v in row] for row in counts]


def _macro_f1(counts: list[list[int]]) -> float | None:
    """The mean over tags of ``2 TP / (2 TP + FP + FN)``, over the tags with something to find
    or found (``None`` when no tag has)."""
    scores = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn, _ in counts if tp + fp + fn]
    return sum(scores) / len(scores) if scores else None


class _Reporter:
    """Counts what is done of each task and sends it to ``progress`` as :class:`Event` s (nothing
    without a callback)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done: dict[str, int] = {}
        self.totals: dict[str, int] = {}

    def task(self, name: str, total: int) -> str:
        """Starts (or restarts) counting ``name`` to ``total``; returns ``name``."""
        self.done[name], self.totals[name] = 0, total
        self._send(Event(name, 0, total))
        return name

    def advance(self, task: str, steps: int, item: str | None = None) -> None:
        self.done[task] += steps
        self._send(Event(task, self.done[task], self.totals[task], item=item))

    def problem(self, task: str, message: str, item: str | None = None) -> None:
        self._send(Event(task, self.done[task], self.totals[task], item=item, problem=message))

    def _send(self, event: Event) -> None:
        if self.progress is not None:
            self.progress(event)


def clone_model(model: Model) -> Model:
    """A deep copy of ``model`` (network included)."""
    return replace(model, net=copy.deepcopy(model.net))


# --- the synthetic benchmark's CNN ---------------------------------------------------------------


def _tensors(dataset: Dataset, preprocess: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from camlens.images import preprocess as prepare

    photos, labels = [], []
    for item in dataset.items:
        photos.append(load_image(item.image))
        labels.append(dataset.classes.index(item.objects[0].label))
    return prepare(photos, preprocess), torch.tensor(labels)


def train_synthetic_model(
    dataset: Dataset | str | Path,
    *,
    epochs: int = 12,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    width: int = 24,
    preprocess: PreprocessConfig = SYNTHETIC_PREPROCESS,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Model:
    """Trains a :class:`~camlens.models.synthetic.SyntheticCNN` on a synthetic set
    (:func:`camlens.datasets.make_synthetic`; each image's class: its first object's) with Adam,
    random horizontal flips and a one-cycle learning rate, seeded; returns it as a camlens
    :class:`~camlens.models.Model` named ``synthetic``, labelled with the set's classes.

    Its ``spec`` is ``"synthetic"``; its ``weights`` are ``None`` until you save the network's
    state dict and set them (``camlens synthetic OUT --train`` writes ``OUT/model.pt``).
    ``threads``: torch's intra-op threads while training (restored afterwards). Convolutions this
    small gain little from a second thread, and lose much when the CPU is shared: on 2 busy cores
    one thread trained 2.5-5x faster than two. ``progress`` hears of each of the ``"epochs"``."""
    data = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    if not data.items:
        raise DatasetError(f"{data.path}: no images to train on")
    torch.manual_seed(seed)
    x, y = _tensors(data, preprocess)
    net = SyntheticCNN(len(data.classes), width)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _fit(net, x, y, optimizer, schedule, generator, epochs, batch_size, _Reporter(progress))
    finally:
        torch.set_num_threads(before)
    net.eval()
    labels = tuple(str(c) for c in data.classes)
    return Model(net, preprocess, labels, SYNTHETIC_SPEC, spec=SYNTHETIC_SPEC)


def _fit(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    epochs: int,
    batch_size: int,
    reporter: _Reporter,
) -> None:
    """Epochs over in-memory tensors, each image mirrored with probability 1/2, in train mode."""
    task = reporter.task("epochs", epochs)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            batch = x[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            _step(net(batch), y[index], optimizer, schedule)
        reporter.advance(task, 1, f"epoch {epoch + 1}")
