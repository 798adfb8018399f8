"""The queue's contract between the receiver (producer) and the worker (consumer).

Jobs are in arq's layout (its keys, its job fields) in the data-only format of
vinr_recon.jobformat, never pickle. Every job id carries the installation's queue name
(`QUEUE_NAME`): arq's job, result, retry and in-progress keys are named by the job id alone,
whatever the queue, so two installations sharing a Redis would otherwise answer for each
other's events. A webhook job's id is (queue name, VINR event id): a duplicate delivery to the
same installation finds the job (or its result) already there and is a no-op.

Jobs the previous version queued under bare ids (the event id) are still run: the worker takes
ids from its queue, whatever their shape, and the ledger deduplicates by event id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from arq.connections import ArqRedis
from redis.asyncio import Redis

from vinr_recon.jobformat import JOB_FORMAT

if TYPE_CHECKING:  # the queue's contract names the ledger's letters, and imports nothing of it
    from ledger.deadletters import Letter

# apply_event(ctx, event_id: str, event_type: str, body: bytes, headers: dict[str, str], received_at: float)
APPLY_EVENT = "apply_event"

# The headers that travel with a job so the worker stores what VINR sent (never the signature's secret).
KEPT_HEADERS = ("content-type", "user-agent", "x-vinr-signature", "x-request-id")


def job_key(job_id: str) -> str:
    return f"arq:job:{job_id}"


def result_key(job_id: str) -> str:
    return f"arq:result:{job_id}"


def refused_key(queue_name: str) -> str:
    """The hash (job id -> bytes as found) of the jobs the worker refused to run: not in the
    data-only format. `vinr-recon queue convert` queues again those that hold plain data."""
    return f"{queue_name}:refused"


def _job_id(kind: str, queue_name: str, *parts: object) -> str:
    # The one shape of an installation's job ids: what it is, whose it is, which one.
    return ":".join((kind, queue_name, *(str(part) for part in parts)))


def event_job_id(queue_name: str, event_id: str) -> str:
    """The `apply_event` job of a received event in this installation."""
    return _job_id("event", queue_name, event_id)


def replay_job_id(queue_name: str, event_id: str, dead_letter_id: int) -> str:
    """The `apply_event` job that replays one dead letter (its id is only unique in one ledger)."""
    return _job_id("replay", queue_name, event_id, dead_letter_id)


def cron_name(queue_name: str, name: str) -> str:
    """A cron job's name, which arq also makes its runs' ids of (`{name}:{time}`, queued once)."""
    return f"{name}:{queue_name}"


def queue_redis(redis: Redis) -> ArqRedis:
    """An arq client on `redis`'s connection pool that writes and reads jobs in the data-only format."""
    if isinstance(redis, ArqRedis) and redis.job_serializer is JOB_FORMAT["job_serializer"]:
        return redis
    return ArqRedis(redis.connection_pool, **JOB_FORMAT)


# deliver_notice(ctx, notice_id: int): one outbox row (ledger.outbox) sent on its channel. Its job id
# names the row (and the queue: arq's job ids are global to a Redis, the rows' ids only to one
# database), so enqueueing after the commit and the worker's sweep never run it twice at once.
# It keeps no result: once it has run, the row's status is what counts.
DELIVER_NOTICE = "deliver_notice"


def notice_job_id(queue_name: str, notice_id: int) -> str:
    return _job_id("notice", queue_name, notice_id)


async def enqueue_notices(redis: Redis, queue_name: str, notice_ids: Iterable[int]) -> None:
    """Queue a delivery job for each staged notice (`redis`: any client of the queue's Redis)."""
    queue = queue_redis(redis)
    for notice_id in dict.fromkeys(notice_ids):
        await queue.enqueue_job(DELIVER_NOTICE, notice_id, _job_id=notice_job_id(queue_name, notice_id),
                                _queue_name=queue_name)


# arq's enqueue_job always sets an expiry on the job; a replay must outlive any outage the
# job's own retries ride out, so give it a month rather than arq's default day.
REPLAY_EXPIRES = timedelta(days=30)


async def queue_replays(redis: Redis, queue_name: str, letters: list[Letter]) -> list[tuple[Letter, str, bool]]:
    """Queue each letter as an `apply_event` job with replay=True and a fresh job id.

    Returns (letter, job id, queued); queued is False when that job is already queued or done.
    """
    queued: list[tuple[Letter, str, bool]] = []
    queue = queue_redis(redis)
    for letter in letters:
        job_id = replay_job_id(queue_name, letter.event_id, letter.id)
        job = await queue.enqueue_job(
            APPLY_EVENT, letter.event_id, letter.type, letter.body, letter.headers, letter.received_at.timestamp(),
            replay=True, dead_letter_id=letter.id,
            _job_id=job_id, _queue_name=queue_name, _expires=REPLAY_EXPIRES,
        )
        queued.append((letter, job_id, job is not None))
    return queued
