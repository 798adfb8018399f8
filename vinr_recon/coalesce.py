"""One flusher for many waiting callers: the shape of the receiver's coalesced enqueue and the
worker's group commit.

Callers hand an item over and wait for their own answer; one task takes what waits, a batch at a
time, and writes it, until nothing waits. The next caller to wait starts another. Each user says
how a batch is taken (its size, or a moment's wait for more) and how it is written and answered.
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class Coalescer(ABC, Generic[Item, Answer]):
    """Waiting callers, oldest first, and the task that drains them (none while nothing waits)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _submit(self, item: Item) -> Answer:
        """Hand `item` over; returns (or raises) what its batch's write settled it with."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._handed_over()
        if self._flusher is None:
            # A fresh context: the flusher serves many callers and must not log as the first.
            self._flusher = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def close(self) -> None:
        """Let the batch in flight finish (its callers may still be waiting for their answer)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])

    def _handed_over(self) -> None:
        """Called after each item joins the waiting ones."""

    @abstractmethod
    async def _take(self) -> list[tuple[Item, asyncio.Future[Answer]]]:
        """The next batch, taken out of the waiting ones (at least one waits)."""

    @abstractmethod
    async def _flush(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        """Write `batch` and settle every future in it, whatever happens."""

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._flush(await self._take())
        finally:
            self._flusher = None
