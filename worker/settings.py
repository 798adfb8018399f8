"""arq's WorkerSettings, built from the one Settings object.

The worker's resources are one typed `WorkerState` (worker.state) in arq's `ctx`: its database
engine created (and the schema checked), its clients and group commit built in `on_startup`, all
closed in `on_shutdown`; nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC
from typing import Any

import structlog
from arq.constants import abort_jobs_ss, in_progress_key_prefix, retry_key_prefix
from arq.utils import to_ms
from arq.worker import Worker as ArqWorker, func
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError, WatchError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.outbox import EVERY_CHANNEL, configured_channels
from vinr_recon.jobformat import JOB_FORMAT, is_data_job, kind_of, loads
from vinr_recon.jobs import APPLY_EVENT, job_key, refused_key, result_key
from vinr_recon.redis_connect import arq_redis_settings
from vinr_recon.settings import ConfigurationError, Settings
from worker.defaults import ARQ_MAX_TRIES, BATCH_LINGER, JOB_TIMEOUT, KEEP_RESULT, MAX_JOBS, POLL_DELAY, TRIES
from worker.digest import digest_crons
from worker.jobs import RetryPolicy, apply_event
from worker.metrics import WorkerMetrics
from worker.nightly import nightly_cron
from worker.notices import NOTICE_RETRY, Notifier, notice_crons, notice_functions
from worker.state import STATE, WorkerState

log = structlog.get_logger("worker")

# What Redis going away under a poll raises (a failover, a restart, a dropped connection).
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, WatchError)
POLL_RETRY = 0.5  # seconds before the poll after one that Redis failed


class SchemaNotMigrated(RuntimeError):
    """The ledger's database is not at the migrations' head: run `vinr-recon db upgrade`."""


class MetricsPortTaken(ConfigurationError):
    """The metrics port a person chose cannot be listened on (another process has it, most often)."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(f"WORKER_METRICS_PORT (or --metrics-port): cannot listen on {host}:{port}: "
                         f"{error.strerror or error}")


class Worker(ArqWorker):
    """arq's worker, except:

    - Its metrics (worker.metrics.WorkerMetrics, `metrics`; `registry` is theirs) are handed to
      `on_startup` in arq's `ctx["metrics"]`, which puts them in the WorkerState the jobs count on.
    - Jobs are read and written in the data-only format (vinr_recon.jobformat), never unpickled.
      A job in any other format is refused: never run nor tried again, logged, counted
      (`vinr_jobs_refused_total` in `registry`) and kept as it was found in the queue's refused
      hash (vinr_recon.jobs.refused_key), where `vinr-recon queue convert` finds it.
    - A killed worker's jobs are handed on after the job timeout plus 10 s. arq holds every job's
      in-progress key for the longest timeout of any function plus 10 s, which the nightly run's
      4 h made 4 h for every event and notice a killed (or crashed) worker had in flight. The
      nightly run, which may outlast the key, is kept single by the reconciliation lock
      (reconcile.lock): a second start of it finds the lock held and skips.
    - Only a job that succeeded leaves a result, which the receiver takes as "done": a failed,
      expired or timed-out job applied nothing, and the next delivery of its event is queued.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name, value in JOB_FORMAT.items():
            kwargs.setdefault(name, value)
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = self.job_timeout_s + 10
        self.metrics = self.ctx.setdefault("metrics", WorkerMetrics())
        self.registry = self.metrics.registry

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # One at a time, so that a job whose start Redis failed gives back the slot arq took for it.
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except REDIS_AWAY:
                self.job_counter -= 1
                self.sem.release()
                raise

    async def _poll_iteration(self) -> None:
        # arq lets an error of Redis out of its poll loop, and the worker exits: seen as a
        # WatchError ("A ConnectionError occurred on while watching") in a Sentinel failover.
        # The poll is tried again instead, as every other command is (vinr_recon.redis_connect).
        try:
            await super()._poll_iteration()
        except REDIS_AWAY as exc:
            log.warning("Redis failed during a poll; polling again", error=f"{type(exc).__name__}: {exc}",
                        retry_in=POLL_RETRY)
            await asyncio.sleep(POLL_RETRY)

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
                         keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None) -> None:
        """arq's, except that only a success keeps a result (see finish_failed_job: a job that timed
        out applied nothing), and a job put back for a retry stays queued only if it still is
        (`ZADD XX`): arq's ZINCRBY re-created, on a replica promoted meanwhile, a queue entry
        whose job this Redis never had."""
        async with self.pool.pipeline(transaction=True) as tr:
            delete_keys = [retry_key_prefix + job_id, job_key(job_id)] if finish else []
            if keep_in_progress is None:
                delete_keys.append(in_progress_key_prefix + job_id)
            else:
                tr.pexpire(in_progress_key_prefix + job_id, to_ms(keep_in_progress))
            if finish:
                if result_data and loads(result_data).get("s"):
                    expire = None if keep_result_forever else result_timeout_s
                    tr.set(result_key(job_id), result_data, px=to_ms(expire))
                tr.zrem(abort_jobs_ss, job_id)
                tr.zrem(self.queue_name, job_id)
            elif incr_score:
                tr.zadd(self.queue_name, {job_id: incr_score}, xx=True, incr=True)
            if delete_keys:
                tr.delete(*delete_keys)
            await tr.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        # arq ends here every job it could not run; one it could not even read is refused. (Only
        # failed jobs pay for this read: the ones arq runs never come here.)
        raw = await self.pool.get(job_key(job_id))
        if raw is None or is_data_job(raw):
            # No result is kept: the receiver takes a job's result for "done", and a failed job
            # applied nothing. One seen in a Redis failover: a job retried on the promoted replica
            # is queued there without its bytes (left on the lost primary), runs as "expired", and
            # its failure then turned VINR's redelivery of the event into a duplicate (issue 22).
            return await super().finish_failed_job(job_id, None)
        async with self.pool.pipeline(transaction=True) as tr:
            # No result is kept: a later delivery of the same event is queued, not taken as done.
            tr.hset(refused_key(self.queue_name), job_id, raw)
            tr.delete(job_key(job_id), retry_key_prefix + job_id, in_progress_key_prefix + job_id)
            tr.zrem(self.queue_name, job_id)
            await tr.execute()
        kind = kind_of(raw)
        self.metrics.refused.labels(kind).inc()
        log.error("job refused, never run: not in the data-only format; kept aside for `vinr-recon queue convert`",
                  job_id=job_id, format=kind, size=len(raw), kept_in=refused_key(self.queue_name))


def worker_settings(
    settings: Settings,
    *,
    max_jobs: int = MAX_JOBS,
    poll_delay: float = POLL_DELAY,
    job_timeout: float = JOB_TIMEOUT,
    tries: int = TRIES,
    batch: bool = True,
    burst: bool = False,
    functions: list[Any] | None = None,
    notice_retry: RetryPolicy = NOTICE_RETRY,
    metrics_port: int = 0,
    metrics_port_chosen: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker` (or `run_worker`) applying events to the ledger.

    With `batch`, the events of concurrent jobs are written together (worker.batching);
    without, each job applies its event in a transaction of its own. `functions` replaces the
    job (the benchmark's no-op). With `metrics_port`, `/metrics` is served there on HOST from
    start-up to shutdown; if the port cannot be had, start-up fails with `MetricsPortTaken`
    when the port was chosen, else (the default port, taken by a second worker on the host) the
    worker runs without metrics and says so.
    """
    # Two batches and a dead-letter write must fit in arq's own timeout (see RetryPolicy).
    policy = RetryPolicy(tries=tries, attempt_timeout=job_timeout / 6)
    # What a fact owes is staged on every channel, whatever is configured here (issue 19): it is
    # not this process's call. Only what this worker can deliver is queued at once; its sweep
    # marks the rest undeliverable.
    channels, deliverable = EVERY_CHANNEL, configured_channels(settings)

    async def on_startup(ctx: dict[str, Any]) -> None:
        from ledger.db import create_engine, is_sqlite
        from worker.batching import Batcher

        # No pre-ping: a broken connection fails the attempt, which is retried anyway.
        engine = create_engine(settings.database_url, pre_ping=False)
        try:
            revision = await check_schema(engine)
        except BaseException:
            await engine.dispose()
            raise
        log.info("worker started", queue=settings.queue_name, max_jobs=max_jobs, batch=batch,
                 database=engine.url.render_as_string(hide_password=True), schema=revision)
        # Our Worker's (in ctx from its __init__); arq's own Worker has none.
        metrics: WorkerMetrics = ctx.setdefault("metrics", WorkerMetrics())
        worker = ctx[STATE] = WorkerState(
            engine=engine, policy=policy, queue_name=settings.queue_name, metrics=metrics,
            write_lock=asyncio.Lock() if is_sqlite(engine) else None, channels=channels, deliverable=deliverable,
            notice_policy=notice_retry,
        )
        if metrics_port:
            try:
                worker.metrics_server = metrics.serve(settings.host, metrics_port, tokens=settings.metrics_tokens,
                                                      engine=engine)
            except OSError as exc:  # the state is in ctx: on_shutdown disposes of its engine
                if metrics_port_chosen:
                    raise MetricsPortTaken(settings.host, metrics_port, exc) from None
                log.warning("metrics not served: the default port is taken (give each worker on a host its own "
                            "WORKER_METRICS_PORT or --metrics-port)", host=settings.host, port=metrics_port,
                            error=exc.strerror or str(exc))
            else:
                log.info("metrics served", url=f"http://{settings.host}:{metrics_port}/metrics")
        worker.notifier = Notifier(settings)
        worker.batcher = (
            # Half of max_jobs: one batch fills while the one before it commits.
            Batcher(engine, max_batch=max(1, max_jobs // 2), linger=BATCH_LINGER, timeout=policy.attempt_timeout,
                    lock=worker.write_lock, notices=channels, deliverable=deliverable, metrics=metrics)
            if batch else None
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        worker = ctx.pop(STATE, None)
        if not isinstance(worker, WorkerState):  # start-up failed before it had an engine
            return
        # Last in, first out: the metrics port, the batch in flight, the notifier, the engine; each
        # closed even when one before it raises.
        async with contextlib.AsyncExitStack() as closing:
            closing.push_async_callback(worker.engine.dispose)
            if worker.notifier is not None:
                closing.push_async_callback(worker.notifier.aclose)
            if worker.batcher is not None:
                closing.push_async_callback(worker.batcher.close)
            server, worker.metrics_server = worker.metrics_server, None
            if server is not None:
                closing.push_async_callback(asyncio.to_thread, server.stop)

    return dict(
        functions=functions or [func(apply_event, name=APPLY_EVENT), *notice_functions()],
        queue_name=settings.queue_name,
        **JOB_FORMAT,
        redis_settings=arq_redis_settings(settings),  # REDIS_URL, or the primary REDIS_SENTINELS name
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        job_timeout=job_timeout,
        keep_result=KEEP_RESULT,
        max_tries=ARQ_MAX_TRIES,
        log_results=False,
        burst=burst,
        # RECONCILE_AT is UTC whatever the machine's zone.
        cron_jobs=nightly_cron(settings) + notice_crons(settings) + digest_crons(settings),
        timezone=UTC,
    )


async def check_schema(engine: AsyncEngine) -> str | None:
    """The database's schema revision; raises `SchemaNotMigrated` unless it is the head."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # its INFO lines say nothing here
    try:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        from ledger.migrate import alembic_config

        # Only the scripts are read here; the URL is never used to connect.
        head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
        async with engine.connect() as conn:
            current = await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        alembic_log.setLevel(level)
    if current != head:
        raise SchemaNotMigrated(
            f"the ledger database is at revision {current or 'none'}, not {head}: run `vinr-recon db upgrade`"
        )
    return current


def quiet_arq() -> None:
    """Keep arq's warnings and errors, not its two INFO lines per job: the job logs its own one
    line, and a record dropped by a filter would still be built (about 5 % of a job here)."""
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
