"""The worker's Prometheus metrics, the reconciliation figures both processes serve, and the
worker's own `/metrics` port.

Like the receiver's (receiver.metrics), each worker has a `CollectorRegistry` of its own, handed
to the code that counts (arq's `ctx["metrics"]`, the `Batcher`), never the process-global one.

The reconciliation figures are read from the ledger's `reconciliation_runs` at scrape time, so
they hold whichever process ran the run: the nightly cron in some worker, or `vinr-recon
reconcile` from a shell. Two queries, each the newest row of an index walked backwards.

The port is served by prometheus_client's own WSGI app (content negotiation, OpenMetrics, gzip)
from a thread, as its `start_http_server` does, wrapped for METRICS_TOKEN and `/metrics` only. A
scrape reads the ledger on the worker's event loop, with the worker's engine.
"""

from __future__ import annotations

import asyncio
import math
import socket
import socketserver
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, make_wsgi_app)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.tables import ReconciliationRun
from reconcile.diff import CATEGORIES

runs = ReconciliationRun.__table__

# What `apply_event` ends a job with (worker.jobs): `dead` is a dead letter written.
EVENT_OUTCOMES = ("applied", "stale", "ignored", "duplicate", "dead")
# Why a job was put back for another try: an error (counted towards the dead letter), the database
# away (retried as long as it lasts), or the dead letter itself not written.
RETRY_REASONS = ("error", "database_unreachable", "dead_letter_unwritten")
NOTICE_CHANNELS = ("email", "chat", "fulfilment")
# sent; retried (a failed try, another follows); dead (the last try failed); undeliverable
# (this worker's configuration cannot send it: nothing was tried).
NOTICE_OUTCOMES = ("sent", "retried", "dead", "undeliverable")
RUN_STATUSES = ("completed", "partial", "failed")
SCRAPE_TIMEOUT = 1.0  # seconds for the ledger's figures; a scrape must answer well before its own timeout


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """prometheus_client's process (`process_*`) and Python (`python_info`, `python_gc_*`) collectors."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


@dataclass(frozen=True)
class LastRun:
    started_at: datetime
    finished_at: datetime
    status: str
    api_requests: int
    findings: dict[str, int]


@dataclass(frozen=True)
class ReconciliationFigures:
    last_success: datetime | None  # when the newest completed run (not a dry run) finished
    last_run: LastRun | None  # the newest run that finished, however it ended (not a dry run)


async def reconciliation_figures(conn: AsyncConnection) -> ReconciliationFigures:
    """What the ledger says of its runs; dry runs are previews and count for nothing here."""
    real = runs.c.dry_run.is_(False)
    last_success = await conn.scalar(
        select(runs.c.finished_at).where(real, runs.c.status == "completed").order_by(runs.c.id.desc()).limit(1))
    row = (await conn.execute(
        select(runs.c.started_at, runs.c.finished_at, runs.c.status, runs.c.api_requests, runs.c.counts)
        .where(real, runs.c.status != "running").order_by(runs.c.id.desc()).limit(1))).first()
    last_run = None if row is None else LastRun(
        _utc(row.started_at), _utc(row.finished_at or row.started_at), row.status, row.api_requests,
        {category: int((row.counts or {}).get(category, 0)) for category in CATEGORIES})
    return ReconciliationFigures(_utc(last_success) if last_success else None, last_run)


class ReconciliationGauges:
    """The reconciliation's figures as gauges on `registry`; NaN while unknown (the ledger did
    not answer). With no completed run ever, the last success is 0, so "older than 26 h" holds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_success = Gauge(
            "vinr_reconcile_last_success_timestamp_seconds",
            "When the newest completed reconciliation run finished (Unix time; 0: none ever). "
            "Alert on time() - this > 26 h.", registry=registry)
        self.last_run = Gauge(
            "vinr_reconcile_last_run_timestamp_seconds",
            "When the newest finished reconciliation run (completed, partial or failed) finished.",
            registry=registry)
        self.duration = Gauge("vinr_reconcile_last_run_duration_seconds",
                              "How long the newest finished reconciliation run took.", registry=registry)
        self.requests = Gauge("vinr_reconcile_last_run_api_requests",
                              "VINR API requests the newest finished reconciliation run made.", registry=registry)
        self.status = Gauge("vinr_reconcile_last_run_status",
                            "1 for how the newest finished reconciliation run ended, 0 for the others.",
                            ["status"], registry=registry)
        self.findings = Gauge("vinr_reconcile_last_run_findings",
                              "Differences the newest finished reconciliation run found, by category.",
                              ["category"], registry=registry)

    def show(self, figures: ReconciliationFigures | None) -> None:
        """Set every gauge from `figures`; None: unknown, so NaN."""
        nan = math.nan
        run = figures.last_run if figures else None
        self.last_success.set(nan if figures is None else
                              figures.last_success.timestamp() if figures.last_success else 0)
        self.last_run.set(run.finished_at.timestamp() if run else nan)
        self.duration.set((run.finished_at - run.started_at).total_seconds() if run else nan)
        self.requests.set(run.api_requests if run else nan)
        for status in RUN_STATUSES:
            self.status.labels(status).set(nan if run is None else float(run.status == status))
        for category in CATEGORIES:
            self.findings.labels(category).set(run.findings[category] if run else nan)

    async def refresh(self, engine: AsyncEngine) -> None:
        """Read the figures from the ledger (NaN when it does not answer in time)."""
        self.show(await read_figures(engine))


async def read_figures(engine: AsyncEngine, timeout: float = SCRAPE_TIMEOUT) -> ReconciliationFigures | None:
    async def read() -> ReconciliationFigures:
        async with engine.connect() as conn:
            return await reconciliation_figures(conn)

    try:
        return await asyncio.wait_for(read(), timeout)
    except Exception:  # the scrape still answers; NaN says the figures are unknown
        return None


class WorkerMetrics:
    """Events by outcome, retries, batch sizes, notice deliveries and refused jobs of one worker,
    the reconciliation's figures, and the process and Python collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter("vinr_worker_events", "Events the worker finished with, by outcome "
                              "(dead: dead-lettered).", ["outcome"], registry=self.registry)
        self.retries = Counter("vinr_worker_event_retries", "Event jobs put back for another try, by reason.",
                               ["reason"], registry=self.registry)
        self.batch_size = Histogram("vinr_worker_batch_size", "Events per committed batch transaction.",
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200), registry=self.registry)
        self.notices = Counter("vinr_worker_notice_deliveries", "Alert and callback deliveries by channel "
                               "and outcome.", ["channel", "outcome"], registry=self.registry)
        self.refused = Counter("vinr_jobs_refused", "Jobs refused, never run: not in the data-only format.",
                               ["format"], registry=self.registry)
        self.reconciliation = ReconciliationGauges(self.registry)
        add_runtime_collectors(self.registry)
        # Every series from the start, at 0, so that rate() and the dashboard see them before the first.
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for channel in NOTICE_CHANNELS:
            for outcome in NOTICE_OUTCOMES:
                self.notices.labels(channel, outcome)

    def finished(self, outcome: str) -> None:
        self.events.labels(outcome).inc()

    def retried(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def notice(self, channel: str, outcome: str, count: int = 1) -> None:
        self.notices.labels(channel, outcome).inc(count)

    def serve(self, host: str, port: int, *, tokens: list[str], engine: AsyncEngine) -> MetricsServer:
        """`/metrics` on `host:port` from now on; each scrape reads the reconciliation's figures
        with `engine` on the running loop. Raises OSError when the port cannot be had."""
        loop = asyncio.get_running_loop()

        def before_scrape() -> None:  # in the server's thread
            if not _on(loop, lambda: self.reconciliation.refresh(engine)):
                self.reconciliation.show(None)

        return MetricsServer(self.registry, tokens=tokens, before_scrape=before_scrape).start(host, port)


def _on(loop: asyncio.AbstractEventLoop, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """Run `work()` on `loop` from another thread; False when it did not finish in time (it is
    then cancelled: the loop is too busy, or stopping)."""
    coroutine = work()
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:  # the loop is closed
        coroutine.close()
        return False
    try:
        future.result(SCRAPE_TIMEOUT * 2)
    except Exception:
        future.cancel()
        return False
    return True


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds up the worker's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a scrape every 15 s is no news


class MetricsServer:
    """One registry's `/metrics`, served from a thread; with `tokens`, only for
    `Authorization: Bearer <token>` (401 otherwise), as the receiver's."""

    def __init__(self, registry: CollectorRegistry, *, tokens: list[str],
                 before_scrape: Callable[[], None] = lambda: None) -> None:
        self._metrics = make_wsgi_app(registry)
        self._tokens = tokens
        self._before_scrape = before_scrape
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def start(self, host: str, port: int) -> MetricsServer:
        server_class = type("_BoundServer", (_Server,), {"address_family": _family(host, port)})
        self._server = make_server(host, port, self._app, server_class, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (blocks for up to half a second: serve_forever's poll)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        from receiver.api import token_matches  # the one constant-time comparison

        if self._tokens and not token_matches(_bearer(environ), self._tokens):
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                ("WWW-Authenticate", "Bearer")])
            return [b'{"error": "missing or invalid bearer token"}']
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not found: the metrics are at /metrics"}']
        if environ.get("REQUEST_METHOD") == "GET":
            self._before_scrape()
        return self._metrics(environ, start_response)


def _bearer(environ: dict[str, Any]) -> str:
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _family(host: str, port: int) -> int:
    """IPv4 or IPv6, as `host` asks (`::` listens on IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the ledger writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
