"""The explanations whose files (overlays, maps) clients may still fetch: the newest ones, a
bounded number, in memory."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from camlens.config import OutputConfig
from camlens.explanation import Explanation
from camlens.serve.schemas import ExplainOut


@dataclass
class Result:
    explanation: Explanation
    output: OutputConfig
    response: ExplainOut  # the answer sent for it
    mask: bytes | None = None  # the mask uploaded with it (PNG), for its maps' regions


def _bytes(result: Result) -> int:
    """About what a result holds in memory: its photo (3 bytes a pixel), its maps at their
    layers' size, and its answer's text (with inline=true, data: URLs as large as the files)."""
    width, height = result.explanation.size
    maps = sum(m.map.numel() * m.map.element_size() for m in result.explanation.maps)
    answer = sum(len(m.overlay) + len(m.heatmap) + len(m.map) for m in result.response.explanations)
    return 3 * width * height + maps + answer + len(result.mask or b"") + 4096


class ResultStore:
    """At most ``capacity`` results and ``max_bytes`` of memory (:func:`_bytes`) (the newest result is kept
    whatever its size), the least recently used dropped first; safe across threads."""

    def __init__(self, capacity: int, max_bytes: int = 2**30) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError(
                f"capacity and max_bytes must be at least 1, not {capacity}, {max_bytes}"
            )
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return secrets.token_urlsafe(12)

    def put(self, key: str, result: Result) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= _bytes(old)
            self._items[key] = result
            self.bytes += _bytes(result)
            while len(self._items) > 1 and (
                len(self._items) > self.capacity or self.bytes > self.max_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                self.bytes -= _bytes(dropped)

    def get(self, key: str) -> Result | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
