"""Bounded mappings: the one place aotwatch forgets its oldest entries.

``LruCache`` forgets the least recently used key; ``trim_oldest`` bounds a plain dict (which
keeps insertion order) where the dict itself must stay plain: it is pickled, copied or
compared as data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

Evicted = Callable[[Any, Any], None]
"""Told of each ``(key, value)`` forgotten."""


def trim_oldest(
    table: MutableMapping[Any, Any], capacity: int, on_evict: Evicted | None = None
) -> None:
    """Forget ``table``'s first entries (the oldest inserted) until at most ``capacity`` are
    left."""
    while len(table) > capacity:
        key = next(iter(table))
        value = table.pop(key)
        if on_evict is not None:
            on_evict(key, value)


class LruCache:
    """At most ``capacity`` keys; ``get`` and ``put`` make a key the most recent (not
    thread-safe: its owner locks). ``on_evict(key, value)`` is told of each key forgotten."""

    def __init__(self, capacity: int, on_evict: Evicted | None = None) -> None:
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
            trim_oldest(self._items, self.capacity, self.on_evict)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._items.pop(key, default)

    def keys(self) -> Iterator[Any]:
        return iter(self._items)

    def __contains__(self, key: Any) -> bool:
        """Whether ``key`` is held (without making it more recent)."""
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
