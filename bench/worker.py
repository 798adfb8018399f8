"""How fast one worker process applies events, against arq's own ceiling (issue 5).

    .venv/bin/python bench/worker.py [--events 3000] [--repeat 3]

In one run: arq's drain rate of no-op jobs, then the worker's rate of applying real events
(finalize then pay, distinct invoices, a tenth of them delivered twice under a fresh job id)
to PostgreSQL and to SQLite, one event per transaction ("single") and the events of
concurrent jobs in one transaction ("batched", the default). Every run queues its jobs in the
receiver's format to a private queue, then times a burst worker in a separate process, with
the settings `vinr-recon worker` uses, from the end of its start-up to the empty queue. Each
delivery counts as an event, duplicates included. Prints the median of `--repeat` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
DUPLICATE_SHARE = 0.1


# --- The jobs ----------------------------------------------------------------------------


def event_body(event_id: str, event_type: str, invoice_id: str, status: str, total: int, paid: int) -> bytes:
    invoice = {
        "id": invoice_id, "object": "invoice", "customer": "cust_bench", "status": status, "currency": "EUR",
        "subtotal": total, "total": total, "amountPaid": paid, "amountDue": total - paid if status == "open" else 0,
        "number": f"INV-2026-{invoice_id[-6:]}", "collectionMethod": "send_invoice", "daysUntilDue": 30,
        "metadata": {"projectId": "proj_2291", "accountManager": "am@example.com"},
        "lines": {"data": [{"id": "li_1", "description": "Support", "quantity": 8, "unitAmount": total // 8,
                            "amount": total // 8 * 8}]},
        "attemptCount": 1 if paid else 0, "created": 1763800000,
    }
    return json.dumps({"id": event_id, "object": "event", "type": event_type, "created": 1763800000,
                       "data": {"object": invoice}}).encode()


def real_jobs(tag: str, events: int) -> list[tuple[str, tuple]]:
    """(job id, apply_event args): finalize then pay per invoice, then a tenth again."""
    jobs = []
    for i in range(events // 2):
        invoice_id, total = f"inv_{tag}_{i:06d}", 10_000 + i
        for n, (kind, status, paid) in enumerate([("invoice.finalized", "open", 0), ("invoice.paid", "paid", total)]):
            event_id = f"evt_{tag}_{i}_{n}"
            jobs.append((event_id, (event_id, kind, event_body(event_id, kind, invoice_id, status, total, paid),
                                    {"content-type": "application/json"}, time.time())))
    step = int(1 / DUPLICATE_SHARE)
    jobs += [(f"{job_id}:again", args) for job_id, args in jobs[::step]]
    return jobs


async def enqueue(queue: str, jobs: list[tuple[str, tuple]]) -> None:
    from arq.jobs import serialize_job
    from redis.asyncio import Redis

    from vinr_recon.jobformat import dumps
    from vinr_recon.jobs import APPLY_EVENT, job_key

    redis = Redis.from_url(REDIS_URL)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id, args in jobs:
                now_ms = int(time.time() * 1000)
                pipe.set(job_key(job_id), serialize_job(APPLY_EVENT, args, {}, None, now_ms, serializer=dumps))
                pipe.zadd(queue, {job_id: now_ms})
            await pipe.execute()
    finally:
        await redis.aclose()


async def forget(queue: str, tag: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"arq:*{tag}*", count=5000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start:start + 1000])
        await redis.delete(queue)
    finally:
        await redis.aclose()


# --- The worker, in its own process ------------------------------------------------------------


async def noop(ctx, event_id, event_type, body, headers, received_at, **kwargs) -> str:
    return "applied"


def child(database_url: str, queue: str, mode: str) -> None:
    """Drain `queue` with a burst worker; print its jobs, failures, seconds, CPU seconds and mean
    batch (events per transaction) as JSON on stdout."""
    import warnings

    from arq.worker import func

    from vinr_recon.jobs import APPLY_EVENT
    from vinr_recon.logging import configure_logging
    from vinr_recon.settings import Settings
    from worker.settings import Worker, quiet_arq, worker_settings  # what `vinr-recon worker` runs

    configure_logging("INFO", json=True)  # as deployed: one JSON line per event
    quiet_arq()
    settings = Settings(_env_file=None, database_url=database_url, redis_url=REDIS_URL, queue_name=queue)
    functions = [func(noop, name=APPLY_EVENT)] if mode == "noop" else None
    options = worker_settings(settings, burst=True, functions=functions, batch=mode == "batched")
    started = {}
    startup = options["on_startup"]

    async def timed_startup(ctx):
        await startup(ctx)
        started["at"], started["cpu"] = time.perf_counter(), time.process_time()

    async def main():
        worker = Worker(**{**options, "on_startup": timed_startup}, handle_signals=False)
        try:
            await worker.async_run()
            seconds = time.perf_counter() - started["at"]
            cpu = time.process_time() - started["cpu"]
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # arq calls redis 5's deprecated close()
                await worker.close()
        batcher = worker.ctx.get("batcher")
        batch = batcher.events / batcher.transactions if batcher and batcher.transactions else 1
        print(json.dumps({"jobs": worker.jobs_complete, "failed": worker.jobs_failed, "seconds": seconds,
                          "cpu": cpu, "batch": batch}))

    asyncio.run(main())


def drain(database_url: str, queue: str, mode: str, profile: str | None) -> dict:
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", profile]
    command += [__file__, "--child", database_url, queue, mode]
    # The log goes to a file, as a log shipper would take it: a pipe read here would compete
    # with the worker for the CPU it measures.
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                              stdin=subprocess.DEVNULL)
        if done.returncode:
            log.seek(0)
            raise SystemExit(f"worker failed:\n{log.read()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- The databases ---------------------------------------------------------------------------


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def reset(url: str) -> None:
    """An empty, migrated ledger for the next run."""
    from ledger.migrate import upgrade

    if url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        upgrade(url)
    else:
        asyncio.run(truncate(url))


async def truncate(url: str) -> None:
    from sqlalchemy import text

    from ledger.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE postings, journal_entries, invoice_positions, received_events, "
                                    "dead_letters RESTART IDENTITY"))
    finally:
        await engine.dispose()


async def check(url: str, events: int) -> None:
    """The run really applied every event once: one received row each, books balanced."""
    from sqlalchemy import func, select

    from ledger.book import trial_balance
    from ledger.db import create_engine
    from ledger.tables import ReceivedEvent

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            stored = await conn.scalar(select(func.count()).select_from(ReceivedEvent.__table__))
            balance = await trial_balance(conn)
    finally:
        await engine.dispose()
    receivable = balance.get(("accounts_receivable", "EUR"), (0, 0))
    assert stored == events and receivable[0] == receivable[1] > 0, (stored, balance)


# --- The run ----------------------------------------------------------------------------------


def measure(name: str, url: str, mode: str, events: int, attempt: int, profile: str | None) -> float:
    """One timed drain of `events` (plus duplicates) by a fresh worker; its events per second."""
    tag = uuid.uuid4().hex[:12]
    queue = f"arq:queue:bench_{tag}"
    jobs = real_jobs(tag, events)
    asyncio.run(enqueue(queue, jobs))
    try:
        run = drain(url, queue, mode, profile and f"{profile}.{name.replace(' ', '-')}.{attempt}")
    finally:
        asyncio.run(forget(queue, tag))
    if mode != "noop":
        asyncio.run(check(url, events))
        reset(url)
    assert run["jobs"] == len(jobs) and run["failed"] == 0, run
    rate = run["jobs"] / run["seconds"]
    print(f"  {name:<19} run {attempt + 1}: {rate:5.0f} events/s, worker busy {run['cpu'] / run['seconds']:4.0%} "
          f"of a core, {run['batch']:4.1f} events per transaction", file=sys.stderr)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per run (plus a tenth duplicated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["noop", "postgresql", "sqlite"], action="append")
    parser.add_argument("--mode", choices=["single", "batched"], action="append",
                        help="one event per transaction, or the events of concurrent jobs together (default both)")
    parser.add_argument("--profile", metavar="PREFIX", help="cProfile each worker into PREFIX.<phase>.<run>")
    args = parser.parse_args()

    from ledger.migrate import upgrade

    pg_name = f"vinr_bench_{uuid.uuid4().hex[:12]}"
    pg_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{pg_name}"
    tmp = Path(tempfile.mkdtemp(prefix="vinr-bench-"))
    phases = [("no-op", f"sqlite:///{tmp / 'noop.db'}", "noop", "noop")] + [
        (f"{backend} {mode}", url, mode, backend)
        for backend, url in [("postgresql", pg_url), ("sqlite", f"sqlite:///{tmp / 'ledger.db'}")]
        for mode in ("single", "batched")
    ]
    phases = [p for p in phases if not (args.only and p[3] not in args.only)
              and not (args.mode and p[2] != "noop" and p[2] not in args.mode)]
    asyncio.run(pg_admin(f'CREATE DATABASE "{pg_name}"'))
    rates: dict[str, list[float]] = {name: [] for name, *_ in phases}
    try:
        for url in {url for _, url, _, _ in phases}:
            upgrade(url)
        # Round after round of every phase, so that each sees the same share of the machine's moods.
        for attempt in range(args.repeat):
            for name, url, mode, _ in phases:
                rates[name].append(measure(name, url, mode, args.events, attempt, args.profile))
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
        shutil.rmtree(tmp, ignore_errors=True)

    from worker.defaults import BATCH_LINGER, MAX_JOBS, POLL_DELAY

    jobs = args.events + args.events // int(1 / DUPLICATE_SHARE)
    print(f"\none worker process, max_jobs={MAX_JOBS}, poll_delay={POLL_DELAY}s, batch linger={BATCH_LINGER}s; "
          f"{jobs} events per run ({args.events} + {jobs - args.events} duplicates); median of {args.repeat}\n")
    print(f"{'phase':<20}{'events/s':>9}{'x no-op':>9}")
    for name, runs in rates.items():
        rate = statistics.median(runs)
        ratio = f"{rate / statistics.median(rates['no-op']):.2f}" if "no-op" in rates else "-"
        print(f"{name:<20}{rate:>9.0f}{ratio:>9}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
