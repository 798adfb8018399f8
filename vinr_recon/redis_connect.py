"""Every process's Redis, from REDIS_URL or, with REDIS_SENTINELS, the primary the Sentinels name.

With Sentinels, a client asks them for the primary's address each time it opens a connection
(redis-py's `SentinelConnectionPool`), and drops a connection to an address they no longer name.
So after a failover the next connection (a retry after the old primary's connection broke) goes
to the new primary: no process needs a restart. REDIS_URL still gives the database number,
credentials and TLS; only its host and port are replaced by what the Sentinels say.

Nothing here connects: the clients connect on their first command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload
from urllib.parse import unquote, urlsplit

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisError,
    TimeoutError as RedisTimeoutError,
)

from vinr_recon.settings import Settings, check_redis

# A Sentinel that does not answer within this is skipped for the next one.
SENTINEL_TIMEOUT = 0.5

Client = TypeVar("Client", bound=Redis)
T = TypeVar("T")


class _SentinelPool(SentinelConnectionPool):
    """redis-py's pool, but closing it (the client's `aclose`) closes the Sentinel clients too."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # a full close; a failover's clean-up passes False
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def _url_options(url: str) -> dict[str, Any]:
    """What REDIS_URL says beside its address: database, credentials, TLS."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    return {
        "db": int(path) if path.isdigit() else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "ssl": parts.scheme == "rediss",
    }


@overload
def redis_client(url: str, sentinels: list[tuple[str, int]] | None = None, master: str = "mymaster", *,
                 redis_class: type[Client], **options: Any) -> Client: ...
@overload
def redis_client(url: str, sentinels: list[tuple[str, int]] | None = None, master: str = "mymaster",
                 **options: Any) -> Redis: ...
def redis_client(url: str, sentinels: list[tuple[str, int]] | None = None, master: str = "mymaster", *,
                 redis_class: type[Redis] = Redis, **options: Any) -> Redis:
    """A redis-py asyncio client (`redis_class`) of `url`'s server, or with `sentinels` of the
    primary they name `master`. `options`: connection options (timeouts, retry...)."""
    client: Redis  # redis-py leaves both constructors' results unannotated: an instance of `redis_class`
    if not sentinels:
        client = redis_class.from_url(url, **options)
        return client
    timeouts = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **_url_options(url))
    client = sentinel.master_for(master, redis_class=redis_class, connection_pool_class=_SentinelPool, **options)
    return client


@overload
def redis_for(settings: Settings, *, redis_class: type[Client], **options: Any) -> Client: ...
@overload
def redis_for(settings: Settings, **options: Any) -> Redis: ...
def redis_for(settings: Settings, *, redis_class: type[Redis] = Redis, **options: Any) -> Redis:
    """`redis_client` for the settings (checked first: `ConfigurationError` names a bad one)."""
    check_redis(settings)
    return redis_client(settings.redis_url, settings.sentinel_addresses, settings.redis_sentinel_master,
                        redis_class=redis_class, **options)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's `RedisSettings` for the settings: REDIS_URL's, or the Sentinels' (arq asks them for
    the primary through redis-py, as `redis_client` does)."""
    check_redis(settings)
    if not settings.sentinel_addresses:
        return RedisSettings.from_dsn(settings.redis_url)
    url = _url_options(settings.redis_url)
    return RedisSettings(host=settings.sentinel_addresses, sentinel=True, sentinel_master=settings.redis_sentinel_master,
                         database=url["db"], username=url["username"], password=url["password"], ssl=url["ssl"])


# A worker rides out a failover: Sentinel takes down-after-milliseconds (30 s by default) to see
# the primary down, then a few seconds to promote a replica. A command is retried, backing off
# to 1 s apart, for this long before the worker gives up (and its supervisor restarts it).
FAILOVER_SECONDS = 60.0


class RetryFor(Retry):
    """redis-py's Retry bounded by time, not by count: redis-py nests a connect's retries inside a
    command's, so counts multiply (70 tries of each would be 70 minutes), while deadlines do not."""

    __slots__ = ("_seconds",)

    def __init__(self, seconds: float) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), -1)
        self._seconds = seconds

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        deadline = time.monotonic() + self._seconds
        self._backoff.reset()
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                if time.monotonic() >= deadline:
                    raise error
                await asyncio.sleep(self._backoff.compute(failures))


def failover_retry(seconds: float = FAILOVER_SECONDS) -> dict[str, Any]:
    """Connection options that retry a command through a failover or a Redis restart."""
    return {
        "retry": RetryFor(seconds),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "socket_connect_timeout": 1.0,
        "socket_timeout": 5.0,  # no command of arq's blocks: a primary silent this long is gone
    }


def queue_pool(settings: Settings, job_format: dict[str, Any], **options: Any) -> ArqRedis:
    """An arq client of the queue's Redis (what `arq.create_pool` returns, without connecting)
    reading and writing jobs in `job_format` (serializer, deserializer)."""
    pool = redis_for(settings, redis_class=ArqRedis, **options)
    pool.job_serializer = job_format.get("job_serializer")
    pool.job_deserializer = job_format.get("job_deserializer")
    pool.default_queue_name = settings.queue_name
    return pool


async def primary_answers(redis: Redis) -> None:
    """Raises unless the primary answers PING; with Sentinels, also unless they name a primary
    (`MasterNotFoundError` when none is up, e.g. mid-failover)."""
    pool = redis.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        await pool.get_master_address()
    await redis.ping()
