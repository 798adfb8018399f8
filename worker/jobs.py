"""The `apply_event` job: one queued VINR event applied to the ledger.

The event is applied in one transaction: by default one it shares with the events other jobs
are applying at the same moment (worker.batching), else one of its own (a batch of one for
ledger.book.apply_events). arq runs a job more than once before it runs it zero times, and
drops a job whose function raises anything but `Retry`. So this job never raises anything
else: a poison event (one that can never apply) goes to the dead letters at once; any other
failure (the database, a lock wait, a timeout, a bug) is retried with exponential backoff and
jitter, and after the last try goes to the dead letters too, unless the database was
unreachable (ledger.db's is_connection_failure: a restart, a dropped connection, a partition,
PgBouncer without a server): that says nothing about the event, so it is retried for as long as
it lasts, never dead-lettered. If even the dead letter cannot be written, the job is retried
again, so an event is never dropped.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry

from ledger.book import EventResult, PoisonInBatch, Received, apply_events
from ledger.db import is_connection_failure
from ledger.deadletters import bury, mark_replayed
from ledger.outbox import stage_results
from ledger.posting import CannotApply
from vinr.events import InvalidEvent, parse_event
from vinr_recon.jobs import enqueue_notices
from worker.defaults import TRIES
from worker.state import WorkerState, state

log = structlog.get_logger("worker.jobs")

POISON = (InvalidEvent, CannotApply)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing event is retried before it is dead-lettered."""

    tries: int = TRIES
    base_delay: float = 0.5
    max_delay: float = 60.0
    # Each transaction (an attempt, a batch, a dead-letter write) gets this long. A job waits for
    # two batches at most (each with its retries, 2 x this), then may write its dead letter: all
    # within arq's job_timeout, because arq drops (does not retry) a job that times out. So: a
    # sixth of job_timeout.
    attempt_timeout: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based): capped exponential,
        with "equal jitter" so that events failing together do not retry together."""
        # The exponent is capped: a job retried through a long outage counts tries past 1,000.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def apply_event(
    ctx: dict[str, Any],
    event_id: str,
    event_type: str,
    body: bytes,
    headers: dict[str, str],
    received_at: float,
    replay: bool = False,
    dead_letter_id: int | None = None,
) -> str:
    """Apply one received event; returns its outcome once that outcome is committed.

    The outcome is applied, stale, ignored, duplicate, or dead (committed to the dead letters).
    Raises only `arq.Retry`. `replay` (with the dead letter it comes from) lets an event that
    died be applied after all.
    """
    worker = state(ctx)
    policy, metrics = worker.policy, worker.metrics
    attempt: int = ctx.get("job_try", 1)  # arq's
    received = datetime.fromtimestamp(received_at, UTC)
    with structlog.contextvars.bound_contextvars(event_id=event_id, job_id=ctx.get("job_id"), invoice_id=None):
        try:
            result = await _apply(worker, body, headers, received, replay, dead_letter_id)
        except POISON as exc:
            error = _describe(exc)
        except Exception as exc:  # transient, or a bug: retried, never dropped
            error = _describe(exc)
            unreachable = is_connection_failure(exc)  # retried however long the database is away
            if attempt < policy.tries or unreachable:
                delay = policy.backoff(attempt)
                log.warning("apply failed, will retry", attempt=attempt, retry_in=round(delay, 2), error=error,
                            database_unreachable=unreachable)
                if metrics:
                    metrics.retried("database_unreachable" if unreachable else "error")
                raise Retry(defer=delay) from exc
        else:
            _log_result(result)
            if metrics:
                metrics.finished(result.outcome)
            await queue_notices(ctx, result.notices)
            return result.outcome
        outcome = await _dead_letter(worker, event_id, event_type, body, headers, received, error, attempt,
                                     dead_letter_id)
        if metrics:
            metrics.finished(outcome)
        return outcome


async def _apply(worker: WorkerState, body: bytes, headers: dict[str, str], received: datetime, replay: bool,
                 dead_letter_id: int | None) -> EventResult:
    event = parse_event(body)  # InvalidEvent is poison
    invoice = event.invoice() if event.is_invoice_event else None
    structlog.contextvars.bind_contextvars(invoice_id=invoice.id if invoice else None)  # this job's task only
    item = Received(event, invoice, body, headers, received)
    if worker.batcher is not None and not replay:
        # Each batch has a deadline of its own (see RetryPolicy.attempt_timeout).
        return await worker.batcher.apply(item)
    async with asyncio.timeout(worker.policy.attempt_timeout):
        async with worker.writing(), worker.engine.begin() as conn:
            try:
                (result,) = await apply_events(conn, [item], replay=replay)
            except PoisonInBatch as poison:  # a batch of one: its own event's
                raise poison.error from None
            (result,) = await stage_results(conn, [event], [result], source="webhook",
                                            channels=worker.channels, deliverable=worker.deliverable)
            if dead_letter_id is not None:
                await mark_replayed(conn, dead_letter_id)
    return result


async def queue_notices(ctx: dict[str, Any], notice_ids: tuple[int, ...]) -> None:
    """Queue the delivery of notices just committed. Never fails the caller: the worker's sweep
    (worker.notices) queues whatever is still pending a little later."""
    if not notice_ids:
        return
    try:
        await enqueue_notices(ctx["redis"], state(ctx).queue_name, notice_ids)  # arq's Redis
    except Exception as exc:
        log.warning("notices not queued, the sweep will", notices=list(notice_ids), error=_describe(exc))


async def _dead_letter(worker: WorkerState, event_id: str, event_type: str, body: bytes, headers: dict[str, str],
                       received: datetime, error: str, attempt: int, dead_letter_id: int | None) -> str:
    policy = worker.policy
    try:
        async with asyncio.timeout(policy.attempt_timeout):
            async with worker.writing(), worker.engine.begin() as conn:
                buried = await bury(
                    conn, event_id=event_id, event_type=event_type, body=body, headers=headers, error=error,
                    attempts=attempt, received_at=received, replaces=dead_letter_id,
                )
    except Exception as exc:
        # The database refuses even the dead letter: keep the job in the queue, whatever it takes.
        delay = policy.backoff(attempt)
        log.error("dead letter not written, will retry", attempt=attempt, error=error, dead_letter_error=repr(exc))
        if worker.metrics:
            worker.metrics.retried("dead_letter_unwritten")
        raise Retry(defer=delay) from exc
    if buried is None:
        log.info("event applied meanwhile, not dead-lettered", outcome="duplicate", error=error)
        return "duplicate"
    log.error("event dead-lettered", outcome="dead", dead_letter_id=buried, attempts=attempt, error=error)
    return "dead"


def _describe(exc: BaseException, limit: int = 2000) -> str:
    """The error as the dead letter keeps it: its type and message (a database error's SQL, but
    not its parameters: ledger.db hides them), cut to `limit` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _log_result(result: EventResult) -> None:
    entries = len(result.snapshot.entries) if result.snapshot else 0
    log.info("event applied", outcome=result.outcome, entries=entries)
