"""How fast one worker process applies events, against arq's own ceiling (issue 5).

    .venv/bin/python bench/worker.py [--events 3000] [--repeat 3] [--workers 1 --workers 2] [--pgbouncer]
    .venv/bin/python bench/worker.py --only postgresql --only sqlite --mode single   # the single path
    .venv/bin/python bench/worker.py --finish-job [--events 3000] [--repeat 3]

In one run: arq's drain rate of no-op jobs, then the worker's rate of applying real events
(finalize then pay, distinct invoices, a tenth of them delivered twice under a fresh job id)
to PostgreSQL and to SQLite, one event per transaction ("single") and the events of
concurrent jobs in one transaction ("batched", the default). Every run queues its jobs in the
receiver's format to a private queue, then times burst workers in separate processes, with
the settings `vinr-recon worker` uses, from the end of their start-up (they wait for each
other) to the empty queue. Each delivery counts as an event, duplicates included. Prints the
median of `--repeat` rounds.

`--workers N` (repeatable) runs each PostgreSQL phase with N worker processes on the one
database: the events per second one PostgreSQL sustains with two workers against one (issue 22).
`--pgbouncer` adds the PostgreSQL phases through a private PgBouncer in transaction pooling
mode (`?pgbouncer=transaction`: no statement cache), started from Debian's package as the
postgres user.

`--finish-job` times only the end of a job: worker.settings' finish_job (which decodes each
result, to keep a success's only) against arq's own, per job, on one Redis; and the decode alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
        await redis.delete(queue, f"{queue}:started")
    finally:
        await redis.aclose()


# --- The worker, in its own process ------------------------------------------------------------


async def noop(ctx, event_id, event_type, body, headers, received_at, **kwargs) -> str:
    return "applied"


def child(database_url: str, queue: str, mode: str, workers: str = "1") -> None:
    """Drain `queue` with a burst worker, once `workers` of them have started; print its jobs,
    failures, start and end (wall clock), CPU seconds and mean batch (events per transaction)
    as JSON on stdout."""
    import warnings

    from arq.worker import func

    from vinr_recon.jobs import APPLY_EVENT
    from vinr_recon.logging import configure_logging
    from vinr_recon.settings import Settings
    from worker.settings import Worker, quiet_arq, worker_settings  # what `vinr-recon worker` runs
    from worker.state import state

    configure_logging("INFO", json=True)  # as deployed: one JSON line per event
    quiet_arq()
    settings = Settings(_env_file=None, database_url=database_url, redis_url=REDIS_URL, queue_name=queue)
    functions = [func(noop, name=APPLY_EVENT)] if mode == "noop" else None
    options = worker_settings(settings, burst=True, functions=functions, batch=mode == "batched")
    started = {}
    startup = options["on_startup"]

    async def timed_startup(ctx):
        await startup(ctx)
        # Every worker of the run starts draining together: the clock starts when all are up.
        barrier = f"{queue}:started"
        await ctx["redis"].incr(barrier)
        while int(await ctx["redis"].get(barrier) or 0) < int(workers):
            await asyncio.sleep(0.005)
        started["at"], started["wall"], started["cpu"] = time.perf_counter(), time.time(), time.process_time()

    async def main():
        worker = Worker(**{**options, "on_startup": timed_startup}, handle_signals=False)
        try:
            await worker.async_run()
            seconds = time.perf_counter() - started["at"]
            cpu = time.process_time() - started["cpu"]
            batcher = state(worker.ctx).batcher  # before shutdown takes the state away
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # arq calls redis 5's deprecated close()
                await worker.close()
        batch = batcher.events / batcher.transactions if batcher and batcher.transactions else 1
        print(json.dumps({"jobs": worker.jobs_complete, "failed": worker.jobs_failed,
                          "retried": worker.jobs_retried, "seconds": seconds,
                          "start": started["wall"], "end": started["wall"] + seconds, "cpu": cpu, "batch": batch}))

    asyncio.run(main())


def drain(database_url: str, queue: str, mode: str, profile: str | None, workers: int = 1) -> dict:
    """Drain `queue` with `workers` processes together; their jobs, failures, seconds from the
    first start to the last end, CPU seconds (summed) and mean batch."""
    runs = []
    # The log goes to a file, as a log shipper would take it: a pipe read here would compete
    # with the worker for the CPU it measures.
    with contextlib.ExitStack() as stack:
        for n in range(workers):
            command = [sys.executable]
            if profile:
                command += ["-m", "cProfile", "-o", f"{profile}.w{n}"]
            command += [__file__, "--child", database_url, queue, mode, str(workers)]
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            runs.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                                          stdin=subprocess.DEVNULL), log))
        results = []
        for process, log in runs:
            out, _ = process.communicate()
            if process.returncode:
                log.seek(0)
                raise SystemExit(f"worker failed:\n{log.read()[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    jobs = sum(r["jobs"] for r in results)
    return {"jobs": jobs, "failed": sum(r["failed"] for r in results), "retried": sum(r["retried"] for r in results),
            "seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
            "cpu": sum(r["cpu"] for r in results),
            "batch": sum(r["batch"] * r["jobs"] for r in results) / jobs if jobs else 1}


# --- The databases ---------------------------------------------------------------------------


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


# --- What finishing a job costs ----------------------------------------------------------------


async def finish_job_costs(jobs: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) microseconds per job of finishing `jobs` succeeded jobs one after another, in
    `rounds` rounds: our Worker's finish_job (which decodes each result to keep only a success's)
    against arq's own, on one worker and Redis; and the decode alone."""
    from arq.constants import in_progress_key_prefix
    from arq.jobs import serialize_result
    from arq.worker import Worker as ArqWorker, func

    from vinr_recon.jobformat import JOB_FORMAT, dumps, loads
    from vinr_recon.jobs import APPLY_EVENT, job_key
    from vinr_recon.redis_connect import queue_pool
    from vinr_recon.settings import Settings
    from worker.settings import Worker

    tag = uuid.uuid4().hex[:12]
    queue = f"arq:queue:bench_{tag}"
    settings = Settings(_env_file=None, redis_url=REDIS_URL, queue_name=queue)
    pool = queue_pool(settings, JOB_FORMAT)
    worker = Worker(functions=[func(noop, name=APPLY_EVENT)], redis_pool=pool, queue_name=queue,
                    handle_signals=False)
    # The result of a real job: its arguments (the event's body among them) travel with it.
    (_, args), = real_jobs(tag, 2)[:1]
    now_ms = int(time.time() * 1000)
    result = serialize_result(APPLY_EVENT, args, {}, 1, now_ms, True, "applied", now_ms, now_ms, f"{tag}:x", queue,
                              f"{tag}:x", serializer=dumps)
    assert result is not None
    ways = {"ours": Worker.finish_job, "arq's": ArqWorker.finish_job}
    costs: dict[str, list[tuple[float, float]]] = {name: [] for name in [*ways, "decode alone"]}
    try:
        for attempt in range(rounds):
            # Each round the other one first, so that neither always meets a warmer Redis.
            for name, finish_job in sorted(ways.items(), reverse=attempt % 2 == 1):
                ids = [f"{tag}:{name}:{attempt}:{n}" for n in range(jobs)]
                async with pool.pipeline(transaction=False) as pipe:  # each job as a running one leaves it
                    for job_id in ids:
                        pipe.set(job_key(job_id), b"job", px=600_000)
                        pipe.set(in_progress_key_prefix + job_id, b"1", px=600_000)
                        pipe.zadd(queue, {job_id: now_ms})
                    await pipe.execute()
                wall, cpu = time.perf_counter(), time.process_time()
                for job_id in ids:
                    await finish_job(worker, job_id, True, result, 60.0, False, None, None)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                costs[name].append((wall / jobs * 1e6, cpu / jobs * 1e6))
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(jobs):
                loads(result).get("s")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            costs["decode alone"].append((wall / jobs * 1e6, cpu / jobs * 1e6))
    finally:
        keys = [key async for key in pool.scan_iter(match=f"arq:*{tag}*", count=5000)]
        for start in range(0, len(keys), 1000):
            await pool.delete(*keys[start:start + 1000])
        await pool.delete(queue)
        await pool.aclose()
    print(f"  result of {len(result)} bytes decoded by ours", file=sys.stderr)
    return costs


def report_finish_job(jobs: int, rounds: int) -> None:
    costs = asyncio.run(finish_job_costs(jobs, rounds))
    print(f"\nfinish_job of {jobs} succeeded jobs, one after another; median of {rounds} rounds\n")
    print(f"{'finish_job':<16}{'us/job':>9}{'CPU us/job':>12}")
    for name, runs in costs.items():
        print(f"{name:<16}{statistics.median(w for w, _ in runs):>9.1f}{statistics.median(c for _, c in runs):>12.1f}")


# --- The run ----------------------------------------------------------------------------------


def measure(name: str, url: str, mode: str, events: int, attempt: int, profile: str | None, workers: int = 1) -> float:
    """One timed drain of `events` (plus duplicates) by fresh workers; their events per second."""
    tag = uuid.uuid4().hex[:12]
    queue = f"arq:queue:bench_{tag}"
    jobs = real_jobs(tag, events)
    asyncio.run(enqueue(queue, jobs))
    try:
        run = drain(url, queue, mode, profile and f"{profile}.{name.replace(' ', '-')}.{attempt}", workers)
    finally:
        asyncio.run(forget(queue, tag))
    if mode != "noop":
        asyncio.run(check(url, events))
        reset(url)
    assert run["jobs"] == len(jobs) and run["failed"] == 0, run
    rate = run["jobs"] / run["seconds"]
    print(f"  {name:<30} run {attempt + 1}: {rate:5.0f} events/s, workers busy {run['cpu'] / run['seconds']:4.0%} "
          f"of a core, {run['batch']:4.1f} events per transaction, {run['retried']} jobs retried", file=sys.stderr)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per run (plus a tenth duplicated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["noop", "postgresql", "sqlite"], action="append")
    parser.add_argument("--mode", choices=["single", "batched"], action="append",
                        help="one event per transaction, or the events of concurrent jobs together (default both)")
    parser.add_argument("--workers", type=int, action="append",
                        help="worker processes per no-op and PostgreSQL phase (repeatable; default 1)")
    parser.add_argument("--pgbouncer", action="store_true",
                        help="also run the PostgreSQL phases through a private PgBouncer (transaction pooling)")
    parser.add_argument("--profile", metavar="PREFIX", help="cProfile each worker into PREFIX.<phase>.<run>")
    parser.add_argument("--finish-job", action="store_true",
                        help="only time finish_job, ours against arq's, for --events jobs, --repeat rounds")
    args = parser.parse_args()
    if args.finish_job:
        return report_finish_job(args.events, args.repeat)
    counts = args.workers or [1]

    from ledger.migrate import upgrade

    sys.path.insert(0, str(ROOT / "tests"))
    from pg_support import scratch_database

    tmp = Path(tempfile.mkdtemp(prefix="vinr-bench-"))
    with contextlib.ExitStack() as stack:
        # Dropped last, after the PgBouncer in front of it has gone.
        pg_url = stack.enter_context(scratch_database(PG_ADMIN_URL, f"vinr_bench_{uuid.uuid4().hex[:12]}"))
        backends = [("postgresql", pg_url)]
        if args.pgbouncer:
            backends.append(("pgbouncer", through_pgbouncer(stack, pg_url)))
        backends.append(("sqlite", f"sqlite:///{tmp / 'ledger.db'}"))
        phases = [(_name("no-op", n), f"sqlite:///{tmp / 'noop.db'}", "noop", "noop", n) for n in counts] + [
            (_name(f"{backend} {mode}", n), url, mode, "sqlite" if backend == "sqlite" else "postgresql", n)
            for backend, url in backends
            for mode in ("single", "batched")
            for n in (counts if backend != "sqlite" else [1])  # SQLite has one writer
        ]
        phases = [p for p in phases if not (args.only and p[3] not in args.only)
                  and not (args.mode and p[2] != "noop" and p[2] not in args.mode)]
        rates: dict[str, list[float]] = {name: [] for name, *_ in phases}
        try:
            for url in {url for _, url, _, _, _ in phases}:
                upgrade(url)
            # Round after round of every phase, so that each sees the same share of the machine's moods.
            for attempt in range(args.repeat):
                for name, url, mode, _, workers in phases:
                    rates[name].append(measure(name, url, mode, args.events, attempt, args.profile, workers))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    from worker.defaults import BATCH_LINGER, MAX_JOBS, POLL_DELAY

    jobs = args.events + args.events // int(1 / DUPLICATE_SHARE)
    print(f"\nworker processes with max_jobs={MAX_JOBS}, poll_delay={POLL_DELAY}s, batch linger={BATCH_LINGER}s; "
          f"{jobs} events per run ({args.events} + {jobs - args.events} duplicates); median of {args.repeat}; "
          f"{os.cpu_count()} cores\n")
    print(f"{'phase':<34}{'events/s':>9}{'x no-op':>9}")
    noop = _name("no-op", 1)
    for name, runs in rates.items():
        rate = statistics.median(runs)
        ratio = f"{rate / statistics.median(rates[noop]):.2f}" if noop in rates else "-"
        print(f"{name:<34}{rate:>9.0f}{ratio:>9}")


def _name(phase: str, workers: int) -> str:
    return phase if workers == 1 else f"{phase}, {workers} workers"


def through_pgbouncer(stack: contextlib.ExitStack, url: str) -> str:
    """`url` through a private PgBouncer in transaction pooling mode (closed with `stack`)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sqlalchemy.engine import make_url

    from pg_support import owned_by_service_user, pgbouncer

    folder = Path(tempfile.mkdtemp(prefix="vinr-bench-pgbouncer-"))
    owned_by_service_user(folder)
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    # As many server connections as a worker's engine holds (pool 10 + overflow 10), per worker.
    port = stack.enter_context(pgbouncer(folder / "pgbouncer", make_url(url).port or 5432, pool_size=20))
    return (make_url(url).set(host="127.0.0.1", port=port).update_query_dict({"pgbouncer": "transaction"})
            .render_as_string(hide_password=False))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:6])
    else:
        main()
