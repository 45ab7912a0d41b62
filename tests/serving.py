"""Helpers for the tests (and benchmarks) that run ``camlens serve`` for real: a free port on
127.0.0.1, the command in a subprocess stopped at the end, and a bounded load of concurrent
clients on this machine."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class LoadReport:
    """What a load run saw: response statuses, the latencies of the successful requests (seconds,
    after the warm-up), the server's highest RSS during the warm-up (a batch's working memory
    comes and goes: the warm-up has seen it) and its highest after."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    warm_rss: int = 0
    peak_rss: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else math.nan

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{sum(self.statuses.values())} responses ({codes}); "
            f"{self.throughput:.1f} explanations/s; latency p50 {1000 * self.percentile(50):.0f} ms, "
            f"p95 {1000 * self.percentile(95):.0f} ms; server RSS at most {self.warm_rss / 2**20:.0f} MB "
            f"in the warm-up, {self.peak_rss / 2**20:.0f} MB after"
        )


async def _load(
    url: str,
    photos: Sequence[tuple[str, bytes]],
    *,
    clients: int,
    seconds: float,
    warmup: float,
    warmup_requests: int,
    max_requests: int,
    pid: int,
    fields: dict[str, str],
) -> LoadReport:
    import psutil

    report = LoadReport()
    server = psutil.Process(pid)
    start = time.monotonic()
    answered = [0]  # responses so far
    # The warm-up lasts `warmup` seconds and `warmup_requests` responses (at most 60 s more).
    phase = {"measure_from": math.inf, "end": start + warmup + 60 + seconds}
    budget = [max_requests]

    async def client(number: int, http: httpx.AsyncClient) -> None:
        i = number
        while time.monotonic() < phase["end"] and budget[0] > 0:
            budget[0] -= 1
            name, data = photos[i % len(photos)]
            i += 1
            sent = time.monotonic()
            try:
                response = await http.post(
                    f"{url}/api/explain", files={"image": (name, data, "image/jpeg")}, data=fields
                )
            except httpx.HTTPError as exc:
                report.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            done = time.monotonic()
            answered[0] += 1
            if sent >= phase["measure_from"]:
                report.statuses[response.status_code] += 1
                if response.status_code == 200:
                    report.latencies.append(done - sent)
            if response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    async def watch() -> None:
        while time.monotonic() < phase["end"]:
            now = time.monotonic()
            warm = now >= start + warmup and answered[0] >= warmup_requests
            if warm or now >= start + warmup + 60:
                phase["measure_from"] = now
                phase["end"] = now + seconds
                break
            report.warm_rss = max(report.warm_rss, server.memory_info().rss)
            await asyncio.sleep(0.2)
        while time.monotonic() < phase["end"] + 1:
            report.peak_rss = max(report.peak_rss, server.memory_info().rss)
            await asyncio.sleep(0.2)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        report.seconds = time.monotonic() - min(phase["measure_from"], time.monotonic())
        await watcher
    return report


def load(
    url: str,
    photos: Sequence[tuple[str, bytes]],
    *,
    pid: int,
    clients: int = 50,
    seconds: float = 10.0,
    warmup: float = 4.0,
    warmup_requests: int = 0,
    max_requests: int = 100_000,
    fields: dict[str, str] | None = None,
) -> LoadReport:
    """``clients`` concurrent clients posting ``photos`` in turn to ``url`` (on this machine):
    a warm-up of ``warmup`` seconds and ``warmup_requests`` responses (60 s longer at most), then
    ``seconds`` seconds (or ``max_requests`` requests in all); a 503 is retried after its
    Retry-After. The report counts only what was sent after the warm-up."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"load runs only against this machine, not {url}")
    return asyncio.run(
        _load(
            url,
            photos,
            clients=clients,
            seconds=seconds,
            warmup=warmup,
            warmup_requests=warmup_requests,
            max_requests=max_requests,
            pid=pid,
            fields=fields or {},
        )
    )


def held(app: Any) -> tuple[threading.Event, threading.Event]:
    """The app's batcher holds each batch until ``release`` is set (``running`` says it is)."""
    batcher = app.state.camlens.batcher
    running, release = threading.Event(), threading.Event()
    real_run = batcher._run

    def held_run(requests: list[Any]) -> Any:
        running.set()
        assert release.wait(60)
        return real_run(requests)

    batcher._run = held_run
    return running, release
