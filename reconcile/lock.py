"""One reconciliation at a time across every worker and command line: a Redis lock with an expiry."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis

LOCK_KEY = "vinr-recon:reconcile:lock"


def lock_key(queue_name: str) -> str:
    """One lock per installation: two that share a Redis (each with its own QUEUE_NAME) must not
    skip each other's runs."""
    return f"{LOCK_KEY}:{queue_name}"

# Release only our own lock: a run that outlived its expiry must not free the next run's lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@contextlib.asynccontextmanager
async def exclusive(redis: Redis, ttl: float = 120.0, key: str = LOCK_KEY) -> AsyncIterator[bool]:
    """Yield True while this process holds the lock (renewed in the background), False if another does.

    If the holder dies, the lock expires after `ttl` seconds and the next run may start.
    """
    token = uuid.uuid4().hex
    if not await redis.set(key, token, nx=True, px=int(ttl * 1000)):
        yield False
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await redis.eval(_EXTEND, 1, key, token, int(ttl * 1000))

    renewer = asyncio.create_task(renew())
    try:
        yield True
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await redis.eval(_RELEASE, 1, key, token)
