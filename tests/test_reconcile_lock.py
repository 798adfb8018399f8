"""reconcile.lock against a real Redis (redis-py's Lock underneath): one holder per key, release
of its own lock only, renewal past the expiry, and a holder stopped with `LockLost` when the
lock is taken from it or Redis stays away."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from conftest import unique
from receiver_support import private_redis  # noqa: F401  (a fixture)
from reconcile.lock import LOCK_LOST, LockLost, exclusive, lock_key


@pytest.fixture
def key(redis):
    return lock_key(unique("arq:queue:lock"))


async def test_one_holder_at_a_time_and_the_next_may_take_it_once_released(redis, key):
    async with exclusive(redis, key=key) as first:
        assert first
        async with exclusive(redis, key=key) as second:
            assert not second
        async with exclusive(redis, key=lock_key(unique("arq:queue:other"))) as elsewhere:
            assert elsewhere  # another installation's lock
    assert await redis.exists(key) == 0
    async with exclusive(redis, key=key) as again:
        assert again


async def test_the_holder_keeps_the_lock_past_its_expiry_by_renewing_it(redis, key):
    async with exclusive(redis, ttl=1.5, key=key) as held:  # renewed every 0.5 s
        assert held
        await asyncio.sleep(3.5)  # more than twice the expiry
        assert await redis.exists(key) == 1
        async with exclusive(redis, key=key) as second:
            assert not second


async def test_a_lock_taken_by_another_run_stops_the_holder_and_is_left_to_that_run(redis, key):
    async def run():
        async with exclusive(redis, ttl=0.6, key=key) as held:
            assert held
            await redis.set(key, "another-run", px=30_000)  # ours expired meanwhile; another took it
            await asyncio.sleep(30)

    try:
        with pytest.raises(LockLost, match=LOCK_LOST):
            await asyncio.wait_for(run(), timeout=10)
        assert await redis.get(key) == b"another-run"  # released only our own
    finally:
        await redis.delete(key)


async def test_a_holder_whose_redis_stays_away_stops_before_its_lock_could_expire(private_redis):  # noqa: F811
    redis = Redis.from_url(private_redis.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        async def run():
            async with exclusive(redis, ttl=0.9, key=lock_key("q")) as held:
                assert held
                private_redis.stop()
                await asyncio.sleep(30)

        with pytest.raises(LockLost, match=LOCK_LOST):
            await asyncio.wait_for(run(), timeout=10)
    finally:
        await redis.aclose()


async def test_a_holder_cancelled_for_another_reason_is_cancelled_not_lock_lost(redis, key):
    async def run():
        async with exclusive(redis, key=key):
            await asyncio.sleep(30)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await redis.exists(key) == 0  # and it let go of the lock
