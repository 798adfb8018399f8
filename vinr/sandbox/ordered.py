"""An append-only collection in creation order, paged VINR's way (`starting_after`, `hasMore`).

An id -> position map makes a cursor O(1), so walking 100,000 invoices page by page costs the
same per page at the end as at the start.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from vinr.sandbox.errors import invalid

MAX_PAGE = 100


class _HasIdAndCreated(Protocol):
    id: str
    created: int


T = TypeVar("T", bound=_HasIdAndCreated)


class Ordered(Generic[T]):
    """Objects in creation order with an id -> position map, so `starting_after` costs O(1)."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._position: dict[str, int] = {}
        self._created_sorted = True  # lets `created[gte]` bisect instead of scanning

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def add(self, item: T) -> None:
        if self._items and item.created < self._items[-1].created:
            self._created_sorted = False
        self._position[item.id] = len(self._items)
        self._items.append(item)

    def get(self, id_: str) -> T | None:
        i = self._position.get(id_)
        return None if i is None else self._items[i]

    def page(
        self,
        limit: int,
        starting_after: str | None = None,
        created_gte: int | None = None,
        keep: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], bool]:
        """Up to `limit` items after the cursor, oldest first, and whether more follow."""
        if not 1 <= limit <= MAX_PAGE:
            raise invalid(f"limit must be between 1 and {MAX_PAGE}")
        start = 0
        if starting_after is not None:
            position = self._position.get(starting_after)
            if position is None:
                raise invalid(f"starting_after: no such object '{starting_after}'", "resource_missing")
            start = position + 1
        items = self._items
        if created_gte is not None and self._created_sorted:
            start = max(start, bisect_left(items, created_gte, key=lambda item: item.created))
            created_gte = None
        found: list[T] = []
        for i in range(start, len(items)):
            item = items[i]
            if created_gte is not None and item.created < created_gte:
                continue
            if keep is not None and not keep(item):
                continue
            if len(found) == limit:
                return found, True
            found.append(item)
        return found, False
