"""The connections a server holds that are still sending their request (the TLS handshake
included), by age and by client address, so that a flood from one address makes room from
its own connections first.

``oldest()`` is the connection whose deadline comes first; ``victim(address)`` is the one
that gives way for a newcomer from ``address``: the oldest of the address holding the most
(the newcomer's own on a tie). Every operation is O(1): addresses are kept in buckets by how
many connections they hold, so a flood from many addresses costs no scan.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class Tracked(Protocol):
    fd: int
    host: str


class Unfinished:
    """Unfinished connections by age and by address (see module doc); not thread-safe: the
    accept loop alone uses it."""

    def __init__(self) -> None:
        self._by_age: OrderedDict[int, Tracked] = OrderedDict()  # descriptor -> connection
        self._by_host: dict[str, OrderedDict[int, Tracked]] = {}  # host -> its, by age
        self._hosts_holding: dict[int, dict[str, None]] = {}  # n -> hosts holding n, in order
        self._most = 0  # the most any host holds

    def __len__(self) -> int:
        return len(self._by_age)

    def __iter__(self):
        return iter(list(self._by_age.values()))

    def holds(self, connection: Tracked) -> bool:
        return self._by_age.get(connection.fd) is connection

    def add(self, connection: Tracked) -> None:
        self._by_age[connection.fd] = connection
        own = self._by_host.setdefault(connection.host, OrderedDict())
        self._move(connection.host, len(own), len(own) + 1)
        own[connection.fd] = connection

    def remove(self, connection: Tracked) -> None:
        del self._by_age[connection.fd]
        own = self._by_host[connection.host]
        del own[connection.fd]
        self._move(connection.host, len(own) + 1, len(own))
        if not own:
            del self._by_host[connection.host]

    def oldest(self) -> Tracked | None:
        """The connection that has waited longest (its deadline is the first)."""
        return next(iter(self._by_age.values()), None)

    def held_by(self, host: str) -> int:
        return len(self._by_host.get(host, ()))

    def victim(self, host: str) -> Tracked | None:
        """The connection to close for a newcomer from ``host``: the oldest of the host that
        holds the most, ``host`` itself on a tie; None when there is none."""
        if not self._most:
            return None
        if self.held_by(host) < self._most:
            host = next(iter(self._hosts_holding[self._most]))
        return next(iter(self._by_host[host].values()))

    def oldest_of(self, host: str) -> Tracked | None:
        return next(iter(self._by_host.get(host, {}).values()), None)

    def _move(self, host: str, before: int, after: int) -> None:
        if before:
            hosts = self._hosts_holding[before]
            del hosts[host]
            if not hosts:
                del self._hosts_holding[before]
        if after:
            self._hosts_holding.setdefault(after, {})[host] = None
        if after > self._most:
            self._most = after
        elif before == self._most and before not in self._hosts_holding:
            self._most = after  # counts move by one: the next most is one less
