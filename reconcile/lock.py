"""One reconciliation at a time across every worker and command line: a Redis lock with an expiry.

redis-py's `redis.asyncio.lock.Lock` takes it (SET NX PX, a token of its own), renews it
(`reacquire`: back to the full expiry, only while the token is ours) and releases it (only ours:
a run that outlived its expiry must not free the next run's lock). What it has no part for is
kept here: the holder renews it in the background, and a holder that can no longer renew it
(Redis refused, or the lock expired and someone else took it) must stop, as another run may
start beside it. So the renewer cancels the holding task with `LOCK_LOST` as the reason, and the
run records that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError

log = structlog.get_logger(__name__)

LOCK_KEY = "vinr-recon:reconcile:lock"
LOCK_LOST = "the reconciliation lock was lost: another run may have started"


def lock_key(queue_name: str) -> str:
    """One lock per installation: two that share a Redis (each with its own QUEUE_NAME) must not
    skip each other's runs."""
    return f"{LOCK_KEY}:{queue_name}"


class LockLost(Exception):
    """The holder could not keep the lock; what it was doing was stopped."""


@contextlib.asynccontextmanager
async def exclusive(redis: Redis, ttl: float = 120.0, key: str = LOCK_KEY) -> AsyncIterator[bool]:
    """Yield True while this process holds the lock (renewed in the background), False if another does.

    If the holder dies, the lock expires after `ttl` seconds and the next run may start. If the
    lock is lost while held, the holding task is cancelled (its CancelledError says `LOCK_LOST`)
    and `LockLost` is raised from here.
    """
    # Not thread-local: the renewer is another task, and the token is this call's alone anyway.
    lock = Lock(redis, key, timeout=ttl, blocking=False, thread_local=False)
    if not await lock.acquire():
        yield False
        return

    holder = asyncio.current_task()
    lost = False

    async def renew() -> None:
        nonlocal lost
        held_until = time.monotonic() + ttl
        while True:
            await asyncio.sleep(ttl / 3)
            renewed: bool | None  # None: not yet, but the lock may still be ours
            try:
                await lock.reacquire()
            except LockNotOwnedError:  # expired, and maybe taken by another run
                renewed = False
            except Exception as exc:  # Redis away: keep trying while the lock may still be ours
                log.warning("reconciliation lock not renewed, retrying", error=repr(exc))
                renewed = None if time.monotonic() < held_until - ttl / 6 else False
            else:
                renewed = True
            if renewed:
                held_until = time.monotonic() + ttl
            elif renewed is False:
                lost = True
                log.error("reconciliation lock lost; stopping the run")
                if holder is not None:
                    holder.cancel(LOCK_LOST)
                return

    renewer = asyncio.create_task(renew())
    try:
        yield True
    except asyncio.CancelledError:
        if lost and holder is not None and holder.uncancel() == 0:
            raise LockLost(LOCK_LOST) from None
        raise
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(Exception):  # not ours any more (LockNotOwnedError), or it expires by itself
            await lock.release()
