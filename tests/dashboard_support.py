"""Helpers for the dashboard's tests (no tests here): a ledger with the seed guide's invoice,
filler invoices to page through, a reconciliation run with findings, a failed payment and a dead
letter waiting for its replay.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import insert

from conftest import API_TOKEN, WEBHOOK_SECRET, unique
from ledger.book import apply_event, apply_snapshot
from ledger.deadletters import bury
from ledger.tables import Finding, InvoicePosition, Notice, ReconciliationRun
from lifecycles import body, snapshot
from vinr.events import Invoice, parse_event
from vinr_recon.jobs import job_key, replay_job_id, result_key

# The seed guide's invoice: Acme GmbH, implementation + 8 support hours, EUR 1,960.00, paid by card.
GUIDE_ID = "in_guide_acme"
GUIDE_NUMBER = "INV-2026-000142"
ACME = "cus_acme"
FILLERS = 120  # invoices of another customer, to page through (50 a page)
FILLER_CUSTOMER = "cus_filler"
DEAD_INVOICE = "in_dead_letter"
SIGNATURE = "t=1763800000,v1=" + "ab" * 32  # a stored header value no page may show


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


async def forget_replays(redis, queue_name: str, ids: dict) -> None:
    """The replay's job and result keys (arq keeps a result after the queue is empty)."""
    job_id = replay_job_id(queue_name, ids["dead_event"], ids["letter"])
    await redis.delete(job_key(job_id), result_key(job_id))


csrf_of = _csrf


async def _deliver(conn, event_id, event_type, invoice, created):
    raw = body(event_id, event_type, invoice, created)
    await apply_event(conn, parse_event(raw), raw, {"x-vinr-signature": SIGNATURE})


async def seed(engine) -> dict:
    """The ledger every dashboard test reads; returns the ids it made."""
    t = int(datetime.now(UTC).timestamp()) - 3600
    guide = dict(customer=ACME, number=GUIDE_NUMBER, created=t - 600)
    async with engine.begin() as conn:
        await _deliver(conn, "evt_guide_finalized", "invoice.finalized",
                       {**snapshot(GUIDE_ID, "open", 196000), **guide}, t)
        await _deliver(conn, "evt_guide_paid", "invoice.paid",
                       {**snapshot(GUIDE_ID, "paid", 196000, 196000, paidAt=t + 60), **guide}, t + 60)
        declined = dict(customer=ACME, number="INV-2026-000143", created=t - 500)
        await _deliver(conn, "evt_declined_finalized", "invoice.finalized",
                       {**snapshot("in_declined", "open", 45000), **declined}, t)
        await _deliver(conn, "evt_declined_failed", "invoice.payment_failed",
                       {**snapshot("in_declined", "open", 45000, attempts=1), **declined}, t + 30)
        await _deliver(conn, "evt_chf", "invoice.finalized",
                       {**snapshot("in_chf", "open", 250000, currency="CHF"), "customer": ACME,
                        "number": "INV-2026-000144", "created": t - 400}, t)
        await _deliver(conn, "evt_drift_finalized", "invoice.finalized",
                       {**snapshot("in_drift", "open", 5000), "customer": ACME, "number": "INV-2026-000145",
                        "created": t - 300}, t)
        # Filler invoices written directly, the way bench/dashboard.py fills a big ledger.
        await conn.execute(insert(InvoicePosition.__table__), [
            dict(invoice_id=f"in_fill_{n:04d}", customer=FILLER_CUSTOMER, number=f"INV-2025-{n:06d}",
                 status="open" if n % 3 else "paid", currency="EUR", total=1000 + n,
                 amount_paid=0 if n % 3 else 1000 + n, amount_due=1000 + n if n % 3 else 0,
                 created=t - 100_000 - n, version=1)
            for n in range(FILLERS)
        ])
        await conn.execute(insert(Notice.__table__).values(
            key="paid:in_guide_acme:fulfilment", channel="fulfilment", kind="paid", invoice_id=GUIDE_ID,
            payload={"secret": WEBHOOK_SECRET}, status="sent", attempts=1, last_error=f"token {API_TOKEN}",
            created_at=datetime.now(UTC), sent_at=datetime.now(UTC)))
        await conn.execute(insert(Notice.__table__).values(
            key="payment_failed:evt_declined_failed:email", channel="email", kind="payment_failed",
            invoice_id="in_declined", payload={}, status="dead", attempts=5, last_error="smtp down",
            created_at=datetime.now(UTC)))

    runs = ReconciliationRun.__table__
    started = datetime.now(UTC).replace(microsecond=0)
    async with engine.begin() as conn:
        run_id = (await conn.execute(insert(runs).values(
            started_at=started, finished_at=started, status="completed", window_start=t - 86400,
            invoices_checked=124, corrections_posted=1, api_requests=3, counts={"status_mismatch": 1},
        ).returning(runs.c.id))).scalar_one()
        await apply_snapshot(conn, Invoice.model_validate(
            {**snapshot("in_drift", "paid", 5000, 5000), "customer": ACME, "number": "INV-2026-000145",
             "created": t - 300}), source="reconciliation", run_id=run_id)
        await conn.execute(insert(Finding.__table__).values(
            run_id=run_id, invoice_id="in_drift", category="status_mismatch", field="status",
            ledger_value="open", vinr_value="paid", corrected=True, entry_ids=[7]))
        # A dead letter whose cause has been fixed: replayed, it applies. Its event id is new each
        # time, since the replay's job id (and arq's result key) on the shared Redis derive from it.
        dead_event = unique("evt_dead")
        dead_invoice = {**snapshot(DEAD_INVOICE, "open", 7000), "customer": ACME, "number": "INV-2026-000146",
                        "created": t - 200}
        letter_id = await bury(
            conn, event_id=dead_event, event_type="invoice.finalized",
            body=body(dead_event, "invoice.finalized", dead_invoice, t),
            headers={"x-vinr-signature": SIGNATURE},
            error=f"OperationalError: database is locked (webhook secret {WEBHOOK_SECRET})",
            attempts=5, received_at=datetime.now(UTC))
    return {"run": run_id, "letter": letter_id, "dead_event": dead_event}
