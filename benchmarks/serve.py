"""``camlens serve`` against the Python API, measured side by side in one run.

    python benchmarks/serve.py                      # latency, throughput, blocking (about 4 minutes)
    python benchmarks/serve.py --load 60            # and 60 s of 50 clients (the load test)
    python benchmarks/serve.py --load 60 --out benchmarks/results/serve.md

A real ``camlens serve`` (default model, Grad-CAM, default settings: batches of up to 16 gathered
for at most 5 ms) runs in a subprocess on 127.0.0.1; this process holds the same model for the
Python API. Both use ``--threads`` torch threads. The work is the same on both sides: the JPEG's
bytes decoded, explained (the top class), and the report made (``Explanation.to_dict()``, whose
peak upsamples the map to the photo's size; the server's JSON holds the same).

- **Latency**: one request at a time (one client, keep-alive) against one ``explain`` call, in
  alternating rounds; medians and 95th percentiles.
- **Throughput**: 16 concurrent clients against the API explaining batches of 16, in alternating
  segments of ``--seconds``; explanations per second, and the CPU time each explanation took (on
  the HTTP side the server's and the clients'), which other processes on a shared machine do not
  change as much as they change the rates.
- **Blocking**: a Grad-CAM request's latency while a Score-CAM request (the top 5, all the
  layer's channels: minutes of masked passes) runs, over its latency alone, in alternating rounds
  of ``--blocking-requests`` each: alone, then with a Score-CAM request sent by another client
  (named with ``job``, so that the round starts once its passes run and ends by cancelling it).
- **Load** (``--load S``): 50 concurrent clients for S seconds after a warm-up (10 s and 200
  responses, enough to fill the 128 results the server keeps): response codes, p50/p95 latency,
  the server's RSS (highest in the warm-up, highest after).

Photos: scikit-image's chelsea (451 x 300) and coffee (600 x 400) as JPEG, in turn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# Before torch loads OpenMP: threads that spin while waiting slow everything down when other
# processes share the cores (as the server's do here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx
import psutil
import torch
from PIL import Image
from serving import LoadReport, camlens_serve, load  # tests/serving.py
from skimage import data

import camlens
from camlens.images import load_image


def photos() -> list[tuple[str, bytes]]:
    out = []
    for name, pixels in (("chelsea.jpg", data.chelsea()), ("coffee.jpg", data.coffee())):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append((name, buffer.getvalue()))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine(load_at_start: float) -> str:
    """The CPU, torch, and the load average (1 minute) when the run started, and (1, 5 and 15
    minutes) at its end."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}; load average "
        f"{load_at_start:.1f} at the start, {load} (1, 5, 15 minutes) at the end"
    )


def blocking(
    url: str, images: list[tuple[str, bytes]], rounds: int, requests: int
) -> tuple[list[float], list[float], list[int]]:
    """Grad-CAM latencies alone and while a Score-CAM request of the top 5 runs (``rounds``
    alternating rounds of ``requests`` each), and the Score-CAM passes run in each round."""
    alone: list[float] = []
    beside: list[float] = []
    passes: list[int] = []
    with (
        httpx.Client(base_url=url, timeout=600) as http,
        httpx.Client(base_url=url, timeout=600) as other,
    ):

        def gradcam(i: int) -> float:
            name, data_ = images[i % 2]
            start = time.perf_counter()
            response = http.post("/api/explain", files={"image": (name, data_, "image/jpeg")})
            response.raise_for_status()
            response.json()
            return time.perf_counter() - start

        for r in range(rounds):
            alone += [gradcam(i) for i in range(requests)]
            job = f"bench-blocking-{r}-{os.getpid()}"
            name, data_ = images[0]
            answer: dict[str, int] = {}

            def scorecam(
                job: str = job,
                name: str = name,
                data_: bytes = data_,
                answer: dict[str, int] = answer,
            ) -> None:
                files = {"image": (name, data_, "image/jpeg")}
                fields = {"methods": "scorecam", "top": "5", "job": job}
                answer["status"] = other.post("/api/explain", files=files, data=fields).status_code

            thread = threading.Thread(target=scorecam)
            thread.start()
            while True:  # until its masked passes run
                found = http.get(f"/api/jobs/{job}")
                if found.status_code == 200 and found.json()["passes_done"] > 0:
                    break
                if not thread.is_alive():
                    raise RuntimeError(f"the Score-CAM request ended first: {answer}")
                time.sleep(0.1)
            before = found.json()["passes_done"]
            beside += [gradcam(i) for i in range(requests)]
            state = http.delete(f"/api/jobs/{job}").json()
            thread.join()
            if state["state"] != "cancelled" or answer.get("status") != 409:
                raise RuntimeError(f"Score-CAM finished before the round did: {state}, {answer}")
            passes.append(state["passes_done"] - before)
    return alone, beside, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    parser.add_argument("--rounds", type=int, default=40, help="latency rounds")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput segment")
    parser.add_argument("--segments", type=int, default=3, help="throughput segments per side")
    parser.add_argument("--blocking-rounds", type=int, default=3, help="blocking rounds")
    parser.add_argument(
        "--blocking-requests", type=int, default=20, help="Grad-CAM requests per blocking round"
    )
    parser.add_argument("--load", type=float, default=0.0, help="seconds of the 50-client load")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = photos()
    model = camlens.load_model()
    explainer = camlens.Explainer(model, method="gradcam")

    def api_one(data_: bytes) -> None:
        explainer.explain(load_image(data_), top=1).to_dict()

    def api_batch(batch: list[bytes]) -> None:
        for result in explainer.explain([load_image(d) for d in batch], top=1):
            result.to_dict()

    started = dt.datetime.now(dt.timezone.utc)
    load_at_start = os.getloadavg()[0]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "camlens-bench-serve.log"
    with camlens_serve(log=log, threads=args.threads) as (url, process):
        with httpx.Client(base_url=url, timeout=120) as http:

            def http_one(name: str, data_: bytes) -> None:
                response = http.post("/api/explain", files={"image": (name, data_, "image/jpeg")})
                response.raise_for_status()
                response.json()

            for i in range(6):  # warm-up both sides
                api_one(images[i % 2][1])
                http_one(*images[i % 2])
            api_times: list[float] = []
            http_times: list[float] = []
            for r in range(args.rounds):
                name, data_ = images[r % 2]
                order = [
                    ("api", lambda d=data_: api_one(d)),
                    ("http", lambda n=name, d=data_: http_one(n, d)),
                ]
                for side, call in order if r % 2 else order[::-1]:
                    start = time.perf_counter()
                    call()
                    (api_times if side == "api" else http_times).append(time.perf_counter() - start)

        batch = [images[i % 2][1] for i in range(16)]
        api_batch(batch)
        server = psutil.Process(process.pid)
        api_rates: list[float] = []
        http_rates: list[float] = []
        api_cpu: list[float] = []  # CPU seconds per explanation
        http_cpu: list[float] = []  # the server's and the clients'
        for _ in range(args.segments):
            done, start, cpu = 0, time.perf_counter(), own_cpu()
            while time.perf_counter() - start < args.seconds:
                api_batch(batch)
                done += len(batch)
            api_rates.append(done / (time.perf_counter() - start))
            api_cpu.append((own_cpu() - cpu) / done)
            cpu = own_cpu() + sum(server.cpu_times()[:2])
            report = load(url, images, pid=process.pid, clients=16, seconds=args.seconds, warmup=0)
            http_rates.append(report.throughput)
            http_cpu.append((own_cpu() + sum(server.cpu_times()[:2]) - cpu) / len(report.latencies))

        alone, beside, passes = blocking(url, images, args.blocking_rounds, args.blocking_requests)

        load_report: LoadReport | None = None
        if args.load > 0:
            load_report = load(
                url,
                images,
                pid=process.pid,
                clients=50,
                seconds=args.load,
                warmup=10,
                warmup_requests=200,
            )

    api_p50, http_p50 = statistics.median(api_times), statistics.median(http_times)
    api_rate, http_rate = statistics.median(api_rates), statistics.median(http_rates)
    api_cpu_each, http_cpu_each = statistics.median(api_cpu), statistics.median(http_cpu)
    lines = [
        f"`benchmarks/serve.py` ({started:%Y-%m-%d %H:%M} UTC): {machine(load_at_start)}; "
        f"{args.threads} torch threads per side.",
        "",
        "| | Python API | HTTP | HTTP / API | goal |",
        "|---|---:|---:|---:|---|",
        f"| latency p50, one photo (ms) | {1000 * api_p50:.1f} | {1000 * http_p50:.1f} | "
        f"{http_p50 / api_p50:.2f} | <= 1.5 |",
        f"| latency p95, one photo (ms) | {1000 * percentile(api_times, 95):.1f} | "
        f"{1000 * percentile(http_times, 95):.1f} | "
        f"{percentile(http_times, 95) / percentile(api_times, 95):.2f} | |",
        f"| throughput, batches of 16 / 16 clients (explanations/s) | {api_rate:.1f} | "
        f"{http_rate:.1f} | {http_rate / api_rate:.2f} | >= 0.8 |",
        f"| CPU time per explanation in those segments (ms) | {1000 * api_cpu_each:.1f} | "
        f"{1000 * http_cpu_each:.1f} | {http_cpu_each / api_cpu_each:.2f} | |",
        "",
        "| Grad-CAM over HTTP, one photo | alone | beside a Score-CAM top-5 request | beside / "
        "alone | goal |",
        "|---|---:|---:|---:|---|",
        f"| latency p50 (ms) | {1000 * statistics.median(alone):.1f} | "
        f"{1000 * statistics.median(beside):.1f} | "
        f"{statistics.median(beside) / statistics.median(alone):.2f} | <= 2 |",
        f"| latency p95 (ms) | {1000 * percentile(alone, 95):.1f} | "
        f"{1000 * percentile(beside, 95):.1f} | "
        f"{percentile(beside, 95) / percentile(alone, 95):.2f} | |",
        "",
        f"Blocking: {args.blocking_rounds} alternating rounds of {args.blocking_requests} "
        "Grad-CAM requests, alone then beside a Score-CAM request of the top 5 (all channels) "
        "sent by another client, cancelled at the round's end; Score-CAM ran "
        f"{', '.join(str(n) for n in passes)} masked passes during those rounds.",
        "",
        f"Latency: {args.rounds} alternating rounds. Throughput: medians of {args.segments} "
        f"alternating segments of {args.seconds:g} s (API {', '.join(f'{x:.1f}' for x in api_rates)}; "
        f"HTTP {', '.join(f'{x:.1f}' for x in http_rates)}); CPU times: medians of the segments' "
        "CPU seconds over their explanations, the HTTP side's counting the server and the clients.",
    ]
    if load_report is not None:
        lines += [
            "",
            f"Load, 50 clients for {args.load:g} s after the warm-up: {load_report.summary()}.",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
