"""The explanations whose files (overlays, maps) clients may still fetch: the newest ones, a
bounded number, in memory."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from camlens.config import OutputConfig
from camlens.explanation import Explanation


@dataclass
class Result:
    explanation: Explanation
    output: OutputConfig
    response: dict[str, Any]  # the JSON sent for it


class ResultStore:
    """At most ``capacity`` results, the least recently used dropped first; safe across threads."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return secrets.token_urlsafe(12)

    def put(self, key: str, result: Result) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str) -> Result | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
