"""PostgreSQL as deployed at scale (issue 22): the receiver, the worker and reconciliation through
PgBouncer in transaction pooling mode, and a ledger that rides out dropped connections and a
PostgreSQL restart without losing or doubling an event.

PgBouncer and the restarted PostgreSQL are private to each test (tests/pg_support.py): the
machine's cluster, which other tests share, is never restarted.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from conftest import PG_ADMIN_URL, clear_ledger, tag_of, unique
from ledger.book import trial_balance
from ledger.db import create_engine, is_connection_failure
from ledger.migrate import upgrade
from ledger.tables import DeadLetter, ReceivedEvent
from lifecycles import Event, drain, enqueue, snapshot
from pg_support import have_pgbouncer, owned_by_service_user, pgbouncer, private_postgres
from receiver.app import create_app as create_receiver
from receiver.health import CHECK_TIMEOUT
from receiver_support import forget_queue, served
from reconcile.service import reconcile_once
from reconcile_support import deployment, ledger_matches
from vinr.sandbox.config import SandboxConfig

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not have_pgbouncer(), reason="pgbouncer is not installed (.ci/services installs it)")]

received, dead_letters = ReceivedEvent.__table__, DeadLetter.__table__


@pytest.fixture
def service_folder():
    """A folder the postgres user may write to (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="vinr-pg-"))
    owned_by_service_user(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def through(port: int, database_url: str) -> str:
    """`database_url` with its host and port replaced by the PgBouncer on `port`, flagged."""
    url = make_url(database_url).set(host="127.0.0.1", port=port)
    return url.update_query_dict({"pgbouncer": "transaction"}).render_as_string(hide_password=False)


@pytest.fixture
async def pooled(settings, pg_database, service_folder):
    """(settings whose DATABASE_URL goes through a private PgBouncer to the session's database,
    an engine through it too, the PgBouncer's port); the ledger emptied."""
    with pgbouncer(service_folder / "pgbouncer", 5432, pool_size=2) as port:
        url = through(port, pg_database)
        engine = create_engine(url)
        await clear_ledger(engine)
        try:
            yield settings.model_copy(update={"database_url": url}), engine, port
        finally:
            await engine.dispose()


async def test_the_receiver_worker_and_reconciliation_work_through_pgbouncer(pooled):
    settings, engine, _ = pooled
    # Dropped webhooks leave reconciliation work to do, duplicates exercise the dedup, both
    # through two server connections that every client connection shares.
    config = SandboxConfig(rate_limit=0, drop_rate=0.3, duplicate_rate=0.3, seed=22)
    async with deployment(settings, engine, config) as d:
        invoices = [d.new_open(10_000 + i) for i in range(12)]
        for n, invoice in enumerate(invoices):
            if n % 3 == 0:
                d.state.pay(invoice, card="4242424242424242")
            elif n % 3 == 1:
                d.state.pay(invoice, card="4242424242424242", amount=2_000)
        await d.settle()  # the receiver queued what arrived, the worker applied it, both via PgBouncer
        async with engine.connect() as conn:
            stored = await conn.scalar(select(func.count()).select_from(received))
        assert stored > 0

        reconciling = settings.model_copy(update={"vinr_api_key": SecretStr(d.sandbox.api_key)})
        redis = Redis.from_url(settings.redis_url)
        try:
            report = await reconcile_once(reconciling, engine=engine, redis=redis, client=d.client)
        finally:
            await redis.aclose()
        assert report is not None and report.matches, report
        assert report.corrections_posted + report.events_backfilled > 0  # it had something to set right
        await ledger_matches(engine, d.sandbox)

        async with served(create_receiver(settings)) as receiver:
            ready = await receiver.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_no_prepared_statement_outlives_its_transaction_on_a_pooled_server(settings, pg_database,
                                                                                 service_folder):
    """Behind transaction pooling a statement left prepared on a server connection is met by
    every later client of that connection: a name clash, or a pile growing without end."""
    with pgbouncer(service_folder / "pgbouncer", 5432, pool_size=1) as port:
        url = through(port, pg_database)
        engine = create_engine(url)
        await clear_ledger(engine)
        settings = settings.model_copy(update={"database_url": url})
        events = [Event(unique("evt"), "invoice.finalized", snapshot(unique("inv"), "open", 1000 + n), 1_763_800_000)
                  for n in range(40)]
        pool = await arq_pool(settings)
        try:
            await enqueue(pool, settings.queue_name, events)
            worker = await drain(settings)
            async with engine.connect() as conn:  # the one server connection every client shared
                left = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
                stored = await conn.scalar(select(func.count()).select_from(received))
        finally:
            await forget_queue(pool, settings.queue_name)
            await pool.aclose()
            await engine.dispose()
    assert (worker.jobs_complete, worker.jobs_failed, stored) == (40, 0, 40)
    assert left == 0


# --- Connections dropped under a working worker ------------------------------------------------


def lifecycles(tag: str, count: int) -> list[list[Event]]:
    """Per invoice: finalized, partly paid, paid (amounts differ, so a doubled fact shows)."""
    result = []
    for i in range(count):
        invoice_id, total = f"inv_{tag}_{i}", 10_000 + i
        steps = [("invoice.finalized", "open", 0), ("invoice.updated", "open", total // 4),
                 ("invoice.paid", "paid", total)]
        result.append([Event(f"evt_{tag}_{i}_{n}", kind, snapshot(invoice_id, status, total, paid), 1_763_800_000 + n)
                       for n, (kind, status, paid) in enumerate(steps)])
    return result


async def assert_each_event_applied_once(engine, invoices: list[list[Event]]) -> None:
    """Every event stored once, none dead, every invoice where its last event says, books even."""
    events = [e for lifecycle in invoices for e in lifecycle]
    async with engine.connect() as conn:
        stored = dict((await conn.execute(select(received.c.event_id, received.c.outcome))).all())
        dead = await conn.scalar(select(func.count()).select_from(dead_letters))
        balance = await trial_balance(conn)
    assert dead == 0
    assert set(stored) == {e.id for e in events}
    assert set(stored.values()) <= {"applied", "stale"}
    clearing = sum(lifecycle[-1].invoice["total"] for lifecycle in invoices)
    assert balance[("vinr_clearing", "EUR")][0] == clearing  # each payment collected once
    assert balance.get(("accounts_receivable", "EUR"), (0, 0))[0] - balance[("accounts_receivable", "EUR")][1] == 0
    assert sum(d for d, _ in balance.values()) == sum(c for _, c in balance.values())


async def terminate_backends(admin_url: str, database: str) -> int:
    """Cut every session on `database` (the server side of each connection), as a crash would."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
    finally:
        await conn.close()
    return len(rows)


async def retried(pool, tag: str) -> bool:
    """Whether arq has started any job of this test a second time (its retry key counts starts)."""
    keys = [key async for key in pool.scan_iter(match=f"arq:retry:evt_{tag}_*", count=1000)]
    return any(int(n or 0) >= 2 for n in (await pool.mget(keys) if keys else []))


async def arq_pool(settings):
    from arq.connections import RedisSettings, create_pool

    return await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.queue_name)


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
async def test_connections_dropped_mid_batch_are_retried_without_a_lost_or_doubled_event(
        settings, pg_database, service_folder, route):
    database = make_url(pg_database).database
    with pgbouncer(service_folder / "pgbouncer", 5432, pool_size=4) as port:
        url = pg_database if route == "direct" else through(port, pg_database)
        engine = create_engine(url)
        await clear_ledger(engine)
        settings = settings.model_copy(update={"database_url": url})
        tag = tag_of(settings.queue_name)
        invoices = lifecycles(tag, 300)  # long enough a drain that a cut meets work in flight under a loaded CI
        events = [e for lifecycle in invoices for e in lifecycle]
        random.Random(22).shuffle(events)
        pool = await arq_pool(settings)
        cut = 0
        try:
            await enqueue(pool, settings.queue_name, events)
            # One try only: an event whose connection was cut must still never be dead-lettered.
            draining = asyncio.create_task(drain(settings, tries=1))
            # Cut the worker's server connections while it applies, until a cut has hit work in
            # flight (a job is being retried); not longer: each hit costs its jobs a backoff.
            await until(lambda: applied(engine), 30, timeout=30)
            while not await retried(pool, tag) and not draining.done():
                cut += await terminate_backends(PG_ADMIN_URL, database)
                await asyncio.sleep(0.05)
            worker = await asyncio.wait_for(draining, 60)
            await assert_each_event_applied_once(engine, invoices)
        finally:
            await forget_queue(pool, settings.queue_name)
            await pool.aclose()
            await engine.dispose()
    assert cut > 0 and worker.jobs_retried > 0, (cut, worker.jobs_retried)  # the cuts hit work in flight
    assert worker.jobs_failed == 0


# --- A PostgreSQL restart -------------------------------------------------------------------


async def readyz_status(client: httpx.AsyncClient) -> tuple[int, float, dict]:
    started = time.monotonic()
    answer = await client.get("/readyz")
    return answer.status_code, time.monotonic() - started, answer.json()


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
async def test_a_postgresql_restart_is_ridden_out_and_readyz_reports_it(settings, service_folder, route, tmp_path):
    with private_postgres(service_folder / "postgres") as server, \
            pgbouncer(service_folder / "pgbouncer", server.port, pool_size=4) as bouncer_port:
        await asyncio.to_thread(subprocess.run, ["psql", server.admin_url, "-qc", "CREATE DATABASE ledger"],
                                check=True, capture_output=True)
        direct_url = server.url("ledger")
        await asyncio.to_thread(upgrade, direct_url)
        url = direct_url if route == "direct" else through(bouncer_port, direct_url)
        settings = settings.model_copy(update={"database_url": url})
        tag = tag_of(settings.queue_name)
        invoices = lifecycles(tag, 60)
        before = [lifecycle[0] for lifecycle in invoices]
        during = [e for lifecycle in invoices for e in lifecycle[1:]]
        pool = await arq_pool(settings)
        engine = create_engine(direct_url)
        worker = None
        try:
            async with served(create_receiver(settings)) as receiver:
                assert (await readyz_status(receiver))[0] == 200
                await enqueue(pool, settings.queue_name, before)
                worker = start_worker(settings, tmp_path / "worker.log")
                await until(lambda: applied(engine), len(before))

                await asyncio.to_thread(server.stop)
                await enqueue(pool, settings.queue_name, during)  # the receiver still takes webhooks
                status, seconds, answer = await readyz_status(receiver)
                assert status == 503 and answer["failed"] == ["database"], answer
                assert seconds < CHECK_TIMEOUT + 1.5  # at its deadline, not after the driver gives up
                started = time.monotonic()
                scraped = await receiver.get("/metrics")  # what is dead: unknown (NaN), and said in time
                assert scraped.status_code == 200 and time.monotonic() - started < CHECK_TIMEOUT + 1.5
                await asyncio.sleep(3)  # the worker meets the outage: its tries fail meanwhile
                await asyncio.to_thread(server.start)

                await until(lambda: applied(engine), len(before) + len(during), timeout=40)
                deadline = time.monotonic() + 10
                while (status := (await readyz_status(receiver))[0]) != 200 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert status == 200
            await assert_each_event_applied_once(engine, invoices)
        finally:
            if worker is not None:
                await asyncio.to_thread(stop_worker, worker)
            await forget_queue(pool, settings.queue_name)
            await pool.aclose()
            await engine.dispose()
    log = (tmp_path / "worker.log").read_text()
    assert '"apply failed, will retry"' in log and '"database_unreachable": true' in log, log[-3000:]
    assert "dead-lettered" not in log


def start_worker(settings, log_path: Path) -> subprocess.Popen:
    """`vinr-recon worker` as deployed, with `settings`; its log to `log_path`."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "QUEUE_NAME": settings.queue_name, "LOG_LEVEL": "INFO"}
    with open(log_path, "w") as log:
        # A short job timeout: each try gets a sixth of it, so the outage is met within seconds.
        return subprocess.Popen([sys.executable, "-m", "vinr_recon", "worker", "--job-timeout", "6", "--tries", "1"],
                                env=env,
                                cwd=log_path.parent, stdout=subprocess.DEVNULL, stderr=log,
                                stdin=subprocess.DEVNULL)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def applied(engine) -> int:
    try:
        async with engine.connect() as conn:
            return await conn.scalar(select(func.count()).select_from(received))
    except Exception as exc:
        if is_connection_failure(exc):
            return -1
        raise


async def until(count, expected: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await count()) < expected:
        assert time.monotonic() < deadline, f"{seen} of {expected} events applied"
        await asyncio.sleep(0.1)
