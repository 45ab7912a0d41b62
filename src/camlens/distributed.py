"""Runs on Ray (``camlens explain DATA --ray ADDRESS``): the job of
:func:`camlens.batch.explain_files` on a Ray cluster, through Ray Data.

- The driver lists the files, plans the run (:func:`camlens.batch.open_run`: the same fixed
  batches, output stems, resume rule and record) and keeps the index: it alone appends to
  ``OUT/index.jsonl``.
- Ray tasks read and resize each batch's photos (:func:`_read_batch`).
- An actor pool of Explainers, each built once from the driver Explainer's own
  :class:`~camlens.config.ExplainConfig` (``explainer.config``, which rebuilds the same maps),
  explains a batch per call, whole, and writes its outputs
  into ``OUT`` (which every node must see at the same path: a shared folder), then hands the
  batch's index rows back to the driver.
- Ray does the distribution, the back-pressure between the stages and the retries: a task or an
  actor that dies is run again (actors are restarted), and since every file is written whole
  under its final name by a rename, a batch done twice leaves the same bytes once. The driver
  indexes each image once.

Every node needs camlens (the same version as the driver: checked) and the model's weights file,
if any, at the same path. With ``address=None`` a Ray is started on this machine
(:class:`camlens.localray.LocalRay`): its services listen on the loopback interface only, and it
is stopped at the end, even when the driver is killed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camlens.batch import Done, Item, open_run, read_photo, run_options
from camlens.config import ExplainConfig, OutputConfig
from camlens.errors import CamlensError
from camlens.explain import Explainer
from camlens.explanation import Explanation
from camlens.images import PreprocessConfig
from camlens.localray import LocalRay, loopback_environment
from camlens.outputs import FolderClasses, error_row, write_image
from camlens.progress import Event, Progress
from camlens.runs import Row, row_key
from camlens.targets import with_truths
from camlens.version import __version__


def explain_on_ray(
    files: Sequence[Path],
    explainer: Explainer,
    out: Path,
    output: OutputConfig | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    threads: int = 1,
    progress: Progress | None = None,
    overwrite: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Generator[Done, None, None]:
    """:func:`camlens.batch.explain_files` on Ray: the same outputs, index and resume rule.

    ``explainer`` (built on the driver, which checks every option before the cluster is
    touched) gives the config each actor builds its own Explainer from. ``address``: None starts
    a Ray on this machine; ``"auto"`` or ``"HOST:PORT"`` joins a running cluster. ``actors``:
    Explainers at work (default: the cluster's CPUs less one, for the reading tasks), each using
    ``threads`` CPUs for its forward passes. The :class:`Done` s come in the order the batches
    finish and carry the index row, not the explanation. When ``stop()`` turns true the run
    stops taking results (the batches being written may be done again by the next run)."""
    if address is not None:
        _check_reachable(address)  # in seconds, before Ray's minutes of retries
    else:
        loopback_environment()  # read by Ray when it is imported
    try:
        import ray
        import ray.data
        from ray.data import ActorPoolStrategy
    except ImportError:
        raise CamlensError("--ray needs Ray: pip install 'camlens[ray]' (or 'ray[data]')") from None
    output = output or OutputConfig()
    config = explainer.config  # what the driver's Explainer runs: every actor runs the same
    run = open_run(
        files,
        out,
        run_options(config, output, threads),
        batch_size=explainer.batch_size,
        overwrite=overwrite,
        runner="ray",
    )
    report = progress or (lambda event: None)
    started_here = False
    interrupted = False
    local = LocalRay() if address is None and not ray.is_initialized() else None
    try:
        for chunk in run.chunks:
            for item in chunk:
                if item.done:
                    yield Done(item.path, skipped=True, report=_report(run.out, item))
        todo = [(k, chunk) for k, chunk in enumerate(run.chunks) if not all(i.done for i in chunk)]
        if not todo:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own deprecation notices, not the user's
            started_here = _connect(ray, address if local is None else local.start(ray))
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        size = actors or max(1, (cpus - 1) // threads)
        rows = [_batch_row(k, chunk) for k, chunk in todo]
        data: Any = ray.data.from_items(rows, override_num_blocks=len(rows))
        data = data.map(
            _read_batch,
            fn_kwargs={"settings": explainer.model.preprocess, "max_pixels": config.max_pixels},
            num_cpus=0.5,  # two readers to a CPU; unlike the actors', so Ray keeps them apart
        )
        data = data.map_batches(
            _BatchExplainer,
            fn_constructor_kwargs={
                "config": _portable(config).to_json(),
                "output": output.to_json(),
                "out": str(run.out.resolve()),
                "temp": str(run.temp.resolve()),
                "threads": threads,
                "version": __version__,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=size),
            num_cpus=threads,
        )
        total = sum(1 for _, chunk in todo for item in chunk if not item.done)
        count = 0
        indexed: set[str] = set()
        by_key = {row_key({"stem": i.stem, "image": str(i.path)}): i for _, c in todo for i in c}
        try:
            for result in data.iter_rows():
                fresh = [r for r in json.loads(result["rows"]) if row_key(r) not in indexed]
                run.index.append(fresh)
                for row in fresh:
                    key = row_key(row)
                    indexed.add(key)
                    item = by_key[key]
                    problem = row.get("error")
                    count += 1
                    run.counts["errors" if problem else "explained"] += 1
                    report(Event("images", count, total, item=str(item.path), problem=problem))
                    yield Done(
                        item.path,
                        report=None if problem else run.out / row["report"],
                        problem=problem,
                        row=row,
                    )
                if stop is not None and stop():
                    interrupted = True
                    break
        except ray.exceptions.RayError as exc:
            raise CamlensError(f"the Ray job failed: {_first_line(exc)}") from exc
        interrupted = interrupted or count < total
    finally:
        run.finish(interrupted)
        if started_here:
            ray.shutdown()
        if local is not None:
            local.stop()


def _portable(config: ExplainConfig) -> ExplainConfig:
    """``config`` as an actor builds it, whatever its working folder: a weights file, or a
    model given as a file (a checkpoint), named relative to the driver's folder, by its absolute
    path (the same path on every node, as the module says). The run's record keeps the paths as
    given."""
    changes: dict[str, Any] = {}
    if config.weights is not None and not os.path.isabs(config.weights):
        changes["weights"] = os.path.abspath(config.weights)
    model = config.model
    if model is not None and not os.path.isabs(model) and os.path.isfile(model):
        changes["model"] = os.path.abspath(model)
    return config.replace(**changes) if changes else config


def _connect(ray: Any, address: str | None) -> bool:
    """Connects to the Ray at ``address`` (None: the one this process already joined); True
    when this call connected."""
    if ray.is_initialized():
        return False
    for name in ("ray", "ray.data"):  # the command draws its own progress; Ray's errors still raise
        logging.getLogger(name).setLevel(logging.ERROR)
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError) as exc:
        raise CamlensError(
            f"cannot join the Ray cluster at {address}: {_first_line(exc)}"
        ) from None
    return True


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A ``HOST:PORT`` where nothing answers is a :class:`~camlens.errors.CamlensError` within
    ``timeout`` seconds (Ray itself retries for minutes, and says another address: it puts the
    host's own address for the loopback one). ``auto`` and ``ray://`` addresses are Ray's to find."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise CamlensError(f"cannot join the Ray cluster at {address}: not HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or ("no answer" if isinstance(exc, TimeoutError) else str(exc))
        raise CamlensError(
            f"cannot join the Ray cluster at {address}: {reason or type(exc).__name__}"
        ) from None


def _batch_row(number: int, chunk: list[Item]) -> dict[str, Any]:
    return {
        "batch": number,
        "paths": [os.path.realpath(item.path) for item in chunk],  # a symlink loop: no error
        "names": [str(item.path) for item in chunk],
        "stems": [item.stem or "" for item in chunk],
        "problems": [item.problem or "" for item in chunk],
        "done": [item.done for item in chunk],
    }


def _read_batch(row: dict[str, Any], settings: PreprocessConfig, max_pixels: int) -> dict[str, Any]:
    """A Ray task: the batch's photos read and resized, as raw bytes (the photos at their own
    size, and the model inputs), or the problem of each one that cannot be read."""
    photos: list[bytes] = []
    sizes: list[list[int]] = []
    inputs: list[np.ndarray] = []
    problems: list[str] = []
    for path, problem in zip(row["paths"], row["problems"], strict=True):
        if not problem:
            try:
                photo, x = read_photo(Path(path), settings, max_pixels)
            except CamlensError as exc:
                problem = str(exc).replace(path, row["names"][len(problems)], 1)
            else:
                photos.append(photo.tobytes())
                sizes.append([photo.height, photo.width])
                inputs.append(x.numpy())
        problems.append(problem)
    stacked = np.stack(inputs) if inputs else np.zeros((0, 3, 1, 1), np.float32)
    row.update(
        problems=problems,
        photos=photos,
        sizes=sizes,
        inputs=stacked.tobytes(),
        input_shape=list(stacked.shape),
    )
    return row


class _BatchExplainer:
    """An actor of the pool: one Explainer, built from the shipped config; each call explains
    one batch whole, writes the outputs of its images not yet done, and returns their rows."""

    def __init__(
        self, config: str, output: str, out: str, temp: str, threads: int, version: str
    ) -> None:
        if version != __version__:
            raise CamlensError(
                f"this Ray worker has camlens {__version__}, the driver {version}: install the "
                "same version on every node"
            )
        torch.set_num_threads(threads)
        self.explainer = Explainer.from_config(ExplainConfig.from_json(config))
        self.output = OutputConfig.from_json(output)
        self.out = Path(out)
        self.temp = Path(temp)
        self.truth = FolderClasses(self.explainer.model)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        row = {key: value[0] for key, value in batch.items()}
        rows = self.explain(row)
        return {"batch": np.array([row["batch"]]), "rows": np.array([json.dumps(rows)])}

    def explain(self, row: dict[str, Any]) -> list[Row]:
        names, stems = list(row["names"]), list(row["stems"])
        problems, done = list(row["problems"]), list(row["done"])
        shape = [int(n) for n in row["input_shape"]]
        inputs = np.frombuffer(row["inputs"], dtype=np.float32).reshape(shape)
        photos = [
            Image.frombytes("RGB", (int(w), int(h)), bytes(data))
            for data, (h, w) in zip(row["photos"], row["sizes"], strict=True)
        ]
        live = [j for j, problem in enumerate(problems) if not problem]
        rows: list[Row] = []
        results: list[Explanation | CamlensError] = []
        if live:
            try:
                truths = [self.truth(Path(names[j])) for j in live]  # for --versus true
                results = self.explainer.explain_prepared(
                    torch.from_numpy(inputs.copy()),
                    photos,
                    classes=with_truths(
                        self.explainer.config.targets,
                        [None if t is None else int(t["class_index"]) for t in truths],
                    ),
                    names=[names[j] for j in live],
                )
            except CamlensError as exc:
                problems = [p or str(exc) for p in problems]
                live, results = [], []
        explained = {}
        for j, result in zip(live, results, strict=True):
            if isinstance(result, CamlensError):  # the model failed on this image alone
                problems[j] = str(result)
            else:
                explained[j] = result
        for j, name in enumerate(names):
            if done[j]:
                continue
            stem = stems[j] or None
            if j in explained and stem is not None:
                try:
                    rows.append(
                        write_image(
                            explained[j],
                            stem,
                            self.out,
                            self.output,
                            self.temp,
                            self.truth(Path(name)),
                        )
                    )
                    continue
                except CamlensError as exc:
                    problems[j] = str(exc)
            rows.append(error_row(name, stem, problems[j] or f"{name}: not explained"))
        return rows


def _report(out: Path, item: Item) -> Path | None:
    return None if item.stem is None else out / f"{item.stem}.json"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
