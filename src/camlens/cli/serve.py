"""``camlens serve``: the explorer page and the HTTP API around one model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camlens.cli.common import (
    DeviceOpt,
    InputSizeOpt,
    ModelOpt,
    ScoresOpt,
    WeightsOpt,
    app,
    bad_input,
    fail,
    model_from_options,
    say_problem,
)


@app.command()
def serve(
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="a run's --out folder, or a folder of them: their files under /runs/ and a "
            "gallery on the page",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (this machine only by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="images per forward pass")
    ] = 16,
    batch_wait: Annotated[
        float,
        typer.Option("--batch-wait", min=0, max=1000, help="ms to wait for a batch to fill"),
    ] = 5.0,
    queue_size: Annotated[
        int, typer.Option("--queue-size", min=1, help="requests that may wait; then 503")
    ] = 64,
    results: Annotated[
        int, typer.Option("--results", min=1, help="results whose files stay available")
    ] = 128,
    results_memory: Annotated[
        float,
        typer.Option("--results-memory", min=1, help="MB those results may hold (photos, maps)"),
    ] = 1024.0,
    max_upload: Annotated[
        float, typer.Option("--max-upload", min=0.001, help="MB per uploaded image")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="refuse larger images")
    ] = 40_000_000,
    max_maps: Annotated[
        int,
        typer.Option(
            "--max-maps", min=1, help="maps one request may ask for (classes x methods x layers)"
        ),
    ] = 100,
    max_inline: Annotated[
        float,
        typer.Option(
            "--max-inline",
            min=0.001,
            help="MB an answer with inline=true may hold (its maps and overlays as data: URLs)",
        ),
    ] = 64.0,
    upload_stall: Annotated[
        float,
        typer.Option(
            "--upload-stall",
            min=0.001,
            max=3600,
            help="seconds an upload may send nothing before it is refused (408)",
        ),
    ] = 30.0,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="an origin allowed to call the API (repeat)"),
    ] = None,
    input_size: InputSizeOpt = None,
    scores: ScoresOpt = None,
) -> None:
    """Serve the explorer page and the HTTP API (documented at /docs) around one model."""
    try:
        import uvicorn

        from camlens.config import ExplainConfig
        from camlens.images import parse_size
        from camlens.layers import at_input_size
        from camlens.serve import ServeSettings, create_app
    except ImportError as exc:
        fail(f"camlens serve needs the serve extra: pip install 'camlens[serve]' ({exc})")
    with bad_input():
        settings = ServeSettings(
            runs=runs,
            max_upload_bytes=round(max_upload * 2**20),
            max_pixels=max_pixels,
            max_maps=max_maps,
            max_inline_bytes=round(max_inline * 2**20),
            upload_stall=upload_stall,
            max_batch=batch_size,
            batch_wait=batch_wait / 1000,
            max_queue=queue_size,
            results=results,
            results_bytes=round(results_memory * 2**20),
            cors_origins=tuple(cors_origin or ()),
        )
        _check_port(host, port)  # one line now, not uvicorn's after the model has loaded
        size = None
        if input_size is not None:  # checked as every front-end checks it
            size = ExplainConfig(input_size=parse_size(input_size)).input_size
        loaded = model_from_options(model, weights, device, scores)
        if size is not None:
            loaded = at_input_size(loaded, size)
        application = create_app(loaded, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        say_problem(f"listening on {host}: anyone who can reach this machine can use the server")
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=max(100, 4 * queue_size),
        timeout_graceful_shutdown=5,
    )


def _check_port(host: str, port: int) -> None:
    """A :class:`~camlens.errors.CamlensError` when ``port`` of ``host`` cannot be listened on
    (taken by another server, say): bound and let go at once, as uvicorn will bind it."""
    import socket

    from camlens.errors import CamlensError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CamlensError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            raise CamlensError(
                f"--port {port} on {host} cannot be used ({exc.strerror or exc}): "
                "choose another --port"
            ) from None
