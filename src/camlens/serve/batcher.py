"""The request batcher: concurrent requests explained together, one forward pass per batch.

Requests wait in a bounded queue. One worker thread, the only caller of the model, takes the
oldest request and every queued request with the same config but for its classes (the same
methods, layers, smoothing...; classes given, or the top classes) up to ``max_batch``, and
explains them in one call, by an explainer of that config.
While more requests are on their way (announced with :meth:`Batcher.expect`: their upload is
being decoded, say), it waits for them, at most ``max_wait`` seconds after the oldest one arrived;
a lone request starts at once. Under load the queue fills while a batch runs, so batches grow and
throughput with them. A request that
finds the queue full (in requests or in pixels) is refused at once with :class:`QueueFull`, which
says when to try again: there is never an unbounded backlog.

Two lanes, each with its worker thread: requests with a perturbation method (Score-CAM...,
hundreds of passes) run in the slow lane, the others (one forward and backward pass) in the fast
lane, so that a cheap request never waits behind a long one (camlens's forward passes are safe
across threads). A request may carry a :class:`Job`: its progress (passes done of those known)
is kept there, and cancelling it (its client went away, or asked) drops it from the queue, or
stops its batch at the next chunk of passes once no request of the batch is still wanted.

Requests for the top K classes (or for at most K of the classes over a threshold) are met by
explaining the largest K of the batch and keeping each request's first K maps of each method and
layer. Explainers are made in the worker thread (their
probe pass runs the model) and kept, the ``explainers`` most recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from camlens import smoothing
from camlens.config import ExplainConfig
from camlens.explain import Explainer
from camlens.explanation import ClassMap, Explanation
from camlens.methods import get_method
from camlens.models import Model
from camlens.progress import Event

log = logging.getLogger("camlens.serve")


class QueueFull(Exception):
    """The queue has no room: try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the server is busy: try again in {retry_after} s")


class Closed(Exception):
    """The batcher was closed before the request ran."""


class Cancelled(Exception):
    """The request was cancelled (its client went away, or asked) before its answer."""


class Job:
    """A request's progress and its cancellation, read and set from any thread. ``state`` is
    queued, running, done, failed or cancelled; ``passes_done`` of ``passes_total`` perturbation
    passes are run (the total grows as each method and layer starts: ``phases_done`` of
    ``phases`` (method, layer, augmentation) are finished)."""

    def __init__(self, ident: str, phases: int = 0) -> None:
        self.id = ident
        self.state = "queued"
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.passes_done = 0
        self.passes_total = 0
        self.phases = phases
        self.phases_done = 0
        self._phase_done = 0
        self._phase_total = 0
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        if self.state in ("queued", "running"):
            self.state = "cancelled"
            self.finished = time.monotonic()

    def progress(self, event: Event) -> None:
        """Takes a perturbation method's ``passes`` events (each phase from 0 to its total)."""
        if event.task != "passes" or event.total is None:
            return
        if event.done == 0:  # a phase starts
            if self._phase_total:
                self.phases_done += 1
            self.passes_total += event.total
            self._phase_done, self._phase_total = 0, event.total
        self.passes_done += event.done - self._phase_done
        self._phase_done = event.done

    def estimate(self) -> float | None:
        """Seconds left, from the pace so far and the phases still to start (each about the
        size of those seen): None before any pass ran."""
        if self.started is None or not self.passes_done or self.state != "running":
            return None
        elapsed = time.monotonic() - self.started
        seen = self.phases_done + (1 if self._phase_total else 0)
        mean = self.passes_total / max(seen, 1)
        expected = self.passes_total + mean * max(0, self.phases - seen)
        return elapsed / self.passes_done * (expected - self.passes_done)

    def to_dict(self) -> dict[str, Any]:
        now = self.finished or time.monotonic()
        return {
            "job": self.id,
            "state": self.state,
            "passes_done": self.passes_done,
            "passes_total": self.passes_total,
            "phases_done": self.phases_done + (1 if self.state == "done" and self.phases else 0),
            "phases": self.phases,
            "seconds": round(now - (self.started or now), 3),
            "queued_seconds": round((self.started or now) - self.created, 3),
            "estimate_seconds": self.estimate(),
        }


class Ticket:
    """A request on its way to the queue (see :meth:`Batcher.expect`): handed to
    :meth:`Batcher.explain`, or cancelled if the request never comes (both only once)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self.open = True

    def cancel(self) -> None:
        with self._batcher._cond:
            self._close()

    def _close(self) -> None:  # with the batcher's lock held
        if self.open:
            self.open = False
            self._batcher._expected -= 1
            self._batcher._cond.notify_all()


@dataclass(frozen=True)
class Request:
    """One image to explain. ``config`` holds the options (its ``classes`` as indices, or
    ``top``); ``name`` names the image in its explanation."""

    image: Image.Image
    name: str
    config: ExplainConfig
    job: Job | None = None

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


Key = tuple[ExplainConfig, bool]
"""Requests with the same key are explained in one call: the config of their explainer (the
request's, without its classes or top: those are given to each call) and whether classes were
given (True) or the top classes asked for (False)."""


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future[Explanation]
    loop: asyncio.AbstractEventLoop
    arrived: float
    key: Key
    lane: str

    @property
    def wanted(self) -> bool:
        job = self.request.job
        return not self.future.cancelled() and (job is None or not job.cancelled.is_set())


class Batcher:
    """Explains :class:`Request`s in batches on one worker thread (see the module docstring).

    ``max_queue`` requests and ``max_queue_pixels`` pixels of photos may wait (a lone request is
    always taken, whatever its size). Call :meth:`start` once, :meth:`close` at the end.
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
        max_queue: int = 64,
        max_queue_pixels: int = 400_000_000,
        explainers: int = 8,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_queue_pixels < 1 or explainers < 1:
            raise ValueError("max_batch, max_queue, max_queue_pixels and explainers must be >= 1")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, not {max_wait}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_queue_pixels = max_queue_pixels
        self.explainer_cache = explainers
        self.batches = 0  # batches run so far
        self.images = 0  # images explained so far
        self.largest_batch = 0
        self._queue: list[_Pending] = []
        self._queued_pixels = 0
        self._expected = 0  # requests announced but not queued yet
        self._cond = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._explainers: OrderedDict[ExplainConfig, Explainer] = OrderedDict()
        self._seconds_per_image = 0.05  # an estimate, updated as batches run
        self.on_batch: Callable[[int], None] | None = None  # called with each batch's size

    # --- the caller's side -----------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the batcher is already started")
        for lane in LANES:
            thread = threading.Thread(
                target=self._work, args=(lane,), name=f"camlens-{lane}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stops the worker after the batch it is running; waiting requests fail with Closed."""
        with self._cond:
            self._closing = True
            waiting, self._queue = self._queue, []
            self._queued_pixels = 0
            self._cond.notify_all()
        for pending in waiting:
            _deliver(pending, error=Closed("the server is shutting down"))
        for thread in self._threads:
            thread.join()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def expect(self) -> Ticket:
        """Announces a request that will come soon: until it does (:meth:`explain` with the
        ticket) or the ticket is cancelled, a batch waits for it, ``max_wait`` at most."""
        with self._cond:
            self._expected += 1
        return Ticket(self)

    async def explain(self, request: Request, ticket: Ticket | None = None) -> Explanation:
        """The explanation of ``request``, once its batch has run. Raises :class:`QueueFull` at
        once when there is no room, and the explainer's error (a CamlensError for options the
        model refuses) if its batch failed. ``ticket``: the one :meth:`expect` gave for it."""
        loop = asyncio.get_running_loop()
        key = self.key(request)
        pending = _Pending(request, loop.create_future(), loop, time.monotonic(), key, lane(key))
        with self._cond:
            if ticket is not None:
                ticket._close()
            if self._closing:
                raise Closed("the server is shutting down")
            pixels = self._queued_pixels + request.pixels
            if len(self._queue) >= self.max_queue or (
                self._queue and pixels > self.max_queue_pixels
            ):
                raise QueueFull(self.retry_after())
            self._queue.append(pending)
            self._queued_pixels = pixels
            self._cond.notify_all()
        return await pending.future

    def key(self, request: Request) -> Key:
        """The request's :data:`Key`: its config without classes or top, at this batcher's batch
        size and on the model's device (what the server's config holds already)."""
        config = request.config
        explainer_config = config.replace(
            classes=(), top=None, batch_size=self.max_batch, device=str(self.model.device)
        )
        return explainer_config, bool(config.classes)

    def retry_after(self) -> int:
        """Seconds until the queue has room: the time to explain what waits, at least 1."""
        return max(1, math.ceil(len(self._queue) * self._seconds_per_image))

    # --- the worker's side -----------------------------------------------------------------------

    def _work(self, lane: str) -> None:
        while True:
            batch = self._take(lane)
            if batch is None:
                return
            for pending in batch:
                if not pending.wanted:
                    _deliver(pending, error=Cancelled("cancelled before it ran"))
            batch = [p for p in batch if p.wanted]
            if not batch:
                continue
            started = time.monotonic()
            for pending in batch:
                if pending.request.job is not None:
                    pending.request.job.state = "running"
                    pending.request.job.started = started
            try:
                results = self._run(batch)
            except Exception as exc:
                if not isinstance(exc, ValueError | Cancelled):  # a CamlensError: the client's
                    log.exception("a batch of %d failed", len(batch))
                for pending in batch:
                    _deliver(pending, error=exc)
                continue
            elapsed = time.monotonic() - started
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * elapsed / len(batch)
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for pending, result in zip(batch, results, strict=True):
                _deliver(pending, result=result)

    def _take(self, lane: str) -> list[_Pending] | None:
        """The next batch of ``lane``: its oldest request and the compatible ones behind it, once
        there are ``max_batch`` of them, or no other request is expected, or the oldest has
        waited ``max_wait``; None when closing."""
        with self._cond:
            while not any(p.lane == lane for p in self._queue):
                if self._closing:
                    return None
                self._cond.wait()
            first = next(p for p in self._queue if p.lane == lane)
            deadline = first.arrived + self.max_wait
            while True:
                batch = [p for p in self._queue if p.key == first.key][: self.max_batch]
                remaining = deadline - time.monotonic()
                if (
                    len(batch) >= self.max_batch
                    or remaining <= 0
                    or self._closing
                    or not self._expected
                ):
                    break
                self._cond.wait(remaining)
            taken = {id(p) for p in batch}
            self._queue = [p for p in self._queue if id(p) not in taken]
            self._queued_pixels -= sum(p.request.pixels for p in batch)
            return batch

    def _explainer(self, config: ExplainConfig) -> Explainer:
        explainer = self._explainers.get(config)
        if explainer is None:
            explainer = Explainer.from_config(config, self.model)
            self._explainers[config] = explainer
            while len(self._explainers) > self.explainer_cache:
                self._explainers.popitem(last=False)
        self._explainers.move_to_end(config)
        return explainer

    def _run(self, batch: list[_Pending]) -> list[Explanation]:
        config, classes_given = batch[0].key
        explainer = self._explainer(config)
        requests = [p.request for p in batch]
        images = [r.image for r in requests]
        names = [r.name for r in requests]

        def progress(event: Event) -> None:
            """Each request's progress; the batch stops once none of it is still wanted."""
            for r in requests:
                if r.job is not None:
                    r.job.progress(event)
            if not any(p.wanted for p in batch):
                raise Cancelled("cancelled while it ran")

        if classes_given:
            lists: Any = [list(r.config.classes) for r in requests]
            return explainer.explain(images, classes=lists, names=names, progress=progress)
        if config.targets:  # the config's targets, for every image
            return explainer.explain(images, names=names, progress=progress)
        # the top K (1 by default); with above, at most K of the classes over it (None: all)
        # (a detector's: its detections, as its config chooses them)
        every = config.above is not None or self.model.kind == "detection"
        tops = [r.config.top or (None if every else 1) for r in requests]
        deepest = None if None in tops else max(t for t in tops if t is not None)
        results = explainer.explain(images, top=deepest, names=names, progress=progress)
        for result, top in zip(results, tops, strict=True):
            if top is not None:
                result.maps = _first_ranks(result.maps, top)
        return results


LANES = ("fast", "slow")


def lane(key: Key) -> str:
    """slow for a config with a perturbation method (passes by the hundred), else fast."""
    config = key[0]
    return "slow" if any(get_method(m).needs == "scores" for m in config.methods) else "fast"


def phases(config: ExplainConfig, layers: int) -> int:
    """The perturbation phases (method, layer, augmentation) a request of ``config`` runs."""
    methods = sum(get_method(m).needs == "scores" for m in config.methods)
    augmentations = 1
    if "tta" in config.smooth:
        augmentations = len(smoothing.augmentations(config.tta_flips, config.tta_scales))
    return methods * max(layers, 1) * augmentations


def _first_ranks(maps: list[ClassMap], top: int) -> list[ClassMap]:
    """The maps of the first ``top`` ranks of each (layer, method): the explainer gives each
    layer's and method's maps in the order of the classes' ranks."""
    seen: dict[tuple[str, str], int] = {}
    kept = []
    for m in maps:
        rank = seen.get((m.layer, m.method), 0)
        seen[(m.layer, m.method)] = rank + 1
        if rank < top:
            kept.append(m)
    return kept


def _deliver(
    pending: _Pending, *, result: Explanation | None = None, error: BaseException | None = None
) -> None:
    """Hands a result (or an error) to the waiting request, on its event loop's thread."""

    def settle() -> None:
        if pending.future.done():  # cancelled: the client went away
            return
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        pending.loop.call_soon_threadsafe(settle)
