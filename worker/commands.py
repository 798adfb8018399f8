"""`vinr-recon worker` and `vinr-recon replay [--event ID ...] [--notices] [--notice ID ...]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports its modules when a command runs, not at start
    from arq.connections import ArqRedis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from vinr_recon.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from worker.defaults import JOB_TIMEOUT, MAX_JOBS, TRIES

    worker = subparsers.add_parser("worker", help="run the arq worker that applies events to the ledger")
    worker.add_argument("--burst", action="store_true", help="apply what is queued, then exit")
    worker.add_argument("--max-jobs", type=int, default=MAX_JOBS, help=f"concurrent jobs (default {MAX_JOBS})")
    worker.add_argument("--tries", type=int, default=TRIES,
                        help=f"tries before a failing event is dead-lettered (default {TRIES})")
    worker.add_argument("--job-timeout", type=float, default=JOB_TIMEOUT,
                        help=f"seconds a job may run (default {JOB_TIMEOUT:g}); each transaction gets a sixth; "
                             "a killed worker's jobs run again this long plus 10 s later")
    worker.add_argument("--no-batch", dest="batch", action="store_false",
                        help="apply each event in a transaction of its own (default: the events of "
                             "concurrent jobs share one)")
    worker.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve Prometheus /metrics on this port of HOST (default WORKER_METRICS_PORT, "
                             "9101; 0: none)")
    worker.add_argument("--check", action="store_true",
                        help="exit 0 if a worker of QUEUE_NAME reported within the last "
                             f"{HEALTH_CHECK_INTERVAL} s (arq's health-check key), else 1, saying why in one "
                             "line: a container's health check")
    worker.set_defaults(run=run_worker)

    replay = subparsers.add_parser("replay", help="re-queue dead-lettered events (or, with --notices, dead alerts "
                                                  "and callbacks)")
    replay.add_argument("--event", dest="events", action="append", metavar="ID",
                        help="replay this event's dead letter (repeatable; default: every one not yet replayed)")
    replay.add_argument("--notices", action="store_true",
                        help="replay the alerts and callbacks that never got through instead of events")
    replay.add_argument("--notice", dest="notice_ids", action="append", type=int, metavar="ID",
                        help="replay this dead notice (repeatable; implies --notices)")
    replay.set_defaults(run=run_replay)


# How often a running worker writes arq's health-check key (it expires a second later), so that
# `--check` fails within this long of a worker that died or hangs; arq's default is an hour.
HEALTH_CHECK_INTERVAL = 10


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        return asyncio.run(_check(settings))
    from vinr_recon.jobformat import JOB_FORMAT
    from vinr_recon.redis_connect import failover_retry, queue_pool
    from worker.settings import SchemaNotMigrated, Worker, quiet_arq, worker_settings

    quiet_arq()
    chosen = args.metrics_port is not None or "worker_metrics_port" in settings.model_fields_set
    options = worker_settings(
        settings, max_jobs=args.max_jobs, tries=args.tries, job_timeout=args.job_timeout, batch=args.batch,
        burst=args.burst, metrics_port=settings.worker_metrics_port if args.metrics_port is None else args.metrics_port,
        metrics_port_chosen=chosen,
    )
    # arq's own pool (from its RedisSettings) gives up on the first broken connection, which would
    # end the worker at a failover or a Redis restart; this one retries through it and, with
    # Sentinels, reconnects to the new primary.
    pool = queue_pool(settings, JOB_FORMAT, **failover_retry())
    try:
        Worker(**options, redis_pool=pool, health_check_interval=HEALTH_CHECK_INTERVAL).run()
    except SchemaNotMigrated as exc:
        print(f"vinr-recon worker: {exc}", flush=True)
        return 2
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError("a port number from 0 (none) to 65535")
    return int(text)


async def _check(settings: Settings) -> int:
    """arq's `--check` for this queue, through our Redis settings (REDIS_URL or the Sentinels)."""
    from arq.constants import health_check_key_suffix
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from vinr_recon.redis_connect import redis_for

    queue = settings.queue_name
    redis: Redis = redis_for(settings, socket_connect_timeout=2, socket_timeout=2)
    try:
        report = await redis.get(queue + health_check_key_suffix)
    except (RedisError, OSError) as exc:
        print(f"unhealthy: Redis cannot be reached ({type(exc).__name__}: {exc})", flush=True)
        return 1
    finally:
        await redis.aclose()
    if report is None:
        print(f"unhealthy: no worker of queue {queue} reported in the last {HEALTH_CHECK_INTERVAL} s", flush=True)
        return 1
    print(f"healthy: a worker of queue {queue} reported {report.decode(errors='replace')}", flush=True)
    return 0


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    notice_ids = getattr(args, "notice_ids", None)
    if getattr(args, "notices", False) or notice_ids:
        return asyncio.run(_replay_notices(settings, notice_ids))
    return asyncio.run(_replay(settings, args.events))


@contextlib.asynccontextmanager
async def _ledger_and_queue(settings: Settings, *, writer: bool) -> AsyncIterator[tuple[AsyncEngine, ArqRedis]]:
    """The ledger's engine and the queue's Redis, for one replay; both closed after it."""
    from ledger.db import create_engine
    from vinr_recon.jobformat import JOB_FORMAT
    from vinr_recon.redis_connect import queue_pool

    engine = create_engine(settings.database_url, writer=writer)
    redis = queue_pool(settings, JOB_FORMAT)
    try:
        yield engine, redis
    finally:
        await redis.aclose()
        await engine.dispose()


async def _replay_notices(settings: Settings, ids: list[int] | None) -> int:
    from worker.notices import replay_notices

    async with _ledger_and_queue(settings, writer=True) as (engine, redis):
        queued = await replay_notices(engine, redis, settings.queue_name, ids)
    for notice, fresh in queued:
        state = "queued" if fresh else "already queued"
        print(f"{state} notice {notice.id} ({notice.kind} by {notice.channel}, invoice {notice.invoice_id or '-'}; "
              f"died after {notice.attempts} tries with: {notice.last_error})")
    missing = sorted(set(ids or ()) - {notice.id for notice, _ in queued})
    return _answer(missing, "no dead notice", "unknown, never dead, or sent since", queued=bool(queued),
                   nothing="no dead notices")


async def _replay(settings: Settings, events: list[str] | None) -> int:
    from ledger.deadletters import pending
    from vinr_recon.jobs import queue_replays

    async with _ledger_and_queue(settings, writer=False) as (engine, redis):
        async with engine.connect() as conn:
            letters = await pending(conn, events)
        queued = await queue_replays(redis, settings.queue_name, letters)
    for letter, job_id, fresh in queued:
        state = "queued" if fresh else "already queued"
        print(f"{state} {job_id} ({letter.type}; died with: {letter.error})")
    missing = sorted(set(events or ()) - {letter.event_id for letter, _, _ in queued})
    return _answer(missing, "no dead letter waiting to be replayed for", "unknown event, never dead, or replayed "
                   "already", queued=bool(queued), nothing="no dead letters pending")


def _answer(missing: Sequence[object], none_for: str, why: str, *, queued: bool, nothing: str) -> int:
    """A replay's exit code: 1 when some of what was asked for is not there to replay, said in one
    line on stderr that a script can read; else 0, saying so when there was nothing to queue."""
    if missing:
        print(f"vinr-recon replay: {none_for} {', '.join(map(str, missing))} ({why})", file=sys.stderr)
        return 1
    if not queued:
        print(nothing)
    return 0
