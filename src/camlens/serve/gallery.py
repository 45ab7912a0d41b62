"""The run gallery of ``camlens serve --runs FOLDER``: the finished runs found there, and each
run's index filtered by class, sorted and cut into pages.

A run is a folder holding ``index.jsonl`` (written by ``camlens explain --out``). ``FOLDER`` may be
a run itself, hold runs one level down, or both; hidden folders and links that lead out of
``FOLDER`` are left out (their files could not be served). A run is named by its folder's name,
and only names found there are accepted: no path from a client is ever opened.

An index is read with :func:`camlens.runs.iter_index`, without the maps at the layer's resolution
(``layer_map``), and kept while the file stays the same (its size and modification time); a run
that grows is read again. The most recently used runs are kept, at most ``keep`` of them.
"""

from __future__ import annotations

import difflib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from camlens.errors import CamlensError
from camlens.runs import INDEX, Notable, Row, Summary, iter_index, read_record, summarize

Sort = Literal["score", "spread", "off_center", "name"]
Order = Literal["asc", "desc"]
Status = Literal["all", "explained", "failed"]
SORTS: tuple[str, ...] = ("score", "spread", "off_center", "name")
DEFAULT_ORDER: dict[str, Order] = {
    "score": "desc",
    "spread": "desc",
    "off_center": "desc",
    "name": "asc",
}


class RunNotFound(CamlensError):
    """A run name that is not one of the runs found (a 404)."""


class RunUnreadable(CamlensError):
    """A run whose index cannot be read (a line that is not an index row, say)."""


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


@dataclass
class Item:
    """One row of an index, as the gallery uses it: ``position`` is its line among the rows."""

    position: int
    row: Row
    group: int | None  # the class the summary counts it under (truth, else the top-1)

    @property
    def image(self) -> str:
        return str(self.row.get("image", ""))

    @property
    def error(self) -> str | None:
        error = self.row.get("error")
        return None if error is None else str(error)

    @property
    def maps(self) -> list[Mapping[str, Any]]:
        maps = self.row.get("explanations")
        return [m for m in maps if isinstance(m, Mapping)] if isinstance(maps, list) else []

    def focus(self, class_index: int | None) -> int | None:
        """The map shown (and sorted by): the first of ``class_index`` when it has one, else
        its first map; None without maps."""
        maps = self.maps
        if not maps:
            return None
        if class_index is not None:
            for i, m in enumerate(maps):
                if m.get("class_index") == class_index:
                    return i
        return 0

    def value(self, sort: str, class_index: int | None) -> float | None:
        """The number ``sort`` orders by (None: last, whatever the order)."""
        focus = self.focus(class_index)
        if focus is None:
            predictions = self.row.get("predictions")
            if sort == "score" and isinstance(predictions, list) and predictions:
                return _number(predictions[0].get("score"))
            return None
        chosen = self.maps[focus]
        if sort != "score" and chosen.get("flat"):
            return None  # a flat map is nowhere: it has no spread and no center
        return _number(chosen.get(sort))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RunIndex:
    """A run's index as read at one time (``stamp``), with the summary and the orders asked."""

    place: Place
    stamp: tuple[int, int, int]
    items: list[Item]
    summary: Summary
    record: dict[str, Any] | None
    labels: dict[int, str]
    orders: OrderedDict[tuple[Any, ...], list[int]] = field(default_factory=OrderedDict)

    def class_of(self, given: str) -> int:
        """A class of the run from its index or its exact name (any case); 422 otherwise."""
        text = given.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if index < 0:
                raise CamlensError(
                    f"class must be a class index (0 or more) or name, not {given!r}"
                )
            return index
        for index, label in self.labels.items():
            if label == text:
                return index
        folded = {label.casefold(): index for index, label in self.labels.items()}
        if text.casefold() in folded:
            return folded[text.casefold()]
        close = difflib.get_close_matches(text, list(self.labels.values()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}" if close else ""
        raise CamlensError(f"class {given!r} is not a class of run {self.place.name!r}{hint}")

    def select(self, class_index: int | None, status: str, sort: str, order: str) -> list[int]:
        """The positions of the items that pass the filters, in the order asked: by the value,
        then by image name; items without the value (failed images, flat maps) last."""
        key = (class_index, status, sort, order)
        found = self.orders.get(key)
        if found is not None:
            self.orders.move_to_end(key)
            return found
        chosen = [
            item
            for item in self.items
            if (class_index is None or item.group == class_index)
            and (status == "all" or (status == "failed") == (item.error is not None))
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
        self.orders[key] = positions
        while len(self.orders) > 32:
            self.orders.popitem(last=False)
        return positions


class Gallery:
    """The runs under ``root``: found again at each call (runs come and go), their indexes kept
    while they do not change (the ``keep`` most recently used); safe across threads."""

    def __init__(self, root: Path, keep: int = 4) -> None:
        self.root = root
        self.keep = keep
        self._indexes: OrderedDict[str, RunIndex] = OrderedDict()
        self._lock = threading.Lock()

    def runs(self) -> dict[str, Place]:
        return find_runs(self.root)

    def place(self, name: str) -> Place:
        found = self.runs()
        if name not in found:
            raise RunNotFound(f"there is no run named {name!r} here (GET /api/runs lists them)")
        return found[name]

    def index(self, place: Place) -> RunIndex:
        """The run's index, read again if the file changed since it was last read."""
        path = place.folder / INDEX
        try:
            info = path.stat()
        except OSError:
            raise RunNotFound(f"run {place.name!r} has no index any more") from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        key = str(place.folder)
        with self._lock:
            kept = self._indexes.get(key)
            if kept is not None and kept.stamp == stamp:
                self._indexes.move_to_end(key)
                return kept
        loaded = self._read(place, path, stamp)
        with self._lock:
            self._indexes[key] = loaded
            self._indexes.move_to_end(key)
            while len(self._indexes) > self.keep:
                self._indexes.popitem(last=False)
        return loaded

    def _read(self, place: Place, path: Path, stamp: tuple[int, int, int]) -> RunIndex:
        try:
            rows = [_light(row) for row in iter_index(path)]
        except CamlensError as exc:
            problem = str(exc).replace(str(place.folder), place.name)
            raise RunUnreadable(f"run {place.name!r}: {problem}") from None
        try:
            record = read_record(place.folder)
        except CamlensError:
            record = None
        try:
            summary = summarize(rows, top=10)
        except (KeyError, TypeError, ValueError, IndexError):
            raise RunUnreadable(
                f"run {place.name!r}: its index has rows camlens did not write"
            ) from None
        by_truth = summary.by == "truth"
        items = []
        for position, row in enumerate(rows):
            items.append(Item(position, row, _group(row, by_truth)))
        labels = {c.class_index: c.label for c in summary.classes}
        return RunIndex(place, stamp, items, summary, record, labels)

    def page(
        self,
        place: Place,
        *,
        class_name: str | None,
        status: str,
        sort: str,
        order: str,
        offset: int,
        limit: int,
    ) -> tuple[RunIndex, int | None, int, list[Item]]:
        """The index, the class filtered by, how many items pass and the page asked for."""
        index = self.index(place)
        class_index = None if class_name is None else index.class_of(class_name)
        positions = index.select(class_index, status, sort, order)
        page = [index.items[p] for p in positions[offset : offset + limit]]
        return index, class_index, len(positions), page


def _light(row: Row) -> Row:
    """The row without its maps at the layer's resolution (the gallery does not show them)."""
    maps = row.get("explanations")
    if not isinstance(maps, list):
        return row
    light = dict(row)
    light["explanations"] = [
        {k: v for k, v in m.items() if k != "layer_map"} if isinstance(m, Mapping) else m
        for m in maps
    ]
    return light


def _group(row: Mapping[str, Any], by_truth: bool) -> int | None:
    """The class :func:`camlens.runs.summarize` counts the row under, if any."""
    if row.get("error") is not None or not row.get("predictions"):
        return None
    chosen = row.get("truth") if by_truth else row["predictions"][0]
    if not isinstance(chosen, Mapping):
        return None
    index = chosen.get("class_index")
    return index if isinstance(index, int) else None


def run_options(index: RunIndex) -> dict[str, Any]:
    """What the run was made with, from its record and its rows: model, methods, layers,
    format (files or dataset)."""
    options = (index.record or {}).get("options", {})
    explain = options.get("explain", {}) if isinstance(options, Mapping) else {}
    output = options.get("output", {}) if isinstance(options, Mapping) else {}
    rows = [it.row for it in index.items if it.error is None]
    model = next((str(r["model"]) for r in rows if r.get("model")), None)
    if model is None and isinstance(explain.get("model"), str):
        model = explain["model"]
    methods = _names(explain.get("methods")) or _seen(rows, "method")
    layers = _names(explain.get("layers")) or _seen(rows, "layer")
    fmt = output.get("format") if isinstance(output.get("format"), str) else None
    return {"model": model, "methods": methods, "layers": layers, "format": fmt}


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _seen(rows: Sequence[Row], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for m in row.get("explanations") or []:
            if isinstance(m, Mapping) and m.get(key) is not None:
                seen[str(m[key])] = None
    return list(seen)


# --- the JSON sent ---------------------------------------------------------------------------------


def file_url(place: Place, relative: Any, root: str = "") -> str | None:
    """The URL under ``/runs/`` of a file the index names relative to the run, or None (no
    name, or one that could not be inside the run)."""
    if not isinstance(relative, str) or not relative:
        return None
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return f"{root}/runs/" + quote(place.prefix + "/".join(parts), safe="/")


def image_json(place: Place, item: Item, class_index: int | None, root: str = "") -> dict[str, Any]:
    """An image of the gallery: :class:`~camlens.serve.schemas.GalleryImageOut`."""
    row = item.row
    predictions = row.get("predictions") if isinstance(row.get("predictions"), list) else []
    truth = row.get("truth")
    maps = []
    for m in item.maps:
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
            }
        )
    return {
        "id": item.position,
        "image": item.image,
        "size": row.get("size"),
        "error": item.error,
        "prediction": predictions[0] if predictions else None,
        "predictions": predictions,
        "truth": truth if isinstance(truth, Mapping) else None,
        "report": file_url(place, row.get("report"), root),
        "focus": item.focus(class_index),
        "maps": maps,
    }


def run_json(index: RunIndex, root: str = "") -> dict[str, Any]:
    """A run of the list: :class:`~camlens.serve.schemas.RunOut`."""
    summary = index.summary
    return {
        "name": index.place.name,
        "url": f"{root}/runs/" + quote(index.place.prefix, safe="/"),
        "images": summary.images,
        "explained": summary.explained,
        "errors": len(summary.errors),
        "labelled": summary.labelled,
        **run_options(index),
        "problem": None,
    }


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
    }
