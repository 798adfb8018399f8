"""Delivering the outbox (ledger.outbox): the `deliver_notice` job, the sweep, and replay.

A notice is staged with the ledger change behind it and queued once that commits; a crash in
between loses nothing, because the sweep (an arq cron job, every minute and at start-up) queues
any notice still pending after a few seconds. The job id is the notice's, so neither path runs it
twice at once. A failed try is retried with capped exponential backoff and jitter; after the last
one the notice is `dead`, with its error, until `vinr-recon replay --notices` queues it again.
A notice this worker cannot deliver (its channel not configured, or an email with no recipient)
is `undeliverable` at once, with the reason: nothing was tried, so it is no dead notice.

Delivery is at least once: a worker killed between the send and the commit of `sent` sends again,
which is why the fulfilment callback carries an idempotency key.

Who gets an alert email: `accountManager` in the invoice's metadata, else in the customer's (the
ledger's copy, which reconciliation refreshes; read from VINR when there is none and VINR_API_KEY
is set), else ALERT_DEFAULT_RECIPIENT; with none, the email is undeliverable at
once (the chat message still goes) and the log says why.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from arq import Retry
from arq.cron import CronJob, cron
from arq.worker import Function, func
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import outbox
from ledger.customers import cached_customer
from ledger.outbox import configured_channels
from vinr.client import NotFound, RetryPolicy as ClientRetry, VinrClient, VinrError
from vinr_recon.jobs import DELIVER_NOTICE, enqueue_notices, notice_job_id, queue_redis
from vinr_recon.settings import Settings, vinr_client
from worker import channels, render
from worker.jobs import RetryPolicy
from worker.state import WorkerState, state

if TYPE_CHECKING:  # a row of the outbox, as ledger.outbox hands it back
    from ledger.tables import AnyRow

log = structlog.get_logger("worker.notices")

# About four hours of tries (2 s doubling to 30 min between them) before a notice is dead: an
# SMTP server or a merchant app down for a while still gets it.
NOTICE_RETRY = RetryPolicy(tries=20, base_delay=2.0, max_delay=1800.0, attempt_timeout=30.0)
SWEEP_AFTER = timedelta(seconds=10)  # pending this long, and not queued: the commit's enqueue was lost
# Alerts about one invoice: addressed to its account manager (the customer's, when the invoice names none).
INVOICE_ALERTS = frozenset({"payment_failed", "uncollectible"})
SWEEP_LIMIT = 1000
REPLAY_EXPIRES = timedelta(days=30)


def recipient(invoice_metadata: dict[str, str], customer: dict[str, Any] | None, default: str | None) -> str | None:
    """Who hears of an invoice's failed payment (see the module's docstring)."""
    customer_metadata = (customer or {}).get("metadata") or {}
    return invoice_metadata.get("accountManager") or customer_metadata.get("accountManager") or default or None


class Notifier:
    """Sends one notice on its channel, with the configuration and clients of one worker."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None,
                 vinr: VinrClient | None = None) -> None:
        self.settings = settings
        # Each channel's configuration, or None where this worker lacks it (see `missing`); a
        # blank setting is unset already (Settings).
        self.smtp = channels.SmtpServer.parse(settings.smtp_url) if settings.smtp_url is not None else None
        self._fulfilment = ((settings.fulfilment_url, settings.fulfilment_secret)
                            if settings.fulfilment_url and settings.fulfilment_secret is not None else None)
        self._chat_url = settings.alert_webhook_url
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._vinr = vinr
        if vinr is None and settings.vinr_api_key is not None:
            self._vinr = vinr_client(settings, timeout=channels.TIMEOUT,
                                                  retry=ClientRetry(max_attempts=2, base_delay=0.5))
        # Every configured secret, so no error text stored or logged can carry one.
        self._secrets = [value.get_secret_value() for value in (
            settings.smtp_url, settings.alert_webhook_url, settings.fulfilment_secret, settings.vinr_api_key,
            self.smtp.password if self.smtp else None,
        ) if value is not None and value.get_secret_value()]

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._vinr is not None:
            await self._vinr.aclose()

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    async def send(self, channel: str, kind: str, payload: dict[str, Any], key: str | None = None,
                   cached: dict[str, Any] | None = None) -> dict[str, Any]:
        """Deliver one notice (`key`: its outbox key; `cached`: the ledger's copy of its customer);
        returns what to log about it. Raises `channels.DeliveryError` (or
        any error) to be tried again, `channels.Undeliverable` when no try can succeed."""
        settings = self.settings
        missing = self.missing(channel)
        if missing is not None:
            raise channels.Undeliverable(missing)
        if channel == "fulfilment" and self._fulfilment is not None:
            url, secret = self._fulfilment
            body, headers = channels.signed_callback(payload, secret, int(time.time()))
            await channels.post_callback(self._http, url, body, headers)
            return {}
        if channel == "chat" and self._chat_url is not None:
            customer = cached or await self._customer(payload, needed=False)
            alert = render.render(kind, payload, customer, settings.money_locale)
            await channels.post_chat(self._http, self._chat_url, render.slack_message(alert))
            return {}
        if channel == "email" and self.smtp is not None:
            metadata = payload.get("metadata") or {}
            needed = kind in INVOICE_ALERTS and "accountManager" not in metadata
            customer = cached or await self._customer(payload, needed=needed)
            to = recipient(metadata, customer, settings.alert_default_recipient)
            if to is None:
                raise channels.Undeliverable(
                    "no recipient: no accountManager in the invoice's or customer's metadata and "
                    "ALERT_DEFAULT_RECIPIENT is not set")
            alert = render.render(kind, payload, customer, settings.money_locale)
            await channels.send_email(self.smtp, channels.email_message(settings.alert_email_from, to, alert, key))
            return {"recipient": to}
        raise channels.Undeliverable(f"unknown channel {channel!r}")

    def missing(self, channel: str) -> str | None:
        """Why this worker can deliver nothing on `channel` (the settings it lacks), or None."""
        if channel == "fulfilment" and self._fulfilment is None:
            return "FULFILMENT_URL and FULFILMENT_SECRET are not both set"
        if channel == "chat" and self._chat_url is None:
            return "ALERT_WEBHOOK_URL is not set"
        if channel == "email" and self.smtp is None:
            return "SMTP_URL is not set"
        return None

    async def _customer(self, payload: dict[str, Any], *, needed: bool) -> dict[str, Any] | None:
        """VINR's customer of an alert's invoice, if it can be read. When the recipient depends
        on it (`needed`), a VINR outage is a failed try; otherwise the alert goes without it."""
        customer_id = payload.get("customer")
        if self._vinr is None or not customer_id or "invoiceId" not in payload:
            return None
        try:
            return await self._vinr.get_customer(customer_id)
        except NotFound:
            return None
        except VinrError as exc:
            if needed:
                raise channels.DeliveryError(f"customer {customer_id} not read from VINR: {exc}") from None
            log.warning("customer not read from VINR; alert sent without it", customer=customer_id, error=str(exc))
            return None


# --- The job --------------------------------------------------------------------------------


async def deliver_notice(ctx: dict[str, Any], notice_id: int) -> str:
    """Send one outbox notice; returns sent, dead, or (nothing to do) its status or missing.

    Raises only `arq.Retry` (and RuntimeError if run before the worker's start-up made its
    notifier); the ledger is never touched beyond the notice's own row.
    """
    worker = state(ctx)
    policy = worker.notice_policy or NOTICE_RETRY
    notifier = worker.notifier
    if notifier is None:
        raise RuntimeError("deliver_notice ran before the worker's start-up made its notifier")
    attempt: int = ctx.get("job_try", 1)
    with structlog.contextvars.bound_contextvars(notice_id=notice_id, job_id=ctx.get("job_id")):
        async with worker.engine.connect() as conn:
            row = await outbox.notice_by_id(conn, notice_id)
            # The ledger's copy of the customer (ledger.customers) names it; VINR is asked only without one.
            cached = (await cached_customer(conn, row.payload.get("customer"))
                      if row is not None and row.kind in INVOICE_ALERTS else None)
        if row is None:
            log.warning("notice not found")
            return "missing"
        if row.status != "pending":
            return str(row.status)
        structlog.contextvars.bind_contextvars(invoice_id=row.invoice_id, kind=row.kind, channel=row.channel)
        try:
            async with asyncio.timeout(policy.attempt_timeout):
                detail = await notifier.send(row.channel, row.kind, row.payload, row.key, cached=cached)
        except channels.Undeliverable as exc:
            error, final = notifier.scrub(str(exc)), True
        except Exception as exc:  # a channel down, a timeout, a bug: tried again
            error, final = notifier.scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), False
        else:
            await _settle(worker, notice_id, attempt, status="sent")
            log.info("notice sent", attempts=row.attempts + 1, **detail)
            _count(worker, row.channel, "sent")
            return "sent"
        if not final and attempt < policy.tries:
            delay = policy.backoff(attempt)
            await _settle(worker, notice_id, attempt, error=error)
            log.warning("notice not delivered, will retry", attempt=attempt, retry_in=round(delay, 2), error=error)
            _count(worker, row.channel, "retried")
            raise Retry(defer=delay)
        if final:  # nothing was tried: not a failure for the dead-notice gauge
            await _settle(worker, notice_id, attempt, status="undeliverable", error=error)
            log.warning("notice undeliverable by this worker's configuration", error=error)
            _count(worker, row.channel, "undeliverable")
            return "undeliverable"
        await _settle(worker, notice_id, attempt, status="dead", error=error)
        log.error("notice dead: replay it with `vinr-recon replay --notices`", attempts=row.attempts + 1, error=error)
        _count(worker, row.channel, "dead")
        return "dead"


def _count(worker: WorkerState, channel: str, outcome: str, count: int = 1) -> None:
    """Count notices on the worker's metrics, when it has them."""
    if worker.metrics is not None:
        worker.metrics.notice(channel, outcome, count)


async def _settle(worker: WorkerState, notice_id: int, attempt: int, *, status: str | None = None,
                  error: str | None = None) -> None:
    """Count the try on the notice's row (and its new status). If even that fails, the job is
    tried again: the notice stays pending rather than being lost."""
    try:
        async with worker.writing(), worker.engine.begin() as conn:
            await outbox.record_try(conn, notice_id, status=status, error=error)
    except Exception as exc:
        policy = worker.notice_policy or NOTICE_RETRY
        log.error("notice's outcome not recorded, will retry", status=status, error=repr(exc))
        raise Retry(defer=policy.backoff(attempt)) from exc


# --- The sweep ------------------------------------------------------------------------------


async def sweep_notices(ctx: dict[str, Any]) -> int:
    """Queue every notice pending for more than a few seconds; returns how many. A notice whose
    job is queued, waiting for its retry or running is left alone (same job id)."""
    worker = state(ctx)
    older_than = datetime.now(UTC) - SWEEP_AFTER
    await _settle_unconfigured(worker, older_than)
    async with worker.engine.connect() as conn:
        ids = await outbox.pending_ids(conn, older_than, limit=SWEEP_LIMIT)
    await enqueue_notices(ctx["redis"], worker.queue_name, ids)  # arq's Redis
    if ids:
        log.info("pending notices queued", count=len(ids))
    return len(ids)


async def _settle_unconfigured(worker: WorkerState, older_than: datetime) -> None:
    """Mark what this worker cannot deliver `undeliverable`, one statement per unconfigured
    channel however many there are: a merchant with no channel pays no job per notice."""
    notifier = worker.notifier
    if notifier is None:
        return
    for channel in ("email", "chat", "fulfilment"):
        reason = notifier.missing(channel)
        if reason is None:
            continue
        async with worker.writing(), worker.engine.begin() as conn:
            count = await outbox.mark_undeliverable(conn, channel, older_than, reason)
        if count:
            log.info("notices undeliverable by this worker's configuration", channel=channel, count=count,
                     error=reason)
            _count(worker, channel, "undeliverable", count)


def notice_crons(settings: Settings) -> list[CronJob]:
    """The sweep, every minute and at start-up, when any channel is configured (it also marks
    undeliverable what another process staged on a channel this worker lacks). With none, this
    worker stages its own notices undeliverable, and what a reconciliation staged is queued by
    it and found undeliverable at delivery. Not unique: arq's unique cron ids are global to a
    Redis, so a second deployment's queue would lose its sweeps; with several workers, a notice is
    still queued once (its job id)."""
    if not configured_channels(settings):
        return []
    return [cron(sweep_notices, name="sweep_notices", run_at_startup=True, unique=False)]


def notice_functions() -> list[Function]:
    return [func(deliver_notice, name=DELIVER_NOTICE, keep_result=0)]


# --- Replay ---------------------------------------------------------------------------------


async def replay_notices(engine: AsyncEngine, redis: Redis, queue_name: str,
                         ids: list[int] | None = None) -> list[tuple[AnyRow, bool]]:
    """Make dead notices pending again and queue each under its own job id (the sweep's too, so
    the two never run one notice at once); returns (notice as it was, queued now)."""
    async with engine.begin() as conn:
        notices = await outbox.dead_notices(conn, ids)
        if notices:
            await outbox.revive_notices(conn, [n.id for n in notices])
    queued, arq_redis = [], queue_redis(redis)
    for notice in notices:
        job = await arq_redis.enqueue_job(DELIVER_NOTICE, notice.id, _job_id=notice_job_id(queue_name, notice.id),
                                      _queue_name=queue_name, _expires=REPLAY_EXPIRES)
        queued.append((notice, job is not None))
    return queued
