"""A reconciliation run with its resources and the cluster-wide lock: what the cron job and
`vinr-recon reconcile` both call."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import create_engine
from ledger.outbox import EVERY_CHANNEL, configured_channels
from reconcile.customers import refresh_swept_customers
from reconcile.lock import exclusive, lock_key
from reconcile.run import Reconciler, RunReport
from vinr.client import VinrClient
from vinr_recon.jobs import enqueue_notices
from vinr_recon.redis_connect import redis_for
from vinr_recon.settings import Settings, require, vinr_client

log = structlog.get_logger(__name__)

# How long a run's lock outlives a holder that stopped renewing it (renewed every third of it).
LOCK_TTL = 120.0


async def reconcile_once(
    settings: Settings,
    *,
    dry_run: bool = False,
    since: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine: AsyncEngine | None = None,
    redis: Redis | None = None,
    client: VinrClient | None = None,
    lock_ttl: float = LOCK_TTL,
    adopt: bool = False,
) -> RunReport | None:
    """Run one reconciliation now; None when another run holds the lock (it is skipped).

    Raises `LockLost` when the lock could not be kept: the run was stopped, and recorded so.
    Resources passed in stay open; those created here are closed here.
    """
    require(settings, "vinr_api_key")
    configured_channels(settings)  # validated here; the worker's configuration decides delivery
    channels = EVERY_CHANNEL  # what a fact owes, whatever this process has configured
    own_engine, own_redis, own_client = engine is None, redis is None, client is None
    engine = engine or create_engine(settings.database_url)
    redis = redis or redis_for(settings)  # REDIS_URL, or the primary REDIS_SENTINELS name
    client = client or vinr_client(settings)
    try:
        async with exclusive(redis, ttl=lock_ttl, key=lock_key(settings.queue_name)) as acquired:
            if not acquired:
                log.info("reconciliation skipped: another run holds the lock")
                return None
            every = timedelta(days=settings.reconcile_full_sweep_days) if settings.reconcile_full_sweep_days else None
            report = await Reconciler(engine, client, dry_run=dry_run, progress=progress, notices=channels,
                                      full_sweep_every=every, adopt=adopt).run(since=since)
            if not dry_run and report.status == "completed":
                # Names for the dashboard and the alerts; under the same lock and paced client,
                # apart from the run's own request count (issue 19's formula is the ledger's).
                await refresh_swept_customers(client, engine, report.window_start)
        await _queue(settings, redis, report.notices)
        return report
    finally:
        if own_client:
            await client.aclose()
        if own_redis:
            await redis.aclose()
        if own_engine:
            await engine.dispose()


async def _queue(settings: Settings, redis: Redis, notice_ids: list[int]) -> None:
    """Queue the delivery of what the run staged; a worker's sweep queues it anyway if this fails."""
    if not notice_ids:
        return
    try:
        await enqueue_notices(redis, settings.queue_name, notice_ids)  # in the jobs' data-only format
    except Exception as exc:
        log.warning("notices not queued, a worker's sweep will", notices=notice_ids, error=repr(exc))
