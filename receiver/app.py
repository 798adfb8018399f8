"""The receiver's Starlette app: webhook ingest, health, readiness, metrics and the `/api` frame.

Nothing connects at import time or in `create_app`: the lifespan opens the Redis client and
the database engine and closes them on shutdown. Handlers find them in `request.state`, under
the names of `ReceiverState`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ledger.db import create_engine
from receiver import health, openapi
from receiver.api import api_mount
from receiver.dashboard import dashboard_mount
from receiver.enqueue import Enqueuer
from receiver.metrics import Metrics
from receiver.webhooks import WebhookEndpoint
from vinr_recon.redis_connect import redis_client, redis_for
from vinr_recon.settings import Settings

# Short, so a Redis that is down or stuck turns into a 503 in well under 2 s.
REDIS_TIMEOUT = 1.0


class ReceiverState(TypedDict):
    """What every request finds in `request.state` (e.g. `request.state.engine`)."""

    settings: Settings
    redis: Redis
    engine: AsyncEngine
    enqueuer: Enqueuer
    metrics: Metrics


# A client that fails fast: short timeouts, one immediate retry on a dropped connection. The retry
# covers a pooled connection that died with a Redis restart or a failover (with Sentinels, it
# reconnects to the primary they name now); the Lua script is idempotent, so resending a batch
# never queues an event twice.
FAIL_FAST: dict[str, Any] = dict(socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                                 retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])


def connect_redis(url: str) -> Redis:
    """A fail-fast client of the Redis at `url` (see FAIL_FAST)."""
    # A dict of options also matches the overload that takes `redis_class`, whose result is then Any.
    client: Redis = redis_client(url, **FAIL_FAST)
    return client


WEBHOOK_PATH = "/webhooks/vinr"
# Answer any Host: the orchestrator's probes and Prometheus name the pod's address, not the
# public host (/metrics has METRICS_TOKEN for a guard).
PROBES = ("/healthz", "/readyz", "/metrics")


async def to_dashboard(request: Request) -> Response:
    """`/dashboard` to `/dashboard/`, by a relative URL (never one built from the Host header)."""
    return RedirectResponse(request.scope.get("root_path", "") + "/dashboard/", 307)


class AllowedHosts:
    """Starlette's TrustedHostMiddleware (400 for a Host not in ALLOWED_HOSTS, no www redirect),
    but the probes answer whatever Host they name. The webhook never gets here (ReceiverApp)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PROBES:
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


class ReceiverApp(Starlette):
    """Starlette, but `POST /webhooks/vinr` goes straight to its endpoint.

    The webhook is nearly all of the traffic, and its endpoint is a plain ASGI app that answers
    every case itself (it raises nothing it expects; anything else still becomes uvicorn's bare
    500). Skipping Starlette's middleware chain and router spares it a good part of the
    per-request cost. Every other request, and the webhook path under another method or a
    `root_path`, is Starlette's as usual: the route stays registered, so e.g. `GET` gets 405.
    """

    def __init__(self, webhook: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self._webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, coalesce: bool = True) -> Starlette:
    """The receiver for `settings`. `coalesce=False` sends one round trip per request (bench only)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[ReceiverState]:
        redis = redis_for(settings, **FAIL_FAST)
        engine = create_engine(settings.database_url, writer=False)
        enqueuer = Enqueuer(redis, settings.queue_name, coalesce=coalesce, min_replicas=settings.redis_min_replicas)
        try:
            yield ReceiverState(settings=settings, redis=redis, engine=engine, enqueuer=enqueuer, metrics=metrics)
        finally:
            await enqueuer.close()
            await redis.aclose()
            await engine.dispose()

    webhook = WebhookEndpoint(settings, metrics)
    routes = [
        Route("/dashboard", to_dashboard, methods=["GET"]),
        Route(WEBHOOK_PATH, webhook, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        api_mount(settings),
        dashboard_mount(settings),
    ]
    hosts = settings.trusted_hosts
    middleware = [Middleware(AllowedHosts, allowed_hosts=hosts)] if hosts else []
    app = ReceiverApp(webhook, routes=routes, lifespan=lifespan, middleware=middleware)
    # Starlette builds its trailing-slash redirects from the Host header: none (see to_dashboard).
    app.router.redirect_slashes = False
    return app
