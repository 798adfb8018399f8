"""Group commit: the events that concurrent jobs are applying, written in one transaction.

Each job hands its event to the `Batcher` and waits for its own result; whatever is waiting
when a transaction ends goes into the next one. A job therefore still returns only once its
event's outcome is committed, and a failed transaction fails each of its jobs, which retry on
their own (arq's Retry). One event never fails the others: an event whose effect cannot be
computed is set apart with its error (ledger.book.PoisonInBatch), and a batch that fails for
any other reason but its deadline (the database refuses it, or an exception no check foresaw)
is tried again event by event, so only the culprit fails (unless the database was unreachable:
then every job of the batch retries). The culprit's job then goes the way
of a job of its own: a dead letter at once for `CannotApply`, else retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.book import EventResult, PoisonInBatch, Received, apply_events
from ledger.db import is_connection_failure
from ledger.outbox import EVERY_CHANNEL, NO_CHANNELS, Channels, stage_results
from vinr_recon.coalesce import Coalescer
from worker.metrics import WorkerMetrics

Waiting = tuple[Received, asyncio.Future[EventResult]]


class Batcher(Coalescer[Received, EventResult]):
    """Writes up to `max_batch` waiting events per transaction, one transaction at a time.

    A batch waits up to `linger` seconds to fill; each transaction gets `timeout` seconds and a
    batch with its retries twice that. `lock` is held around each transaction (SQLite's writer).
    The alerts and callbacks a batch owes on `notices` are staged in its transaction. Each
    committed batch's size goes to `metrics` (worker.metrics.WorkerMetrics), when given.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 50,
        linger: float = 0.0,
        timeout: float = 15.0,
        lock: asyncio.Lock | None = None,
        notices: Channels = NO_CHANNELS,
        deliverable: Channels = EVERY_CHANNEL,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._metrics = metrics
        self._notices, self._deliverable = notices, deliverable
        self._max_batch = max_batch
        self._linger = linger
        self._timeout = timeout
        self._lock = lock or contextlib.nullcontext()
        self._full = asyncio.Event()
        self.transactions = self.events = 0  # committed, for the mean batch size

    async def apply(self, item: Received) -> EventResult:
        """Apply one event with whatever else is waiting; returns once its outcome is committed.

        Raises what its transaction raised (to be retried), or what computing this event's
        effect raised (`CannotApply`: it can never apply).
        """
        return await self._submit(item)

    def _handed_over(self) -> None:
        if len(self._pending) >= self._max_batch:
            self._full.set()

    async def _take(self) -> list[Waiting]:
        if self._linger and len(self._pending) < self._max_batch:
            # Wait a moment for more: a transaction costs about as much as ten events.
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await self._full.wait()
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return batch

    async def _flush(self, batch: list[Waiting]) -> None:
        batch = [(item, future) for item, future in batch if not future.done()]  # gave up waiting
        try:
            # Every try of this batch together: a job waits for two batches at most.
            async with asyncio.timeout(2 * self._timeout):
                await self._write(batch)
        except TimeoutError as exc:
            for _, future in batch:
                _settle(future, exc)

    async def _write(self, batch: list[Waiting]) -> None:
        while batch:
            try:
                async with asyncio.timeout(self._timeout), self._lock, self._engine.begin() as conn:
                    results = await apply_events(conn, [item for item, _ in batch])
                    if self._notices:  # at most one statement more per batch, none when nothing is owed
                        results = await stage_results(conn, [item.event for item, _ in batch], results,
                                                      source="webhook", channels=self._notices,
                                                      deliverable=self._deliverable)
            except PoisonInBatch as poison:
                _, future = batch.pop(poison.index)
                _settle(future, poison.error)
                continue
            except TimeoutError as exc:  # every job retries later
                for _, future in batch:
                    _settle(future, exc)
                return
            except Exception as exc:  # the database refused, or something no check foresaw
                if len(batch) == 1 or is_connection_failure(exc):
                    # Alone, or the database is away: no event of the batch is the culprit.
                    for _, future in batch:
                        _settle(future, exc)
                    return
                # Perhaps one event's data failed them all: each alone, so only it fails.
                for waiting in batch:
                    await self._write([waiting])
                return
            except BaseException:  # cancelled: so are its jobs, which arq runs again
                for _, future in batch:
                    future.cancel()
                raise
            self.transactions += 1
            self.events += len(batch)
            if self._metrics:
                self._metrics.batch(len(batch))
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result)
            return


def _settle(future: asyncio.Future[EventResult], outcome: EventResult | BaseException) -> None:
    """Answer one job: its event's result, or the error it fails with."""
    if future.done():  # its job was cancelled; arq runs it again
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
