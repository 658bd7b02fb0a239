"""A bounded least-recently-used cache of L2 tables, keyed by host offset.

Tables are written through by the driver, so eviction never writes. The caller holds the metadata lock.
"""

from __future__ import annotations

from collections import OrderedDict


class L2Cache:
    """At most `capacity` L2 tables kept in memory."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("L2 cache capacity must be at least 1")
        self.capacity = capacity
        self._tables: OrderedDict[int, bytearray] = OrderedDict()

    def get(self, offset: int) -> bytearray | None:
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
        return table

    def put(self, offset: int, table: bytearray) -> None:
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        while len(self._tables) > self.capacity:
            self._tables.popitem(last=False)

    def drop(self, offset: int) -> None:
        self._tables.pop(offset, None)

    def __len__(self) -> int:
        return len(self._tables)
