"""A short load on a real ``camlens serve`` over loopback: 50 concurrent clients posting photos
for 10 s after a warm-up (5 s and 64 responses). No response may be a 5xx other than the
documented 503, and the server's memory must stay within 20% of its highest in the warm-up. (The
60 s run and the speed figures are in benchmarks/serve.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import camlens_serve, load

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


def test_fifty_clients(
    tmp_path: Path, chelsea: np.ndarray, coffee: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = []
    for name, pixels in (("chelsea.jpg", chelsea), ("coffee.jpg", coffee)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        photos.append((name, buffer.getvalue()))
    # The warm-up fills the results kept (32) and runs full batches (16) a few times over, however
    # busy the machine, before the server's memory is compared with what it became.
    args = ["--queue-size", "64", "--results", "32"]
    with camlens_serve(args, log=tmp_path / "serve.log") as (url, process):
        report = load(
            url,
            photos,
            pid=process.pid,
            clients=50,
            seconds=10,
            warmup=5,
            warmup_requests=64,
            max_requests=3000,
        )
    with capsys.disabled():
        print(f"\nload, 50 clients: {report.summary()}")
    assert not report.errors, report.errors[:3]
    assert report.latencies, report.summary()
    failures = {code: n for code, n in report.statuses.items() if code >= 500 and code != 503}
    assert not failures, report.summary()
    assert set(report.statuses) <= {200, 503}, report.summary()
    assert report.peak_rss <= 1.2 * report.warm_rss, report.summary()
