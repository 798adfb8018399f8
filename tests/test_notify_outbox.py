"""The outbox's rules (pure) and its staging on SQLite and PostgreSQL: what a ledger change owes,
and that no path or redelivery can multiply it."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import func, select

from ledger import outbox
from ledger.book import Received, apply_event, apply_events, apply_snapshot
from ledger.money import format_money
from ledger.tables import metadata
from lifecycles import Event as Sent, snapshot
from vinr.events import Invoice, parse_event
from vinr_recon.settings import ConfigurationError, Settings
from worker.notices import recipient
from worker.render import payment_failed, slack_message

ALL = outbox.Channels(email=True, chat=True, fulfilment=True)


def test_money_is_formatted_with_each_currency_s_minor_units():
    assert format_money(196000, "EUR") == "EUR 1,960.00"
    assert format_money(5, "EUR") == "EUR 0.05"
    assert format_money(5000, "JPY") == "JPY 5,000"
    assert format_money(1234567, "KWD") == "KWD 1,234.567"
    assert format_money(-250, "usd") == "USD -2.50"


def test_the_recipient_is_the_invoice_s_manager_then_the_customer_s_then_the_default():
    customer = {"metadata": {"accountManager": "c@x.example"}}
    assert recipient({"accountManager": "i@x.example"}, customer, "d@x.example") == "i@x.example"
    assert recipient({}, customer, "d@x.example") == "c@x.example"
    assert recipient({}, {"metadata": {}}, "d@x.example") == recipient({}, None, "d@x.example") == "d@x.example"
    assert recipient({}, None, None) is None


def test_a_chat_message_keeps_a_customer_s_name_as_text():
    alert = payment_failed({"invoiceId": "inv_1", "number": None, "customer": "cust_1", "currency": "EUR",
                            "amountDue": 100, "failure": None}, {"name": "<!channel> & Co"})
    message = slack_message(alert)
    assert "<!channel>" not in str(message) and "&lt;!channel&gt; &amp; Co" in message["text"]


def test_channels_come_from_the_settings_and_a_callback_needs_its_secret():
    base = Settings(_env_file=None)
    assert not outbox.configured_channels(base)
    configured = base.model_copy(update={"smtp_url": SecretStr("smtp://u:p@h:25"), "fulfilment_url": "http://app",
                                         "fulfilment_secret": SecretStr("s")})
    assert outbox.configured_channels(configured) == outbox.Channels(email=True, fulfilment=True)
    assert outbox.configured_channels(configured).alerts == ("email",)
    with pytest.raises(ConfigurationError, match="FULFILMENT_SECRET"):
        outbox.configured_channels(base.model_copy(update={"fulfilment_url": "http://app"}))


def event(event_id: str, event_type: str, invoice: dict, created: int = 1_763_800_000):
    sent = Sent(event_id, event_type, invoice, created)
    return parse_event(sent.body), sent.body


async def count(engine, *where) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(outbox.outbox).where(*where))


async def test_the_migrations_create_the_outbox_as_the_models_describe_it(ledger_engine):
    async with ledger_engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    assert diff == []


async def test_a_failure_recorded_twice_and_paid_by_three_paths_stage_one_notice_each(ledger_engine):
    opened = snapshot("inv_x", "open", 1000, metadata={"accountManager": "a@x.example"})
    failure = {**opened, "attemptCount": 1, "lastPaymentError": {"code": "card_declined", "message": "no"}}
    paid = snapshot("inv_x", "paid", 1000, 1000, paidAt=1_763_800_300)
    finalized, failed = event("evt_1", "invoice.finalized", opened), event("evt_2", "invoice.payment_failed", failure)
    paid_event = event("evt_3", "invoice.paid", paid, 1_763_800_300)

    # The batch path, with the failure twice in one batch and once more in a later one.
    async with ledger_engine.begin() as conn:
        batch = [Received(e, e.invoice(), body, {}, _now()) for e, body in (finalized, failed, failed)]
        results = await apply_events(conn, batch)
        staged = await outbox.stage_results(conn, [r.event for r in batch], results, source="webhook", channels=ALL)
    assert [len(r.notices) for r in staged] == [0, 2, 0]
    async with ledger_engine.begin() as conn:
        (again,) = await outbox.stage_results(conn, [failed[0]], [await apply_event(conn, *failed, {})],
                                              source="webhook", channels=ALL)
    assert again.outcome == "duplicate" and again.notices == ()
    assert await count(ledger_engine, outbox.outbox.c.kind == "payment_failed") == 2

    # Paid by webhook, then by reconciliation, which (authoritative) can even move it back and forth.
    async with ledger_engine.begin() as conn:
        (by_webhook,) = await outbox.stage_results(conn, [paid_event[0]], [await apply_event(conn, *paid_event, {})],
                                                   source="webhook", channels=ALL)
    assert len(by_webhook.notices) == 1
    for status in ("open", "paid", "paid"):
        invoice = Invoice.model_validate(snapshot("inv_x", status, 1000, 1000 if status == "paid" else 0))
        async with ledger_engine.begin() as conn:
            outcome = await apply_snapshot(conn, invoice, source="reconciliation", authoritative=True)
            assert await outbox.stage(conn, outbox.for_snapshot(invoice, outcome, "reconciliation", ALL)) == {}
    assert await count(ledger_engine, outbox.outbox.c.kind == "paid") == 1
    async with ledger_engine.connect() as conn:
        row = (await conn.execute(select(outbox.outbox).where(outbox.outbox.c.kind == "paid"))).one()
    assert row.key == "paid:inv_x:fulfilment" and row.payload["source"] == "webhook"
    assert (row.payload["amountPaid"], row.payload["paidAt"], row.status) == (1000, 1_763_800_300, "pending")


async def test_nothing_is_staged_without_channels_or_for_a_failure_on_a_paid_invoice(ledger_engine):
    paid = event("evt_1", "invoice.paid", snapshot("inv_y", "paid", 500, 500), 1_763_800_600)
    late_failure = event("evt_2", "invoice.payment_failed", snapshot("inv_y", "open", 500, attempts=1))
    async with ledger_engine.begin() as conn:
        (result,) = await outbox.stage_results(conn, [paid[0]], [await apply_event(conn, *paid, {})],
                                               source="webhook", channels=outbox.NO_CHANNELS)
        assert result.notices == ()
        (stale,) = await outbox.stage_results(conn, [late_failure[0]], [await apply_event(conn, *late_failure, {})],
                                              source="webhook", channels=ALL)
    assert stale.outcome == "stale" and stale.notices == ()
    assert await count(ledger_engine) == 0


def test_a_run_alerts_on_drift_or_when_it_did_not_complete_never_for_a_dry_run():
    clean = {"id": 7, "status": "completed", "dryRun": False, "counts": {"status_mismatch": 0}}
    assert outbox.for_run(clean, ALL) == []
    assert [n.key for n in outbox.for_run({**clean, "status": "partial"}, ALL)] == ["drift:7:email", "drift:7:chat"]
    drifted = {**clean, "counts": {"status_mismatch": 2, "amount_mismatch": 0}}
    (chat,) = outbox.for_run(drifted, outbox.Channels(chat=True))
    assert chat.payload["counts"] == {"status_mismatch": 2} and chat.payload["report"] == "/api/reconciliation/runs/7"
    assert outbox.for_run({**drifted, "dryRun": True}, ALL) == []
    assert outbox.for_run(drifted, outbox.Channels(fulfilment=True)) == []


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
