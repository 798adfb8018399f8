"""The worker's Prometheus metrics and its own `/metrics` port (the ledger's figures, which the
receiver serves too, are ledger.metrics').

Like the receiver's (receiver.metrics), each worker has a `CollectorRegistry` of its own, handed
to the code that counts (arq's `ctx["metrics"]`, the `Batcher`), never the process-global one.

The port is served by prometheus_client's own WSGI app (content negotiation, OpenMetrics, gzip)
from a thread, as its `start_http_server` does, wrapped for METRICS_TOKEN and `/metrics` only. A
scrape reads the ledger on the worker's event loop, with the worker's engine.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.metrics import SCRAPE_TIMEOUT, ReconciliationGauges, add_runtime_collectors
from vinr_recon.tokens import token_matches

# What `apply_event` ends a job with (worker.jobs): `dead` is a dead letter written.
EVENT_OUTCOMES = ("applied", "stale", "ignored", "duplicate", "dead")
# Why a job was put back for another try: an error (counted towards the dead letter), the database
# away (retried as long as it lasts), or the dead letter itself not written.
RETRY_REASONS = ("error", "database_unreachable", "dead_letter_unwritten")
NOTICE_CHANNELS = ("email", "chat", "fulfilment")
# sent; retried (a failed try, another follows); dead (the last try failed); undeliverable
# (this worker's configuration cannot send it: nothing was tried).
NOTICE_OUTCOMES = ("sent", "retried", "dead", "undeliverable")


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
        self._metrics: WSGIApplication = make_wsgi_app(registry)
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

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
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


def _bearer(environ: WSGIEnvironment) -> str:
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _family(host: str, port: int) -> int:
    """IPv4 or IPv6, as `host` asks (`::` listens on IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
