"""The package a user would ``pip install``: the sdist and the wheel built from a copy of this
checkout (``python -m build``, as ``make dist`` does) pass ``twine check``; the wheel holds
``py.typed`` and the page's static files; installed (not editable) into a fresh venv, its
``camlens`` command explains a sample photo and serves the page and its JavaScript modules.

Installing torch again would cost minutes and gigabytes: the fresh venv sees this venv's
third-party packages through a ``.pth`` file, and the wheel goes in with ``--no-deps``. The test
checks that ``camlens`` is then imported from the fresh venv, not from ``src`` or this venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import free_port

ROOT = Path(__file__).resolve().parent.parent
STATIC = sorted(
    p.relative_to(ROOT / "src")
    for p in (ROOT / "src/camlens/serve/static").rglob("*")
    if p.is_file()
)

pytestmark = pytest.mark.slow


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel of a copy of the checkout (no build files left in the checkout)."""
    base = tmp_path_factory.mktemp("dist")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = base / "dist"
    # no isolation: setuptools of this venv (an isolated build installs it anew)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, out.iterdir())])
    return out


def test_the_wheel_holds_the_package_data(dist: Path) -> None:
    (wheel,) = dist.glob("camlens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "camlens/py.typed" in names
    assert {str(p) for p in STATIC} <= names and any(str(p).endswith(".js") for p in STATIC)
    assert "camlens/models/hf.py" in names and "camlens/serve/app.py" in names
    assert not any(n.startswith("tests/") for n in names)
    metadata = (
        zipfile.ZipFile(wheel)
        .read(f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info/METADATA")
        .decode()
    )
    assert "Provides-Extra: hf" in metadata and "Provides-Extra: serve" in metadata


def test_the_installed_wheel_explains_and_serves(
    dist: Path, tmp_path: Path, chelsea: np.ndarray
) -> None:
    (wheel,) = dist.glob("camlens-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        env=env,
    )
    assert (site / "camlens" / "py.typed").is_file()
    # then this venv's packages (torch, timm, fastapi...) without installing them again; camlens comes
    # from the wheel, whose folder is first on the path
    (site / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run(
        [str(python), "-c", "import camlens; print(camlens.__file__, camlens.__version__)"], env=env
    )
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(site) and not Path(path).is_relative_to(ROOT / "src")
    camlens_command = str(venv / "bin" / "camlens")
    assert run([camlens_command, "--version"], env=env).stdout.strip() == f"camlens {version}"
    assert wheel.name.startswith(f"camlens-{version}-")

    photo = tmp_path / "cat.jpg"
    Image.fromarray(chelsea).save(photo)
    run(
        [camlens_command, "explain", str(photo), "--top", "1", "--out", str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
    )
    (report,) = (tmp_path / "out").rglob("cat.json")
    assert '"Egyptian cat"' in report.read_text()

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [camlens_command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                page = httpx.get(f"{url}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.25)
        assert page.status_code == 200 and "<html" in page.text.lower()
        modules = re.findall(r'<script[^>]*type="module"[^>]*src="([^"]+)"', page.text)
        assert modules, page.text[:500]
        script = httpx.get(f"{url}/{modules[0].lstrip('/')}", timeout=10)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (
            script.text == (ROOT / "src/camlens/serve/static" / Path(modules[0]).name).read_text()
        )
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
