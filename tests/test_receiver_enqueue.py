"""The fast enqueue against the real Redis: arq's layout in the data-only format, one job per
(installation, event id), batched round trips."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.connections import RedisSettings
from arq.jobs import serialize_job
from arq.worker import Worker, func
from redis.asyncio import Redis

from conftest import REDIS_URL, unique
from lifecycles import close_worker
from receiver.app import connect_redis
from receiver.enqueue import DEADLINE, Enqueuer, QueueUnavailable, webhook_job
from receiver_support import event_body, private_redis  # noqa: F401 (fixture)
from vinr_recon.jobformat import JOB_FORMAT, dumps
from vinr_recon.jobs import APPLY_EVENT, event_job_id, job_key, result_key

HEADERS = {"content-type": "application/json", "x-vinr-signature": "t=1,v1=ab"}


def a_job(event_id: str | None = None, event_type: str = "invoice.paid"):
    event_id = event_id or unique("evt")
    return webhook_job(event_id, event_type, event_body(event_id, event_type), HEADERS, time.time())


async def test_the_job_is_stored_exactly_as_arq_serializes_it_without_expiry(redis, settings):
    event_id, body, received_at = unique("evt"), event_body(), time.time()
    job = webhook_job(event_id, "invoice.paid", body, HEADERS, received_at)
    assert await Enqueuer(redis, settings.queue_name).enqueue(job) is True

    job_id = event_job_id(settings.queue_name, event_id)  # the installation's own id
    assert await redis.zrange(settings.queue_name, 0, -1) == [job_id.encode()]
    score = await redis.zscore(settings.queue_name, job_id)
    assert score == int(received_at * 1000)
    # Byte for byte what arq's enqueue_job, in the data-only format, would store for the same call.
    args = (event_id, "invoice.paid", body, HEADERS, received_at)
    assert await redis.get(job_key(job_id)) == serialize_job(APPLY_EVENT, args, {}, None, int(score), serializer=dumps)
    assert await redis.ttl(job_key(job_id)) == -1  # no expiry
    assert not await redis.exists(job_key(event_id))  # nothing under the bare event id, which is every installation's


async def test_a_plain_arq_worker_given_the_format_runs_the_job_with_its_arguments(redis, settings):
    calls = []

    async def apply_event(ctx, event_id, event_type, body, headers, received_at):
        calls.append((event_id, event_type, body, headers, received_at))

    event_id, body = unique("evt"), event_body(event_type="invoice.voided")
    job = webhook_job(event_id, "invoice.voided", body, HEADERS, time.time())
    assert await Enqueuer(redis, settings.queue_name).enqueue(job) is True
    worker = Worker(
        functions=[func(apply_event, name=APPLY_EVENT)],
        redis_settings=RedisSettings.from_dsn(REDIS_URL),
        burst=True,
        poll_delay=0,
        queue_name=settings.queue_name,
        handle_signals=False,
        keep_result=60,
        **JOB_FORMAT,
    )
    try:
        await worker.main()
    finally:
        await close_worker(worker)

    [(ran_id, ran_type, ran_body, ran_headers, received_at)] = calls
    assert (ran_id, ran_type, ran_body, ran_headers) == (event_id, "invoice.voided", body, HEADERS)
    assert abs(received_at - time.time()) < 5
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0
    # Its result now stands for it: a late duplicate delivery is still a no-op.
    job_id = event_job_id(settings.queue_name, job.id)
    assert await redis.exists(result_key(job_id))
    assert await Enqueuer(redis, settings.queue_name).enqueue(a_job(job.id)) is False
    assert await redis.zcard(settings.queue_name) == 0
    await redis.delete(result_key(job_id))


async def test_a_second_enqueue_of_an_id_is_a_no_op(redis, settings):
    enqueuer = Enqueuer(redis, settings.queue_name)
    first = a_job()
    second = a_job(first.id, event_type="invoice.updated")
    assert await enqueuer.enqueue(first) is True
    assert await enqueuer.enqueue(second) is False
    assert await redis.get(job_key(event_job_id(settings.queue_name, first.id))) == first.payload


async def test_concurrent_enqueues_share_one_round_trip(redis, settings):
    enqueuer = Enqueuer(redis, settings.queue_name)
    jobs = [a_job() for _ in range(100)]
    assert await asyncio.gather(*(enqueuer.enqueue(job) for job in jobs)) == [True] * 100
    assert enqueuer.round_trips == 1
    assert await redis.zcard(settings.queue_name) == 100


async def test_one_id_many_times_in_one_batch_is_queued_once(redis, settings):
    enqueuer = Enqueuer(redis, settings.queue_name)
    job = a_job()
    results = await asyncio.gather(*(enqueuer.enqueue(job) for _ in range(50)))
    assert sorted(results) == [False] * 49 + [True]
    assert enqueuer.round_trips == 1


async def test_without_coalescing_each_enqueue_is_its_own_round_trip(redis, settings):
    enqueuer = Enqueuer(redis, settings.queue_name, coalesce=False)
    jobs = [a_job() for _ in range(10)]
    assert await asyncio.gather(*(enqueuer.enqueue(job) for job in jobs)) == [True] * 10
    assert enqueuer.round_trips == 10


async def test_every_caller_of_a_failed_batch_gets_queue_unavailable(settings):
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    enqueuer = Enqueuer(unreachable, settings.queue_name)
    try:
        results = await asyncio.gather(*(enqueuer.enqueue(a_job()) for _ in range(5)), return_exceptions=True)
    finally:
        await unreachable.aclose()
    assert all(isinstance(result, QueueUnavailable) for result in results)
    # The next call starts a new flusher: the failure did not wedge the enqueuer.
    assert enqueuer._flusher is None


async def test_the_script_is_reloaded_after_redis_forgets_it(settings, private_redis):
    redis = Redis.from_url(private_redis.url)
    enqueuer = Enqueuer(redis, settings.queue_name)
    try:
        assert await enqueuer.enqueue(a_job()) is True
        await redis.script_flush()
        assert await enqueuer.enqueue(a_job()) is True
        assert await redis.zcard(settings.queue_name) == 2
    finally:
        await redis.aclose()


async def test_a_redis_restart_costs_no_failed_delivery(settings, private_redis):
    """The pooled connection died with the old server: resent once on a fresh one, script reloaded."""
    redis = connect_redis(private_redis.url)
    enqueuer = Enqueuer(redis, settings.queue_name)
    try:
        assert await enqueuer.enqueue(a_job()) is True
        private_redis.stop()
        private_redis.start()
        assert await enqueuer.enqueue(a_job()) is True
    finally:
        await redis.aclose()


async def test_a_stuck_redis_answers_every_caller_within_the_deadline(settings, black_hole_redis):
    redis = connect_redis(black_hole_redis)
    enqueuer = Enqueuer(redis, settings.queue_name)

    async def caller(delay: float) -> float:
        await asyncio.sleep(delay)  # the late one hands its job over while the first batch is stuck
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            await enqueuer.enqueue(a_job())
        return time.monotonic() - started

    try:
        waits = await asyncio.gather(caller(0), caller(0.5))
    finally:
        await redis.aclose()
    assert all(wait <= DEADLINE + 0.2 for wait in waits), waits
