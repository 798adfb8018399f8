"""Two installations on one real Redis, each with its own QUEUE_NAME: every key and job id one
writes is its own, so each books every event it is sent (issue 15, item 5; contract section 7).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import select

from conftest import REDIS_URL, copy_of, forget_test_keys, unique
from ledger.db import create_engine
from ledger.tables import DeadLetter
from lifecycles import Event, booked, close_worker, drain, enqueue, snapshot
from receiver.app import create_app
from receiver_support import served, signed
from worker.settings import Worker, worker_settings

dead_letters = DeadLetter.__table__


@pytest.fixture
def installations(settings, tmp_path, sqlite_template):
    """Two installations sharing the Redis: their own QUEUE_NAME and their own ledger each."""
    return [
        settings.model_copy(update={"queue_name": unique(f"arq:queue:{name}"),
                                    "database_url": copy_of(sqlite_template, tmp_path / f"{name}.db")})
        for name in ("blue", "green")
    ]


@pytest.fixture
async def redis(installations):
    client = Redis.from_url(REDIS_URL)
    yield client
    for settings in installations:  # whatever either wrote: jobs, results, retries
        await forget_test_keys(client, settings.queue_name)
    await client.aclose()


async def letters(settings) -> list[tuple[int, str]]:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(select(dead_letters.c.id, dead_letters.c.event_id))]
    finally:
        await engine.dispose()


def one_invoice(prefix: str) -> list[Event]:
    invoice = f"inv_{prefix}"
    return [
        Event(f"evt_{prefix}_1", "invoice.finalized", snapshot(invoice, "open", 196000), 1_763_800_001),
        Event(f"evt_{prefix}_2", "invoice.updated", snapshot(invoice, "open", 196000, 50000), 1_763_800_002),
        Event(f"evt_{prefix}_3", "invoice.paid", snapshot(invoice, "paid", 196000, 196000), 1_763_800_003),
    ]


async def test_two_installations_through_two_receivers_each_book_every_event(installations, redis):
    """The same signed deliveries to both receivers: each answers 200 and each ledger books all."""
    blue, green = installations
    events = one_invoice(unique("iso"))
    async with served(create_app(blue)) as to_blue, served(create_app(green)) as to_green:
        for event in events:
            for client in (to_blue, to_green):
                answer = await client.post("/webhooks/vinr", content=event.body, headers=signed(event.body))
                assert answer.status_code == 200, answer.text
        # One installation's worker runs before the other's deliveries have all arrived, too.
        await drain(blue)
        again = await to_green.post("/webhooks/vinr", content=events[0].body, headers=signed(events[0].body))
        assert again.status_code == 200
    await drain(green)

    wanted = {event.id: "applied" for event in events}
    assert await booked(blue) == wanted
    assert await booked(green) == wanted


async def test_a_job_queued_under_the_previous_versions_id_still_runs(installations, redis):
    """The previous version named a webhook's job after the bare event id: the new worker runs it."""
    blue, _ = installations
    events = one_invoice(unique("old"))
    await enqueue(redis, blue.queue_name, events, job_id=lambda event: event.id)
    await drain(blue)
    assert await booked(blue) == {event.id: "applied" for event in events}


async def test_both_installations_nightly_runs_are_queued(installations, redis):
    """arq names a cron job's run `{name}:{time}` and queues it once: one name for every
    installation left all but the first without their nightly reconciliation."""
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(second=0, microsecond=0)
    workers = []
    for settings in installations:
        settings = settings.model_copy(update={"vinr_api_key": SecretStr("key"), "reconcile_at": f"{at:%H:%M}"})
        workers.append(Worker(**worker_settings(settings), handle_signals=False))
    try:
        for worker in workers:
            worker._pool = await _pool(worker)
            await worker.run_cron(datetime.now(UTC), 0.5)  # learns the next run: at
            await worker.run_cron(at - timedelta(seconds=0.5), 0.5)  # just before it: queues it
        queued = [await redis.zrange(worker.queue_name, 0, -1) for worker in workers]
    finally:
        for worker in workers:
            await close_worker(worker)
    assert [len(ids) for ids in queued] == [1, 1], queued
    assert queued[0] != queued[1]


async def _pool(worker):
    from arq.connections import create_pool

    return await create_pool(worker.redis_settings, job_serializer=worker.job_serializer,
                             job_deserializer=worker.job_deserializer, default_queue_name=worker.queue_name)


async def test_both_installations_replay_their_dead_letter_of_one_event(installations, redis):
    """Each ledger has its dead letter 1 for the same event id: each replay queues its own job."""
    from worker.commands import _replay

    event_id = unique("evt_dead")
    poison = Event(event_id, "invoice.paid", {**snapshot("inv_x", "paid", 1000, 1000), "total": 1000.0}, 1)
    for settings in installations:
        queue = settings.queue_name
        await enqueue(redis, queue, [poison], job_id=lambda event, queue=queue: f"{queue}:{event.id}")
        await drain(settings)
        assert await letters(settings) == [(1, event_id)]

    for settings in installations:
        assert await _replay(settings, [event_id]) == 0
    queued = [await redis.zrange(settings.queue_name, 0, -1) for settings in installations]
    assert [len(ids) for ids in queued] == [1, 1], queued
    assert queued[0] != queued[1]
