"""The write-ups as notebooks (``docs/notebooks/``) run top to bottom on a kernel of this Python
(nbclient + ipykernel), each in a folder of its own where it makes its small data; a cell that
raises fails the test. The notebooks are stored without outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "docs" / "notebooks").glob("*.ipynb"))


def test_the_four_write_ups_are_there() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "cam-gap-classifier",
        "cats-vs-dogs",
        "person-not-person",
        "vgg16-every-layer",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = nbformat.read(path, as_version=4)
    stored = [c for c in book.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"{path.name} is stored with outputs: clear them"
    # the kernel is this interpreter, with this checkout's camlens first on its path
    src = str(Path(__file__).parent.parent / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.kernel_manager_class = _this_python(client)
    client.execute()
    shown = [
        kind
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        for kind in out.get("data", {})
    ]
    assert "image/png" in shown  # pictures: a panel, a grid, a figure
    if path.stem != "vgg16-every-layer":
        assert "text/html" in shown  # an Explanation displayed as itself


def _this_python(client: nbclient.NotebookClient) -> type:
    """A kernel manager that starts ipykernel on ``sys.executable`` (the project's venv), whatever
    kernels Jupyter has installed elsewhere."""
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelManager):  # type: ignore[misc]
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file]

    return ThisPython
