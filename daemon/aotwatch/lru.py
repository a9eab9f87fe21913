"""A bounded mapping that forgets the least recently used key first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LruCache:
    """At most ``capacity`` keys; ``get`` and ``put`` make a key the most recent (not
    thread-safe: its owner locks)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
