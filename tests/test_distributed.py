"""`camlens explain --ray` on a real Ray cluster started here, on 127.0.0.1: the same index and
the same bytes as the local runner, and a run that survives a worker killed in the middle."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from test_runs import SRC, make_photos, tree

import camlens
from camlens.batch import explain_files
from camlens.config import OutputConfig
from camlens.runs import INDEX, read_index

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ACTOR = "MapWorker(MapBatches(_BatchExplainer))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A one-machine Ray cluster on 127.0.0.1 (``ray start --head --block``), stopped at the end
    by ending the process that started it. Yields the environment its clients need, with
    ``address`` and ``dashboard``."""
    port, dashboard = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(
        os.environ,
        PYTHONPATH=str(SRC),
        OMP_NUM_THREADS="1",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # a single-machine cluster: services on 127.0.0.1
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        RAY_USAGE_STATS_ENABLED="0",
    )
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    log = Path(temp) / "head.log"
    with open(log, "wb") as handle:
        head = subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in log.read_bytes():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "Ray did not start in 2 minutes"
            time.sleep(0.2)
        yield dict(env, address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dashboard}")
    finally:
        # the cluster's processes are this session's: end them all, and only them
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # a worker that outlived its raylet
        shutil.rmtree(temp, ignore_errors=True)


def _explain(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in env.items() if k not in ("address", "dashboard")}
    return subprocess.Popen(
        [sys.executable, "-m", "camlens.cli", "explain", *args],
        cwd=cwd,
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray, coffee: np.ndarray
) -> Path:
    root = tmp_path_factory.mktemp("ray")
    make_photos(root / "imgs", [chelsea, coffee], 40, (160, 120))
    return root


def test_ray_writes_what_the_local_runner_writes(
    cluster: dict[str, str],
    images: Path,
    default_model: camlens.Model,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(images)
    files = sorted(Path("imgs").glob("*.jpg"))
    explainer = camlens.Explainer(default_model, batch_size=4)
    list(explain_files(files, explainer, Path("local"), OutputConfig(format="dataset"), top=2))
    args = ["imgs", "--top", "2", "--batch-size", "4", "--format", "dataset", "--out", "ray"]
    run = _explain([*args, "--ray", cluster["address"], "--actors", "1"], images, cluster)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err.decode()
    local, remote = tree(images / "local"), tree(images / "ray")
    index = INDEX
    assert sorted(remote.pop(index).splitlines()) == sorted(local.pop(index).splitlines())
    assert len(remote) == 120 and remote == local  # 40 reports, 80 overlays: byte for byte


SMOOTHED = {  # not the defaults: an actor that rebuilt other options would compute other maps
    "method": ["gradcampp", "eigencam"],
    "smooth": ["tta", "pca"],
    "tta_flips": False,
    "tta_scales": [1.0, 1.5],
    "classes": [285, "espresso"],
    "batch_size": 3,
}
DRIVER = """
import json, sys
from pathlib import Path
import camlens
from camlens.config import OutputConfig
from camlens.distributed import explain_on_ray
explainer = camlens.Explainer(**json.loads(sys.argv[2]))
files = sorted(Path("imgs").glob("*.jpg"))[:7]
done = list(explain_on_ray(files, explainer, Path("ray-smoothed"), OutputConfig(format="dataset"),
                           address=sys.argv[1], actors=1))
assert len(done) == 7 and all(d.problem is None for d in done), done
"""


def test_ray_actors_run_the_drivers_config(
    cluster: dict[str, str],
    images: Path,
    default_model: camlens.Model,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Explainer with smoothing, one-sided TTA and named classes, run on Ray and here: the
    actors get the driver's config, so every report and overlay is the same, byte for byte."""
    monkeypatch.chdir(images)
    explainer = camlens.Explainer(default_model, **SMOOTHED)  # type: ignore[arg-type]
    files = sorted(Path("imgs").glob("*.jpg"))[:7]
    list(explain_files(files, explainer, Path("local-smoothed"), OutputConfig(format="dataset")))
    env = {k: v for k, v in cluster.items() if k not in ("address", "dashboard")}
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, cluster["address"], json.dumps(SMOOTHED)],
        cwd=images,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    local, remote = tree(images / "local-smoothed"), tree(images / "ray-smoothed")
    assert sorted(remote.pop(INDEX).splitlines()) == sorted(local.pop(INDEX).splitlines())
    assert len(remote) == 7 * 5 and remote == local  # a report and 2 x 2 overlays per image
    reports = [json.loads(text) for name, text in local.items() if name.endswith(".json")]
    assert len(reports) == 7
    assert [e["class_index"] for e in reports[0]["explanations"]] == [285, 285, 967, 967]


STATE_QUERY = """
import json, sys, time
from ray.util.state import list_actors
deadline = time.monotonic() + 300
while True:  # until some actor fits (the run may not have made its pool yet)
    actors = list_actors(address=sys.argv[1], filters=json.loads(sys.argv[2]), detail=True,
                         raise_on_missing_output=False)
    if actors or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print(json.dumps([[a.actor_id, a.pid, a.state, a.num_restarts or 0] for a in actors]))
"""


def _actors(cluster: dict[str, str], filters: list[tuple[str, str, str]]) -> list[list[Any]]:
    """Ray's state API, asked in a process of its own (it reads the cluster's token from its
    environment when Ray is first imported): [actor id, pid, state, restarts] per actor."""
    found = subprocess.run(
        [sys.executable, "-c", STATE_QUERY, cluster["dashboard"], json.dumps(filters)],
        env={k: v for k, v in cluster.items() if k not in ("address", "dashboard")},
        capture_output=True,
        check=True,
        timeout=120,
    )
    actors: list[list[Any]] = json.loads(found.stdout.decode().strip().splitlines()[-1])
    return actors


def test_a_killed_worker_is_replaced_and_every_image_indexed_once(
    cluster: dict[str, str], images: Path
) -> None:
    args = ["imgs", "--batch-size", "2", "--format", "dataset", "--out", "killed"]
    run = _explain([*args, "--ray", cluster["address"], "--actors", "1"], images, cluster)
    index = images / "killed" / INDEX
    alive = _actors(cluster, [("class_name", "=", ACTOR), ("state", "=", "ALIVE")])
    assert len(alive) == 1, alive
    victim, pid = alive[0][0], alive[0][1]
    os.kill(pid, signal.SIGKILL)
    at_kill = index.read_bytes().count(b"\n") if index.exists() else 0
    assert run.poll() is None  # the run was under way
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err.decode()
    assert at_kill < 40  # the worker died mid-run
    rows = read_index(images / "killed")
    assert sorted(r["image"] for r in rows) == [f"imgs/{i:03d}.jpg" for i in range(40)]
    assert all(r.get("error") is None for r in rows)
    restarted = _actors(cluster, [("actor_id", "=", victim)])
    assert restarted and restarted[0][3] >= 1  # Ray restarted it
    assert not [p for p in (images / "killed").rglob("*") if p.suffix == ".tmp"]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, 127.0.0.1 on a dual-stack socket
    return address.is_loopback


def _listens(process: psutil.Process) -> list[tuple[str, str, int]]:
    """(name, address, port) of each socket the process listens on."""
    try:
        return [
            (process.name(), c.laddr.ip, c.laddr.port)
            for c in process.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    except psutil.Error:  # a worker that ended meanwhile
        return []


def _command(process: psutil.Process) -> list[str]:
    """The process's command line; none for one that ended meanwhile (a zombie included)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_local_ray_listens_on_loopback_only_and_dies_with_a_killed_driver(images: Path) -> None:
    """``--ray local``: every socket its processes listen on is a loopback one, and SIGKILL of
    the driver mid-run leaves no process of that Ray behind after a few seconds."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(name, None)  # as a user runs it: camlens alone keeps Ray on the loopback
    args = ["imgs", "--batch-size", "2", "--top", "3", "--format", "dataset", "--out", "local-ray"]
    run = _explain([*args, "--ray", "local", "--actors", "1"], images, env)
    index = images / "local-ray" / INDEX
    driver = psutil.Process(run.pid)
    deadline = time.monotonic() + 300
    while not index.exists() or index.read_bytes().count(b"\n") < 2:
        assert run.poll() is None, run.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "no image explained in 5 minutes"
        time.sleep(0.2)
    listening = [entry for p in [driver, *driver.children(recursive=True)] for entry in _listens(p)]
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the services were looked at
    assert [entry for entry in listening if not _loopback(entry[1])] == []
    assert run.poll() is None and index.read_bytes().count(b"\n") < 40  # still under way
    processes = [driver, *driver.children(recursive=True)]
    [watchdog] = [p for p in processes if "camlens.localray" in _command(p)]
    temp = Path(_command(watchdog)[-2])  # the Ray's own folder: sessions, sockets, logs
    assert temp.is_dir()
    run.kill()
    run.wait()
    deadline = time.monotonic() + 30
    while [p for p in processes if not _gone(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [(p.pid, p.name()) for p in processes if not _gone(p)]
    assert left == [], left
    assert not temp.exists()
