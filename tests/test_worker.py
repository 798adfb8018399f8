"""The apply_event job under a real arq worker (in this process, burst mode) and Redis.

Jobs are queued in the receiver's format to the test's own queue; the worker is the one
`vinr-recon worker` runs, with the same settings.
"""

from __future__ import annotations

import argparse
import asyncio

import pytest
from arq import Retry
from arq.jobs import Job
from sqlalchemy import func, select, text, update

from ledger.book import apply_snapshot, trial_balance
from ledger.tables import DeadLetter, InvoicePosition, JournalEntry, ReceivedEvent
from lifecycles import Event, drain, enqueue, snapshot
from notify_support import wait_for
from vinr.events import Invoice
from vinr_recon.jobformat import loads
from vinr_recon.jobs import replay_job_id
from worker.commands import run_replay
from worker.jobs import RetryPolicy, apply_event
from worker.settings import SchemaNotMigrated, check_schema
from worker.state import STATE, WorkerState

dead_letters, positions = DeadLetter.__table__, InvoicePosition.__table__
entries, received = JournalEntry.__table__, ReceivedEvent.__table__


async def results(redis, job_ids):
    return [await Job(job_id, redis, _deserializer=loads).result(timeout=1) for job_id in job_ids]


def ev(prefix, n, event_type, invoice) -> Event:
    return Event(f"{prefix}_{n}", event_type, invoice, 1_763_800_000 + n)


async def scalar(engine, query):
    async with engine.connect() as conn:
        return await conn.scalar(query)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
async def test_the_worker_applies_each_event_once(ledger_settings, ledger_engine, redis, prefix, batch):
    events = [
        ev(prefix, 1, "invoice.finalized", snapshot("inv_a", "open", 1000)),
        ev(prefix, 2, "invoice.paid", snapshot("inv_a", "paid", 1000, 1000)),
        ev(prefix, 3, "invoice.finalized", snapshot("inv_b", "open", 500, currency="USD")),
        ev(prefix, 4, "customer.created", {"id": "cust_1", "object": "customer"}),
    ]
    # inv_a's finalization is drained before its payment: one by one, a worker runs several jobs
    # at once, and the payment applied first would rightly leave the finalization stale.
    drains = []
    for step in (events[:1], events[1:]):
        await enqueue(redis, ledger_settings.queue_name, step)
        # A redelivery after arq's result expired arrives under a fresh job id: the database dedups it.
        await enqueue(redis, ledger_settings.queue_name, [e for e in step if e in events[:2]],
                      job_id=lambda e: f"{e.id}:again")
        drains.append(await drain(ledger_settings, batch=batch))

    assert [(worker.jobs_complete, worker.jobs_failed) for worker in drains] == [(2, 0), (4, 0)]
    outcomes = await results(redis, [e.id for e in events])
    again = await results(redis, [f"{e.id}:again" for e in events[:2]])
    # The two copies of an event may run at once: either one applies it, the other finds it done.
    assert [sorted(pair) for pair in zip(outcomes, again)] == [["applied", "duplicate"]] * 2
    assert outcomes[2:] == ["applied", "ignored"]
    async with ledger_engine.connect() as conn:
        balance = await trial_balance(conn)
        stored = dict((await conn.execute(select(received.c.event_id, received.c.outcome))).all())
    assert balance[("vinr_clearing", "EUR")] == (1000, 0)
    assert balance[("accounts_receivable", "USD")] == (500, 0)
    assert stored == {e.id: o for e, o in zip(events, ["applied", "applied", "applied", "ignored"])}


async def test_a_poison_event_is_dead_lettered_and_applies_once_replayed(ledger_settings, ledger_engine, redis, prefix):
    good = snapshot("inv_a", "paid", 1000, 1000)
    finalized = ev(prefix, 1, "invoice.finalized", snapshot("inv_a", "open", 1000))
    poison = ev(prefix, 2, "invoice.paid", {**good, "total": 1000.0})  # amounts are never floats
    await enqueue(redis, ledger_settings.queue_name, [finalized, poison])
    await drain(ledger_settings)

    assert await results(redis, [poison.id]) == ["dead"]
    async with ledger_engine.connect() as conn:
        (letter,) = (await conn.execute(select(dead_letters))).all()
        event_row = (await conn.execute(select(received).where(received.c.event_id == poison.id))).one()
    assert (letter.event_id, letter.attempts, letter.replayed_at) == (poison.id, 1, None)
    assert "InvalidEvent" in letter.error and "total" in letter.error
    assert (event_row.outcome, event_row.error) == ("dead", letter.error)

    # The operator fixes the stored event, then replays it (twice: the second finds nothing).
    fixed = ev(prefix, 2, "invoice.paid", good).body
    async with ledger_engine.begin() as conn:
        await conn.execute(update(dead_letters).values(body=fixed))
    replayed = replay_job_id(ledger_settings.queue_name, poison.id, letter.id)
    assert await replay(ledger_settings) == (0, [f"queued {replayed}"])
    await drain(ledger_settings)
    assert await replay(ledger_settings) == (0, ["no dead letters pending"])

    assert await results(redis, [replayed]) == ["applied"]
    async with ledger_engine.connect() as conn:
        kinds = sorted((await conn.execute(select(entries.c.kind))).scalars())
        replayed_at = await conn.scalar(select(dead_letters.c.replayed_at))
        outcome = await conn.scalar(select(received.c.outcome).where(received.c.event_id == poison.id))
    assert kinds == ["finalize", "payment"] and replayed_at is not None and outcome == "applied"


async def test_a_currency_change_is_dead_lettered_until_reconciliation_settles_it(
    ledger_settings, ledger_engine, redis, prefix
):
    usd = snapshot("inv_a", "paid", 1000, 1000, currency="USD")
    await enqueue(redis, ledger_settings.queue_name, [ev(prefix, 1, "invoice.finalized", snapshot("inv_a", "open", 1000))])
    await drain(ledger_settings)
    await enqueue(redis, ledger_settings.queue_name, [ev(prefix, 2, "invoice.paid", usd)])
    await drain(ledger_settings)
    error = await scalar(ledger_engine, select(dead_letters.c.error))
    assert error.startswith("CannotApply: currency of inv_a changed from EUR to USD")

    # Reconciliation moves the position to VINR's truth; the replayed event then posts nothing new.
    async with ledger_engine.begin() as conn:
        await apply_snapshot(conn, Invoice.model_validate(usd), source="reconciliation", authoritative=True)
    code, lines = await replay(ledger_settings, [f"{prefix}_2", f"{prefix}_9"])
    assert code == 1 and lines[0].startswith("queued ")
    assert lines[1] == f"vinr-recon replay: no dead letter waiting to be replayed for {prefix}_9"
    await drain(ledger_settings)
    async with ledger_engine.connect() as conn:
        balance = await trial_balance(conn)
        assert await conn.scalar(select(received.c.outcome).where(received.c.event_id == f"{prefix}_2")) == "applied"
        assert await conn.scalar(select(dead_letters.c.replayed_at)) is not None
    assert balance[("vinr_clearing", "USD")] == (1000, 0) and ("vinr_clearing", "EUR") not in balance


async def replay(settings, events=None) -> tuple[int, list[str]]:
    """`vinr-recon replay [--event ID ...]`, its exit status and its lines (minus the detail)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = await asyncio.to_thread(run_replay, argparse.Namespace(events=events), settings)
    return code, [line.split(" (")[0] for line in out.getvalue().splitlines()]


# --- Retries and their limits, on PostgreSQL, where another session can hold a row lock.


@pytest.fixture
def pg_settings(settings, pg_database):
    return settings.model_copy(update={"database_url": pg_database})


@pytest.fixture
async def pg_engine(pg_settings):
    from conftest import clear_ledger
    from ledger.db import create_engine

    engine = create_engine(pg_settings.database_url)
    await clear_ledger(engine)
    yield engine
    await engine.dispose()


async def lock_position_row(conn, invoice_id: str) -> None:
    """Hold `invoice_id`'s position row locked in `conn`'s transaction, as a slow writer would."""
    await conn.execute(text("SELECT 1 FROM invoice_positions WHERE invoice_id = :i FOR UPDATE"), {"i": invoice_id})


async def hold_position_lock(engine, invoice_id: str):
    conn = await engine.connect()
    await lock_position_row(conn, invoice_id)
    return conn


@pytest.mark.postgres
async def test_a_locked_position_is_retried_with_backoff_then_applied(pg_settings, pg_engine, redis, prefix):
    first, second = (ev(prefix, 1, "invoice.finalized", snapshot("inv_a", "open", 1000)),
                     ev(prefix, 2, "invoice.paid", snapshot("inv_a", "paid", 1000, 1000)))
    await enqueue(redis, pg_settings.queue_name, [first])
    await drain(pg_settings)
    blocker = await hold_position_lock(pg_engine, "inv_a")
    await enqueue(redis, pg_settings.queue_name, [second])
    draining = asyncio.create_task(drain(pg_settings, job_timeout=1))  # each try gets 1/6 s
    # Released once arq starts the job a second time (its retry key counts starts): a try failed
    # on the lock, however long the worker took to start.
    async def started_twice() -> bool:
        return int(await redis.get(f"arq:retry:{second.id}") or 0) >= 2

    await wait_for(started_twice, timeout=30)
    await blocker.rollback()
    await blocker.close()
    worker = await draining

    assert worker.jobs_retried >= 1 and worker.jobs_complete == 1
    info = await Job(second.id, redis, _deserializer=loads).result_info()
    assert info.result == "applied" and info.job_try >= 2
    assert await scalar(pg_engine, select(func.count()).select_from(entries)) == 2


@pytest.mark.postgres
async def test_the_last_try_dead_letters_and_a_failing_dead_letter_keeps_the_job(pg_settings, pg_engine, prefix):
    async with pg_engine.begin() as conn:
        await apply_snapshot(conn, Invoice.model_validate(snapshot("inv_a", "open", 1000)), source="webhook")
    paid = ev(prefix, 2, "invoice.paid", snapshot("inv_a", "paid", 1000, 1000))
    worker = WorkerState(engine=pg_engine, policy=RetryPolicy(tries=2, attempt_timeout=0.3),
                         queue_name=pg_settings.queue_name)
    ctx = {STATE: worker, "job_id": paid.id}
    args = (paid.id, paid.type, paid.body, {}, 1_763_800_000.0)

    blocker = await hold_position_lock(pg_engine, "inv_a")
    with pytest.raises(Retry) as first_try:
        await apply_event({**ctx, "job_try": 1}, *args)
    assert 0.25 <= first_try.value.defer_score / 1000 <= 0.5  # half the 0.5 s ceiling, plus jitter

    # The last try fails too, and so does the dead letter (its table is locked): the job stays.
    await blocker.execute(text("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE"))
    with pytest.raises(Retry):
        await apply_event({**ctx, "job_try": 2}, *args)
    assert await scalar(pg_engine, select(func.count()).select_from(received)) == 0

    await blocker.rollback()  # the table is free again, the position still locked
    await lock_position_row(blocker, "inv_a")
    assert await apply_event({**ctx, "job_try": 3}, *args) == "dead"
    await blocker.rollback()
    await blocker.close()
    async with pg_engine.connect() as conn:
        letter = (await conn.execute(select(dead_letters))).one()
        outcome = await conn.scalar(select(received.c.outcome))
    assert (letter.attempts, letter.error, outcome) == (3, "TimeoutError", "dead")


async def test_the_worker_refuses_a_database_that_is_not_migrated(tmp_path):
    from ledger.db import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaNotMigrated, match="vinr-recon db upgrade"):
            await check_schema(engine)
    finally:
        await engine.dispose()


def test_backoff_grows_exponentially_with_jitter_up_to_a_ceiling():
    policy = RetryPolicy(base_delay=0.5, max_delay=60)
    for attempt, ceiling in [(1, 0.5), (2, 1), (3, 2), (8, 60), (30, 60)]:
        delays = {policy.backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


async def test_a_worker_shutting_down_closes_its_engine_even_when_the_batch_in_flight_fails_to_close(ledger_settings):
    """on_shutdown closes the metrics port, the batch in flight, the notifier and the engine, each
    even when one before it raises (the engine's connections were left open before)."""
    from sqlalchemy import event as sa_event

    from ledger.db import create_engine
    from worker.notices import Notifier
    from worker.settings import worker_settings

    class BatchThatFailsToClose:
        async def close(self) -> None:
            raise RuntimeError("the batch in flight failed")

    engine = create_engine(ledger_settings.database_url)
    disposed: list[bool] = []
    sa_event.listen(engine.sync_engine, "engine_disposed", lambda _: disposed.append(True))
    notifier = Notifier(ledger_settings)
    worker = WorkerState(engine=engine, policy=RetryPolicy(), queue_name=ledger_settings.queue_name,
                         batcher=BatchThatFailsToClose(), notifier=notifier)  # type: ignore[arg-type]
    on_shutdown = worker_settings(ledger_settings)["on_shutdown"]
    with pytest.raises(RuntimeError, match="the batch in flight failed"):
        await on_shutdown({STATE: worker})
    assert disposed == [True]
    assert notifier._http.is_closed
