"""ledger.views: what GET /api/invoices/{id} and GET /api/balances answer (contract section 5)."""

from __future__ import annotations

from ledger.book import apply_event, apply_snapshot
from ledger.views import balances, invoice_view
from lifecycles import body, snapshot
from vinr.events import Invoice, parse_event


async def deliver(engine, event_id, event_type, invoice, created):
    raw = body(event_id, event_type, invoice, created)
    async with engine.begin() as conn:
        await apply_event(conn, parse_event(raw), raw, {})


async def test_an_invoice_with_its_entries_events_and_corrections(ledger_engine):
    await deliver(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_123", "open", 196000), 1_763_800_000)
    await deliver(ledger_engine, "evt_2", "invoice.updated", snapshot("inv_123", "open", 196000, 40000), 1_763_800_060)
    await deliver(ledger_engine, "evt_1b", "invoice.finalized", snapshot("inv_123", "open", 196000), 1_763_799_000)
    # Reconciliation finds 50,000 paid where the webhooks said 40,000: a correction.
    async with ledger_engine.begin() as conn:
        await apply_snapshot(conn, Invoice.model_validate(snapshot("inv_123", "open", 196000, 50000)),
                             source="reconciliation", run_id=7)
        view = (await invoice_view(conn, "inv_123")).model_dump(mode="json")  # as the API answers it
        assert await invoice_view(conn, "inv_never_seen") is None

    assert {k: view[k] for k in ("id", "status", "currency", "total", "amountPaid", "amountDue")} == {
        "id": "inv_123", "status": "open", "currency": "EUR", "total": 196000, "amountPaid": 50000,
        "amountDue": 146000,
    }
    assert [(e["kind"], e["source"], e["eventId"]) for e in view["entries"]] == [
        ("finalize", "webhook", "evt_1"), ("payment", "webhook", "evt_2"), ("payment", "reconciliation", None),
    ]
    assert view["entries"][0]["postings"] == [
        {"account": "accounts_receivable", "direction": "debit", "amount": 196000, "currency": "EUR"},
        {"account": "revenue", "direction": "credit", "amount": 196000, "currency": "EUR"},
    ]
    assert view["entries"][0]["effectiveAt"].startswith("2025-11-22T08:26:40")  # the event's time, in UTC
    assert [(e["id"], e["outcome"]) for e in view["events"]] == [
        ("evt_1", "applied"), ("evt_2", "applied"), ("evt_1b", "stale"),
    ]
    assert [(c["kind"], c["runId"], c["postings"][0]["amount"]) for c in view["corrections"]] == [
        ("payment", 7, 10000)
    ]


async def test_balances_per_account_and_currency(ledger_engine):
    await deliver(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 196000), 1)
    await deliver(ledger_engine, "evt_2", "invoice.updated", snapshot("inv_1", "open", 196000, 50000), 2)
    await deliver(ledger_engine, "evt_3", "invoice.paid", snapshot("inv_2", "paid", -3000, currency="USD"), 3)
    async with ledger_engine.connect() as conn:
        answer = (await balances(conn)).model_dump(mode="json")

    assert sorted(answer["balances"], key=lambda b: (b["currency"], b["account"])) == [
        {"account": "accounts_receivable", "currency": "EUR", "debits": 196000, "credits": 50000, "balance": 146000},
        {"account": "revenue", "currency": "EUR", "debits": 0, "credits": 196000, "balance": -196000},
        {"account": "vinr_clearing", "currency": "EUR", "debits": 50000, "credits": 0, "balance": 50000},
        {"account": "customer_credit", "currency": "USD", "debits": 0, "credits": 3000, "balance": -3000},
        {"account": "revenue", "currency": "USD", "debits": 3000, "credits": 0, "balance": 3000},
    ]


async def test_an_empty_ledger_has_no_balances(ledger_engine):
    async with ledger_engine.connect() as conn:
        assert (await balances(conn)).model_dump(mode="json") == {"balances": []}
