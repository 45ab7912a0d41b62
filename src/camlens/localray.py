"""The Ray of ``--ray local``: a one-machine cluster whose services listen on the loopback
interface only, and that goes away with the run, even when the run is killed with SIGKILL.

- Loopback: Ray puts its services on the host's network address unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray reads once, when it is imported. The cluster
  is started by ``ray start --head --node-ip-address=127.0.0.1`` in a process of its own with that
  variable set, so that GCS, the raylet, the workers, the dashboard and runtime-env agents and
  the metrics exporters all bind 127.0.0.1 (``::ffff:127.0.0.1`` for Ray's gRPC servers, the same
  address in its IPv6 form). The dashboard is left out (``--include-dashboard=false``).
- Cleanup: a watchdog process (``python -m camlens.localray``, in a session of its own so that
  the terminal's Ctrl-C does not reach it) starts ``ray start --block`` and reads a pipe from the
  driver. The pipe closes when the driver ends, however it ends (the kernel closes a killed
  process's files); the watchdog then stops the cluster: SIGTERM to ``ray start``, and after a
  grace period SIGKILL to every process still descended from it. The watchdog is a child
  subreaper (Linux), so processes whose parent died (Ray's agents outlive a killed raylet) stay
  its descendants and are found.
- Its own temp folder (session files, sockets, logs), removed at the end: the run never joins or
  disturbs another Ray of this machine.

Ray's authentication token: the driver's (``RAY_AUTH_TOKEN``), or a new one for this process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from camlens.errors import CamlensError

if TYPE_CHECKING:
    import psutil

LOOPBACK = "127.0.0.1"
STARTED = b"Ray runtime started"
GRACE = 5.0  # seconds Ray has to stop by itself before the rest is killed
PR_SET_CHILD_SUBREAPER = 36


def loopback_environment() -> None:
    """Sets what Ray must read before it is imported for a driver of a loopback cluster: no
    host-address rewriting of 127.0.0.1, token authentication with one token per process."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if "ray" not in sys.modules and not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # Ray loads it once per process


class LocalRay:
    """``with LocalRay() as address:`` a new one-machine Ray cluster at ``address``
    (``127.0.0.1:PORT``), stopped on leaving the block, or when this process dies."""

    def __init__(self, timeout: float = 180.0) -> None:
        self.timeout = timeout
        self.temp: Path | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        import ray

        return self.start(ray)

    def start(self, ray: Any) -> str:
        """Starts the cluster (``ray``: the module, imported after :func:`loopback_environment`)
        and answers its address."""
        loopback_environment()
        constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
        if getattr(constants, "ENABLE_RAY_CLUSTER", False):
            raise CamlensError(
                "a local Ray needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported "
                "(Ray was imported first, and would put 127.0.0.1 on the network)"
            )
        # Ray's socket paths must stay under the 107 bytes of a Unix socket's name
        self.temp = Path(tempfile.mkdtemp(prefix="camlens-ray-", dir="/tmp"))
        log = self.temp / "ray.log"
        port = _free_port()
        with open(log, "wb") as handle:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "camlens.localray", str(self.temp), str(port)],
                stdin=subprocess.PIPE,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is the driver's to handle
                env=_environment(),
            )
        deadline = time.monotonic() + self.timeout
        while STARTED not in log.read_bytes():
            if self.watchdog.poll() is not None or time.monotonic() > deadline:
                said = _last_line(log.read_bytes().decode(errors="replace"))
                self.stop()
                raise CamlensError(f"could not start a local Ray: {said or 'no answer'}")
            time.sleep(0.2)
        return f"{LOOPBACK}:{port}"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Closes the watchdog's pipe and waits for it to stop the cluster."""
        if self.watchdog is not None:
            if self.watchdog.stdin is not None:
                with contextlib.suppress(OSError):
                    self.watchdog.stdin.close()
            try:
                self.watchdog.wait(timeout=GRACE + 30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.watchdog.pid, signal.SIGKILL)
                self.watchdog.wait()
            self.watchdog = None
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None


def _environment() -> dict[str, str]:
    """This process's environment, with this camlens first on the path (of the watchdog, and
    of Ray's workers, which import it to run the actors)."""
    root = str(Path(__file__).resolve().parents[1])
    path = [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def watch(temp: str, port: int) -> int:
    """The watchdog: starts the cluster, then stops it and everything it started when stdin
    closes (the driver is gone) or when ``ray start`` ends (a Ray process died)."""
    import psutil  # the watchdog's alone: the driver needs no psutil

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    command = [
        sys.executable,
        "-c",
        "from ray.scripts.scripts import main; main()",
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    head = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    gone = threading.Event()

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(4096):
                pass
        gone.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not gone.is_set() and head.poll() is None:
        gone.wait(0.5)
    me = psutil.Process()
    seen = set(me.children(recursive=True))
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)  # ray start --block stops its processes
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        seen |= set(me.children(recursive=True))
        _reap()
        if not any(_alive(p) for p in seen):
            break
        time.sleep(0.2)
    seen |= set(me.children(recursive=True))
    for process in seen:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(list(seen), timeout=GRACE)
    _reap()
    if gone.is_set():  # the driver is gone, or done: nobody else will remove the folder
        shutil.rmtree(temp, ignore_errors=True)
    return 0


def _alive(process: psutil.Process) -> bool:
    import psutil

    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _reap() -> None:
    """Collects the exit status of finished children (orphans adopted as subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(watch(sys.argv[1], int(sys.argv[2])))
