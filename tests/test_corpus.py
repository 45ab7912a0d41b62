"""A corpus of awkward calls, as a new user makes them, across every command and the Python API.

Each command-line case runs ``camlens`` in a folder of awkward files (odd names, broken images,
odd modes, bad weights, checkpoints and annotations) and checks what every call must hold:

- no traceback: exit status 0 or 2, and no warning in Python's own format;
- one line on stderr per bad input (``camlens: ...``), naming what is wrong;
- every good input of the call processed (its report written, its line in ``boxes.jsonl``, its
  image evaluated);
- every JSON file written is strict JSON with finite numbers;
- no earlier output lost: a file of an earlier run in ``--out`` stays, and a run with nothing to
  write leaves the earlier ``boxes.jsonl`` or ``evaluation.json`` as it was.

Most cases use the synthetic benchmark's small CNN (random weights, 64x64 inputs), a few the
default EfficientNet-Lite0. The Python API cases check that each bad call raises a
:class:`~camlens.errors.CamlensError` naming the problem, and each good one gives finite results.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from awkward import (
    assert_clean,
    cat,
    coco,
    cup,
    invoke,
    problems,
    strict_json,
    strict_reports,
    synthetic_weights,
    warnings_of,
)
from PIL import Image
from test_images import blank_png  # pytest puts tests/ on sys.path
from torch import nn

import camlens
from camlens.errors import CamlensError

LONG = "l" * 200  # a 204-byte file name with its suffix; its outputs' names are longer still
LONGEST = "m" * 251  # with ".jpg", as long as a file name can be: its outputs' names are cut


class Payload:
    """Unpickling this would create the file ``ran`` (it must never happen)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (Path("ran"),))


def build(root: Path) -> None:
    """The awkward files, in ``root``."""
    for name in ["cat.jpg", "[cat] photo.jpg", "[bold]b.jpg", "with space.jpg", "-dash.jpg"]:
        cat(root / name)
    for name in ["cup.png", "ünïcødé 日本.png", "a.b.c.png", "percent %s {0}.png", "..png"]:
        cup(root / name, format="PNG")
    cat(root / "[" / "x].jpg")  # reads [/x].jpg
    cat(root / f"{LONG}.jpg")
    cat(root / f"{LONGEST}.jpg")
    cat(root / "new\nline.jpg")
    cat(root / "UPPER.JPG")
    cat(root / "noext", format="JPEG")
    cup(root / "png_named.jpg", format="PNG")
    cat(root / ".hidden.jpg")
    (root / "broken.jpg").write_text("not an image")
    (root / "empty.jpg").touch()
    whole = (root / "cat.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("text")
    blank_png(root / "huge.png", 20000, 20000)
    cat(root / "one.png", size=(1, 1))
    cat(root / "tall.png", size=(1, 300))
    cat(root / "wide.png", size=(300, 1))
    Image.open(root / "cat.jpg").convert("L").save(root / "gray.png")
    Image.open(root / "cat.jpg").convert("RGBA").save(root / "rgba.png")
    Image.open(root / "cat.jpg").convert("CMYK").save(root / "cmyk.jpg")
    Image.open(root / "cat.jpg").convert("P").save(root / "palette.gif")
    sixteen = (np.asarray(Image.open(root / "gray.png"), dtype=np.uint16) * 257).astype(">u2")
    Image.frombytes("I;16B", sixteen.shape[::-1], sixteen.tobytes()).save(root / "sixteen.png")
    # folders
    (root / "empty").mkdir()
    (root / "folder.camlens").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images")
    cat(root / "same" / "a" / "x.jpg")
    cup(root / "same" / "b" / "x.jpg")
    cat(root / "stems" / "photo.tiff")
    cup(root / "stems" / "photo.webp")
    cat(root / "stems" / "photo.jpg")
    cat(root / "tree" / "one" / "deep" / "a.jpg")
    cup(root / "tree" / "two" / "b.png")
    (root / "tree" / "two" / "bad.png").write_text("no")
    # weights
    synthetic_weights(root / "syn.pt")
    synthetic_weights(root / "nan.pt", fill=float("nan"))
    synthetic_weights(root / "inf.pt", fill=float("inf"))
    synthetic_weights(root / "zero.pt", fill=0.0)
    (root / "noise.pt").write_bytes(bytes(range(256)) * 8)
    (root / "empty.pt").touch()
    (root / "dir.pt").mkdir()
    torch.save({"w": torch.zeros(1), "x": Payload()}, root / "trap.pt")
    torch.save({"other.weight": torch.zeros(3, 3)}, root / "other.pt")
    torch.save([torch.zeros(1)], root / "list.pt")
    (root / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (root / "labels.txt").write_text("disc\nsquare\n")
    # annotations
    box = [10, 10, 40, 30]
    coco(root / "set.json", [("cat.jpg", [("disc", box)]), ("cup.png", [("square", box)])])
    coco(root / "[set].json", [("cat.jpg", [("disc", box)])])
    coco(
        root / "mixed.json",
        [
            ("cat.jpg", [("disc", box)]),
            ("cup.png", [("square", [1, 2])]),
            ("gone.jpg", [("disc", box)]),
            ("broken.jpg", [("disc", box)]),
            ("[/x].jpg", [("cross", box)]),
            ("tall.png", [("disc", [0, 0, 1, 300])]),
            ("wide.png", [("unicorn", [0, 0, 300, 1])]),
            ("cmyk.jpg", [("disc", [50, 50, 500, 500])]),
        ],
    )
    coco(root / "sizes.json", [("cat.jpg", [("disc", box)])], sizes={"cat.jpg": (64, 96)})
    coco(root / "unknown.json", [("cat.jpg", [("unicorn", box)])])
    (root / "invalid.json").write_text("{not json")
    (root / "blank.json").write_text("")
    (root / "list.json").write_text("[1, 2]")
    (root / "noimages.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (root / "voc").mkdir()
    (root / "voc" / "cat.xml").write_text(
        "<annotation><filename>cat.jpg</filename><object><name>disc</name><bndbox><xmin>5</xmin>"
        "<ymin>5</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>"
    )
    cat(root / "voc" / "cat.jpg")
    (root / "voc" / "broken.xml").write_text("<annotation><filename>")
    # training folders
    for i in range(2):
        cat(root / "train" / "cat" / f"{i}.jpg", size=(40 + 8 * i, 32))
        cup(root / "train" / "cup" / f"{i}.png", size=(36, 30 + 6 * i))
        cat(root / "names" / f"cat.{i}.jpg", size=(40, 32))
        cup(root / "names" / f"cup.{i}.png", size=(36, 30))
    cat(root / "oneclass" / "cat" / "0.jpg")
    cat(root / "emptyclass" / "cat" / "0.jpg")
    (root / "emptyclass" / "cup").mkdir(parents=True)
    cat(root / "loose" / "0.jpg")
    cat(root / "brokenclass" / "cat" / "0.jpg")
    (root / "brokenclass" / "cup").mkdir(parents=True)
    (root / "brokenclass" / "cup" / "0.jpg").write_text("no")


def checkpoints(root: Path) -> None:
    """A good ``.camlens`` checkpoint of the default backbone, and broken ones."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    good = camlens.save(camlens.build_cam_model(class_names=["cat", "cup"]), root / "good.camlens")
    data = good.read_bytes()
    (root / "truncated.camlens").write_bytes(data[: len(data) // 2])
    (root / "noise.camlens").write_bytes(bytes(range(256)) * 8)
    state = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:  # type: ignore[no-untyped-call]
        header = json.loads(f.metadata()["camlens"])
    save_file({"w": torch.zeros(1)}, str(root / "plain.camlens"))
    for name, part, key, value in [
        ("std0", "preprocess", "std", [0.5, 0, 0.5]),
        ("nobackbone", "model", "backbone", "timm:resnet9000"),
        ("classes", "model", "num_classes", 0),
        ("future", None, "version", 99),
    ]:
        edited = json.loads(json.dumps(header))
        (edited[part] if part else edited)[key] = value
        save_file(state, str(root / f"{name}.camlens"), metadata={"camlens": json.dumps(edited)})


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("awkward")
    build(root)
    checkpoints(root)
    return root


@dataclass(frozen=True)
class Case:
    """``camlens ARGS`` (``{syn}``: the synthetic model; ``--out`` added when the command has one
    and the case does not give it). ``bad``: lines about bad input; ``says``: text found in
    them, in order; ``good``: inputs processed (explain: reports; localize: boxes.jsonl lines;
    evaluate: images evaluated; train: 1 when a checkpoint is written); ``warns``: text found in
    the warnings; ``shows``: text found on stdout, as it is."""

    args: str
    bad: int = 0
    says: tuple[str, ...] = ()
    good: int | None = None
    warns: tuple[str, ...] = ()
    shows: tuple[str, ...] = ()


SYN = "--model synthetic --weights syn.pt"
TRAIN = "train train --epochs 1 --views 1 --val 0"


def c(
    args: str,
    bad: int = 0,
    *says: str,
    good: int | None = None,
    warns: str = "",
    shows: tuple[str, ...] = (),
) -> Case:
    return Case(args.replace("{syn}", SYN), bad, says, good, (warns,) if warns else (), shows)


CASES: dict[str, Case] = {
    # --- explain: file names ---------------------------------------------------------------------
    "explain-two-good": c("explain cat.jpg cup.png {syn}", good=2),
    "explain-brackets": c(
        "explain '[cat] photo.jpg' '[bold]b.jpg' '[/x].jpg' {syn}",
        good=3,
        shows=("[cat] photo.jpg: ", "[bold]b.jpg: ", "[/x].jpg: "),
    ),
    "explain-space-unicode": c(
        "explain 'with space.jpg' 'ünïcødé 日本.png' {syn}",
        good=2,
        shows=("with space.jpg: ", "ünïcødé 日本.png: "),
    ),
    "explain-leading-dash": c("explain {syn} -- -dash.jpg cat.jpg", good=2),
    "explain-dots": c("explain a.b.c.png ..png {syn}", good=2),
    "explain-percent": c("explain 'percent %s {0}.png' {syn}", good=1, shows=("%s {0}.png: ",)),
    "explain-long-name": c(f"explain {LONG}.jpg cat.jpg {{syn}} --method gradcam", good=2),
    "explain-longest-name": c(f"explain {LONGEST}.jpg {{syn}} --top 2", good=1),
    "localize-longest-name": c(f"localize {LONGEST}.jpg {{syn}}", good=1),
    "explain-newline-name": c(
        "explain 'new\nline.jpg' typo.jpg {syn}", 1, "typo.jpg", good=1, shows=("new\\nline.jpg: ",)
    ),
    "explain-upper-suffix": c("explain UPPER.JPG {syn}", good=1),
    "explain-no-suffix": c("explain noext {syn}", good=1),
    "explain-png-named-jpg": c("explain png_named.jpg {syn}", good=1),
    "explain-hidden-named": c("explain .hidden.jpg {syn}", good=1),
    "explain-same-file-twice": c("explain cat.jpg ./cat.jpg same/../cat.jpg {syn}", good=1),
    "explain-same-stem-folders": c("explain same {syn}", good=2),
    "explain-same-stem-extensions": c("explain stems {syn}", good=3),
    "explain-same-stem-one-given": c("explain stems/photo.webp {syn}", good=1),
    "explain-tree": c("explain tree {syn}", 1, "bad.png", good=2),
    # --- explain: bad files ----------------------------------------------------------------------
    "explain-broken": c("explain broken.jpg cat.jpg {syn}", 1, "broken.jpg", good=1),
    "explain-empty-file": c("explain empty.jpg cat.jpg {syn}", 1, "empty.jpg: is empty", good=1),
    "explain-truncated": c("explain truncated.jpg cat.jpg {syn}", 1, "truncated.jpg", good=1),
    "explain-text": c("explain notes.txt cat.jpg {syn}", 1, "notes.txt", good=1),
    "explain-missing": c("explain typo.jpg cat.jpg {syn}", 1, "typo.jpg: no such file", good=1),
    "explain-huge": c("explain huge.png cat.jpg {syn}", 1, "huge.png: is 20000x20000", good=1),
    "explain-huge-allowed-limit": c(
        "explain cat.jpg {syn} --max-pixels 100", 1, "over the limit", good=0
    ),
    "explain-all-bad": c("explain broken.jpg typo.jpg {syn}", 2, "broken.jpg", "typo.jpg", good=0),
    "explain-empty-folder": c("explain empty cat.jpg {syn}", 1, "empty: is a folder", good=1),
    "explain-folder-of-text": c("explain notes cat.jpg {syn}", 1, "notes: is a folder", good=1),
    "explain-only-empty-folder": c("explain empty {syn}", 1, "no images found in empty", good=0),
    "explain-bracket-broken": c("explain '[bold]x' cat.jpg {syn}", 1, "[bold]x", good=1),
    # --- explain: odd pictures -------------------------------------------------------------------
    "explain-one-pixel": c("explain one.png {syn}", good=1, warns="one.png: a picture of a single"),
    "explain-one-pixel-wide": c("explain tall.png wide.png {syn}", good=2),
    "explain-modes": c("explain gray.png rgba.png cmyk.jpg palette.gif sixteen.png {syn}", good=5),
    # --- explain: options ------------------------------------------------------------------------
    "alpha-negative": c("explain cat.jpg cup.png {syn} --alpha -0.5", 1, "alpha", good=0),
    "alpha-above-one": c("explain cat.jpg {syn} --alpha 1.5", 1, "alpha", good=0),
    "alpha-nan": c("explain cat.jpg {syn} --alpha nan", 1, "alpha", good=0),
    "alpha-text": c("explain cat.jpg {syn} --alpha lots", 1, "'--alpha'", good=0),
    "option-unknown": c("explain cat.jpg {syn} --bogus", 1, "--bogus", good=0),
    "option-no-paths": c("explain {syn}", 1, "Missing argument", good=0),
    "command-unknown": c("explane cat.jpg", 1, "No such command"),
    "cmap-unknown": c("explain cat.jpg {syn} --cmap jett", 1, "jett", good=0),
    "cmap-empty": c("explain cat.jpg {syn} --cmap ''", 1, "cmap", good=0),
    "top-zero": c("explain cat.jpg {syn} --top 0", 1, "top", good=0),
    "top-negative": c("explain cat.jpg {syn} --top -3", 1, "top", good=0),
    "top-too-many": c("explain cat.jpg {syn} --top 5", 1, "top must be between 1 and 4", good=0),
    "top-all": c("explain cat.jpg {syn} --top 4", good=1),
    "top-and-class": c("explain cat.jpg {syn} --top 2 --class 1", 1, "not both", good=0),
    "class-out-of-range": c("explain cat.jpg {syn} --class 4", 1, "out of range", good=0),
    "class-negative": c("explain cat.jpg {syn} --class -1", 1, "out of range", good=0),
    "class-unknown": c("explain cat.jpg {syn} --class unicorn", 1, "'unicorn'", good=0),
    "class-empty": c("explain cat.jpg {syn} --class ''", 1, "empty class name", good=0),
    "class-by-name": c("explain cat.jpg {syn} --class SQUARE --class disc", good=1),
    "class-ambiguous": c("explain cat.jpg --class crane", 1, "ambiguous", "134", "517", good=0),
    "class-bracketed": c("explain cat.jpg {syn} --class '[bold]x'", 1, "'[bold]x'", good=0),
    "method-unknown": c("explain cat.jpg {syn} --method nope", 1, "unknown method 'nope'", good=0),
    "method-empty": c("explain cat.jpg {syn} --method ''", 1, "method", good=0),
    "method-one-bad": c("explain cat.jpg {syn} --method cam --method grad", 1, "grad", good=0),
    "method-all": c("explain cat.jpg {syn} --method all --fast-channels 4", good=1),
    "method-cam-not-head": c(
        "explain cat.jpg {syn} --method cam --layer features.0", 1, "GAP -> Linear", good=0
    ),
    "layer-unknown": c("explain cat.jpg {syn} --layer nope", 1, "no layer named 'nope'", good=0),
    "layer-empty": c("explain cat.jpg {syn} --layer ''", 1, "layer", good=0),
    "layer-pool": c("explain cat.jpg {syn} --layer pool", 1, "'pool'", good=0),
    "layer-fc": c("explain cat.jpg {syn} --layer fc", 1, "'fc'", good=0),
    "layer-two": c("explain cat.jpg {syn} --layer features.1 --layer features", good=1),
    "smooth-unknown": c("explain cat.jpg {syn} --smooth blur", 1, "blur", good=0),
    "smooth-both": c("explain cat.jpg {syn} --smooth tta --smooth pca", good=1),
    "batch-size-zero": c("explain cat.jpg {syn} --batch-size 0", 1, "batch_size", good=0),
    "batch-size-one": c("explain cat.jpg cup.png broken.jpg {syn} --batch-size 1", 1, good=2),
    "max-pixels-zero": c("explain cat.jpg {syn} --max-pixels 0", 1, "max_pixels", good=0),
    "memory-zero": c("explain cat.jpg {syn} --max-batch-memory 0", 1, "max-batch-memory", good=0),
    "fast-channels-zero": c("explain cat.jpg {syn} --fast-channels 0", 1, "fast_channels", good=0),
    "fast-resolution-big": c(
        "explain cat.jpg {syn} --fast-resolution 2", 1, "fast_resolution", good=0
    ),
    "fast-resolution-nan": c(
        "explain cat.jpg {syn} --fast-resolution nan", 1, "fast_resolution", good=0
    ),
    "threshold-above": c("explain cat.jpg {syn} --boxes --threshold 1", 1, "threshold", good=0),
    "threshold-nan": c("explain cat.jpg {syn} --boxes --threshold nan", 1, "threshold", good=0),
    "threshold-text": c("explain cat.jpg {syn} --boxes --threshold half", 1, "half", good=0),
    "threshold-otsu": c("explain cat.jpg {syn} --boxes --threshold otsu", good=1),
    "device-banana": c("explain cat.jpg {syn} --device banana", 1, "unknown device", good=0),
    "device-cuda-index": c("explain cat.jpg {syn} --device cuda:7", 1, "cuda:7", good=0),
    "device-mps-cpu": c("explain cat.jpg {syn} --device cpu:0", good=1),
    "input-size-zero": c("explain cat.jpg {syn} --input-size 0", 1, "input size", good=0),
    "input-size-text": c("explain cat.jpg {syn} --input-size 2x", 1, "input size", good=0),
    "input-size-small": c(
        "explain cat.jpg cup.png {syn} --input-size 4", 1, "input_size must be at least 8", good=0
    ),
    "input-size-other": c("explain cat.jpg {syn} --input-size 48x80", good=1),
    "no-relu-zero-weights": c(
        "explain cat.jpg --model synthetic --weights zero.pt --no-relu", good=1, warns="flat"
    ),
    "panels-all-boxes-layers": c(
        "explain cat.jpg '[cat] photo.jpg' {syn} --panels --all-boxes --layer all --top 2", good=2
    ),
    # --- explain: output places ------------------------------------------------------------------
    "out-a-file": c("explain cat.jpg {syn} --out cat.jpg", 1, "--out cat.jpg is a file"),
    "out-proc": c("explain cat.jpg {syn} --out /proc/x", 1, "--out /proc/x cannot be created"),
    "grid-folder": c(
        "explain cat.jpg {syn} --grid empty", 1, "--grid empty: the grid is a PNG", good=0
    ),
    "grid-proc": c("explain cat.jpg {syn} --grid /proc/g.png", 1, "/proc/g.png", good=0),
    # --- explain: models and weights -------------------------------------------------------------
    "model-unknown": c("explain cat.jpg --model nope", 1, "unknown model spec 'nope'", good=0),
    "model-timm-unknown": c("explain cat.jpg --model timm:nope", 1, "timm has no model", good=0),
    "model-tv-unknown": c(
        "explain cat.jpg --model torchvision:nope", 1, "torchvision has no", good=0
    ),
    "model-empty": c("explain cat.jpg --model ''", 1, "model", good=0),
    "synthetic-no-weights": c("explain cat.jpg --model synthetic", 1, "needs weights", good=0),
    "weights-missing": c(
        "explain cat.jpg --model synthetic --weights gone.pt", 1, "gone.pt: no such", good=0
    ),
    "weights-folder": c("explain cat.jpg --model synthetic --weights dir.pt", 1, "dir.pt", good=0),
    "weights-empty": c(
        "explain cat.jpg --model synthetic --weights empty.pt", 1, "empty.pt: not a state", good=0
    ),
    "weights-noise": c(
        "explain cat.jpg --model synthetic --weights noise.pt", 1, "noise.pt: not a state", good=0
    ),
    "weights-pickle-code": c(
        "explain cat.jpg --model synthetic --weights trap.pt", 1, "trap.pt: not a state", good=0
    ),
    "weights-list": c(
        "explain cat.jpg --model synthetic --weights list.pt", 1, "list.pt: not a state", good=0
    ),
    "weights-other-net": c(
        "explain cat.jpg --model synthetic --weights other.pt", 1, "other.pt", good=0
    ),
    "weights-safetensors-corrupt": c(
        "explain cat.jpg --model synthetic --weights corrupt.safetensors", 1, "corrupt", good=0
    ),
    "weights-for-default": c("explain cat.jpg --weights syn.pt", 1, "own weights", good=0),
    "weights-nan": c(
        "explain cat.jpg --model synthetic --weights nan.pt", 1, "NaN or infinite", good=0
    ),
    "weights-inf": c(
        "explain cat.jpg --model synthetic --weights inf.pt", 1, "NaN or infinite", good=0
    ),
    "weights-zero": c(
        "explain cat.jpg --model synthetic --weights zero.pt --method cam", good=1, warns="flat"
    ),
    "checkpoint-good": c("explain cat.jpg --model good.camlens --method cam", good=1),
    "checkpoint-missing": c("explain cat.jpg --model gone.camlens", 1, "gone.camlens", good=0),
    "checkpoint-truncated": c(
        "explain cat.jpg --model truncated.camlens", 1, "truncated.camlens", good=0
    ),
    "checkpoint-noise": c("explain cat.jpg --model noise.camlens", 1, "noise.camlens", good=0),
    "checkpoint-plain": c("explain cat.jpg --model plain.camlens", 1, "without a camlens", good=0),
    "checkpoint-std0": c("explain cat.jpg --model std0.camlens", 1, "std0.camlens: ", good=0),
    "checkpoint-backbone": c(
        "explain cat.jpg --model nobackbone.camlens", 1, "nobackbone.camlens: ", good=0
    ),
    "checkpoint-classes": c(
        "explain cat.jpg --model classes.camlens", 1, "classes.camlens", good=0
    ),
    "checkpoint-future": c("explain cat.jpg --model future.camlens", 1, "version 99", good=0),
    "checkpoint-with-weights": c(
        "explain cat.jpg --model good.camlens --weights syn.pt", 1, "own weights", good=0
    ),
    "checkpoint-as-weights": c(
        "explain cat.jpg --model synthetic --weights good.camlens", 1, "is a camlens", good=0
    ),
    # --- methods ---------------------------------------------------------------------------------
    "methods-list": c("methods"),
    "methods-all-zero-weights": c(
        "explain cat.jpg --model synthetic --weights zero.pt --method all", good=1, warns="flat"
    ),
    "methods-all-odd-pictures": c(
        "explain one.png tall.png wide.png {syn} --method all --fast-channels 8", good=3
    ),
    "methods-scores-smoothed": c(
        "explain cat.jpg {syn} --method scores --smooth tta --fast-resolution 0.5", good=1
    ),
    "methods-eigen-pca": c("explain cat.jpg cup.png {syn} --method eigencam --smooth pca", good=2),
    "methods-group-typo": c("explain cat.jpg {syn} --method gradient", good=1),
    "methods-two-layers-boxes": c(
        "explain cat.jpg {syn} --method gradients --layer features --layer features.2 --boxes",
        good=1,
    ),
    "methods-all-no-head-there": c(  # CAM is left out there, with a warning; the others run
        "explain cat.jpg {syn} --method all --layer features.2", good=1, warns="cam left out"
    ),
    # --- localize --------------------------------------------------------------------------------
    "localize-good": c("localize cat.jpg cup.png {syn}", good=2),
    "localize-default-top-few-classes": c("localize cat.jpg {syn}", good=1),
    "localize-brackets": c(
        "localize '[cat] photo.jpg' '[/x].jpg' {syn}", good=2, shows=("[cat] photo.jpg: ",)
    ),
    "localize-same-stems": c("localize stems same {syn}", good=5),
    "localize-broken": c("localize broken.jpg cat.jpg {syn}", 1, "broken.jpg", good=1),
    "localize-all-bad": c("localize typo.jpg {syn}", 1, "typo.jpg", good=0),
    "localize-min-score-high": c("localize cat.jpg {syn} --min-score 1.5", 1, "min_score", good=0),
    "localize-min-score-nan": c("localize cat.jpg {syn} --min-score nan", 1, "min_score", good=0),
    "localize-iou-negative": c("localize cat.jpg {syn} --iou -1", 1, "iou", good=0),
    "localize-iou-big": c("localize cat.jpg {syn} --iou 2", 1, "iou", good=0),
    "localize-top-zero": c("localize cat.jpg {syn} --top 0", 1, "top", good=0),
    "localize-top-beyond-classes": c("localize cat.jpg {syn} --top 9", good=1),  # clipped
    "localize-one-pixel": c("localize one.png cat.jpg {syn} --no-crops", good=2, warns="one.png"),
    "localize-out-file": c("localize cat.jpg {syn} --out cat.jpg", 1, "is a file"),
    "localize-device": c("localize cat.jpg {syn} --device banana", 1, "banana", good=0),
    "localize-nan-model": c(
        "localize cat.jpg --model synthetic --weights nan.pt", 1, "NaN or infinite", good=0
    ),
    "localize-empty-folder": c("localize empty cat.jpg {syn}", 1, "empty: is a folder", good=1),
    # --- layers ----------------------------------------------------------------------------------
    "layers-synthetic": c("layers {syn}"),
    "layers-nan": c("layers --model synthetic --weights nan.pt", warns="NaN or infinite"),
    "layers-random-weights": c("layers --model torchvision:resnet18", warns="random weights"),
    "layers-noise": c("layers --model synthetic --weights noise.pt", 1, "not a state dict"),
    "layers-device": c("layers {syn} --device banana", 1, "unknown device"),
    "layers-checkpoint-std0": c("layers --model std0.camlens", 1, "std0.camlens: "),
    "layers-bad-spec": c("layers --model 'x -> GAP -> Linear(1, 2)'", 1, "weights"),
    # --- evaluate --------------------------------------------------------------------------------
    "evaluate-good": c("evaluate set.json {syn} --steps 2 --no-road", good=2),
    "evaluate-mixed": c(
        "evaluate mixed.json {syn} --no-faithfulness",
        5,
        "malformed bbox [1, 2] (want [x, y, w, h])",
        "gone.jpg",
        "'unicorn'",
        "broken.jpg",
        "cmyk.jpg",
        good=3,
    ),
    "evaluate-brackets": c(
        "evaluate '[set].json' {syn} --no-faithfulness", good=1, shows=("[set].json: 1 of 1",)
    ),
    "evaluate-sizes": c("evaluate sizes.json {syn} --no-faithfulness", 1, "64x96", good=0),
    "evaluate-unknown-class": c("evaluate unknown.json {syn}", 1, "unicorn", good=0),
    "evaluate-images-typo": c("evaluate set.json --images typo {syn}", 2, "typo", good=0),
    "evaluate-missing": c("evaluate gone.json {syn}", 1, "gone.json", good=0),
    "evaluate-invalid": c("evaluate invalid.json {syn}", 1, "not valid JSON", good=0),
    "evaluate-blank": c("evaluate blank.json {syn}", 1, "empty annotation file", good=0),
    "evaluate-list": c("evaluate list.json {syn}", 1, "not COCO JSON", good=0),
    "evaluate-no-images": c("evaluate noimages.json {syn}", 1, "no images listed", good=0),
    "evaluate-a-photo": c("evaluate cat.jpg {syn}", 1, "cat.jpg", good=0),
    "evaluate-empty-folder": c("evaluate empty {syn}", 1, "empty", good=0),
    "evaluate-voc": c("evaluate voc {syn} --no-faithfulness", 1, "broken.xml", good=1),
    "evaluate-tolerance": c("evaluate set.json {syn} --tolerance -1", 1, "tolerance", good=0),
    "evaluate-iou-zero": c("evaluate set.json {syn} --iou 0", 1, "iou", good=0),
    "evaluate-iou-nan": c("evaluate set.json {syn} --iou nan", 1, "iou", good=0),
    "evaluate-threshold": c("evaluate set.json {syn} --threshold 2", 1, "threshold", good=0),
    "evaluate-method": c("evaluate set.json {syn} --method nope", 1, "nope", good=0),
    "evaluate-layer": c("evaluate set.json {syn} --layer nope", 1, "nope", good=0),
    "evaluate-device": c("evaluate set.json {syn} --device banana", 1, "banana", good=0),
    "evaluate-nan": c(
        "evaluate set.json --model synthetic --weights nan.pt", 1, "NaN or infinite", good=0
    ),
    "evaluate-out-file": c("evaluate set.json {syn} --out cat.jpg", 1, "is a file"),
    "evaluate-out-proc": c("evaluate set.json {syn} --out /proc/x", 1, "cannot be created"),
    "evaluate-scorecam": c("evaluate set.json {syn} --method scorecam --no-faithfulness", good=2),
    # --- train -----------------------------------------------------------------------------------
    "train-missing": c("train gone", 1, "gone: no such folder", good=0),
    "train-a-file": c("train cat.jpg", 1, "is a file", good=0),
    "train-one-class": c("train oneclass", 1, "one class", good=0),
    "train-empty-class": c("train emptyclass", 1, "no image files", good=0),
    "train-loose": c("train loose", 1, "directly in the folder", good=0),
    "train-broken-class": c(TRAIN.replace("train train", "train brokenclass"), 2, good=0),
    "train-val-big": c("train train --val 1.5", 1, "validation", good=0),
    "train-val-nan": c("train train --val nan", 1, "validation", good=0),
    "train-val-folder-missing": c("train train --val gone", 1, "gone", good=0),
    "train-classes-from": c("train train --classes-from colours", 1, "classes_from", good=0),
    "train-names": c("train names --classes-from names --epochs 1 --views 1 --val 0", good=1),
    "train-optimizer": c("train train --optimizer adam", 1, "optimizer", good=0),
    "train-momentum-adamw": c("train train --momentum 0.9", 1, "sgd", good=0),
    "train-momentum-one": c("train train --optimizer sgd --momentum 1", 1, "momentum", good=0),
    "train-nesterov": c("train train --optimizer sgd --nesterov", 1, "nesterov", good=0),
    "train-lr-zero": c("train train --lr 0", 1, "lr", good=0),
    "train-lr-nan": c("train train --lr nan", 1, "lr", good=0),
    "train-lr-inf": c("train train --lr inf", 1, "lr", good=0),
    "train-fine-tune-lr": c("train train --fine-tune-lr -1", 1, "fine_tune_lr", good=0),
    "train-weight-decay": c("train train --weight-decay -1", 1, "weight_decay", good=0),
    "train-weight-decay-inf": c("train train --weight-decay inf", 1, "weight_decay", good=0),
    "train-dropout": c("train train --dropout 1", 1, "dropout", good=0),
    "train-dropout-nan": c("train train --dropout nan", 1, "dropout", good=0),
    "train-input-size": c("train train --input-size 0", 1, "input size", good=0),
    "train-input-size-text": c("train train --input-size big", 1, "big", good=0),
    "train-fine-tune-many": c(f"{TRAIN} --fine-tune 999", 1, "fine_tune=999", good=0),
    "train-backbone": c("train train --backbone timm:nope", 1, "timm has no model", good=0),
    "train-backbone-weights": c("train train --weights noise.pt", 1, "noise.pt", good=0),
    "train-device": c("train train --device banana", 1, "banana", good=0),
    "train-out-proc": c("train train --out /proc/x.camlens", 1, "/proc/x.camlens", good=0),
    "train-out-folder": c("train train --out folder.camlens", 1, "is a folder", good=0),
    "train-good": c(TRAIN, good=1),
    # --- synthetic -------------------------------------------------------------------------------
    "synthetic-proc": c("synthetic /proc/x --count 2", 1, "/proc/x cannot be created"),
    "synthetic-a-file": c("synthetic cat.jpg --count 2", 1, "cat.jpg is a file"),
    "synthetic-count-zero": c("synthetic {out}/s --count 0", 1, "--count"),
    "synthetic-brackets": c("synthetic '{out}/[s] x' --count 2 --size 16", shows=("[s] x",)),
}


def run_case(case: Case, ws: Path, out: Path) -> None:
    args = [a.replace("{out}", str(out)) for a in shlex.split(case.args)]
    command = args[0]
    if command in ("explain", "localize", "evaluate") and "--out" not in args:
        args[1:1] = ["--out", str(out)]
    if command == "train" and "--out" not in args:
        args[1:1] = ["--out", str(out / "m.camlens")]
    # an earlier run's results, which nothing may lose
    earlier = {
        out / "earlier" / "keep.json": '{"earlier": true}\n',
        out / "boxes.jsonl": '{"earlier": true}\n',
        out / "evaluation.json": '{"earlier": true}\n',
    }
    for path, text in earlier.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = invoke(*args)
    assert_clean(result, case.bad)
    said = problems(result)
    at = 0
    for text in case.says:  # each in a line of its own, in order
        found = [i for i, line in enumerate(said) if i >= at and text in line]
        assert found, (text, said)
        at = found[0] + 1 if case.bad > 1 else found[0]
    for text in case.warns:
        assert any(text in w for w in warnings_of(result)), (text, result.stderr)
    for text in case.shows:
        assert text in result.stdout, (text, result.stdout)
    assert not (ws / "ran").exists()  # no pickle ever runs
    strict_reports(out)
    assert (out / "earlier" / "keep.json").read_text() == earlier[out / "earlier" / "keep.json"]
    if case.good is None:
        return
    if case.good == 0:
        for path, text in earlier.items():
            assert path.read_text() == text, path
    reports = [
        p
        for p in out.rglob("*.json")
        if p.parent != out / "earlier" and p.name != "evaluation.json"
    ]
    if command == "explain":
        assert len(reports) == case.good, [str(p) for p in reports]
        sources = {strict_json(p.read_text())["image"] for p in reports}
        assert len(sources) == case.good
    elif command == "localize" and case.good:
        earlier_line, *lines = (out / "boxes.jsonl").read_text().splitlines()
        assert earlier_line == earlier[out / "boxes.jsonl"].strip()  # an earlier run's line stays
        assert len(lines) == case.good
        pictures = {strict_json(line)["picture"] for line in lines}
        assert len(pictures) == case.good and all((out / p).is_file() for p in pictures)
    elif command == "evaluate" and case.good:
        report = strict_json((out / "evaluation.json").read_text())
        assert report["evaluated"] == case.good
    elif command == "train":
        assert (out / "m.camlens").is_file() == bool(case.good)


@pytest.mark.parametrize("name", list(CASES))
def test_command_line(name: str, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)
    run_case(CASES[name], ws, tmp_path / "out")


# --- the Python API --------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))
        return out


TINY = camlens.PreprocessConfig(input_size=(16, 16), interpolation="bilinear")


@pytest.fixture(scope="module")
def tiny() -> camlens.Model:
    torch.manual_seed(0)
    return camlens.load_model(Tiny(), preprocess=TINY, labels=["a", "b", "c"])


Call = Callable[[camlens.Model, Path], Any]


def explainer(model: camlens.Model, **kwargs: Any) -> camlens.Explainer:
    return camlens.Explainer(model, **kwargs)


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
NAN = torch.full((1, 3, 16, 16), float("nan"))

REFUSED: dict[str, tuple[Call, str]] = {
    "explain-none": (lambda m, w: explainer(m).explain(None), "no image given"),
    "explain-empty-list": (lambda m, w: explainer(m).explain([]), "no images given"),
    "explain-empty-batch": (
        lambda m, w: explainer(m).explain(torch.zeros(0, 3, 16, 16)),
        "no images given",
    ),
    "explain-uint8": (lambda m, w: explainer(m).explain(X.to(torch.uint8)), "normalized floats"),
    "explain-bool": (lambda m, w: explainer(m).explain(X > 0.5), "normalized floats"),
    "explain-2d": (lambda m, w: explainer(m).explain(X[0, 0]), r"\[3, H, W\]"),
    "explain-4-channels": (
        lambda m, w: explainer(m).explain(torch.rand(1, 4, 16, 16)),
        r"not \[1, 4, 16, 16\]",
    ),
    "explain-nan": (lambda m, w: explainer(m).explain(NAN), "NaN or infinite"),
    "explain-inf": (lambda m, w: explainer(m).explain(X / 0), "NaN or infinite"),
    "explain-int": (lambda m, w: explainer(m).explain(42), "cannot explain a int"),
    "explain-dict": (lambda m, w: explainer(m).explain({"a": 1}), "cannot explain a dict"),
    "explain-broken-in-list": (
        lambda m, w: explainer(m).explain([w / "cat.jpg", w / "broken.jpg"]),
        "broken.jpg",
    ),
    "explain-nan-array": (
        lambda m, w: explainer(m).explain(np.full((8, 8, 3), np.nan)),
        "NaN or infinite",
    ),
    "explain-names-count": (
        lambda m, w: explainer(m).explain(X, names=["one"]),
        "1 names given for 2 images",
    ),
    "explain-class-lists-count": (
        lambda m, w: explainer(m).explain(X, classes=[[0]]),
        "1 class lists given for 2 images",
    ),
    "explain-class-and-top": (
        lambda m, w: explainer(m).explain(X, classes=[0], top=1),
        "not both",
    ),
    "explain-top-too-many": (lambda m, w: explainer(m).explain(X, top=4), "top must be"),
    "explain-class-bool": (lambda m, w: explainer(m).explain(X, classes=[True]), "True"),
    "explain-closed": (
        lambda m, w: _closed(explainer(m)).explain(X),
        "closed",
    ),
    "explainer-no-method": (lambda m, w: explainer(m, method=[]), "no method"),
    "explainer-unknown-layer": (lambda m, w: explainer(m, layer="nope"), "nope"),
    "explainer-1x1-layer": (lambda m, w: explainer(m, layer="pool"), "1x1"),
    "explainer-device": (lambda m, w: explainer(m, device="cuda:9"), "cuda:9"),
    "explainer-batch-size": (lambda m, w: explainer(m, batch_size=0), "batch_size"),
    "explainer-fast-resolution": (
        lambda m, w: explainer(m, fast_resolution=float("nan")),
        "fast_resolution",
    ),
    "load-device": (
        lambda m, w: camlens.load_model(Tiny(), preprocess=TINY, device="banana"),
        "banana",
    ),
    "load-std-zero": (
        lambda m, w: camlens.load_model(
            Tiny(), preprocess=camlens.PreprocessConfig(std=(1.0, 0.0, 1.0))
        ),
        "std must not be 0",
    ),
    "load-size": (
        lambda m, w: camlens.load_model(
            Tiny(),
            preprocess=camlens.PreprocessConfig(input_size=(0, 16)),  # type: ignore[arg-type]
        ),
        "input_size",
    ),
    "load-labels-count": (
        lambda m, w: camlens.load_model(Tiny(), preprocess=TINY, labels=["a"]),
        "1 labels given",
    ),
    "load-labels-file": (
        lambda m, w: camlens.load_model(Tiny(), preprocess=TINY, labels=w / "labels.txt"),
        "2 labels given",
    ),
    "load-trap": (
        lambda m, w: camlens.load_model("synthetic", weights=w / "trap.pt"),
        "not a state dict camlens can load safely",
    ),
    "load-checkpoint-std0": (
        lambda m, w: camlens.load_model(w / "std0.camlens"),
        "std0.camlens: ",
    ),
    "save-plain-module": (lambda m, w: camlens.save(m, w / "x.camlens"), "build_cam_model"),
    "save-proc": (
        lambda m, w: camlens.save(camlens.load_model(w / "good.camlens"), "/proc/x.camlens"),
        "/proc/x.camlens",
    ),
    "image-none": (lambda m, w: camlens.load_image(None), "not a path"),  # type: ignore[arg-type]
    "image-folder": (lambda m, w: camlens.load_image(w / "empty"), "no image files"),
    "boxes-threshold": (
        lambda m, w: camlens.boxes_from_map(torch.rand(4, 4), threshold=float("nan")),
        "threshold",
    ),
}


def _closed(ex: camlens.Explainer) -> camlens.Explainer:
    ex.close()
    return ex


@pytest.mark.parametrize("name", list(REFUSED))
def test_python_api_refuses(
    name: str, tiny: camlens.Model, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ws)  # where an unpickled Payload would leave "ran"
    call, says = REFUSED[name]
    with pytest.raises(CamlensError, match=says):
        call(tiny, ws)
    assert not (ws / "ran").exists()


def test_python_api_each_input_on_its_own(tiny: camlens.Model, ws: Path) -> None:
    ex = camlens.Explainer(tiny, batch_size=2)
    inputs: list[Any] = [
        ws / "cat.jpg",
        ws / "broken.jpg",
        None,
        X[0],
        NAN[0],
        np.zeros((5, 5, 3), np.uint8),
        str(ws / "typo.jpg"),
        Image.open(ws / "cup.png"),
    ]
    results = ex.explain_each(inputs)
    kinds = ["ok" if isinstance(r, camlens.Explanation) else "error" for r in results]
    assert kinds == ["ok", "error", "error", "ok", "error", "ok", "error", "ok"]
    assert "broken.jpg" in str(results[1]) and "typo.jpg" in str(results[6])
    assert "<image 4>: the input has NaN" in str(results[4])
    good = [r for r in results if isinstance(r, camlens.Explanation)]
    assert [r.source for r in good] == [str(ws / "cat.jpg"), "<image 3>", "<image 5>", "<image 7>"]
    for result in good:
        json.dumps(result.to_dict(), allow_nan=False)
        assert all(np.isfinite(p.score) for p in result.predictions)
