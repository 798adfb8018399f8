"""The receiver's Starlette app: webhook ingest, health, readiness, metrics and the `/api` frame.

Nothing connects at import time or in `create_app`: the lifespan opens the Redis client and
the database engine and closes them on shutdown. Handlers find them in `request.state`, under
the names of `ReceiverState`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.routing import Route

from ledger.db import create_engine
from receiver import health
from receiver.api import api_mount
from receiver.enqueue import Enqueuer
from receiver.metrics import Metrics
from receiver.webhooks import WebhookEndpoint
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


def connect_redis(url: str) -> Redis:
    """A client that fails fast: short timeouts, one immediate retry on a dropped connection.

    The retry covers a pooled connection that died with a Redis restart; the Lua script is
    idempotent, so resending a batch never queues an event twice.
    """
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )


def create_app(settings: Settings, *, coalesce: bool = True) -> Starlette:
    """The receiver for `settings`. `coalesce=False` sends one round trip per request (bench only)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[ReceiverState]:
        redis = connect_redis(settings.redis_url)
        engine = create_engine(settings.database_url, writer=False)
        enqueuer = Enqueuer(redis, settings.queue_name, coalesce=coalesce)
        try:
            yield ReceiverState(settings=settings, redis=redis, engine=engine, enqueuer=enqueuer, metrics=metrics)
        finally:
            await enqueuer.close()
            await redis.aclose()
            await engine.dispose()

    routes = [
        Route("/webhooks/vinr", WebhookEndpoint(settings, metrics), methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        api_mount(settings),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
