"""A bounded mapping that forgets the least recently used key first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any


class LruCache:
    """At most ``capacity`` keys; ``get`` and ``put`` make a key the most recent (not
    thread-safe: its owner locks). ``on_evict(key, value)`` is told of each key forgotten."""

    def __init__(self, capacity: int, on_evict: Callable[[Any, Any], None] | None = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
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
            evicted = self._items.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(*evicted)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._items.pop(key, default)

    def keys(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
