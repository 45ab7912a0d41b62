"""How ``camlens serve`` runs: its limits, its run folder, the origins it lets in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from camlens.errors import CamlensError


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs. ``runs``: a folder whose files are served under ``/runs/`` (none
    outside it), and whose runs (itself, and the folders one level down, that hold an
    ``index.jsonl``) the gallery shows. ``max_upload_bytes`` per request; ``max_pixels`` per image (checked before
    decoding); ``max_maps`` per request (classes x methods x layers); ``max_inline_bytes`` per
    answer with ``inline=true`` (its maps' ``.npy`` and overlays as data: URLs); an upload with no
    data for ``upload_stall`` seconds is a 408. ``max_batch`` images per
    forward pass, gathered for at most ``batch_wait`` seconds; ``max_queue`` requests (and
    ``max_queue_pixels`` pixels) may wait, beyond that a 503. ``results``: how many results keep
    their files available, in at most ``results_bytes`` of memory (photos, maps, inline answers). ``cors_origins``: origins allowed to call the API from a browser
    (none by default; the page itself is served by the same app)."""

    runs: Path | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_maps: int = 100
    max_inline_bytes: int = 64 * 2**20
    upload_stall: float = 30.0
    max_batch: int = 16
    batch_wait: float = 0.005
    max_queue: int = 64
    max_queue_pixels: int = 400_000_000
    results: int = 128
    results_bytes: int = 2**30
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_maps",
            "max_inline_bytes",
            "max_batch",
            "max_queue",
            "max_queue_pixels",
            "results",
            "results_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CamlensError(f"{name} must be a whole number of at least 1, not {value!r}")
        stall = self.upload_stall
        if isinstance(stall, bool) or not isinstance(stall, int | float) or not 0 < stall <= 3600:
            raise CamlensError(f"upload_stall must be 0 to 3600 seconds, not {stall!r}")
        if not (isinstance(self.batch_wait, int | float) and 0 <= self.batch_wait <= 1):
            raise CamlensError(f"batch_wait must be 0 to 1 seconds, not {self.batch_wait!r}")
        if self.runs is not None:
            runs = Path(self.runs)
            if not runs.is_dir():
                raise CamlensError(f"runs: {runs} is not a folder")
            object.__setattr__(self, "runs", runs.resolve())
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
