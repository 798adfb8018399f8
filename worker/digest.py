"""The daily digest: one email per account manager and day, staged through the outbox.

At ALERT_DIGEST_AT (UTC) the worker stages, in one transaction, one notice per manager with
anything to chase (ledger.digest), keyed `digest:{manager}:{YYYY-MM-DD}:email`; the outbox
delivers it as any alert (worker.notices: queued after the commit, swept if that queue was lost,
retried, dead after its last try). The key makes a day's digest once per manager however often
the job runs, which is what makes it safe to run it both at the time and at every start-up:

- a worker down at the digest time stages that day's digest when it starts, any time that day
  (and up to `LATE` after midnight, for a run queued just before it);
- a worker restarted after the day's digest was staged stages nothing: the job finds that day's
  keys already in the outbox and leaves it there, so a manager whose list was empty at the digest
  time does not get a late one at each deploy;
- before the day's time, the job does nothing (yesterday's is not sent the next morning).

With several workers, each runs the job; the keys (ON CONFLICT DO NOTHING) keep one per manager.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote

import structlog
from arq import Retry
from arq.cron import CronJob, cron

from ledger import digest as facts
from ledger.outbox import Channels, Notice, any_staged, configured_channels, stage
from vinr_recon.jobs import cron_name, enqueue_notices
from vinr_recon.settings import Settings
from worker.state import state

log = structlog.get_logger("worker.digest")

KIND = "digest"
LATE = timedelta(hours=1)  # a day's digest may still be staged this long after its day ended
KEY_LENGTH = 200  # the outbox key's column
RETRY_EVERY = 60.0  # seconds between tries when the ledger is away at the digest time
TRIES = 30


def digest_time(settings: Settings) -> time | None:
    """ALERT_DIGEST_AT as a time of day, or None when the digest is off."""
    text = (settings.alert_digest_at or "").strip()
    if not text:
        return None
    hour, minute = (int(part) for part in text.split(":"))
    return time(hour, minute)


def due_day(now: datetime, at: time) -> date | None:
    """The day whose digest is due at `now` (UTC): today once `at` has passed; yesterday within
    `LATE` of midnight when yesterday's time had passed by then; else none."""
    now = now.astimezone(UTC)
    today = now.date()
    if now >= datetime.combine(today, at, UTC):
        return today
    yesterday = today - timedelta(days=1)
    if now - datetime.combine(today, time(), UTC) < LATE:
        return yesterday
    return None


def notice_key(manager: str, day: date) -> str:
    """`digest:{manager}:{day}:email`; a manager too long for the key column by its hash."""
    key = f"digest:{manager}:{day.isoformat()}:email"
    if len(key) <= KEY_LENGTH:
        return key
    return f"digest:sha256-{hashlib.sha256(manager.encode()).hexdigest()[:32]}:{day.isoformat()}:email"


def invoice_link(public_origin: str | None, invoice_id: str) -> str | None:
    return f"{public_origin}/dashboard/invoices/{quote(invoice_id, safe='')}" if public_origin else None


def worklist_link(public_origin: str | None, manager: str) -> str | None:
    """The manager's page in the dashboard (their whole list, aging included)."""
    return f"{public_origin}/dashboard/managers/{quote(manager, safe='@')}" if public_origin else None


def payload(worklist: facts.Worklist, now: datetime, public_origin: str | None) -> dict[str, Any]:
    """Everything the email needs, as it stood when staged. `metadata.accountManager` addresses it
    (worker.notices.recipient) to the manager, as an invoice's alert is."""
    return {
        "accountManager": worklist.manager,
        "metadata": {"accountManager": worklist.manager},
        "day": worklist.day.isoformat(),
        "asOf": now.astimezone(UTC).isoformat(timespec="seconds"),
        "count": worklist.count,
        "totals": [{"currency": currency, "amountDue": amount} for currency, amount in sorted(worklist.totals.items())],
        "dashboard": worklist_link(public_origin, worklist.manager),
        "invoices": [
            {
                "invoiceId": chase.invoice_id, "number": chase.number, "customer": chase.customer,
                "customerName": chase.customer_name, "customerEmail": chase.customer_email,
                "status": chase.status, "section": chase.section, "currency": chase.currency,
                "amountDue": chase.amount_due, "total": chase.total, "attemptCount": chase.attempt_count,
                "dueDate": chase.due_date, "daysOverdue": chase.days_overdue,
                "lastFailure": worklist.last_failures.get(chase.invoice_id),
                "link": invoice_link(public_origin, chase.invoice_id),
            }
            for chase in worklist.invoices
        ],
        "resolved": [
            {
                "invoiceId": r.invoice_id, "number": r.number, "customer": r.customer,
                "customerName": r.customer_name, "customerEmail": r.customer_email, "currency": r.currency,
                "amountPaid": r.amount_paid, "paidAt": r.paid_at, "lastFailure": r.last_failure,
                "link": invoice_link(public_origin, r.invoice_id),
            }
            for r in worklist.resolved
        ],
    }


def notices(worklists: list[facts.Worklist], now: datetime, public_origin: str | None) -> list[Notice]:
    return [Notice(notice_key(w.manager, w.day), "email", KIND, None, payload(w, now, public_origin))
            for w in worklists]


async def stage_digests(ctx: dict[str, Any], settings: Settings, now: datetime) -> int:
    """Stage the digests due at `now`, unless that day's were staged already; queue their
    delivery after the commit. Returns how many were staged now."""
    at = digest_time(settings)
    day = due_day(now, at) if at is not None else None
    if day is None:
        return 0
    # Read before the write transaction: on SQLite the worker's writes wait for it (a second at
    # 100,000 invoices, bench/digest.py), and the keys, not the transaction, make it once a day.
    worker = state(ctx)
    async with worker.engine.connect() as conn:
        worklists = await facts.digests(conn, day, now, settings.alert_default_recipient)
    owed = notices(worklists, now, settings.public_origin)
    keys = [n.key for n in owed]
    async with worker.writing(), worker.engine.begin() as conn:
        if await any_staged(conn, keys):
            log.info("digests of the day already staged", day=day.isoformat())
            return 0
        staged = await stage(conn, owed, deliverable=Channels(email=True))
    await enqueue_notices(ctx["redis"], worker.queue_name, staged.values())  # arq's Redis
    log.info("digests staged", day=day.isoformat(), managers=len(staged),
             invoices=sum(w.count for w in worklists))
    return len(staged)


def digest_job(settings: Settings,
               clock: Callable[[], datetime] | None = None) -> Callable[[dict[str, Any]], Awaitable[int]]:
    """The cron job's coroutine; `clock` (tests) stands in for the wall clock."""

    async def stage_daily_digests(ctx: dict[str, Any]) -> int:
        now = clock() if clock is not None else datetime.now(UTC)
        try:
            return await stage_digests(ctx, settings, now)
        except Exception as exc:
            attempt = ctx.get("job_try", 1)
            if attempt >= TRIES:
                log.error("digests not staged: giving up for this run", attempt=attempt, error=repr(exc))
                raise
            log.warning("digests not staged, will retry", attempt=attempt, retry_in=RETRY_EVERY, error=repr(exc))
            raise Retry(defer=RETRY_EVERY) from exc

    return stage_daily_digests


def digest_crons(settings: Settings, clock: Callable[[], datetime] | None = None) -> list[CronJob]:
    """The digest at ALERT_DIGEST_AT and at every start-up (the key keeps one a day), or none when
    the digest is off or this worker has no SMTP_URL to send it with."""
    at = digest_time(settings)
    if at is None:
        return []
    if not configured_channels(settings).email:
        log.warning("daily digest is off: ALERT_DIGEST_AT is set but SMTP_URL is not")
        return []
    # arq's WorkerCoroutine wants *args and **kwargs, which it never passes a cron job.
    job = digest_job(settings, clock)
    return [cron(job, name=cron_name(settings.queue_name, "stage_digests"),  # type: ignore[arg-type]
                 hour=at.hour, minute=at.minute, run_at_startup=True, max_tries=TRIES)]
