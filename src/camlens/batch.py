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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from camlens.config import OutputConfig
from camlens.errors import CamlensError
from camlens.explain import Explainer
from camlens.explanation import Explanation
from camlens.files import atomic_open
from camlens.images import IMAGE_SUFFIXES, load_image
from camlens.localize import Localization, add_boxes, localize_objects
from camlens.models import Model
from camlens.progress import Event, Progress
from camlens.render import save_png


@dataclass
class Done:
    """One input, once handled: its ``explanation`` and ``report`` (the JSON written), or the
    ``problem`` that stopped it (one line naming the file)."""

    path: Path
    explanation: Explanation | None = None
    report: Path | None = None
    problem: str | None = None
    localization: Localization | None = None


def output_stem(path: Path, out: Path) -> Path:
    """Where the reports of input ``path`` go: ``out`` / the input's relative folder / its stem.

    A relative path keeps its folders (``a/0.png`` -> ``OUT/a/0``); an absolute one, or one that
    climbs out with ``..``, is taken relative to the current folder when it lies below it, else
    whole without its root (``/data/x/0.png`` -> ``OUT/data/x/0``). So two inputs with the same
    name in different folders never overwrite each other. When another image file in the same
    folder has the same stem (``photo.tiff`` beside ``photo.webp``), the extension stays in the
    name (``OUT/.../photo.tiff``), for both, whichever of them a run is given.
    """
    if not path.is_absolute() and ".." not in path.parts:
        relative = path
    else:
        resolved = path.resolve()
        try:
            relative = resolved.relative_to(Path.cwd().resolve())
        except ValueError:
            relative = resolved.relative_to(resolved.anchor)
    name = relative.name if _has_namesake(path) else relative.stem
    return out / relative.parent / name


def _has_namesake(path: Path) -> bool:
    """Whether another image file beside ``path`` has the same stem."""
    try:
        siblings = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return False
    stem = path.stem
    return any(
        Path(name).stem == stem
        and name != path.name
        and Path(name).suffix.lower() in IMAGE_SUFFIXES
        for name in siblings
    )


class Stems:
    """The output stems of one run: :meth:`claim` gives an input its stem, or raises a
    :class:`~camlens.errors.CamlensError` when another input of the run already has it (so
    nothing is overwritten) or when the report would replace an input file."""

    def __init__(self, out: Path, inputs: Sequence[Path] = ()) -> None:
        self.out = out
        self.taken: dict[Path, Path] = {}
        self.inputs = {_key(p) for p in inputs}

    def claim(self, path: Path, suffix: str = ".json") -> Path:
        stem = output_stem(path, self.out)
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


def explain_files(
    files: Sequence[Path],
    explainer: Explainer,
    out: Path,
    output: OutputConfig | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    top: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Done]:
    """Explains ``files`` and writes each one's report (JSON, overlays, maps) under ``out``
    (:func:`output_stem`), yielding a :class:`Done` per input as it is finished, in order. A file
    that cannot be read is a problem for that file only. ``classes``/``top`` as in
    :meth:`Explainer.explain`; the Explainer's own when neither is given."""
    output = output or OutputConfig()
    stems = Stems(out, files)
    report = progress or _quiet
    total, count = len(files), 0
    for paths, images, failed in read_batches(files, explainer.batch_size, explainer.max_pixels):
        finished = list(failed)
        if images:
            results = explainer.explain(
                images, classes=classes, top=top, names=[str(p) for p in paths], progress=report
            )
            for path, result in zip(paths, results, strict=True):
                finished.append(_save(path, result, stems, output))
        for done in _in_order(finished, files, count):
            count += 1
            report(Event("images", count, total, item=str(done.path), problem=done.problem))
            yield done


def _save(path: Path, result: Explanation, stems: Stems, output: OutputConfig) -> Done:
    try:
        stem = stems.claim(path)
        if output.boxes is not None:
            add_boxes(result, threshold=output.threshold, mode=output.boxes)
        saved = result.save(
            stem.parent,
            stem.name,
            cmap=output.cmap,
            alpha=output.alpha,
            panels=output.panels,
            grid=output.grids,
        )
    except CamlensError as exc:
        return Done(path, result, problem=str(exc))
    return Done(path, result, saved)


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
    file replaced only at the end and only when at least one image was localized."""
    output = output or OutputConfig()
    stems = Stems(out, files)
    report = progress or _quiet
    lines: list[str] = []
    total, count = len(files), 0
    for paths, images, failed in read_batches(files, explainer.batch_size, explainer.max_pixels):
        finished = list(failed)
        if images:
            results = explainer.explain(
                images, top=top, names=[str(p) for p in paths], progress=report
            )
            for path, result in zip(paths, results, strict=True):
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
                    picture = save_png(found.picture(), f"{stem}.boxes.png")
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
        with atomic_open(out / "boxes.jsonl") as handle:
            handle.write("\n".join(lines) + "\n")


def _in_order(finished: list[Done], files: Sequence[Path], start: int) -> list[Done]:
    """``finished`` in the order of ``files`` (a batch that begins at ``files[start]``)."""
    order = {id(path): i for i, path in enumerate(files[start : start + len(finished)])}
    return sorted(finished, key=lambda d: order.get(id(d.path), len(order)))


def _quiet(event: Event) -> None:
    pass
