"""The outbox: alerts and callbacks owed, staged in the transaction of the ledger change behind them.

What a write owes is decided by pure functions of what it did (`for_event`, `for_snapshot`,
`for_run`); `stage` writes it in one `INSERT ... ON CONFLICT DO NOTHING`, so a notice's key, not
the number of deliveries or paths that saw the change, decides how many there are:

    payment_failed:{event_id}:{email|chat}   each newly recorded invoice.payment_failed event
    uncollectible:{invoice_id}:{email|chat}  an invoice's first move to uncollectible (dunning gave up)
    paid:{invoice_id}:fulfilment             an invoice's first move to paid, by whatever path
    drift:{run_id}:{email|chat}              a reconciliation run that found drift or did not complete

What a fact owes does not depend on which process saw it first (issue 19): every process stages
on `EVERY_CHANNEL`, and delivery (the worker's, worker.notices, after the commit) decides by its
own configuration. The worker stages what it cannot deliver itself as `undeliverable` at once;
what another process (a `vinr-recon reconcile` from a shell) staged is `pending` until a worker
delivers it or marks it undeliverable. The pure functions still take `Channels`, so a test can
ask what a subset owes. A channel that is down never touches the ledger's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from ledger.book import EventResult
from ledger.db import dialect_insert
from ledger.posting import FINAL, Outcome
from ledger.tables import AnyRow, outbox, positions
from vinr.events import Event, Invoice
from vinr_recon.settings import ConfigurationError, Settings

ALERT_CHANNELS = ("email", "chat")


@dataclass(frozen=True)
class Channels:
    """Which channels are configured; false as a whole when none is."""

    email: bool = False
    chat: bool = False
    fulfilment: bool = False

    @property
    def alerts(self) -> tuple[str, ...]:
        return tuple(c for c in ALERT_CHANNELS if getattr(self, c))

    def __bool__(self) -> bool:
        return self.email or self.chat or self.fulfilment


def configured_channels(settings: Settings) -> Channels:
    """The alert and callback channels `settings` configure: the ledger stages notices for these.
    `ConfigurationError` for a callback URL without its secret, or an SMTP_URL of another scheme."""
    # A blank setting is unset already (Settings).
    if settings.fulfilment_url and not settings.fulfilment_secret:
        raise ConfigurationError("FULFILMENT_SECRET must be set with FULFILMENT_URL (see .env.example)")
    smtp = settings.smtp_url
    if smtp and not smtp.get_secret_value().strip().startswith(("smtp://", "smtps://")):
        raise ConfigurationError("SMTP_URL must look like smtp://user:password@host:port (or smtps://)")
    return Channels(email=bool(smtp), chat=bool(settings.alert_webhook_url), fulfilment=bool(settings.fulfilment_url))


NO_CHANNELS = Channels()
# What every stager uses (issue 19): a `vinr-recon reconcile` without FULFILMENT_URL in its
# environment, first to see an invoice paid, still stages the callback the worker can deliver.
EVERY_CHANNEL = Channels(email=True, chat=True, fulfilment=True)


@dataclass(frozen=True)
class Notice:
    key: str
    channel: str
    kind: str
    invoice_id: str | None
    payload: dict[str, Any]


# --- What a write owes (pure) -----------------------------------------------------------------


def _about_invoice(invoice: Invoice, source: str) -> dict[str, Any]:
    """What an alert about one invoice carries, whatever happened to it."""
    return {
        "source": source,
        "invoiceId": invoice.id,
        "number": invoice.number,
        "customer": invoice.customer,
        "status": invoice.status,
        "currency": invoice.currency,
        "total": invoice.total,
        "amountDue": invoice.amount_due,
        "attemptCount": invoice.attempt_count,
        "hostedInvoiceUrl": invoice.hosted_invoice_url,
        "metadata": dict(invoice.metadata),
    }


def _alerts(key: str, kind: str, invoice: Invoice, payload: dict[str, Any], channels: Channels) -> list[Notice]:
    return [Notice(f"{key}:{channel}", channel, kind, invoice.id, payload) for channel in channels.alerts]


def payment_failed(event_id: str, invoice: Invoice, source: str, channels: Channels) -> list[Notice]:
    error = invoice.last_payment_error
    payload = {
        "eventId": event_id,
        **_about_invoice(invoice, source),
        "failure": None if error is None else {
            "code": error.code, "declineCode": error.decline_code, "message": error.message,
        },
    }
    return _alerts(f"payment_failed:{event_id}", "payment_failed", invoice, payload, channels)


def uncollectible(invoice: Invoice, source: str, channels: Channels) -> list[Notice]:
    """Dunning gave up: the amount due is written off, and the account manager should know."""
    return _alerts(f"uncollectible:{invoice.id}", "uncollectible", invoice, _about_invoice(invoice, source), channels)


def paid(invoice: Invoice, outcome: Outcome, source: str, channels: Channels) -> list[Notice]:
    """The fulfilment callback's body, exactly as it will be sent."""
    if not channels.fulfilment:
        return []
    key = f"paid:{invoice.id}:fulfilment"
    payload = {
        "type": "invoice.paid",
        "idempotencyKey": key,
        "invoiceId": invoice.id,
        "number": invoice.number,
        "customer": invoice.customer,
        "metadata": dict(invoice.metadata),
        "amountPaid": invoice.amount_paid,
        "currency": invoice.currency,
        "paidAt": outcome.position.paid_at,
        "source": source,
    }
    return [Notice(key, "fulfilment", "paid", invoice.id, payload)]


def for_snapshot(invoice: Invoice, outcome: Outcome, source: str, channels: Channels) -> list[Notice]:
    """What moving the ledger to `invoice` owes: the paid callback on its first move to paid, the
    uncollectible alert on its first move to uncollectible."""
    if outcome.became_paid:
        return paid(invoice, outcome, source, channels)
    if outcome.became_uncollectible:
        return uncollectible(invoice, source, channels)
    return []


def for_event(event: Event, result: EventResult, source: str, channels: Channels) -> list[Notice]:
    """What recording `event` owes. A duplicate owes nothing; a payment failure is alerted
    unless the ledger already holds the invoice as paid or void (nobody needs to chase it)."""
    if not channels or result.snapshot is None or result.invoice is None:
        return []
    notices = []
    if event.type == "invoice.payment_failed" and result.snapshot.position.status not in FINAL:
        notices += payment_failed(event.id, result.invoice, source, channels)
    return notices + for_snapshot(result.invoice, result.snapshot, source, channels)


# The drift alert lists this many of a run's findings; the rest are in its report.
DRIFT_LISTED = 20


def for_run(run: dict[str, Any], channels: Channels) -> list[Notice]:
    """A finished run's summary (`RunReport.as_dict()`, `unresolved`, and its first findings as
    `differences`) when it found drift or did not complete. Differences that webhooks closed
    before the run corrected them are no findings. A dry run alerts nobody: whoever ran it is
    reading its report."""
    if run.get("dryRun") or not channels.alerts:
        return []
    counts = {category: n for category, n in run.get("counts", {}).items() if n}
    if not counts and run["status"] == "completed":
        return []
    run_id = run["id"]
    payload = {
        "runId": run_id,
        "status": run["status"],
        "counts": counts,
        "invoicesChecked": run.get("invoicesChecked", 0),
        "eventsBackfilled": run.get("eventsBackfilled", 0),
        "correctionsPosted": run.get("correctionsPosted", 0),
        "unresolved": run.get("unresolved", 0),
        "differences": run.get("differences", [])[:DRIFT_LISTED],
        "message": run.get("message"),
        "report": f"/api/reconciliation/runs/{run_id}",
        "findingsCsv": f"/api/reconciliation/runs/{run_id}/findings.csv",
    }
    return [Notice(f"drift:{run_id}:{channel}", channel, "drift", None, payload) for channel in channels.alerts]


# --- Staging (one statement) ------------------------------------------------------------------


def _insert(conn: AsyncConnection) -> ReturningInsert[Any, Any]:
    return (dialect_insert(conn, outbox).on_conflict_do_nothing(index_elements=[outbox.c.key])
            .returning(outbox.c.id, outbox.c.key))


async def stage(conn: AsyncConnection, notices: Sequence[Notice], now: datetime | None = None, *,
                deliverable: Channels = EVERY_CHANNEL, hold_alerts: bool = False) -> dict[str, int]:
    """Write `notices` in the caller's transaction; returns {key: id} of those not staged before.
    A notice on a channel the staging worker cannot deliver (not `deliverable`) is staged
    `undeliverable`, saying why, so nothing waits for a delivery that will never come. With
    `hold_alerts` (a backfill), alerts are `held` until `release_held`."""
    if not notices:
        return {}
    now = now or datetime.now(UTC)

    def status(channel: str) -> dict[str, Any]:
        if hold_alerts and channel in ALERT_CHANNELS:
            return {"status": "held", "last_error": None}
        if getattr(deliverable, channel):
            return {"status": "pending", "last_error": None}
        return {"status": "undeliverable", "last_error": f"the worker that saw it has no {channel} channel configured"}

    rows = await conn.execute(_insert(conn), [
        {"key": n.key, "channel": n.channel, "kind": n.kind, "invoice_id": n.invoice_id, "payload": n.payload,
         "attempts": 0, "created_at": now, **status(n.channel)}
        for n in notices
    ])
    return {key: notice_id for notice_id, key in rows}


async def stage_results(conn: AsyncConnection, events: Sequence[Event], results: list[EventResult], *,
                        source: str, channels: Channels = EVERY_CHANNEL,
                        deliverable: Channels = EVERY_CHANNEL, hold_alerts: bool = False) -> list[EventResult]:
    """Stage what applying `events` (with their `results`, in order) owes, in the caller's
    transaction; returns the results with the ids of the notices each staged on a `deliverable`
    channel, to queue now (the rest are staged `undeliverable`)."""
    if not channels:
        return results
    owed = [for_event(event, result, source, channels) for event, result in zip(events, results, strict=True)]
    if not any(owed):
        return results
    staged = await stage(conn, [notice for notices in owed for notice in notices], deliverable=deliverable,
                         hold_alerts=hold_alerts)
    return [
        replace(result, notices=tuple(
            staged[n.key] for n in notices
            if n.key in staged and getattr(deliverable, n.channel) and not (hold_alerts and n.channel in ALERT_CHANNELS)
        )) if notices else result
        for result, notices in zip(results, owed, strict=True)
    ]


async def release_held(conn: AsyncConnection) -> list[int]:
    """Let the backfill's held alerts go, now that it has applied every event it found: those
    whose invoice the ledger now holds as paid or void are `resolved` (nobody needs to chase a
    matter the same backfill shows settled), the rest `pending`; returns the ids to queue. One
    reconciliation runs at a time, so whatever is held is the current run's, or a dead run's."""
    settled = select(positions.c.invoice_id).where(positions.c.status.in_(FINAL))
    await conn.execute(update(outbox).where(outbox.c.status == "held", outbox.c.invoice_id.in_(settled))
                       .values(status="resolved", last_error="the backfill that found it showed the invoice settled"))
    released = await conn.execute(update(outbox).where(outbox.c.status == "held").values(status="pending")
                                  .returning(outbox.c.id))
    return list(released.scalars())


async def dead_count(conn: AsyncConnection) -> int:
    """Notices that never got through (for a gauge, or a person)."""
    return (await conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "dead"))).scalar_one()


# --- Delivery's bookkeeping (worker.notices, worker.digest) -----------------------------------


async def notice_by_id(conn: AsyncConnection, notice_id: int) -> AnyRow | None:
    """The notice's whole row, or None when there is no such notice."""
    return (await conn.execute(select(outbox).where(outbox.c.id == notice_id))).first()


async def record_try(conn: AsyncConnection, notice_id: int, *, status: str | None = None, error: str | None = None,
                     now: datetime | None = None) -> None:
    """Count one delivery try on the notice, with its new `status` (`sent` stamps `sent_at`) and
    `error` when given; only while it is pending, so a notice settled meanwhile stays settled."""
    values: dict[str, Any] = {"attempts": outbox.c.attempts + 1}
    if status is not None:
        values["status"] = status
    if status == "sent":
        values["sent_at"] = now or datetime.now(UTC)
    if error is not None:
        values["last_error"] = error
    await conn.execute(update(outbox).where(outbox.c.id == notice_id, outbox.c.status == "pending").values(**values))


async def pending_ids(conn: AsyncConnection, older_than: datetime, *, limit: int) -> list[int]:
    """Ids of the notices pending since before `older_than`, oldest first, at most `limit`."""
    return list((await conn.scalars(
        select(outbox.c.id).where(outbox.c.status == "pending", outbox.c.created_at < older_than)
        .order_by(outbox.c.id).limit(limit)
    )).all())


async def mark_undeliverable(conn: AsyncConnection, channel: str, older_than: datetime, reason: str) -> int:
    """Mark `undeliverable`, saying `reason`, every notice on `channel` pending since before
    `older_than` (in one statement); returns how many."""
    done = await conn.execute(update(outbox).where(
        outbox.c.status == "pending", outbox.c.channel == channel, outbox.c.created_at < older_than,
    ).values(status="undeliverable", last_error=reason))
    return done.rowcount


async def dead_notices(conn: AsyncConnection, ids: Sequence[int] | None = None) -> list[AnyRow]:
    """The dead notices (those among `ids`, when given), by id."""
    query = select(outbox).where(outbox.c.status == "dead").order_by(outbox.c.id)
    if ids:
        query = query.where(outbox.c.id.in_(ids))
    return list((await conn.execute(query)).all())


async def revive_notices(conn: AsyncConnection, ids: Sequence[int]) -> None:
    """Make the dead notices among `ids` pending again, to be queued for delivery."""
    await conn.execute(update(outbox).where(outbox.c.id.in_(ids), outbox.c.status == "dead").values(status="pending"))


async def any_staged(conn: AsyncConnection, keys: Sequence[str]) -> bool:
    """Whether a notice with any of `keys` is in the outbox already."""
    if not keys:
        return False
    return await conn.scalar(select(outbox.c.id).where(outbox.c.key.in_(keys)).limit(1)) is not None
