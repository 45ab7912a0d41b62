"""The batch runner: image files in, reports on disk out. Every front-end that works on files
(``camlens explain``, ``camlens localize``, the dataset runner) goes through here.

- **Layout**: the outputs of input ``DIR/STEM.ext`` go to ``OUT/DIR/STEM.*`` (:func:`output_stem`),
  with the extension kept in the name (``STEM.ext.*``) when another image beside it shares its
  stem, so no two inputs ever share an output name; a name still taken is a problem for that
  input, never an overwrite.
- **Per-file errors**: an input that cannot be read or explained is reported (a
  :class:`~camlens.progress.Event` with ``problem``) and the others go on.
- **Atomic files**: each file appears whole or not at all; a report is written only when there is
  something to write, so a failing run never destroys an earlier run's results.
- **One progress protocol**: ``Event("images", done, total, item=path)`` per input.

:func:`explain_files` is a pipeline: threads read and resize the photos ahead of the model,
the model explains one batch at a time (in ``workers`` threads, one batch each), and threads
behind it draw, encode and write the outputs (:mod:`camlens.outputs`); queues between them hold
a few batches at most, so memory stays flat however many files there are. Each run keeps an
index and a record in ``OUT`` (:mod:`camlens.runs`) and resumes where an earlier run of the same
options stopped (:func:`open_run`).

**Same bytes, whatever happened.** A model's output for an image depends, in its last bits, on
the other images of its batch and on the number of threads of the forward pass. So a run cuts
its files into fixed batches (``files[0:B]``, ``files[B:2B]``...) and always explains a batch
whole, even when some of its images are already done; with the same options (threads
included), a resumed run, or one on Ray, writes exactly the bytes of one uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from camlens.config import ExplainConfig, OutputConfig
from camlens.errors import CamlensError
from camlens.explain import Explainer
from camlens.explanation import Explanation
from camlens.files import atomic_open, fit_stem, output_folder
from camlens.images import IMAGE_SUFFIXES, PreprocessConfig, load_image, preprocess
from camlens.localize import Localization, localize_objects
from camlens.models import Model
from camlens.outputs import FolderClasses, error_row, write_image
from camlens.progress import Event, Progress
from camlens.render import save_png
from camlens.runs import (
    STATE,
    IndexWriter,
    Row,
    keep_rows,
    option_differences,
    order_index,
    read_record,
    row_key,
    write_record,
)
from camlens.targets import with_truths
from camlens.version import __version__


@dataclass
class Done:
    """One input, once handled: its ``explanation`` and ``report`` (the JSON written), or the
    ``problem`` that stopped it (one line naming the file)."""

    path: Path
    explanation: Explanation | None = None
    report: Path | None = None
    problem: str | None = None
    localization: Localization | None = None
    row: Row | None = None
    """The image's row in the run index (:mod:`camlens.runs`)."""
    skipped: bool = False
    """True when an earlier run of the same options had done it: nothing was written."""


def output_stem(path: Path, out: Path) -> Path:
    """Where the reports of input ``path`` go: ``out`` / the input's relative folder / its stem.

    A relative path keeps its folders (``a/0.png`` -> ``OUT/a/0``); an absolute one, or one that
    climbs out with ``..``, is taken relative to the current folder when it lies below it, else
    whole without its root (``/data/x/0.png`` -> ``OUT/data/x/0``). So two inputs with the same
    name in different folders never overwrite each other. When another image file in the same
    folder has the same stem (``photo.tiff`` beside ``photo.webp``), the extension stays in the
    name (``OUT/.../photo.tiff``), for both, whichever of them a run is given.
    """
    return _Layout().stem(path, out)


class _Layout:
    """:func:`output_stem` for many files: each folder listed once, the current folder read once
    (a folder of 50,000 images is listed once, not 50,000 times)."""

    def __init__(self) -> None:
        self.listings: dict[str, list[str]] = {}
        self.cwd: Path | None = None

    def stem(self, path: Path, out: Path) -> Path:
        if not path.is_absolute() and ".." not in path.parts:
            relative = path
        else:
            # realpath, not resolve(): an input in a symlink loop gets its stem, and its problem
            # from load_image, not a RuntimeError that stops the run
            resolved = Path(os.path.realpath(path))
            if self.cwd is None:
                self.cwd = Path(os.path.realpath(Path.cwd()))
            try:
                relative = resolved.relative_to(self.cwd)
            except ValueError:
                relative = resolved.relative_to(resolved.anchor)
        # ``..png`` has the stem ``.``: its whole name, so that its outputs stay inside ``out``
        plain = relative.stem not in ("", ".", "..")
        name = relative.stem if plain and not self.has_namesake(path) else relative.name
        return out / relative.parent / name

    def has_namesake(self, path: Path) -> bool:
        """Whether another image file beside ``path`` has the same stem."""
        folder = str(path.parent) if str(path.parent) else "."
        if folder not in self.listings:
            try:
                self.listings[folder] = os.listdir(folder)
            except OSError:
                self.listings[folder] = []
        stem = path.stem
        return any(
            Path(name).stem == stem
            and name != path.name
            and Path(name).suffix.lower() in IMAGE_SUFFIXES
            for name in self.listings[folder]
        )


class Stems:
    """The output stems of one run: :meth:`claim` gives an input its stem, or raises a
    :class:`~camlens.errors.CamlensError` when another input of the run already has it (so
    nothing is overwritten) or when the report would replace an input file."""

    def __init__(self, out: Path, inputs: Sequence[Path] = ()) -> None:
        self.out = out
        self.taken: dict[Path, Path] = {}
        self.inputs = {_key(p) for p in inputs}
        self.layout = _Layout()

    def claim(self, path: Path, suffix: str = ".json") -> Path:
        stem = self.layout.stem(path, self.out)
        key = _key(stem)
        if key in self.taken and self.taken[key] != path:
            raise CamlensError(
                f"{path}: its outputs would overwrite those of {self.taken[key]} ({stem}.*); "
                "rename one of them or explain them in separate runs"
            )
        if _key(stem.with_name(stem.name + suffix)) in self.inputs:
            raise CamlensError(f"{path}: its report would overwrite an input file")
        self.taken[key] = path
        return stem


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def read_batches(
    files: Sequence[Path],
    batch_size: int,
    max_pixels: int,
) -> Iterator[tuple[list[Path], list[Image.Image], list[Done]]]:
    """The files ``batch_size`` at a time: the readable ones with their images, and the others
    as :class:`Done` with their problem."""
    for start in range(0, len(files), batch_size):
        paths, images, failed = [], [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(load_image(path, max_pixels=max_pixels))
                paths.append(path)
            except CamlensError as exc:
                failed.append(Done(path, problem=str(exc)))
        yield paths, images, failed


# --- runs: plan, resume, record -------------------------------------------------------------------


@dataclass
class Item:
    """One input of a run: its ``stem`` relative to OUT (None when it has a ``problem`` before
    any reading: another input has its outputs' name), and whether an earlier run ``done`` it."""

    path: Path
    stem: str | None
    problem: str | None = None
    done: bool = False


@dataclass
class Run:
    """An open run on ``out`` (:func:`open_run`): its items cut into fixed ``chunks`` (the
    batches), the ``index`` to append to, the ``temp`` folder of its temporary files, and its
    ``record`` (``OUT/.camlens/run``). Only one run at a time holds an OUT (a lock the operating
    system drops when the process ends, however it ends)."""

    out: Path
    chunks: list[list[Item]]
    index: IndexWriter
    temp: Path
    record: dict[str, Any]
    lock: int
    resumed: bool = False
    """Whether the index held rows of an earlier run when this one started."""
    counts: dict[str, int] = field(default_factory=lambda: {"explained": 0, "errors": 0})
    started: float = field(default_factory=time.monotonic)

    @property
    def pending(self) -> int:
        return sum(1 for chunk in self.chunks for item in chunk if not item.done)

    def finish(self, interrupted: bool = False, ordered: bool = False) -> None:
        """Closes the index, records the session and lets go of OUT. ``ordered``: a run that
        ended puts its index in input order (:func:`camlens.runs.order_index`), as one
        uninterrupted run writes it."""
        try:
            self.index.close()
            if ordered and self.resumed and not interrupted:
                order_index(self.out, [_key_of(item) for chunk in self.chunks for item in chunk])
            session = self.record["sessions"][-1]
            session.update(
                finished=_now(),
                explained=self.counts["explained"],
                errors=self.counts["errors"],
                interrupted=interrupted,
                seconds=round(time.monotonic() - self.started, 3),
            )
            write_record(self.out, self.record)
            shutil.rmtree(self.temp, ignore_errors=True)
        finally:
            os.close(self.lock)


def run_options(config: ExplainConfig, output: OutputConfig, threads: int) -> dict[str, Any]:
    """What a run's outputs depend on, as ``OUT/.camlens/run`` keeps it: the explanation's options
    (classes and top included), the output's, and the forward pass's ``threads``."""
    return {"explain": config.to_dict(), "output": output.to_dict(), "threads": threads}


def open_run(
    files: Sequence[Path],
    out: Path,
    options: Mapping[str, Any],
    *,
    batch_size: int,
    overwrite: bool = False,
    runner: str = "local",
) -> Run:
    """Takes ``out`` for a run of ``files`` with ``options`` (:func:`run_options`).

    With no record in ``out``, or with ``overwrite``, the run starts afresh (the index
    emptied; files are replaced as they are written again). Otherwise the record's options must
    be the same (a :class:`~camlens.errors.CamlensError` lists those that differ) and the images
    that the index already holds are done. Temporary files a killed run left are removed, and a
    last index line it tore is cut off."""
    out = output_folder(out)
    state = out / STATE
    try:
        state.mkdir(exist_ok=True)
        lock = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _not_a_run_folder(out, exc) from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CamlensError(
                f"another camlens run is writing to {out}: wait for it, or choose another --out"
            ) from None
        record = read_record(out)
        if record is not None and not overwrite and record["options"] != dict(options):
            changes = "; ".join(option_differences(record["options"], options)[:3])
            raise CamlensError(
                f"{out} holds a run with other options ({changes}): add --overwrite to redo it, "
                "or choose another --out"
            )
        items = plan_items(files, out)
        fresh = record is None or record["options"] != dict(options)
        if record is None or fresh:  # a new run, or other options: the earlier rows do not hold
            record = {"camlens": __version__, "options": dict(options), "sessions": []}
        redo = {_key_of(item) for item in items} if overwrite else set()
        done = keep_rows(out, lambda row: not fresh and not _redo(row, redo))
        temp = state / "tmp"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        for item in items:
            item.done = _key_of(item) in done
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        skipped = sum(1 for item in items if item.done)
        record["sessions"].append(
            {"runner": runner, "started": _now(), "images": len(items), "skipped": skipped}
        )
        write_record(out, record)
        index = IndexWriter(out)
    except OSError as exc:
        os.close(lock)
        raise _not_a_run_folder(out, exc) from None
    except BaseException:
        os.close(lock)
        raise
    return Run(out, chunks, index, temp, record, lock, resumed=bool(done))


def _redo(row: Row, redo: set[str]) -> bool:
    """Whether an index row is done again by this run: an image that failed (a full disk, say:
    a failure is never done) or one of the run's own images when it overwrites."""
    return row.get("error") is not None or row_key(row) in redo


def _not_a_run_folder(out: Path, exc: OSError) -> CamlensError:
    """An ``OSError`` of a run's own files in ``out`` (a folder named ``index.jsonl``, a file
    named ``.camlens``, a folder at ``.camlens/lock``) as one line naming the path."""
    where = exc.filename or out
    return CamlensError(
        f"--out {out} cannot hold a run: {where}: {exc.strerror or type(exc).__name__}; "
        "move it away or choose another --out"
    )


def plan_items(files: Sequence[Path], out: Path) -> list[Item]:
    """The run's items: each file with its output stem relative to ``out``, or the problem
    that stops it before reading (its outputs would overwrite another input's, or the input)."""
    stems = Stems(out, files)
    items = []
    for path in files:
        try:
            stem = stems.claim(path).relative_to(out).as_posix()
        except CamlensError as exc:
            items.append(Item(path, None, str(exc)))
        else:
            items.append(Item(path, stem))
    return items


def class_tuple(classes: Any) -> tuple[int | str, ...]:
    """Classes given as one class or a list of them, as a tuple (for a config)."""
    if classes is None:
        return ()
    if isinstance(classes, int | str):
        return (classes,)
    return tuple(classes)


def _key_of(item: Item) -> str:
    return row_key({"stem": item.stem, "image": str(item.path)})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- the local pipeline ----------------------------------------------------------------------------


def read_photo(
    path: Path, settings: PreprocessConfig, max_pixels: int
) -> tuple[Image.Image, torch.Tensor]:
    """A photo and its model input, as :meth:`Explainer.explain` would make it."""
    photo = load_image(path, max_pixels=max_pixels)
    return photo, preprocess([photo], settings)[0]


@dataclass
class _Outcome:
    """What became of one item of a batch: an error, nothing (already done), or the writing of
    its outputs under way."""

    problem: str | None = None
    result: Explanation | None = None
    written: Future[Row] | None = None


def explain_files(
    files: Sequence[Path],
    explainer: Explainer,
    out: Path,
    output: OutputConfig | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    top: int | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    workers: int = 1,
    readers: int = 2,
    writers: int = 2,
    stop: Callable[[], bool] | None = None,
) -> Generator[Done, None, None]:
    """Explains ``files`` and writes each one's outputs under ``out`` (:func:`output_stem`,
    :mod:`camlens.outputs`), yielding a :class:`Done` per input, in order, once its files are
    complete and its row is in the index. A file that cannot be read is a problem for that file
    only. ``classes``/``top`` as in :meth:`Explainer.explain`; the Explainer's own when neither
    is given.

    ``out`` keeps the run's index and record (:mod:`camlens.runs`): images that an earlier run
    with the same options finished are skipped (yielded with ``skipped=True``), unless
    ``overwrite``. ``readers`` threads read ahead of the model, ``workers`` threads run it (a
    batch each; the Explainer is shared), ``writers`` threads write behind it. When ``stop()``
    turns true, no new batch is started: those under way are finished and written, and the run
    ends (a later run resumes it). Progress: an ``images`` :class:`~camlens.progress.Event` per
    image explained or failed, counting to the images not yet done."""
    output = output or OutputConfig()
    if classes is None and top is None:
        classes, top = class_tuple(explainer.classes) or None, explainer.top
    config = explainer.config.replace(classes=class_tuple(classes), top=top)
    options = run_options(config, output, torch.get_num_threads())
    run = open_run(files, out, options, batch_size=explainer.batch_size, overwrite=overwrite)
    report = progress or _quiet
    truth = FolderClasses(explainer.model)
    settings = explainer.model.preprocess
    total, count, interrupted = run.pending, 0, False
    pools = [
        ThreadPoolExecutor(max(1, readers), thread_name_prefix="camlens-read"),
        ThreadPoolExecutor(max(1, workers), thread_name_prefix="camlens-model"),
        ThreadPoolExecutor(max(1, writers), thread_name_prefix="camlens-write"),
    ]
    reading, modelling, writing = pools

    def explain_chunk(chunk: list[Item], reads: list[Future[Any] | None]) -> list[_Outcome]:
        outcomes = [_Outcome() for _ in chunk]
        photos, inputs, live = [], [], []
        for j, (item, read) in enumerate(zip(chunk, reads, strict=True)):
            if read is None:
                outcomes[j].problem = item.problem
                continue
            try:
                photo, x = read.result()
            except CamlensError as exc:
                outcomes[j].problem = str(exc)
                continue
            photos.append(photo)
            inputs.append(x)
            live.append(j)
        if not live:
            return outcomes
        # --versus true: each image's true class, from its folder's name
        truths = [_truth_index(truth(chunk[j].path)) for j in live]
        per_image = with_truths(explainer.config.targets, truths) if classes is None else None
        try:
            results = explainer.explain_prepared(
                torch.stack(inputs),
                photos,
                classes=classes if per_image is None else per_image,
                top=top,
                names=[str(chunk[j].path) for j in live],
            )
        except CamlensError as exc:
            for j in live:
                outcomes[j].problem = str(exc)
            return outcomes
        for j, result in zip(live, results, strict=True):
            item = chunk[j]
            if isinstance(result, CamlensError):  # the model failed on this image alone
                outcomes[j].problem = str(result)
                continue
            if not item.done and item.stem is not None:
                outcomes[j].result = result
                outcomes[j].written = writing.submit(
                    write_image, result, item.stem, run.out, output, run.temp, truth(item.path)
                )
        return outcomes

    def start(chunk: list[Item]) -> Future[list[_Outcome]] | None:
        if all(item.done for item in chunk):
            return None
        reads: list[Future[Any] | None] = [
            None
            if item.problem is not None
            else reading.submit(read_photo, item.path, settings, explainer.max_pixels)
            for item in chunk
        ]
        return modelling.submit(explain_chunk, chunk, reads)

    queue: deque[tuple[list[Item], Future[list[_Outcome]] | None]] = deque()
    chunks = iter(run.chunks)
    try:
        while True:
            while len(queue) < max(1, workers) + 2 and not interrupted:
                if stop is not None and stop():
                    interrupted = True
                    break
                chunk = next(chunks, None)
                if chunk is None:
                    break
                queue.append((chunk, start(chunk)))
            if not queue:
                break
            chunk, job = queue.popleft()
            outcomes = job.result() if job is not None else [_Outcome() for _ in chunk]
            finished = [_finish(item, oc, run) for item, oc in zip(chunk, outcomes, strict=True)]
            run.index.append([d.row for d in finished if d.row is not None and not d.skipped])
            for done in finished:
                if not done.skipped:
                    count += 1
                    run.counts["errors" if done.problem else "explained"] += 1
                    report(Event("images", count, total, item=str(done.path), problem=done.problem))
                yield done
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        run.finish(interrupted or next(chunks, None) is not None, ordered=True)


def _finish(item: Item, outcome: _Outcome, run: Run) -> Done:
    """The :class:`Done` of one item of a batch whose model has run, its files written."""
    if item.done:
        return Done(item.path, skipped=True, report=_report_path(run.out, item.stem))
    problem = outcome.problem or item.problem
    if outcome.written is not None:
        try:
            row = outcome.written.result()
        except CamlensError as exc:
            problem = str(exc)
        else:
            return Done(item.path, outcome.result, run.out / row["report"], row=row)
    problem = problem or f"{item.path}: not explained"
    return Done(
        item.path,
        outcome.result,
        problem=problem,
        row=error_row(str(item.path), item.stem, problem),
    )


def _truth_index(truth: Mapping[str, Any] | None) -> int | None:
    """The class index of a :class:`~camlens.outputs.FolderClasses` answer (None: no class)."""
    return None if truth is None else int(truth["class_index"])


def _report_path(out: Path, stem: str | None) -> Path | None:
    return None if stem is None else out / f"{stem}.json"


def localize_files(
    files: Sequence[Path],
    explainer: Explainer,
    out: Path,
    *,
    model: Model | None,
    top: int,
    min_score: float,
    iou_threshold: float,
    output: OutputConfig | None = None,
    progress: Progress | None = None,
) -> Iterator[Done]:
    """Finds objects in ``files`` (:func:`camlens.localize.localize_objects`: a box per top class,
    merged across classes, each crop re-classified by ``model`` unless it is None) and writes
    ``OUT/STEM.boxes.png`` per image and ``OUT/boxes.jsonl`` (a line per image), the JSON Lines
    file replaced only at the end and only when at least one image was localized: the lines of
    an earlier run into ``out`` stay, but for the images localized again."""
    output = output or OutputConfig()
    stems = Stems(out, files)
    report = progress or _quiet
    lines: list[str] = []
    total, count = len(files), 0
    for paths, images, failed in read_batches(files, explainer.batch_size, explainer.max_pixels):
        finished = list(failed)
        if images:
            results = explainer.explain_each(
                images, top=top, names=[str(p) for p in paths], progress=report
            )
            for path, result in zip(paths, results, strict=True):
                if isinstance(result, CamlensError):  # the model failed on this image alone
                    finished.append(Done(path, problem=str(result)))
                    continue
                try:
                    stem = stems.claim(path, ".boxes.png")
                    found = localize_objects(
                        result,
                        model,
                        threshold=output.threshold,
                        iou_threshold=iou_threshold,
                        min_score=min_score,
                        batch_size=explainer.batch_size,
                        mode=output.boxes or "largest",
                    )
                    name = fit_stem(stem.name, ".boxes.png")
                    picture = save_png(found.picture(), stem.with_name(f"{name}.boxes.png"))
                except CamlensError as exc:
                    finished.append(Done(path, result, problem=str(exc)))
                    continue
                record = found.to_dict()
                record["picture"] = picture.relative_to(out).as_posix()
                lines.append(json.dumps(record, allow_nan=False))
                finished.append(Done(path, result, picture, localization=found))
        for done in _in_order(finished, files, count):
            count += 1
            report(Event("images", count, total, item=str(done.path), problem=done.problem))
            yield done
    if lines:
        pictures = {json.loads(line)["picture"] for line in lines}
        earlier = [line for line in _lines(out / "boxes.jsonl") if _picture(line) not in pictures]
        with atomic_open(out / "boxes.jsonl") as handle:
            handle.write("\n".join(earlier + lines) + "\n")


def _lines(path: Path) -> list[str]:
    """The lines of an earlier run's ``boxes.jsonl`` (none when there is none)."""
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CamlensError(f"cannot read {path} ({exc})") from None


def _picture(line: str) -> object:
    """The picture a line of ``boxes.jsonl`` is about (None for a line that names none)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row.get("picture") if isinstance(row, dict) else None


def _in_order(finished: list[Done], files: Sequence[Path], start: int) -> list[Done]:
    """``finished`` in the order of ``files`` (a batch that begins at ``files[start]``)."""
    order = {id(path): i for i, path in enumerate(files[start : start + len(finished)])}
    return sorted(finished, key=lambda d: order.get(id(d.path), len(order)))


def _quiet(event: Event) -> None:
    pass
