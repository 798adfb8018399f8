"""Every knob of the sandbox in one frozen dataclass; cheap to import (stdlib only).

Secrets (API keys, webhook secrets) are excluded from the repr, so a config can be logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EndpointConfig:
    """A webhook endpoint known from the start; deliveries are signed with every secret."""

    url: str
    secrets: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves. Rates are probabilities in [0, 1]; times are seconds.

    Bad days all draw from one `random.Random(seed)`, so the same seed repeats a run: the same
    events dropped, duplicated, delayed and reshaped, the same API requests failed.
    """

    # API keys accepted in `X-Api-Key`; empty means one generated test key (`Sandbox.api_key`).
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Requests per second per key (VINR's sandbox: 25); 0 turns the limit off, e.g. for benchmarks.
    rate_limit: float = 25.0
    # Injected faults: this share of authenticated API requests fails, half 500, half 429.
    error_rate: float = 0.0

    endpoints: tuple[EndpointConfig, ...] = ()
    # One seed for every random choice; None picks one (see `Sandbox.seed_used`).
    seed: int | None = None
    duplicate_rate: float = 0.0  # share of deliveries sent more than once
    duplicate_count: int = 1  # extra copies of a duplicated delivery
    reorder_delay: float = 0.0  # each delivery waits uniformly up to this long (real seconds)
    drop_rate: float = 0.0  # share of deliveries never sent (the event is still listed)
    old_shape_rate: float = 0.0  # share sent in the older shape: `data` is the invoice itself
    snake_case_rate: float = 0.0  # share sent with snake_case invoice keys
    # Multiplies VINR's retry schedule (minutes to days); 0.0001 makes 3 days about 25 s.
    time_scale: float = 1.0
    # Seconds a page of the invoice list takes to arrive after it was read, as over a real
    # network: the invoices may move (and their webhooks go out) while the answer travels.
    list_latency: float = 0.0
    delivery_timeout: float = 10.0
    delivery_concurrency: int = 32  # requests in flight at once, over all endpoints

    # Part of every id, so two sandboxes (or two runs) never hand out the same `inv_...`.
    # None picks a random one; fix it only to compare runs byte for byte.
    id_namespace: str | None = None
    hosted_base: str = "https://pay.vinr.com"
    # Unix seconds; the delivery's signature timestamp comes from here too.
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        for name in ("error_rate", "duplicate_rate", "drop_rate", "old_shape_rate", "snake_case_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        for name in ("rate_limit", "reorder_delay", "time_scale", "list_latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.duplicate_count < 1:
            raise ValueError("duplicate_count must be at least 1")
        if self.delivery_timeout <= 0 or self.delivery_concurrency < 1:
            raise ValueError("delivery_timeout and delivery_concurrency must be positive")
