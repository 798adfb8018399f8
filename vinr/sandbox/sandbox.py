"""The emulated VINR as one object: the world, webhook delivery, API keys, rate limits, faults.

`create_app` serves it; tests and benchmarks reach it on `app.state.sandbox` to seed data,
register endpoints and wait for deliveries. Its repr shows no key and no secret.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from secrets import token_hex
from typing import TYPE_CHECKING, Any

from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.delivery import Deliverer, Endpoint, new_secret
from vinr.sandbox.errors import SandboxError
from vinr.sandbox.state import State

if TYPE_CHECKING:
    from vinr.sandbox.seeding import SeedReport


class RateLimiter:
    """A token bucket per key: `rate` requests per second, bursts up to one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def wait(self, key: int) -> float:
        """0 if this request may go now (and counts it), else the seconds until one may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class Sandbox:
    """VINR as the tests see it. Build one per test (or let `create_app` build it)."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config = config or SandboxConfig()
        self.seed_used = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        # One seed, two streams: faults on the API do not shift the deliveries' bad days.
        master = random.Random(self.seed_used)
        delivery_rng, self._faults = random.Random(master.getrandbits(64)), random.Random(master.getrandbits(64))
        self.state = State(config.clock, config.id_namespace, config.hosted_base)
        self.deliverer = Deliverer(config, delivery_rng, config.clock)
        self.state.on_event = self.deliverer.on_event
        self._keys = tuple(config.api_keys) or ("vinr_test_" + token_hex(16),)
        self._limiter = RateLimiter(config.rate_limit)
        for endpoint in config.endpoints:
            self.add_endpoint(endpoint.url, endpoint.secrets)

    def __repr__(self) -> str:
        return (
            f"Sandbox(seed={self.seed_used}, customers={len(self.state.customers)}, "
            f"invoices={len(self.state.invoices)}, events={len(self.state.events)}, "
            f"endpoints={len(self.deliverer.endpoints)})"
        )

    @property
    def api_key(self) -> str:
        """The (first) key the API accepts in `X-Api-Key`."""
        return self._keys[0]

    # webhook endpoints

    def add_endpoint(self, url: str, secrets: Iterable[str] = ()) -> Endpoint:
        """Deliver every later event to `url`, signed with each secret (one is made up if none)."""
        if not url.startswith(("http://", "https://")):
            raise SandboxError(400, "url_invalid", "url must be an http(s) URL")
        chosen = tuple(secrets) or (new_secret(),)
        if not all(isinstance(s, str) and s for s in chosen):
            raise SandboxError(400, "parameter_invalid", "secrets must be non-empty strings")
        endpoint = Endpoint(self.state.new_id("we"), url, chosen)
        self.deliverer.endpoints.append(endpoint)
        return endpoint

    def remove_endpoint(self, endpoint_id: str) -> Endpoint:
        for endpoint in self.deliverer.endpoints:
            if endpoint.id == endpoint_id:
                self.deliverer.endpoints.remove(endpoint)
                return endpoint
        raise SandboxError(404, "resource_missing", f"No such webhook endpoint: '{endpoint_id}'")

    # the gate every API request passes

    def admit(self, key: str | None) -> None:
        """Raise the `SandboxError` VINR would answer with (401, 429, injected 500/429), if any."""
        slot = self._slot(key)
        if slot is None:
            raise SandboxError(
                401, "api_key_invalid", "Invalid or missing API key in the X-Api-Key header.", "authentication_error"
            )
        wait = self._limiter.wait(slot)
        if wait:
            raise SandboxError(
                429,
                "rate_limited",
                f"Too many requests: the limit is {self.config.rate_limit:g} per second.",
                "rate_limit_error",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if self.config.error_rate and self._faults.random() < self.config.error_rate:
            if self._faults.random() < 0.5:
                raise SandboxError(500, "api_error", "An error occurred on VINR's side (injected).", "api_error")
            raise SandboxError(
                429, "rate_limited", "Too many requests (injected).", "rate_limit_error", headers={"Retry-After": "1"}
            )

    def _slot(self, key: str | None) -> int | None:
        if not key:
            return None
        found = None
        for i, candidate in enumerate(self._keys):
            # Every key is compared in full, so timing does not tell which one nearly matched.
            if hmac.compare_digest(candidate.encode(), key.encode("utf-8", "replace")):
                found = i
        return found

    # deliveries

    @asynccontextmanager
    async def delivering(self) -> AsyncIterator[None]:
        """Send webhooks while inside; the app's lifespan uses this, as can ASGITransport users."""
        await self.deliverer.start()
        try:
            yield
        finally:
            await self.deliverer.stop()

    async def deliveries_idle(self, timeout: float | None = 30.0) -> None:
        """Return once every delivery so far has succeeded or been given up (retries included).

        Works from any event loop; returns at once when not delivering; raises `TimeoutError`
        after `timeout` seconds (None: wait as long as it takes).
        """
        await self.deliverer.idle(timeout)

    def wait_deliveries_idle(self, timeout: float | None = 30.0) -> None:
        """`deliveries_idle` for a plain thread while the sandbox runs in another one."""
        self.deliverer.wait_idle(timeout)

    # bulk data

    def seed(self, count: int, **options: Any) -> SeedReport:
        """`seeding.seed_invoices(self.state, count, **options)`."""
        from vinr.sandbox.seeding import seed_invoices

        return seed_invoices(self.state, count, **options)
