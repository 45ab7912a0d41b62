"""Helpers for the tests that run ``camlens serve`` for real: a free port on 127.0.0.1 and the
command in a subprocess, stopped at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def camlens_serve(
    args: Sequence[str] = (), *, log: Path, threads: int = 1, timeout: float = 120.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``camlens serve --port P ARGS`` on 127.0.0.1 (its output in ``log``): yields its base URL
    once ``/api/server`` answers, and the process; stopped (then killed) at the end."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-c", "from camlens.cli import main; main()", "serve"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"camlens serve exited with {process.returncode}: {log.read_text()}"
                )
            try:
                if httpx.get(f"{url}/api/server", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"camlens serve did not answer in {timeout:.0f} s: {log.read_text()}"
                )
            time.sleep(0.25)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
