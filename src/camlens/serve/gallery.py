"""The run gallery of ``camlens serve --runs FOLDER``: the finished runs found there, and each
run's index filtered by class, sorted and cut into pages.

A run is a folder holding ``index.jsonl`` (written by ``camlens explain --out``). ``FOLDER`` may be
a run itself, hold runs one level down, or both; hidden folders and links that lead out of
``FOLDER`` are left out (their files could not be served). A run is named by its folder's name,
and only names found there are accepted: no path from a client is ever opened.

An index is read with :func:`camlens.runs.iter_index_at`, once while the file stays the same (its
size and modification time; a run that grows is read again), and its summary computed then. What
is kept of each image is what sorting and filtering need, and where its line is: a page reads its
images' rows again (60 lines, not the whole index). The most recently used runs are kept, at most
``keep`` of them.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from camlens.errors import CamlensError
from camlens.models.model import label_matches, suggest_labels
from camlens.runs import (
    INDEX,
    Notable,
    Row,
    Summary,
    iter_index_at,
    read_record,
    read_row,
    summarize,
)
from camlens.types import class_number

Sort = Literal["score", "spread", "off_center", "energy_in_box", "name"]
Order = Literal["asc", "desc"]
Status = Literal["all", "explained", "failed", "wrong"]
SORTS: tuple[str, ...] = ("score", "spread", "off_center", "energy_in_box", "name")
DEFAULT_ORDER: dict[str, Order] = {
    "score": "desc",
    "spread": "desc",
    "off_center": "desc",
    "energy_in_box": "asc",  # a detection whose map lies outside its box first: worth a look
    "name": "asc",
}


SUMMARIZED = ("label", "flat", "spread", "off_center", "overlay")
"""What :func:`camlens.runs.summarize` reads of an image's first map."""
DETECTED = ("class_index", "label", "score")
"""What :func:`camlens.runs.summarize` reads of a detector's detections."""
DETECTION_MAP = ("target", "energy_in_box", "label", "method", "layer", "overlay")
"""What :func:`camlens.runs.summarize` reads of each map of a detector's image."""


class RunNotFound(CamlensError):
    """A run name that is not one of the runs found (a 404)."""


class RunUnreadable(CamlensError):
    """A run whose index cannot be read (a line that is not an index row, say)."""


class NoTruth(CamlensError):
    """A filter on mistakes in a run whose images have no true class (a 422)."""


@dataclass(frozen=True)
class Place:
    """A run on disk: its ``name``, its ``folder`` and the path of that folder under ``/runs/``
    (``""`` for the runs folder itself, else ``"name/"``)."""

    name: str
    folder: Path
    prefix: str


def find_runs(root: Path) -> dict[str, Place]:
    """The runs under ``root``, by name: ``root`` itself if it holds an index, first, then its
    sub-folders that do, by name. The root's name is its folder's name, unless a sub-folder has
    that name too (then it is ``"NAME (top)"``)."""
    found: dict[str, Place] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        folder = Path(entry.path)
        try:
            if not entry.is_dir() or not _inside(folder / INDEX, root):
                continue
        except OSError:
            continue
        found[entry.name] = Place(entry.name, folder, entry.name + "/")
    if _inside(root / INDEX, root):
        name = root.name or "run"
        if name in found:
            name = f"{name} (top)"
        return {name: Place(name, root, ""), **found}
    return found


def _inside(index: Path, root: Path) -> bool:
    """An index file whose real place is inside ``root`` (a link out of it is no run here: its
    files would not be served)."""
    try:
        return index.is_file() and index.resolve().is_relative_to(root)
    except OSError:
        return False


class MapKey(NamedTuple):
    """What the gallery sorts a map by."""

    class_index: Any
    score: float | None
    spread: float | None
    off_center: float | None
    flat: bool
    energy_in_box: float | None = None
    """A detection's map: the share of its sum inside the detection's own box."""


@dataclass(frozen=True)
class Item:
    """One image of an index, as little of it as sorting and filtering need (the page reads its
    row again, at ``offset``): ``position`` is its place among the rows, ``group`` the class
    :func:`camlens.runs.summarize` counts it under (its true class, else its top-1), ``wrong``
    whether its top-1 is not its true class (a mistake: False when the true class is unknown)."""

    position: int
    offset: int
    image: str
    failed: bool
    group: int | None
    top_score: float | None
    maps: tuple[MapKey, ...]
    wrong: bool = False

    def focus(self, class_index: int | None, sort: str | None = None) -> int | None:
        """The map shown (and sorted by): the first of ``class_index`` when it has one, else
        its first map; None without maps. Sorted by ``energy_in_box``: of those maps, the one
        with the least energy inside its own box (the detection that most deserves a look)."""
        if not self.maps:
            return None
        if sort == "energy_in_box":
            mine = [
                i
                for i, m in enumerate(self.maps)
                if m.energy_in_box is not None
                and not m.flat
                and (class_index is None or m.class_index == class_index)
            ]
            if mine:
                return min(mine, key=lambda i: (self.maps[i].energy_in_box, i))
        if class_index is not None:
            for i, m in enumerate(self.maps):
                if m.class_index == class_index:
                    return i
        return 0

    def value(self, sort: str, class_index: int | None) -> float | None:
        """The number ``sort`` orders by (None: last, whatever the order)."""
        focus = self.focus(class_index, sort)
        if focus is None:
            return self.top_score if sort == "score" else None
        chosen = self.maps[focus]
        if sort == "score":
            return chosen.score
        if sort == "energy_in_box":
            return None if chosen.flat else chosen.energy_in_box
        if chosen.flat:
            return None  # a flat map is nowhere: it has no spread and no center
        return chosen.spread if sort == "spread" else chosen.off_center


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RunIndex:
    """A run's index as read at one time (``stamp``): its items, summary, record, the names seen
    in it, and the orders asked for so far."""

    place: Place
    stamp: tuple[int, int, int]
    items: list[Item]
    summary: Summary
    record: dict[str, Any] | None
    labels: dict[int, str]
    model: str | None
    methods: list[str]
    layers: list[str]
    kind: str = "classifier"
    """The model's kind, as its rows say: ``segmentation`` (rows with a ``segmentation``),
    ``detection`` (rows with ``detections``), else ``classifier``."""
    orders: OrderedDict[tuple[Any, ...], list[int]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def class_of(self, given: str) -> int:
        """A class of the run from its index or its name, as :meth:`camlens.Model.class_index`
        reads names (any case, underscores for spaces, one synonym); 422 otherwise, or when the
        name fits several of the run's classes."""
        text = given.strip()
        index = class_number(text)
        if index is not None:
            if index < 0:
                raise CamlensError(
                    f"class must be a class index (0 or more) or name, not {given!r}"
                )
            if index not in self.labels:
                shown = ", ".join(str(i) for i in sorted(self.labels)[:10])
                more = ", ..." if len(self.labels) > 10 else ""
                raise CamlensError(
                    f"class {index} is not a class of run {self.place.name!r} "
                    f"(its classes: {shown or 'none'}{more})"
                )
            return index
        indices = list(self.labels)
        found = [indices[i] for i in label_matches(tuple(self.labels.values()), text)]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f"{self.labels[i]!r} ({i})" for i in found)
            raise CamlensError(f"class {given!r} names several classes of the run: {names}")
        close = suggest_labels(list(self.labels.values()), text, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}" if close else ""
        raise CamlensError(f"class {given!r} is not a class of run {self.place.name!r}{hint}")

    def select(self, class_index: int | None, status: str, sort: str, order: str) -> list[int]:
        """The positions of the items that pass the filters, in the order asked: by the value,
        then by image name; items without the value (failed images, flat maps) last. ``status``
        ``wrong``: the mistakes (top-1 not the true class), a :class:`NoTruth` in a run with no
        true classes."""
        if status == "wrong" and not self.summary.labelled:
            raise NoTruth(
                f"status=wrong shows the images whose top-1 is not their true class; no image of "
                f"run {self.place.name!r} has one (their folders name no class)"
            )
        key = (class_index, status, sort, order)
        with self.lock:
            found = self.orders.get(key)
            if found is not None:
                self.orders.move_to_end(key)
                return found
        chosen = [
            item
            for item in self.items
            if (class_index is None or item.group == class_index)
            and (
                status == "all"
                or (status == "wrong" and item.wrong)
                or (status in ("failed", "explained") and (status == "failed") == item.failed)
            )
        ]
        sign = -1.0 if order == "desc" else 1.0
        if sort == "name":
            chosen.sort(key=lambda it: (it.image, it.position), reverse=order == "desc")
        else:
            values = {it.position: it.value(sort, class_index) for it in chosen}

            def by_value(it: Item) -> tuple[bool, float, str, int]:
                value = values[it.position]
                return (
                    value is None,
                    0.0 if value is None else sign * value,
                    it.image,
                    it.position,
                )

            chosen.sort(key=by_value)
        positions = [it.position for it in chosen]
        with self.lock:
            self.orders[key] = positions
            while len(self.orders) > 32:
                self.orders.popitem(last=False)
        return positions

    def row(self, item: Item) -> Row:
        """The item's whole row, read again from the index."""
        try:
            return read_row(self.place.folder / INDEX, item.offset)
        except CamlensError as exc:
            problem = str(exc).replace(str(self.place.folder), self.place.name)
            raise RunUnreadable(
                f"run {self.place.name!r} changed while it was read: {problem}"
            ) from None


class Gallery:
    """The runs under ``root``: found again at each call (runs come and go), their indexes kept
    while they do not change (the ``keep`` most recently used, and what the list of runs says of
    every run); safe across threads."""

    def __init__(self, root: Path, keep: int = 4) -> None:
        self.root = root
        self.keep = keep
        self._indexes: OrderedDict[str, RunIndex] = OrderedDict()
        self._listed: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._reading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def runs(self) -> dict[str, Place]:
        return find_runs(self.root)

    def place(self, name: str) -> Place:
        found = self.runs()
        if name not in found:
            raise RunNotFound(f"there is no run named {name!r} here (GET /api/runs lists them)")
        return found[name]

    def _stamp(self, place: Place) -> tuple[int, int, int]:
        try:
            info = (place.folder / INDEX).stat()
        except OSError:
            raise RunNotFound(f"run {place.name!r} has no index any more") from None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def index(self, place: Place) -> RunIndex:
        """The run's index, read again if the file changed since it was last read."""
        key = str(place.folder)
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:  # one reader per run: the others wait for what it reads
            stamp = self._stamp(place)
            with self._lock:
                kept = self._indexes.get(key)
                if kept is not None and kept.stamp == stamp:
                    self._indexes.move_to_end(key)
                    return kept
            loaded = _read(place, stamp)
            with self._lock:
                self._indexes[key] = loaded
                self._indexes.move_to_end(key)
                while len(self._indexes) > self.keep:
                    self._indexes.popitem(last=False)
                self._listed[key] = (stamp, run_facts(loaded))
            return loaded

    def facts(self, place: Place) -> dict[str, Any]:
        """What the list of runs says of the run (:func:`run_facts`), without keeping its index
        when it was not kept already."""
        stamp = self._stamp(place)
        with self._lock:
            listed = self._listed.get(str(place.folder))
        if listed is not None and listed[0] == stamp:
            return listed[1]
        return run_facts(self.index(place))


def _read(place: Place, stamp: tuple[int, int, int]) -> RunIndex:
    """A run's index, its record and its summary (the rows themselves are not kept)."""
    items: list[Item] = []
    lean: list[Row] = []  # what summarize() reads of each row
    model: str | None = None
    methods: dict[str, None] = {}
    layers: dict[str, None] = {}
    kind = "classifier"
    try:
        for position, (offset, row) in enumerate(iter_index_at(place.folder / INDEX)):
            maps = row.get("explanations")
            entries = [m for m in maps if isinstance(m, Mapping)] if isinstance(maps, list) else []
            predictions = row.get("predictions")
            top = predictions[0] if isinstance(predictions, list) and predictions else None
            failed = row.get("error") is not None
            if model is None and not failed and row.get("model"):
                model = str(row["model"])
            if isinstance(row.get("segmentation"), list):
                kind = "segmentation"
            elif isinstance(row.get("detections"), list):
                kind = "detection"
            for m in entries:
                if m.get("method") is not None:
                    methods[str(m["method"])] = None
                if m.get("layer") is not None:
                    layers[str(m["layer"])] = None
            items.append(
                Item(
                    position,
                    offset,
                    str(row.get("image", "")),
                    failed,
                    None,
                    _number(top.get("score")) if isinstance(top, Mapping) else None,
                    tuple(
                        MapKey(
                            m.get("class_index"),
                            _number(m.get("score")),
                            _number(m.get("spread")),
                            _number(m.get("off_center")),
                            bool(m.get("flat")),
                            _number(m.get("energy_in_box")),
                        )
                        for m in entries
                    ),
                )
            )
            lean.append(
                {
                    "image": row.get("image"),
                    "error": row.get("error"),
                    "predictions": predictions,
                    "truth": row.get("truth"),
                    "explanations": _lean_maps(entries),
                    "segmentation": row.get("segmentation"),
                    "detections": _lean_detections(row.get("detections")),
                }
            )
    except CamlensError as exc:
        problem = str(exc).replace(str(place.folder), place.name)
        raise RunUnreadable(f"run {place.name!r}: {problem}") from None
    try:
        summary = summarize(lean, top=10)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise RunUnreadable(
            f"run {place.name!r}: its index has rows camlens did not write"
        ) from None
    by_truth = summary.by == "truth"
    items = [
        replace(item, group=_group(row, by_truth), wrong=_wrong(row))
        for item, row in zip(items, lean, strict=True)
    ]
    del lean
    try:
        record = read_record(place.folder)
    except CamlensError:
        record = None
    return RunIndex(
        place,
        stamp,
        items,
        summary,
        record,
        {c.class_index: c.label for c in summary.classes},
        model,
        list(methods),
        list(layers),
        kind,
    )


def _lean_maps(entries: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What :func:`camlens.runs.summarize` reads of a row's maps: the first's statistics, and of
    a detection's map its target, energy in its box, and what names it."""
    lean = []
    for i, m in enumerate(entries):
        kept = {k: m.get(k) for k in SUMMARIZED} if i == 0 else {}
        target = m.get("target")
        if isinstance(target, Mapping) and target.get("kind") == "detection":
            kept.update((k, m.get(k)) for k in DETECTION_MAP)
        if kept:
            lean.append(kept)
    return lean


def _lean_detections(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    return [{k: d.get(k) for k in DETECTED} for d in value if isinstance(d, Mapping)]


def _group(row: Mapping[str, Any], by_truth: bool) -> int | None:
    """The class :func:`camlens.runs.summarize` counts the row under, if any."""
    if row.get("error") is not None or not row.get("predictions"):
        return None
    chosen = row.get("truth") if by_truth else row["predictions"][0]
    if not isinstance(chosen, Mapping):
        return None
    index = chosen.get("class_index")
    return index if isinstance(index, int) else None


def _wrong(row: Mapping[str, Any]) -> bool:
    """Whether the row's top-1 is not its true class (False when either is unknown)."""
    truth, predictions = row.get("truth"), row.get("predictions")
    if row.get("error") is not None or not isinstance(truth, Mapping) or not predictions:
        return False
    top = predictions[0]
    return isinstance(top, Mapping) and top.get("class_index") != truth.get("class_index")


def run_facts(index: RunIndex) -> dict[str, Any]:
    """What the list of runs says of a run: its counts, and what it was made with (model,
    methods, layers, format) from its record, else from its rows."""
    options = (index.record or {}).get("options", {})
    explain = options.get("explain", {}) if isinstance(options, Mapping) else {}
    output = options.get("output", {}) if isinstance(options, Mapping) else {}
    model = index.model
    if model is None and isinstance(explain.get("model"), str):
        model = explain["model"]
    fmt = output.get("format") if isinstance(output.get("format"), str) else None
    summary = index.summary
    return {
        "name": index.place.name,
        "images": summary.images,
        "explained": summary.explained,
        "errors": len(summary.errors),
        "labelled": summary.labelled,
        "model": model,
        "methods": _names(explain.get("methods")) or index.methods,
        "layers": _names(explain.get("layers")) or index.layers,
        "format": fmt,
        "kind": index.kind,
        "problem": None,
    }


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


# --- the JSON sent ---------------------------------------------------------------------------------


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def file_url(place: Place, relative: Any, root: str = "") -> str | None:
    """The URL under ``/runs/`` of a file the index names relative to the run, or None (no
    name, or one that could not be inside the run)."""
    if not isinstance(relative, str) or not relative:
        return None
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return f"{root}/runs/" + quote(place.prefix + "/".join(parts), safe="/")


def image_json(
    place: Place,
    item: Item,
    row: Row,
    class_index: int | None,
    root: str = "",
    sort: str | None = None,
) -> dict[str, Any]:
    """An image of the gallery (its ``row`` of the index): :class:`GalleryImageOut`; its
    ``focus`` the map it is sorted by (:meth:`Item.focus`)."""
    predictions = _list(row.get("predictions"))
    truth = row.get("truth")
    error = row.get("error")
    maps = []
    for m in (m for m in _list(row.get("explanations")) if isinstance(m, Mapping)):
        maps.append(
            {
                "class_index": m.get("class_index"),
                "label": m.get("label"),
                "score": m.get("score"),
                "method": m.get("method"),
                "layer": m.get("layer"),
                "flat": bool(m.get("flat")),
                "peak": m.get("peak"),
                "box": m.get("box"),
                "spread": _number(m.get("spread")),
                "off_center": _number(m.get("off_center")),
                "overlay": file_url(place, m.get("overlay"), root),
                "map": file_url(place, m.get("map"), root),
                "target": m.get("target") if isinstance(m.get("target"), Mapping) else None,
                "explained": m.get("explained") if isinstance(m.get("explained"), str) else None,
                "value": _number(m.get("value")),
                "energy_in_box": _number(m.get("energy_in_box")),
            }
        )
    return {
        "id": item.position,
        "image": item.image,
        "size": row.get("size"),
        "error": None if error is None else str(error),
        "prediction": predictions[0] if predictions else None,
        "predictions": predictions,
        "truth": truth if isinstance(truth, Mapping) else None,
        "report": file_url(place, row.get("report"), root),
        "focus": item.focus(class_index, sort),
        "maps": maps,
        "segmentation": _segments(row.get("segmentation")),
        "segments_overlay": file_url(place, row.get("segments_overlay"), root),
        "detections": _detections(row.get("detections")),
        "detections_overlay": file_url(place, row.get("detections_overlay"), root),
    }


def _detections(value: Any) -> list[dict[str, Any]] | None:
    """A detector's row's detections, best first (None for another model's; empty for an image
    with no detection)."""
    if not isinstance(value, list):
        return None
    return [
        {k: d.get(k) for k in ("box", "class_index", "label", "score")}
        for d in value
        if isinstance(d, Mapping)
    ]


def _segments(value: Any) -> list[dict[str, Any]] | None:
    """A segmentation model's row's classes present, with their share of the pixels (None for
    another model's)."""
    if not isinstance(value, list):
        return None
    return [
        {"class_index": s.get("class_index"), "label": s.get("label"), "share": s.get("share")}
        for s in value
        if isinstance(s, Mapping)
    ]


def run_json(facts: Mapping[str, Any], place: Place, root: str = "") -> dict[str, Any]:
    """A run of the list (:func:`run_facts` and its URL): :class:`RunOut`."""
    return {**facts, "url": f"{root}/runs/" + quote(place.prefix, safe="/")}


def unreadable_run_json(place: Place, problem: str, root: str = "") -> dict[str, Any]:
    """A run of the list whose index cannot be read: nothing but its name and the problem."""
    return {
        "name": place.name,
        "url": f"{root}/runs/" + quote(place.prefix, safe="/"),
        "images": 0,
        "explained": 0,
        "errors": 0,
        "labelled": 0,
        "model": None,
        "methods": [],
        "layers": [],
        "format": None,
        "kind": None,
        "problem": problem,
    }


def summary_json(index: RunIndex, root: str = "") -> dict[str, Any]:
    """``camlens summary`` as JSON: :class:`~camlens.serve.schemas.RunSummaryOut`."""
    s = index.summary

    def notable(entries: Sequence[Notable]) -> list[dict[str, Any]]:
        return [
            {
                "image": n.image,
                "label": n.label,
                "value": n.value,
                "overlay": file_url(index.place, n.overlay, root),
            }
            for n in entries
        ]

    return {
        "run": index.place.name,
        "images": s.images,
        "explained": s.explained,
        "errors": len(s.errors),
        "flat": s.flat,
        "labelled": s.labelled,
        "top1": s.top1,
        "top5": s.top5,
        "by": s.by,
        "classes": [asdict(c) for c in s.classes],
        "spread": notable(s.spread),
        "off_center": notable(s.off_center),
        "confident_mistakes": notable(s.confident_mistakes),
        "outside_box": notable(s.outside_box),
        "segments": [asdict(line) for line in s.segments],
        "detections": [asdict(line) for line in s.detections],
        "undetected": s.undetected,
    }
