"""`vinr-recon worker` as real processes: two racing, one killed with SIGKILL, one refusing.

Each worker is the command line in a subprocess, on the test's own queue and, for the races,
the session's PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from conftest import WEBHOOK_SECRET, clear_ledger, tag_of
from ledger.book import trial_balance
from ledger.db import create_engine
from ledger.tables import InvoicePosition, JournalEntry, Posting, ReceivedEvent
from lifecycles import Event, enqueue, snapshot
from notify_support import wait_for
from receiver_support import free_port, signed
from vinr_recon.jobs import event_job_id

positions, entries, postings, received = (
    InvoicePosition.__table__, JournalEntry.__table__, Posting.__table__, ReceivedEvent.__table__
)
pytestmark = pytest.mark.slow


def start(settings, *args: str, cwd, log=subprocess.PIPE, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`vinr-recon <args>` with `settings` (and `env`) in its environment; its stderr (the log) to `log`."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "QUEUE_NAME": settings.queue_name, "LOG_LEVEL": "INFO", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "vinr_recon", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=log)


async def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = await asyncio.to_thread(process.communicate, timeout=timeout)
    return process.returncode, out, err


@pytest.fixture
async def pg(settings, pg_database):
    """(settings on the session's PostgreSQL database, its engine), the ledger emptied."""
    engine = create_engine(pg_database)
    await clear_ledger(engine)
    yield settings.model_copy(update={"database_url": pg_database}), engine
    await engine.dispose()


def invoices(tag: str, count: int, *, partial: bool) -> dict[str, list[Event]]:
    """Each invoice's events: finalize, (a partial payment,) paid; amounts vary per invoice."""
    lifecycles = {}
    for i in range(count):
        invoice_id, total = f"inv_{tag}_{i}", 1000 + i
        steps = [("invoice.finalized", snapshot(invoice_id, "open", total))]
        if partial:
            steps.append(("invoice.updated", snapshot(invoice_id, "open", total, 400)))
        steps.append(("invoice.paid", snapshot(invoice_id, "paid", total, total)))
        lifecycles[invoice_id] = [Event(f"evt_{tag}_{i}_{n}", kind, inv, 1_763_800_000 + n)
                                  for n, (kind, inv) in enumerate(steps)]
    return lifecycles


async def assert_each_fact_posted_once(engine, lifecycles: dict[str, list[Event]]) -> None:
    """Every event recorded once; per invoice one finalize, clearing = total, nothing owed."""
    async with engine.connect() as conn:
        stored = Counter((await conn.execute(select(received.c.event_id))).scalars())
        kinds = Counter((await conn.execute(select(entries.c.invoice_id, entries.c.kind))).all())
        collected = dict((await conn.execute(
            select(entries.c.invoice_id, func.sum(postings.c.amount))
            .join(postings, postings.c.entry_id == entries.c.id)
            .where(postings.c.account == "vinr_clearing", postings.c.direction == "debit")
            .group_by(entries.c.invoice_id))).all())
        states = dict((await conn.execute(select(positions.c.invoice_id, positions.c.status))).all())
        balance = await trial_balance(conn)
    assert stored == Counter({e.id: 1 for events in lifecycles.values() for e in events})
    for invoice_id, events in lifecycles.items():
        total = events[-1].invoice["total"]
        assert kinds[(invoice_id, "finalize")] == 1 and collected[invoice_id] == total, invoice_id
        assert states[invoice_id] == "paid"
    debits, credits = balance[("accounts_receivable", "EUR")]
    assert debits == credits == sum(e[-1].invoice["total"] for e in lifecycles.values())
    assert sum(d for d, _ in balance.values()) == sum(c for _, c in balance.values())


@pytest.mark.postgres
async def test_two_workers_racing_over_the_same_invoices_post_each_fact_once(pg, redis, tmp_path):
    settings, engine = pg
    tag = tag_of(settings.queue_name)
    lifecycles = invoices(tag, 100, partial=True)
    events = [e for lifecycle in lifecycles.values() for e in lifecycle]
    # Every event three times under distinct job ids (as after arq's result expired), mixed up.
    jobs = [(e, n) for e in events for n in range(3)]
    random.Random(5).shuffle(jobs)
    for event, n in jobs:
        await enqueue(redis, settings.queue_name, [event], job_id=lambda e, n=n: f"{e.id}:{n}")
    # Due only once both workers have started (a burst worker waits while its queue holds any
    # job): one that started seconds later on a busy machine would otherwise find nothing left.
    ids = [f"{event.id}:{n}" for event, n in jobs]
    await redis.zadd(settings.queue_name, dict.fromkeys(ids, int(time.time() * 1000) + 120_000), xx=True)
    logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
    workers = []
    for log in logs:
        with log.open("w") as out:  # the worker writes its own copy; nobody reads a pipe meanwhile
            workers.append(start(settings, "worker", "--burst", cwd=tmp_path, log=out))
    await wait_for(lambda: all("worker started" in log.read_text() for log in logs), timeout=60)
    await redis.zadd(settings.queue_name, dict.fromkeys(ids, int(time.time() * 1000)), xx=True)
    finished = [(code, log.read_text()) for (code, _, _), log in zip(await asyncio.gather(*map(finish, workers)), logs)]

    assert [code for code, _ in finished] == [0, 0], [err[-2000:] for _, err in finished]
    applied = [err.count('"event applied"') for _, err in finished]
    assert all(n > 0 for n in applied) and sum(applied) == len(jobs)  # both took part, no job twice
    await assert_each_fact_posted_once(engine, lifecycles)


@pytest.mark.postgres
async def test_a_worker_killed_mid_batch_loses_nothing(pg, redis, tmp_path):
    settings, engine = pg
    tag = tag_of(settings.queue_name)
    lifecycles = invoices(tag, 300, partial=False)
    events = [e for lifecycle in lifecycles.values() for e in lifecycle]
    await enqueue(redis, settings.queue_name, events)

    # A short job timeout, so arq hands the killed worker's jobs on after 2 + 10 s, not 70 s.
    log = open(tmp_path / "victim.log", "w")  # not a pipe: nobody reads it until the end
    victim = start(settings, "worker", "--job-timeout", "2", cwd=tmp_path, log=log)
    deadline = time.monotonic() + 30
    while await count(engine) < len(events) // 4:
        assert time.monotonic() < deadline and victim.poll() is None, "the worker did not start applying"
        await asyncio.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    await finish(victim)
    log.close()
    applied_before = await count(engine)
    in_flight = [key async for key in redis.scan_iter(match=f"arq:in-progress:evt_{tag}_*", count=1000)]
    assert applied_before < len(events) and in_flight, "the kill did not land mid-batch"

    code, _, err = await finish(start(settings, "worker", "--burst", "--job-timeout", "2", cwd=tmp_path))
    assert code == 0, err[-2000:]
    await assert_each_fact_posted_once(engine, lifecycles)
    assert await redis.zcard(settings.queue_name) == 0


async def count(engine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(received))


async def test_the_command_line_migrates_then_runs_the_worker(settings, redis, tmp_path):
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'cli.db'}"})
    tag = tag_of(settings.queue_name)
    lifecycle = invoices(tag, 1, partial=False)
    await enqueue(redis, settings.queue_name, lifecycle[f"inv_{tag}_0"])

    code, out, _ = await finish(start(settings, "worker", "--burst", cwd=tmp_path))
    assert code == 2 and "run `vinr-recon db upgrade`" in out
    assert await redis.zcard(settings.queue_name) == 2  # nothing taken from the queue

    code, out, _ = await finish(start(settings, "db", "upgrade", cwd=tmp_path))
    assert code == 0 and "ledger schema up to date" in out
    code, _, err = await finish(start(settings, "worker", "--burst", cwd=tmp_path))
    assert code == 0 and err.count('"event applied"') == 2
    engine = create_engine(settings.database_url)
    try:
        await assert_each_fact_posted_once(engine, lifecycle)
    finally:
        await engine.dispose()


async def test_a_job_lost_in_a_redis_failover_does_not_turn_the_redelivery_into_a_duplicate(settings, redis, tmp_path):
    """Issue 22, split brain: a job retried after a failover is queued on the promoted replica
    without its bytes (they stayed on the lost primary, whose write was answered 503). A worker
    runs that entry as arq's "job expired". VINR then redelivers the event to a real receiver: it
    must be queued and applied, not taken as done because the expired job left a failed result."""
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'failover.db'}"})
    code, _, err = await finish(start(settings, "db", "upgrade", cwd=tmp_path))
    assert code == 0, err
    tag = tag_of(settings.queue_name)
    (event,) = invoices(tag, 1, partial=False)[f"inv_{tag}_0"][:1]
    job_id = event_job_id(settings.queue_name, event.id)
    await redis.zadd(settings.queue_name, {job_id: int(time.time() * 1000)})  # what the failover left

    code, _, err = await finish(start(settings, "worker", "--burst", cwd=tmp_path))
    assert code == 0 and "expired" in err and await redis.zcard(settings.queue_name) == 0

    port = free_port()
    receiver = start(settings, "serve", "--port", str(port), cwd=tmp_path, env={"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await until_listening(client, receiver)
            answer = await client.post("/webhooks/vinr", content=event.body, headers=signed(event.body))
        assert answer.status_code == 200
    finally:
        receiver.terminate()
        await finish(receiver)
    code, _, err = await finish(start(settings, "worker", "--burst", cwd=tmp_path))
    assert code == 0 and err.count('"event applied"') == 1
    engine = create_engine(settings.database_url)
    try:
        assert await count(engine) == 1
    finally:
        await engine.dispose()


async def until_listening(client: httpx.AsyncClient, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"the receiver did not start: exit {process.poll()}")
