"""A run's record on disk: the index of what it wrote (``OUT/index.jsonl``), the options it ran
with (``OUT/.camlens/run``), and the summary of a whole run.

``OUT/index.jsonl`` (JSON Lines, UTF-8): one line per input image, appended only once every file
of the image is complete, the lines of a batch in one write. A run killed at any moment leaves at
most a last line without its newline, which readers skip and the next run cuts off. Every image
is in the index once. Lines are in input order for the local runner; with Ray, in the order the
batches finished. A line is one of:

- an explained image::

    {"image": "val/cat/1.jpg",          # the path as the run was given it
     "stem": "cat/1",                   # its outputs' stem, relative to OUT
     "report": "cat/1.json",            # its JSON report, relative to OUT
     "size": [640, 480],                # width, height of the photo
     "model": "efficientnet_lite0",
     "predictions": [{"class_index": 285, "label": "Egyptian cat", "score": 0.91}, ...],  # top 5
     "truth": {"class_index": 285, "label": "Egyptian cat"},   # only when the image's folder
                                                               # names a class of the model
     "explanations": [                  # one per class, method and layer
       {"class_index": 285, "label": "Egyptian cat", "score": 0.91,
        "method": "gradcam", "layer": "bn2", "flat": false,
        "peak": [312, 201],             # the map's maximum, in the photo's pixels
        "box": [150, 80, 420, 330],     # its largest region above the threshold, or null
        "box_score": 0.74,              # the share of the map's mass inside the box
        "spread": 0.18,                 # the share of the photo where the map is >= 0.5
        "off_center": 0.12,             # its center of mass from the photo's center, as a
                                        # share of the half diagonal (0 center, 1 a corner)
        "overlay": "cat/1.gradcam.bn2.285.jpg",   # relative to OUT
        "map": null,                    # the .npy at the photo's size (files format), or null
        "layer_map": [[0.0, 0.1, ...], ...]}]}    # the map at the layer's resolution, float32

- an image that could not be explained: ``{"image": ..., "stem": ... or null, "error": "..."}``.

``layer_map`` holds the map exactly (each value the shortest decimal that reads back as the same
float32); :func:`camlens.maps.upsample` of it to ``(height, width)`` is the map at the photo's
size, bit for bit the ``.npy`` of the files format.

``OUT/.camlens/run``: ``{"camlens": version, "options": {"explain": ..., "output": ..., "threads":
...}, "sessions": [{"runner", "started", "finished", "images", "explained", "skipped", "errors",
"interrupted", "seconds"}, ...]}``. A run on an ``OUT`` whose options differ is refused unless it
overwrites.

With pandas::

    rows = pd.read_json("OUT/index.jsonl", lines=True)
    maps = pd.json_normalize(rows.to_dict("records"), "explanations", ["image", "truth"])
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlens.errors import CamlensError
from camlens.files import atomic_open

INDEX = "index.jsonl"
RECORD = "run"
"""The run record's file name in :data:`STATE`: JSON, without the suffix, so that a search
for the reports (``OUT/**/*.json``) finds the reports alone."""
STATE = ".camlens"
"""The hidden folder, inside OUT, of a run's record (``run``), lock and temporary files."""

Row = dict[str, Any]


def row_key(row: Mapping[str, Any]) -> str:
    """What identifies an image across runs: its output stem, or its path when it has none."""
    stem = row.get("stem")
    return str(stem) if stem else "path:" + str(row.get("image"))


def read_index(out: str | os.PathLike[str]) -> list[Row]:
    """The rows of ``OUT/index.jsonl`` (none when there is no index), skipping a last line that a
    killed run left without its newline. A line that is not a JSON object is a
    :class:`~camlens.errors.CamlensError` naming the file and line."""
    return list(iter_index(Path(out) / INDEX))


def iter_index(path: Path) -> Iterator[Row]:
    for _, row in iter_index_at(path):
        yield row


def iter_index_at(path: Path) -> Iterator[tuple[int, Row]]:
    """The rows of the index at ``path``, each with the byte offset of its line (for
    :func:`read_row`), as :func:`read_index` reads them."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CamlensError(f"cannot read {path} ({exc.strerror})") from None
    offset = 0
    with handle:
        for number, line in enumerate(handle, 1):
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                return  # torn by a kill: the image is not done
            if not line.strip():
                continue
            yield start, _parse_row(line, path, number)


def read_row(path: Path, offset: int) -> Row:
    """The row whose line starts at byte ``offset`` of the index at ``path`` (an offset that
    :func:`iter_index_at` gave: lines are only ever appended to an index)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            line = handle.readline()
    except OSError as exc:
        raise CamlensError(f"cannot read {path} ({exc.strerror})") from None
    return _parse_row(line, path, None)


def _parse_row(line: bytes, path: Path, number: int | None) -> Row:
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    where = f"line {number}" if number is not None else "a line"
    if not isinstance(row, dict):
        raise CamlensError(f"{path}, {where}: not a camlens index row")
    problem = row_problem(row)
    if problem is not None:
        raise CamlensError(f"{path}, {where}: not a camlens index row: {problem}")
    return row


def row_problem(row: Mapping[str, Any]) -> str | None:
    """What is wrong with an index row, as the readers of an index (``camlens summary``, the
    gallery, a resumed run) need it, or None: an ``image`` text and an ``error`` text, or
    ``predictions`` (at least one, each with a ``class_index``, ``label`` and a finite
    ``score``; none for a detector's image with no detection: a ``detections`` list, empty),
    ``explanations`` (each with ``class_index``, ``label``, ``method``, ``layer``;
    their numbers finite) and at most a ``truth`` with ``class_index`` and ``label``."""
    if not isinstance(row.get("image"), str):
        return "no image path"
    if row.get("error") is not None:
        return None if isinstance(row["error"], str) else "its error is not a text"
    predictions = row.get("predictions")
    if not isinstance(predictions, list) or not (predictions or _detector(row)):
        return "no predictions"
    for k, p in enumerate(predictions):
        problem = _class_problem(p, f"predictions[{k}]") or _finite(p, "score", k, "predictions")
        if problem:
            return problem
    truth = row.get("truth")
    if truth is not None and (problem := _class_problem(truth, "truth")):
        return problem
    maps = row.get("explanations")
    if not isinstance(maps, list):
        return "no explanations"
    for k, m in enumerate(maps):
        if problem := _class_problem(m, f"explanations[{k}]"):
            return problem
        for key in ("method", "layer"):
            if not isinstance(m.get(key), str):
                return f"explanations[{k}] has no {key}"
        for key in ("score", "spread", "off_center", "box_score"):
            if m.get(key) is not None and (problem := _finite(m, key, k, "explanations")):
                return problem
    return None


def _detector(row: Mapping[str, Any]) -> bool:
    """Whether an index row is a detector's image (it has a list of ``detections``, which may be
    empty, and then so are its predictions and maps)."""
    return isinstance(row.get("detections"), list)


def _class_problem(entry: Any, name: str) -> str | None:
    if not isinstance(entry, Mapping):
        return f"{name} is not an object"
    index = entry.get("class_index")
    if isinstance(index, bool) or not isinstance(index, int):
        return f"{name} has no class_index"
    if not isinstance(entry.get("label"), str):
        return f"{name} has no label"
    return None


def _finite(entry: Mapping[str, Any], key: str, k: int, name: str) -> str | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{name}[{k}].{key} is {value!r}, not a finite number"
    return None


def keep_rows(out: Path, keep: Callable[[Row], bool]) -> set[str]:
    """Leaves in ``OUT/index.jsonl`` only the rows for which ``keep(row)`` is true (the file
    replaced whole, or removed when none is kept; untouched when all are) and returns their
    :func:`row_key` s: what a new run of the same images finds done."""
    path = out / INDEX
    rows = read_index(out)
    kept = [row for row in rows if keep(row)]
    if len(kept) != len(rows):
        if kept:
            with atomic_open(path) as handle:
                handle.writelines(json.dumps(row, allow_nan=False) + "\n" for row in kept)
        else:
            path.unlink(missing_ok=True)
    return {row_key(row) for row in kept}


def order_index(out: Path, keys: Sequence[str]) -> bool:
    """Puts the rows of ``OUT/index.jsonl`` in the order of their :func:`row_key` s in ``keys``,
    the rows of other images (an earlier run's, of other files) first as they were: a resumed
    run's index then has the bytes of one uninterrupted run's, whose rows are in input order
    (a resumed run appends the images it does, a failed one included, after those it found
    done). The file is replaced whole, and only when its order changes; True when it was."""
    path = out / INDEX
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CamlensError(f"cannot read {path} ({exc.strerror})") from None
    lines = [line for line in data.splitlines(keepends=True) if line.strip()]
    place = {key: i for i, key in enumerate(keys)}
    rank = [place.get(row_key(_parse_row(line, path, None)), -1) for line in lines]
    order = sorted(range(len(lines)), key=lambda i: (rank[i] >= 0, rank[i], i))
    if order == list(range(len(lines))):
        return False
    with atomic_open(path) as handle:
        handle.writelines(lines[i].decode() for i in order)
    return True


class IndexWriter:
    """Appends rows to ``OUT/index.jsonl``: each call to :meth:`append` is one ``write`` of whole
    lines, flushed to the operating system. Opening cuts off a torn last line left by a killed
    run, so the file holds only whole rows."""

    def __init__(self, out: Path) -> None:
        self.path = out / INDEX
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            _cut_torn_line(self._fd)
        except OSError:
            os.close(self._fd)
            raise

    def append(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)


def _cut_torn_line(fd: int) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    keep = size
    while keep > 0:
        start = max(0, keep - 65536)
        chunk = os.pread(fd, keep - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        keep = start
    if keep != size:
        os.ftruncate(fd, keep)


# --- the run record --------------------------------------------------------------------------------


def read_record(out: Path) -> dict[str, Any] | None:
    """``OUT/.camlens/run``, or None when there is none."""
    path = out / STATE / RECORD
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CamlensError(f"cannot read {path} ({exc.strerror})") from None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
        raise CamlensError(f"{path} is not a camlens run record: remove it or use another --out")
    return record


def write_record(out: Path, record: Mapping[str, Any]) -> None:
    with atomic_open(out / STATE / RECORD) as handle:
        handle.write(json.dumps(record, indent=2, allow_nan=False) + "\n")


def option_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"explain.methods: ['gradcam'] -> ['cam']"`` for each option that differs."""
    found = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    found.append(f"{part}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
        elif a != b:
            found.append(f"{part}: {a!r} -> {b!r}")
    return found


# --- summary ---------------------------------------------------------------------------------------


@dataclass
class ClassLine:
    """One class of a run: its ``images``; ``score`` the mean top-1 probability; ``top1`` and
    ``top5`` how often the true class is the top one or among the top five (None without
    labels); ``spread`` and ``off_center`` the means of the images' first maps."""

    class_index: int
    label: str
    images: int
    score: float
    top1: float | None
    top5: float | None
    spread: float | None
    off_center: float | None


@dataclass
class SegmentLine:
    """One class of a segmentation model's run: the ``images`` it is present in and its mean
    ``share`` of their pixels there."""

    class_index: int
    label: str
    images: int
    share: float


@dataclass
class DetectionLine:
    """One class of a detector's run: the ``images`` with at least one detection of it, its
    ``detections`` in all, their mean ``score`` and the mean ``energy_in_box`` of their maps
    (None when none was explained)."""

    class_index: int
    label: str
    images: int
    detections: int
    score: float
    energy_in_box: float | None


@dataclass
class Notable:
    """An image worth a look: ``value`` is what put it on its list."""

    image: str
    label: str
    value: float
    overlay: str | None


@dataclass
class Summary:
    """A run as a whole (:func:`summarize`). ``by`` is ``"truth"`` when the classes are the
    labels from folder names, else ``"predicted"`` (the top-1 class)."""

    images: int
    explained: int
    errors: list[tuple[str, str]]
    flat: int
    labelled: int
    top1: float | None
    top5: float | None
    by: str
    classes: list[ClassLine]
    spread: list[Notable] = field(default_factory=list)
    off_center: list[Notable] = field(default_factory=list)
    confident_mistakes: list[Notable] = field(default_factory=list)
    segments: list[SegmentLine] = field(default_factory=list)
    detections: list[DetectionLine] = field(default_factory=list)
    undetected: int = 0  # a detector's images with no detection (above its min score)
    outside_box: list[Notable] = field(default_factory=list)  # least energy_in_box first


def summarize(rows: Iterable[Mapping[str, Any]], top: int = 10) -> Summary:
    """Per class: images, mean score, top-1/top-5 accuracy when the index has labels from folder
    names; and the ``top`` images whose first map (that of the first class, method and layer)
    is most spread or most off center, and (with labels) the most confident mistakes."""
    rows = list(rows)
    # a detector's image with no detection may have no prediction either: explained all the same
    explained = [
        r
        for r in rows
        if r.get("error") is None and (r.get("predictions") or r.get("detections") is not None)
    ]
    errors = [(str(r.get("image")), str(r.get("error"))) for r in rows if r.get("error")]
    predicted = [r for r in explained if r.get("predictions")]
    labelled = [r for r in predicted if isinstance(r.get("truth"), Mapping)]
    by = "truth" if labelled else "predicted"
    groups: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    names: dict[int, str] = {}
    for r in labelled if labelled else predicted:
        cls = r["truth"] if labelled else r["predictions"][0]
        groups[int(cls["class_index"])].append(r)
        names[int(cls["class_index"])] = str(cls["label"])
    classes = []
    for index, members in groups.items():
        first = [m for m in map(_first_map, members) if m is not None]
        classes.append(
            ClassLine(
                index,
                names[index],
                len(members),
                statistics.fmean(float(r["predictions"][0]["score"]) for r in members),
                _share(members, _right_top1) if labelled else None,
                _share(members, _right_top5) if labelled else None,
                _mean(m.get("spread") for m in first),
                _mean(m.get("off_center") for m in first),
            )
        )
    classes.sort(key=lambda c: (-c.images, c.class_index))
    firsts = [(r, _first_map(r)) for r in explained]
    mapped = [(r, m) for r, m in firsts if m is not None and not m.get("flat")]
    present: dict[int, list[float]] = defaultdict(list)
    for r in explained:  # a segmentation model's rows: the classes present, with their shares
        for seg in r.get("segmentation") or ():
            present[int(seg["class_index"])].append(float(seg["share"]))
            names.setdefault(int(seg["class_index"]), str(seg["label"]))
    segments = [
        SegmentLine(c, names[c], len(shares), statistics.fmean(shares))
        for c, shares in present.items()
    ]
    segments.sort(key=lambda line: (-line.images, -line.share, line.class_index))
    detections = _detection_lines(explained)
    mistakes = [r for r in labelled if not _right_top1(r)]
    mistakes.sort(key=lambda r: -float(r["predictions"][0]["score"]))
    return Summary(
        images=len(rows),
        explained=len(explained),
        errors=errors,
        flat=sum(1 for _, m in firsts if m is not None and m.get("flat")),
        labelled=len(labelled),
        top1=_share(labelled, _right_top1) if labelled else None,
        top5=_share(labelled, _right_top5) if labelled else None,
        by=by,
        classes=classes,
        spread=_notable(mapped, "spread", top),
        off_center=_notable(mapped, "off_center", top),
        confident_mistakes=[
            Notable(
                str(r["image"]),
                f"{r['predictions'][0]['label']} (is {r['truth']['label']})",
                float(r["predictions"][0]["score"]),
                _overlay(_first_map(r)),
            )
            for r in mistakes[:top]
        ],
        segments=segments,
        detections=detections,
        undetected=sum(1 for r in explained if r.get("detections") == []),
        outside_box=_outside_box(explained, top),
    )


def _outside_box(rows: Sequence[Mapping[str, Any]], top: int) -> list[Notable]:
    """The ``top`` maps of detections with the least of their sum inside their own box
    (``energy_in_box``, least first): the detections whose maps deserve a look."""
    maps = [
        (r, m)
        for r in rows
        for m in r.get("explanations") or ()
        if isinstance(m, Mapping) and isinstance(m.get("energy_in_box"), int | float)
    ]
    maps.sort(key=lambda rm: (float(rm[1]["energy_in_box"]), str(rm[0]["image"])))
    return [
        Notable(
            str(r["image"]),
            f"{m['label']} ({m['method']}, {m['layer']})",
            float(m["energy_in_box"]),
            _overlay(m),
        )
        for r, m in maps[:top]
    ]


def _detection_lines(rows: Sequence[Mapping[str, Any]]) -> list[DetectionLine]:
    """Per class of a detector's rows (their ``detections``): images, detections, mean score,
    and the mean ``energy_in_box`` of the maps of its detections; most images first."""
    images: dict[int, set[int]] = defaultdict(set)
    scores: dict[int, list[float]] = defaultdict(list)
    energies: dict[int, list[float]] = defaultdict(list)
    names: dict[int, str] = {}
    for n, r in enumerate(rows):
        for d in r.get("detections") or ():
            c = int(d["class_index"])
            images[c].add(n)
            scores[c].append(float(d["score"]))
            names.setdefault(c, str(d["label"]))
        for m in r.get("explanations") or ():
            target = m.get("target") if isinstance(m, Mapping) else None
            if isinstance(target, Mapping) and target.get("kind") == "detection":
                energy = m.get("energy_in_box")
                if isinstance(energy, int | float):
                    energies[int(target["label"])].append(float(energy))
    lines = [
        DetectionLine(
            c,
            names[c],
            len(images[c]),
            len(scores[c]),
            statistics.fmean(scores[c]),
            statistics.fmean(energies[c]) if energies[c] else None,
        )
        for c in scores
    ]
    lines.sort(key=lambda line: (-line.images, -line.detections, line.class_index))
    return lines


def _first_map(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    maps = row.get("explanations") or []
    return maps[0] if maps and isinstance(maps[0], Mapping) else None


def _overlay(entry: Mapping[str, Any] | None) -> str | None:
    return None if entry is None or entry.get("overlay") is None else str(entry["overlay"])


def _notable(
    mapped: list[tuple[Mapping[str, Any], Mapping[str, Any]]], key: str, top: int
) -> list[Notable]:
    valued = [(r, m) for r, m in mapped if isinstance(m.get(key), int | float)]
    valued.sort(key=lambda rm: (-float(rm[1][key]), str(rm[0]["image"])))
    return [
        Notable(str(r["image"]), str(m["label"]), float(m[key]), _overlay(m))
        for r, m in valued[:top]
    ]


def _right_top1(row: Mapping[str, Any]) -> bool:
    return bool(row["predictions"][0]["class_index"] == row["truth"]["class_index"])


def _right_top5(row: Mapping[str, Any]) -> bool:
    truth = row["truth"]["class_index"]
    return any(p["class_index"] == truth for p in row["predictions"][:5])


def _share(rows: Sequence[Mapping[str, Any]], test: Any) -> float:
    return sum(1 for r in rows if test(r)) / len(rows)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return statistics.fmean(numbers) if numbers else None
