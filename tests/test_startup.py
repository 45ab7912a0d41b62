"""The command line answers before anything heavy loads: `--help`, `methods` and bad options import
neither torch, timm, matplotlib nor Keras; `import camlens.config` neither; Ctrl-C while the
command starts is one line and exit status 130. One option helper gives explain, localize and
evaluate the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import typer

import camlens.cli.explain
import camlens.cli.localize
from camlens.cli import main
from camlens.cli.common import explain_config
from camlens.config import ExplainConfig
from camlens.options import COMMON_CMAPS, check_cmap

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "timm", "matplotlib", "keras")


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_importing_the_config_loads_nothing_heavy() -> None:
    done = python(
        "import sys, json, camlens.config, camlens.options\n"
        "c = camlens.config.ExplainConfig(methods=('scores',), smooth=('tta',), device='cpu')\n"
        "o = camlens.config.OutputConfig(cmap='viridis', threshold='otsu')\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


# Each command line, the exit status it gives, and a text of its answer.
ANSWERS = [
    (["--help"], 0, "Commands"),
    (["explain", "--help"], 0, "--max-pixels"),
    (["evaluate", "--help"], 0, "--input-size"),
    (["methods"], 0, "Score-CAM"),
    (["explain", "cat.jpg", "--top", "0"], 2, "top must be at least 1"),
    (["explain", "cat.jpg", "--method", "nope"], 2, "unknown method 'nope'"),
    (["explain", "cat.jpg", "--smooth", "blur"], 2, "unknown smoothing"),
    (["explain", "cat.jpg", "--threshold", "half"], 2, "threshold 'half'"),
    (["explain", "cat.jpg", "--alpha", "2"], 2, "alpha must be"),
    (["explain", "cat.jpg", "--bogus"], 2, "No such option: --bogus"),
    (["localize", "cat.jpg", "--iou", "3"], 2, "iou_threshold must be"),
    (["localize", "cat.jpg", "--input-size", "0"], 2, "input size '0'"),
    (["evaluate", "voc", "--fast-resolution", "2"], 2, "fast_resolution must be in"),
    (["evaluate", "voc", "--max-batch-memory", "0"], 2, "--max-batch-memory must be"),
]


def test_help_methods_and_bad_options_answer_before_heavy_imports() -> None:
    code = (
        "import sys, json, io, contextlib\n"
        "from camlens.cli import main\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    text = io.StringIO()\n"
        "    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):\n"
        "        try:\n"
        "            main(args)\n"
        "            code = 0\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code or 0\n"
        f"    out.append([code, text.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]])\n"
        "print(json.dumps(out))"
    )
    done = python(code, json.dumps([args for args, _, _ in ANSWERS]))
    assert done.returncode == 0, done.stderr
    for (args, status, text), (code, said, heavy) in zip(
        ANSWERS, json.loads(done.stdout), strict=True
    ):
        assert (code, heavy) == (status, []), (args, said)
        assert text in said, (args, said)


INTERRUPT = """
import builtins, os, signal, sys
target = sys.argv[1]
real = builtins.__import__
def interrupted_import(name, *args, **kwargs):
    if name == target:  # Ctrl-C as this module starts to load
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args, **kwargs)
builtins.__import__ = interrupted_import
sys.argv = ["camlens", *sys.argv[2:]]
from camlens.__main__ import main
main()
"""


@pytest.mark.parametrize(
    "module, args",
    [
        ("typer", ["methods"]),  # the command line's own modules
        ("torch", ["layers"]),  # a command's: the model's
        ("torch", ["explain", "cat.jpg"]),
    ],
)
def test_ctrl_c_while_starting_is_one_line_and_130(module: str, args: list[str]) -> None:
    done = python(INTERRUPT, module, *args)
    assert (done.returncode, done.stderr) == (130, "camlens: interrupted\n")
    assert "Traceback" not in done.stdout


def test_common_colormaps_are_matplotlibs() -> None:
    for name in COMMON_CMAPS:
        assert name in matplotlib.colormaps and f"{name}_r" in matplotlib.colormaps
        assert check_cmap(f"{name}_r") == f"{name}_r"
    assert check_cmap("cividis") == "cividis"  # not in the short list: matplotlib is asked


SHARED = [
    "--device", "cpu", "--smooth", "tta", "--batch-size", "3", "--max-batch-memory", "7",
    "--fast-channels", "5", "--fast-resolution", "0.5", "--max-pixels", "1000",
    "--input-size", "64x48", "--no-relu", "--method", "gradcampp", "--layer", "layer4",
]  # fmt: skip


def test_explain_localize_and_evaluate_build_the_same_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: dict[str, ExplainConfig] = {}

    def keep(command: str) -> Any:
        def helper(**options: Any) -> ExplainConfig:
            built[command] = explain_config(**options)
            raise typer.Exit(0)  # nothing runs

        return helper

    monkeypatch.setattr(camlens.cli.explain, "explain_config", keep("explain"))
    for command in ("localize", "evaluate"):
        monkeypatch.setattr(camlens.cli.localize, "explain_config", keep(command))
        with pytest.raises(SystemExit) as exit_:
            main([command, str(tmp_path), *SHARED])
        assert exit_.value.code == 0
    with pytest.raises(SystemExit):
        main(["explain", str(tmp_path), *SHARED])
    assert built["explain"] == built["localize"] == built["evaluate"]
    assert built["evaluate"] == ExplainConfig(
        methods=("gradcampp",),
        layers=("layer4",),
        smooth=("tta",),
        batch_size=3,
        max_batch_memory=7 * 2**20,
        fast_channels=5,
        fast_resolution=0.5,
        max_pixels=1000,
        input_size=(64, 48),
        relu=False,
    )


def test_the_exports_survive_their_modules_imports() -> None:
    """``camlens.train`` is the function even once the submodule ``camlens.train`` (or
    ``camlens.types``) is imported, and any submodule is an attribute of the package on first use."""
    done = python(
        "import types, camlens.types, camlens.train, camlens\n"
        "assert callable(camlens.train) and not isinstance(camlens.train, types.ModuleType)\n"
        "assert camlens.images.preprocess and camlens.Box is camlens.types.Box\n"
        "print('ok')"
    )
    assert done.stdout == "ok\n", done.stderr
