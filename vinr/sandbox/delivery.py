"""Webhook delivery: each event POSTed, signed (contract section 1), retried with backoff for
up to about 3 days, with VINR's bad days (contract section 2) on purpose.

What a bad day does to an event is decided the moment the event happens, from one seeded
`random.Random`, so the same seed repeats the same drops, copies, delays and shapes. Sending
happens later, on the event loop of the app's lifespan: a few worker tasks take deliveries off
a queue; delays and retries are timers that put them back. Every attempt is recorded on the
event, so the Events API shows it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.state import EventRecord
from vinr.sandbox.views import invoice_json
from vinr.signature import sign_many

log = structlog.get_logger("vinr.sandbox.delivery")

# VINR retries after 1 minute, doubling each time: 13 attempts spread over about 2.8 days.
RETRY_DELAYS: tuple[int, ...] = tuple(60 * 2**n for n in range(12))


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


@dataclass(slots=True)
class Endpoint:
    id: str
    url: str
    secrets: tuple[str, ...] = field(repr=False)


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint without its secrets (those are shown once, when it is created)."""
    return {"id": endpoint.id, "object": "webhook_endpoint", "url": endpoint.url}


@dataclass(slots=True, frozen=True)
class Attempt:
    endpoint: str
    copy: int  # 0 is the original, 1.. the bad day's duplicates
    attempt: int  # 1 is the first try, then each retry
    at: float
    status: int | None  # the HTTP status, or None when the request itself failed
    error: str | None


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "endpoint": attempt.endpoint,
        "copy": attempt.copy,
        "attempt": attempt.attempt,
        "at": attempt.at,
        "status": attempt.status,
        "error": attempt.error,
    }


@dataclass(slots=True, frozen=True)
class Report:
    """One attempt as a delivery log shows it (`vinr-recon sandbox` prints each): what went
    where, the answer, how long it took, and when it is tried again (None: delivered, or given up)."""

    event_id: str
    event_type: str
    url: str
    copy: int
    attempt: int
    status: int | None
    error: str | None
    seconds: float
    retry_in: float | None


# --- what a bad day does -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Plan:
    """One event at one endpoint: its shape, and when each copy leaves (none when dropped)."""

    old_shape: bool
    snake_case: bool
    delays: tuple[float, ...]


class BadDays:
    """Draws each plan from the seeded generator; the same number of draws whatever the rates."""

    def __init__(self, config: SandboxConfig, rng: random.Random):
        self._c = config
        self._rng = rng

    def plan(self) -> Plan:
        c, r = self._c, self._rng
        dropped = r.random() < c.drop_rate
        duplicated = r.random() < c.duplicate_rate
        old_shape = r.random() < c.old_shape_rate
        snake_case = r.random() < c.snake_case_rate
        first = r.random() * c.reorder_delay
        delays = [first]
        if duplicated:
            for _ in range(c.duplicate_count):
                # Half the copies race the original; the others follow it a little later.
                racing = r.random() < 0.5
                later = r.random() * max(c.reorder_delay, 0.05)
                delays.append(first if racing else first + later)
        return Plan(old_shape, snake_case, () if dropped else tuple(delays))


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _snake_invoice(invoice: dict[str, Any]) -> dict[str, Any]:
    """The invoice with snake_case keys, as older payloads had them; metadata keys untouched."""
    out = {_snake(k): v for k, v in invoice.items()}
    if isinstance(out.get("last_payment_error"), dict):
        out["last_payment_error"] = {_snake(k): v for k, v in out["last_payment_error"].items()}
    out["lines"] = {**out["lines"], "data": [{_snake(k): v for k, v in line.items()} for line in out["lines"]["data"]]}
    return out


def event_body(event: EventRecord, hosted_base: str, old_shape: bool = False, snake_case: bool = False) -> bytes:
    """The bytes of one delivery: the newer shape, or the older one (`data` is the invoice and
    `amountDue` is still called `amountRemaining`), camelCase or snake_case."""
    invoice = invoice_json(event.snapshot, hosted_base)
    if old_shape:
        invoice["amountRemaining"] = invoice.pop("amountDue")
    if snake_case:
        invoice = _snake_invoice(invoice)
    envelope = {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created": event.created,
        "livemode": False,
        "data": invoice if old_shape else {"object": invoice},
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


# --- sending -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Delivery:
    event: EventRecord
    endpoint: Endpoint
    body: bytes
    copy: int
    attempts: int = 0
    timer: asyncio.TimerHandle | None = None


class Deliverer:
    """Plans each event's deliveries when it happens; sends them while `start`ed.

    Events that happen before `start` (or with no running app, e.g. over `ASGITransport`
    without a lifespan) wait in a backlog and leave when it starts.
    """

    def __init__(self, config: SandboxConfig, rng: random.Random, clock: Callable[[], float]):
        self._config = config
        self._clock = clock
        self._hosted_base = config.hosted_base.rstrip("/")
        self._bad_days = BadDays(config, rng)
        self.endpoints: list[Endpoint] = []
        self._backlog: list[tuple[Delivery, float]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._queue: asyncio.Queue[Delivery] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._outstanding = 0
        self._idle: asyncio.Event | None = None
        # Told of every attempt once it is answered (or failed), on the loop; e.g. a printer.
        self.on_attempt: Callable[[Report], None] | None = None

    def on_event(self, event: EventRecord) -> None:
        """Decide this event's fate at every endpoint and hand its deliveries to the sender."""
        for endpoint in list(self.endpoints):
            plan = self._bad_days.plan()
            if not plan.delays:
                log.debug("webhook dropped on purpose", event_id=event.id, endpoint=endpoint.id)
                continue
            body = event_body(event, self._hosted_base, plan.old_shape, plan.snake_case)
            for copy, delay in enumerate(plan.delays):
                self._submit(Delivery(event, endpoint, body, copy), delay)

    def _submit(self, delivery: Delivery, delay: float) -> None:
        loop = self._loop
        if loop is None:
            self._backlog.append((delivery, delay))
        elif threading.get_ident() == self._loop_thread:
            self._schedule(delivery, delay)
        else:
            loop.call_soon_threadsafe(self._schedule, delivery, delay)

    # everything below runs on the loop

    def _schedule(self, delivery: Delivery, delay: float) -> None:
        self._outstanding += 1
        self._idle.clear()
        self._after(delay, delivery)

    def _after(self, delay: float, delivery: Delivery) -> None:
        if delay <= 0:
            self._queue.put_nowait(delivery)
            return
        delivery.timer = self._loop.call_later(delay, self._due, delivery)
        self._timers.add(delivery.timer)

    def _due(self, delivery: Delivery) -> None:
        self._timers.discard(delivery.timer)
        delivery.timer = None
        self._queue.put_nowait(delivery)

    def _finished(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def start(self) -> None:
        """Begin sending (from the app's lifespan): the backlog first, then events as they come."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client = httpx.AsyncClient(timeout=self._config.delivery_timeout)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._config.delivery_concurrency)]
        backlog, self._backlog = self._backlog, []
        for delivery, delay in backlog:
            self._schedule(delivery, delay)

    async def stop(self) -> None:
        """Stop sending: pending deliveries and retries are abandoned (their attempts stay recorded)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
        self._loop = self._loop_thread = self._client = None
        self._outstanding = 0
        if self._idle is not None:
            self._idle.set()

    async def idle(self, timeout: float | None = None) -> None:
        """Return once no delivery is waiting, in flight or due for a retry (any event loop)."""
        loop, idle = self._loop, self._idle
        if loop is None or idle is None:
            return
        if loop is asyncio.get_running_loop():
            await asyncio.wait_for(idle.wait(), timeout)
        else:
            future = asyncio.run_coroutine_threadsafe(idle.wait(), loop)
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def wait_idle(self, timeout: float | None = None) -> None:
        """`idle` for a thread that is not running the sandbox's loop (e.g. a sync test)."""
        loop, idle = self._loop, self._idle
        if loop is None or idle is None:
            return
        asyncio.run_coroutine_threadsafe(idle.wait(), loop).result(timeout)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            await self._attempt(delivery)

    async def _attempt(self, d: Delivery) -> None:
        d.attempts += 1
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": "VINR-Sandbox/1",
            "x-vinr-signature": sign_many(d.body, d.endpoint.secrets, timestamp),
        }
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            response = await self._client.post(d.endpoint.url, content=d.body, headers=headers)
            status = response.status_code
        except Exception as exc:  # any failure to get an answer is a failed delivery, retried
            error = type(exc).__name__
        seconds = time.perf_counter() - started
        if d.event.attempts is None:
            d.event.attempts = []
        d.event.attempts.append(Attempt(d.endpoint.id, d.copy, d.attempts, round(self._clock(), 3), status, error))
        context = {"event_id": d.event.id, "endpoint": d.endpoint.id, "copy": d.copy, "attempt": d.attempts}
        retry_in: float | None = None
        if status is not None and 200 <= status < 300:
            log.debug("webhook delivered", status=status, **context)
            self._finished()
        elif d.attempts <= len(RETRY_DELAYS):
            retry_in = RETRY_DELAYS[d.attempts - 1] * self._config.time_scale
            log.info("webhook delivery failed, will retry", status=status, error=error, retry_in=retry_in, **context)
            self._after(retry_in, d)
        else:
            log.warning("webhook delivery abandoned", status=status, error=error, **context)
            self._finished()
        if self.on_attempt is not None:
            report = Report(d.event.id, d.event.type, d.endpoint.url, d.copy, d.attempts, status, error, seconds,
                            retry_in)
            try:
                self.on_attempt(report)
            except Exception:  # a log that cannot be written (a closed stdout) must not stop delivery
                log.warning("delivery log failed", exc_info=True, event_id=d.event.id)
