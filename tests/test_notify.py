"""Alerts and the paid callback end to end: events through the real worker (arq, burst mode, real
Redis), the ledger on SQLite and PostgreSQL, and real peers on loopback: an SMTP server (aiosmtpd,
with AUTH) and an HTTP server standing in for the chat webhook and the merchant app.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import select

from ledger import outbox as outbox_module
from ledger.outbox import outbox
from ledger.tables import InvoicePosition, ReceivedEvent
from lifecycles import Event, drain, enqueue, snapshot
from notify_support import SMTP_PASSWORD, SmtpSink, http_sink, smtp, trust_the_test_smtp_server, wait_for  # noqa: F401  (fixtures)
from receiver.app import create_app as create_receiver
from receiver_support import served
from reconcile.run import RunReport
from reconcile.service import reconcile_once
from tests.conftest import REDIS_URL
from vinr.client import RetryPolicy as ClientRetry, VinrClient
from vinr.events import Invoice
from vinr.sandbox.app import create_app
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.delivery import event_body
from vinr.sandbox.errors import SandboxError
from vinr.sandbox.serving import serve
from vinr.sandbox.state import State
from vinr.signature import verify
from vinr_recon.settings import Settings
from worker.commands import run_replay
from worker.jobs import RetryPolicy

positions, received = InvoicePosition.__table__, ReceivedEvent.__table__
FULFILMENT_SECRET = "fulfil-secret-" + "f" * 20
CHAT_PATH = "/hooks/T0000/B0000/chattoken" + "c" * 16
DEFAULT_RECIPIENT = "finance@merchant.example"
MANAGER = "anna.manager@merchant.example"
FAST = RetryPolicy(tries=10, base_delay=0.1, max_delay=0.4, attempt_timeout=5.0)


@pytest.fixture
async def http():
    async with http_sink() as sink:
        yield sink


def with_channels(settings, smtp_url: str, http, **extra):
    return settings.model_copy(update={
        "smtp_url": SecretStr(smtp_url),
        "alert_email_from": "vinr-recon@merchant.example",
        "alert_default_recipient": DEFAULT_RECIPIENT,
        "alert_webhook_url": SecretStr(http.root + CHAT_PATH),
        "fulfilment_url": http.root + "/fulfilment",
        "fulfilment_secret": SecretStr(FULFILMENT_SECRET),
        **extra,
    })


async def notices(engine) -> list:
    async with engine.connect() as conn:
        return list((await conn.execute(select(outbox).order_by(outbox.c.id))).all())


def failed(invoice_id: str, total: int, *, currency: str = "EUR", metadata: dict | None = None, **extra) -> dict:
    return snapshot(invoice_id, "open", total, currency=currency, attempts=2, customer="cust_acme",
                    number=f"INV-2026-{invoice_id[-3:]}", hostedInvoiceUrl=f"https://pay.vinr.com/{invoice_id}",
                    metadata=metadata or {},
                    lastPaymentError={"code": "card_declined", "declineCode": "generic_decline",
                                      "message": "Your card was declined."}, **extra)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
async def test_a_failed_payment_delivered_three_times_alerts_once(
    ledger_settings, ledger_engine, redis, prefix, smtp, http, batch
):
    settings = with_channels(ledger_settings, smtp.url, http)
    a_open = snapshot("inv_a142", "open", 196000, customer="cust_acme")
    a_failed = failed("inv_a142", 196000, metadata={"accountManager": MANAGER, "projectId": "proj_2291"})
    b_failed = failed("inv_b007", 5000, currency="JPY")
    events = [Event(f"{prefix}_1", "invoice.finalized", a_open, 1_763_800_000),
              Event(f"{prefix}_2", "invoice.payment_failed", a_failed, 1_763_800_060),
              Event(f"{prefix}_3", "invoice.payment_failed", b_failed, 1_763_800_120)]
    # The failure three times: twice in this drain (two jobs, as after arq's result expired) ...
    await enqueue(redis, settings.queue_name, events)
    await enqueue(redis, settings.queue_name, events[1:2], job_id=lambda e: f"{e.id}:again")
    await drain(settings, batch=batch)
    # ... and once more after the first copies committed.
    await enqueue(redis, settings.queue_name, events[1:2], job_id=lambda e: f"{e.id}:third")
    await drain(settings, batch=batch)

    assert sorted(mail.recipients[0] for mail in smtp.mails) == [MANAGER, DEFAULT_RECIPIENT]
    assert set(smtp.logins) == {b"alerts"}  # logged in with SMTP_URL's credentials
    (to_manager,) = [mail for mail in smtp.mails if mail.recipients == [MANAGER]]
    assert to_manager.message["From"] == "vinr-recon@merchant.example"
    assert to_manager.message["To"] == MANAGER
    assert "INV-2026-142" in to_manager.message["Subject"] and "EUR 1,960.00" in to_manager.message["Subject"]
    text = to_manager.text
    for expected in ("Customer:", "cust_acme", "INV-2026-142 (inv_a142)", "Amount due:", "EUR 1,960.00",
                     "card_declined (generic_decline): Your card was declined.", "https://pay.vinr.com/inv_a142"):
        assert expected in text
    assert [line.split() for line in text.splitlines() if line.startswith("Attempts:")] == [["Attempts:", "2"]]
    (to_default,) = [mail for mail in smtp.mails if mail.recipients == [DEFAULT_RECIPIENT]]
    assert "JPY 5,000 due" in to_default.message["Subject"]
    # A stable Message-ID per notice, in the sender's domain: a redelivery after a crash is a
    # copy that mail systems recognise, and two alerts never share one.
    ids = {mail.message["Message-ID"] for mail in smtp.mails}
    assert len(ids) == 2 and all(re.fullmatch(r"<[0-9a-f]{32}@merchant\.example>", i) for i in ids)

    chat = [json.loads(r.body) for r in http.at(CHAT_PATH)]
    assert sorted("INV-2026-142" in m["text"] for m in chat) == [False, True]
    assert all(m["blocks"][0]["type"] == "section" for m in chat)
    rows = await notices(ledger_engine)
    assert sorted((r.kind, r.channel, r.invoice_id, r.status, r.attempts) for r in rows) == [
        ("payment_failed", "chat", "inv_a142", "sent", 1), ("payment_failed", "chat", "inv_b007", "sent", 1),
        ("payment_failed", "email", "inv_a142", "sent", 1), ("payment_failed", "email", "inv_b007", "sent", 1),
    ]
    assert {r.key for r in rows} >= {f"payment_failed:{prefix}_2:email", f"payment_failed:{prefix}_2:chat"}


async def test_smtp_down_at_first_the_email_arrives_once_it_is_back_and_the_ledger_never_waited(
    ledger_settings, ledger_engine, redis, prefix, http, log_capture
):
    smtp = SmtpSink()  # not listening yet
    settings = with_channels(ledger_settings, smtp.url, http)
    event = Event(f"{prefix}_1", "invoice.payment_failed", failed("inv_c003", 12345, metadata={
        "accountManager": MANAGER}), 1_763_800_000)
    await enqueue(redis, settings.queue_name, [event])
    # Tries enough (about 15 s of them) that a busy machine's checks below never outlast them.
    patient = RetryPolicy(tries=100, base_delay=0.05, max_delay=0.2, attempt_timeout=5.0)
    worker = asyncio.create_task(drain(settings, notice_retry=patient))
    try:
        await wait_for(lambda: _tries(ledger_engine, "email", 2))
        # The ledger committed while SMTP was down, and the chat message went meanwhile.
        async with ledger_engine.connect() as conn:
            assert await conn.scalar(select(received.c.outcome).where(received.c.event_id == event.id)) == "applied"
            assert await conn.scalar(select(positions.c.attempt_count)) == 2
        await wait_for(lambda: len(http.at(CHAT_PATH)) == 1)
        assert smtp.mails == []
        smtp.start()
        await asyncio.wait_for(worker, 30)
    finally:
        smtp.stop()
        if not worker.done():
            worker.cancel()
    assert [mail.recipients for mail in smtp.mails] == [[MANAGER]]
    (row,) = [r for r in await notices(ledger_engine) if r.channel == "email"]
    assert row.status == "sent" and row.attempts >= 3 and "Connect" in row.last_error
    retried = [line for line in log_capture.lines() if line.get("event") == "notice not delivered, will retry"]
    assert len(retried) >= 2 and all(line["channel"] == "email" for line in retried)
    assert_no_secret(service_logs(log_capture), settings)
    assert_no_secret(row.last_error, settings)


async def _tries(engine, channel: str, at_least: int) -> bool:
    async with engine.connect() as conn:
        attempts = await conn.scalar(select(outbox.c.attempts).where(outbox.c.channel == channel))
    return attempts is not None and attempts >= at_least


async def test_a_notice_that_never_gets_through_is_dead_and_replayed(ledger_settings, ledger_engine, redis, prefix, http):
    smtp = SmtpSink()
    settings = with_channels(ledger_settings, smtp.url, http)
    event = Event(f"{prefix}_1", "invoice.payment_failed", failed("inv_d004", 700), 1_763_800_000)
    await enqueue(redis, settings.queue_name, [event])
    await drain(settings, notice_retry=RetryPolicy(tries=2, base_delay=0.05, max_delay=0.1, attempt_timeout=5))
    (dead,) = [r for r in await notices(ledger_engine) if r.channel == "email"]
    assert (dead.status, dead.attempts) == ("dead", 2)
    assert dead.last_error.startswith(f"DeliveryError: SMTP server 127.0.0.1:{smtp.port}: SMTPConnect")
    assert_no_secret(dead.last_error, settings)

    async with ledger_engine.connect() as conn:
        assert await outbox_module.dead_count(conn) == 1
    async with served(create_receiver(settings)) as receiver:  # what Prometheus sees
        scraped = (await receiver.get("/metrics")).text
    assert 'vinr_dead{kind="notices"} 1.0' in scraped and 'vinr_dead{kind="events"} 0.0' in scraped

    smtp.start()
    try:
        code, lines = await replay_notices(settings)
        assert code == 0 and lines == [f"queued notice {dead.id}"]
        await drain(settings)
        assert await replay_notices(settings) == (0, ["no dead notices"])
    finally:
        smtp.stop()
    assert [mail.recipients for mail in smtp.mails] == [[DEFAULT_RECIPIENT]]
    (sent,) = [r for r in await notices(ledger_engine) if r.channel == "email"]
    assert (sent.status, sent.attempts) == ("sent", 3)


async def test_with_credentials_a_server_without_starttls_gets_no_login_in_clear_text(
    ledger_settings, ledger_engine, redis, prefix, http
):
    smtp = SmtpSink(starttls=False)  # offers AUTH over the plain connection
    smtp.start()
    try:
        settings = with_channels(ledger_settings, smtp.url, http)
        event = Event(f"{prefix}_1", "invoice.payment_failed", failed("inv_t009", 800), 1_763_800_000)
        await enqueue(redis, settings.queue_name, [event])
        await drain(settings, notice_retry=RetryPolicy(tries=2, base_delay=0.05, max_delay=0.1, attempt_timeout=5))
    finally:
        smtp.stop()
    assert smtp.logins == [] and smtp.mails == []  # no AUTH was sent, so no password crossed in clear
    (email,) = [r for r in await notices(ledger_engine) if r.channel == "email"]
    assert (email.status, email.attempts) == ("dead", 2)
    assert "offers no STARTTLS" in email.last_error and "127.0.0.1" in email.last_error
    assert_no_secret(email.last_error, settings)


async def test_an_alert_email_has_a_date_each_link_once_a_3ds_wording_and_the_readers_money(
    ledger_settings, ledger_engine, redis, prefix, smtp, http
):
    """Issue 21: a `Date:` header; the invoice's link printed once; a 3-D Secure attempt worded as
    the customer's step (never a declined card) in the email and on chat; MONEY_LOCALE's amounts."""
    from email.utils import parsedate_to_datetime

    settings = with_channels(ledger_settings, smtp.url, http, money_locale="de_DE")
    secure = {**failed("inv_e3ds", 196000, metadata={"accountManager": MANAGER}), "lastPaymentError": {
        "code": "authentication_required", "declineCode": "authentication_required",
        "message": "This payment requires 3-D Secure authentication; pay again with threeDSecure=approve."}}
    declined = failed("inv_f404", 50000)
    await enqueue(redis, settings.queue_name, [Event(f"{prefix}_1", "invoice.payment_failed", secure, 1_763_800_000),
                                               Event(f"{prefix}_2", "invoice.payment_failed", declined, 1_763_800_060)])
    await drain(settings)

    (to_manager,) = [m for m in smtp.mails if m.recipients == [MANAGER]]
    (to_default,) = [m for m in smtp.mails if m.recipients == [DEFAULT_RECIPIENT]]
    for mail in (to_manager, to_default):
        sent = parsedate_to_datetime(mail.message["Date"])
        assert sent.utcoffset() == timedelta(0) and abs(sent - datetime.now(UTC)) < timedelta(hours=1)
    assert to_manager.text.count("https://pay.vinr.com/inv_e3ds") == 1
    assert to_default.text.count("https://pay.vinr.com/inv_f404") == 1

    subject, text = to_manager.message["Subject"], to_manager.text
    assert subject.startswith("Authentication required: INV-2026-3ds") and "1.960,00\xa0€ due" in subject
    assert "the customer must authenticate the payment (3-D Secure)" in text and "1.960,00\xa0€" in text
    assert "declin" not in (subject + text).lower() and "failed" not in subject.lower()
    assert "Payment failed: INV-2026-404" in to_default.message["Subject"] and "500,00\xa0€" in to_default.text

    chat = {("inv_e3ds" in r.body.decode()): json.loads(r.body) for r in http.at(CHAT_PATH)}
    said = json.dumps(chat[True], ensure_ascii=False)
    assert "the customer must authenticate the payment (3-D Secure)" in said and "1.960,00\xa0€" in said
    assert "declin" not in said.lower()
    assert "card_declined" in json.dumps(chat[False]) and "500,00\xa0€" in json.dumps(chat[False], ensure_ascii=False)


async def test_with_no_recipient_anywhere_the_email_is_undeliverable_at_once_and_the_chat_message_goes(
    ledger_settings, ledger_engine, redis, prefix, smtp, http, log_capture
):
    settings = with_channels(ledger_settings, smtp.url, http, alert_default_recipient=None)
    event = Event(f"{prefix}_1", "invoice.payment_failed", failed("inv_f006", 100), 1_763_800_000)
    await enqueue(redis, settings.queue_name, [event])
    await drain(settings)
    rows = {r.channel: r for r in await notices(ledger_engine)}
    # undeliverable, not dead: nothing was tried, so the dead-notice gauge is not raised
    assert (rows["chat"].status, rows["email"].status, rows["email"].attempts) == ("sent", "undeliverable", 1)
    assert rows["email"].last_error.startswith("no recipient") and smtp.mails == []
    (why,) = [line for line in log_capture.lines() if line.get("channel") == "email" and line["level"] == "warning"]
    assert "no recipient" in why["error"]


async def test_a_notice_committed_but_never_queued_is_found_by_the_sweep(ledger_settings, ledger_engine, redis, smtp, http):
    settings = with_channels(ledger_settings, smtp.url, http)
    invoice = Invoice.model_validate(failed("inv_e005", 990))
    owed = outbox_module.payment_failed("evt_crashed", invoice, "webhook", outbox_module.configured_channels(settings))
    # Staged a minute ago by a worker that died before it could queue the delivery.
    async with ledger_engine.begin() as conn:
        await outbox_module.stage(conn, owed, now=datetime.now(UTC) - timedelta(minutes=1))
    assert await redis.zcard(settings.queue_name) == 0
    await drain(settings)  # the sweep runs at the worker's start-up, then every minute
    assert [mail.recipients for mail in smtp.mails] == [[DEFAULT_RECIPIENT]] and len(http.at(CHAT_PATH)) == 1
    assert {r.status for r in await notices(ledger_engine)} == {"sent"}


async def replay_notices(settings) -> tuple[int, list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await asyncio.to_thread(
            run_replay, argparse.Namespace(events=None, notices=True, notice_ids=None), settings)
    return code, [line.split(" (")[0] for line in out.getvalue().splitlines()]


def service_logs(logs) -> str:
    """Every line logged but the loopback peers' own access log (the chat URL's path is in it)."""
    text = "\n".join(line for line in logs.text().splitlines() if '"logger": "uvicorn.access"' not in line)
    assert '"logger": "worker.notices"' in text
    return text


def assert_no_secret(text: str, settings) -> None:
    plain = base64.b64encode(f"\0alerts\0{SMTP_PASSWORD}".encode()).decode()
    secrets = [SMTP_PASSWORD, plain, FULFILMENT_SECRET, CHAT_PATH.rsplit("/", 1)[1], settings.smtp_url.get_secret_value()]
    if settings.vinr_api_key is not None:
        secrets.append(settings.vinr_api_key.get_secret_value())
    leaked = [secret for secret in secrets if secret in text]
    assert not leaked, f"secrets in the text: {leaked}"


class ServedSandbox(NamedTuple):
    state: State         # the sandbox's: what the test changes at VINR
    hosted: str          # its hosted pages' base, as its events carry it
    settings: Settings   # the worker's: every channel, and VINR's API at this sandbox


@pytest.fixture
def vinr_sandbox(ledger_settings, smtp, http):
    """`async with vinr_sandbox(config) as (state, hosted, settings)`: a sandbox (no rate limit
    unless `config` says otherwise) served on loopback while inside, and the worker's settings for it."""
    @contextlib.asynccontextmanager
    async def serving(config: SandboxConfig | None = None) -> AsyncIterator[ServedSandbox]:
        app = create_app(config or SandboxConfig(rate_limit=0))
        async with serve(app) as root:
            sandbox = app.state.sandbox
            yield ServedSandbox(sandbox.state, sandbox.config.hosted_base, with_channels(
                ledger_settings, smtp.url, http, vinr_api_key=SecretStr(sandbox.api_key), vinr_api_base=root + "/v1"))
    return serving


@contextlib.asynccontextmanager
async def reconciler(settings, engine) -> AsyncIterator[Callable[[], Awaitable[RunReport | None]]]:
    """While inside, a run of `reconcile_once` with `settings` each call, through one VINR client and Redis pool."""
    client = VinrClient(settings.vinr_api_base, settings.vinr_api_key, retry=ClientRetry(max_attempts=2))
    pool = Redis.from_url(REDIS_URL)
    try:
        yield lambda: reconcile_once(settings, engine=engine, redis=pool, client=client)
    finally:
        await client.aclose()
        await pool.aclose()


# --- The paid callback: once, whichever path saw the invoice paid ---------------------------


@dataclass(frozen=True)
class Delivery:
    """A sandbox event as the receiver would queue it."""

    id: str
    type: str
    body: bytes


async def test_a_paid_invoice_seen_by_webhook_and_by_reconciliation_calls_back_once(
    ledger_engine, redis, smtp, http, vinr_sandbox, log_capture
):
    async with vinr_sandbox() as (state, hosted, settings):
        await _paid_by_every_path(settings, ledger_engine, redis, state, hosted, smtp, http)
        signatures = [r.headers["x-vinr-recon-signature"].split("v1=")[1] for r in http.at("/fulfilment")]
        assert signatures and not [s for s in signatures if s in log_capture.text()]
        assert_no_secret(service_logs(log_capture), settings)


async def _paid_by_every_path(settings, engine, redis, state, hosted, smtp, http):
    customer = state.create_customer(email="ops@acme.example", name="Acme GmbH",
                                     metadata={"accountManager": MANAGER})

    def new_invoice(amount: int, **metadata):
        inv = state.create_invoice(customer=customer.id, currency="EUR", collection_method="send_invoice",
                                   days_until_due=14, metadata={"projectId": "proj_2291", **metadata})
        state.add_line(inv.id, description="Implementation", quantity=1, unit_amount=amount)
        state.finalize(inv.id)
        return inv.id

    def deliveries(since: int) -> list[Delivery]:
        return [Delivery(e.id, e.type, event_body(e, hosted)) for e in list(state.events)[since:]]

    # A: a declined card, then paid; every webhook arrives, the paid one three times.
    a = new_invoice(196000)
    with pytest.raises(SandboxError):
        state.pay(a, "4000000000000002")
    state.pay(a, "4242424242424242")
    webhooks = deliveries(0)
    paid_a = [d for d in webhooks if d.type == "invoice.paid"]
    await enqueue(redis, settings.queue_name, webhooks)
    await enqueue(redis, settings.queue_name, paid_a, job_id=lambda d: f"{d.id}:again")
    await enqueue(redis, settings.queue_name, paid_a, job_id=lambda d: f"{d.id}:third")
    await drain(settings)

    # B: finalized by webhook, then paid while VINR recorded no event (so no webhook and nothing
    # to backfill): only the reconciliation's correction sees it paid. Its webhook arrives late.
    seen = len(list(state.events))
    b = new_invoice(50000)
    await enqueue(redis, settings.queue_name, deliveries(seen))
    await drain(settings)
    state.quiet = True
    state.pay(b, "4242424242424242")
    state.quiet = False
    async with reconciler(settings, engine) as reconcile:
        report = await reconcile()
    assert report.status == "completed" and report.counts["status_mismatch"] == 1 and report.corrections_posted
    late = snapshot(b, "paid", 50000, 50000, customer=customer.id, metadata={"projectId": "proj_2291"},
                    paidAt=int(time.time()))
    await enqueue(redis, settings.queue_name, [Event(f"evt_late_{b}", "invoice.paid", late, int(time.time()))])
    await drain(settings)

    callbacks = http.at("/fulfilment")
    assert sorted(json.loads(r.body)["invoiceId"] for r in callbacks) == sorted([a, b])
    for request in callbacks:
        # The service's own verifier, as the merchant app would check it.
        verify(request.body, request.headers["x-vinr-recon-signature"], [FULFILMENT_SECRET], int(time.time()))
        body = json.loads(request.body)
        assert request.headers["idempotency-key"] == body["idempotencyKey"] == f"paid:{body['invoiceId']}:fulfilment"
        assert body["metadata"] == {"projectId": "proj_2291"} and body["customer"] == customer.id
        assert body["currency"] == "EUR" and isinstance(body["paidAt"], int)
    by_invoice = {json.loads(r.body)["invoiceId"]: json.loads(r.body) for r in callbacks}
    assert (by_invoice[a]["amountPaid"], by_invoice[a]["source"]) == (196000, "webhook")
    assert (by_invoice[b]["amountPaid"], by_invoice[b]["source"]) == (50000, "reconciliation")

    # A's failed payment: to the account manager named in the customer's metadata (read from VINR).
    (mail_a,) = [m for m in smtp.mails if "Payment failed" in m.message["Subject"]]
    assert mail_a.recipients == [MANAGER] and "Acme GmbH (" + customer.id + ")" in mail_a.text
    # The run found drift: its summary went to the chat and, by email, to the default recipient.
    (drift_mail,) = [m for m in smtp.mails if "Reconciliation run" in m.message["Subject"]]
    assert drift_mail.recipients == [DEFAULT_RECIPIENT]
    assert f"/api/reconciliation/runs/{report.run_id}" in drift_mail.text and "Status mismatch:" in drift_mail.text
    drift_chat = [json.loads(r.body) for r in http.at(CHAT_PATH) if "Reconciliation run" in json.loads(r.body)["text"]]
    assert len(drift_chat) == 1
    assert {(r.kind, r.channel, r.status) for r in await notices(engine)} == {
        ("payment_failed", "email", "sent"), ("payment_failed", "chat", "sent"), ("paid", "fulfilment", "sent"),
        ("drift", "email", "sent"), ("drift", "chat", "sent")}
    assert len(await notices(engine)) == 6


async def test_events_never_delivered_are_backfilled_and_alert_and_call_back_once(
    ledger_engine, redis, smtp, http, vinr_sandbox
):
    """No webhook of two invoices ever arrives: reconciliation backfills their events from VINR's
    Events API, and their side effects follow, once; a second run backfills and sends nothing.
    A failure that the same backfill shows paid later is not alerted (issue 20): nobody needs to
    chase it; one still open is."""
    async with vinr_sandbox() as (state, _, settings):
        customer = state.create_customer(email="ops@acme.example", name="Acme GmbH", metadata={})
        invoices = []
        for amount in (196000, 7000):
            inv = state.create_invoice(customer=customer.id, currency="EUR", collection_method="send_invoice",
                                       days_until_due=14, metadata={"accountManager": MANAGER})
            state.add_line(inv.id, description="Implementation", quantity=1, unit_amount=amount)
            state.finalize(inv.id)
            with pytest.raises(SandboxError):
                state.pay(inv.id, "4000000000000002")
            invoices.append(inv)
        settled, still_open = invoices
        state.pay(settled.id, "4242424242424242")

        async with reconciler(settings, ledger_engine) as reconcile:
            first = await reconcile()
            await drain(settings)
            second = await reconcile()
            await drain(settings)

    assert first.status == second.status == "completed"
    assert first.events_backfilled == len(list(state.events)) > 0 and second.events_backfilled == 0
    failed_mails = [m for m in smtp.mails if "Payment failed" in m.message["Subject"]]
    assert [m.recipients for m in failed_mails] == [[MANAGER]] and still_open.id in failed_mails[0].text
    assert settled.id not in "".join(m.text for m in smtp.mails)
    (callback,) = [json.loads(r.body) for r in http.at("/fulfilment")]
    assert (callback["invoiceId"], callback["amountPaid"], callback["source"]) == (settled.id, 196000, "backfill")
    assert sorted((r.kind, r.channel, r.status, r.invoice_id) for r in await notices(ledger_engine)) == sorted([
        ("paid", "fulfilment", "sent", settled.id),
        ("payment_failed", "chat", "resolved", settled.id), ("payment_failed", "email", "resolved", settled.id),
        ("payment_failed", "chat", "sent", still_open.id), ("payment_failed", "email", "sent", still_open.id)])


async def test_a_reconcile_without_fulfilment_url_first_to_see_a_payment_still_owes_the_callback(
    ledger_settings, ledger_engine, redis, smtp, http, vinr_sandbox
):
    """Issue 19: the callback a payment owes does not depend on which process saw it first."""
    async with vinr_sandbox() as (state, hosted, worker_settings):
        # The operator's shell: the API key, but none of the worker's notice settings.
        cli_settings = ledger_settings.model_copy(update={
            "vinr_api_key": worker_settings.vinr_api_key, "vinr_api_base": worker_settings.vinr_api_base})
        customer = state.create_customer(email="ops@acme.example", name="Acme GmbH", metadata={})
        inv = state.create_invoice(customer=customer.id, currency="EUR", collection_method="send_invoice",
                                   days_until_due=14, metadata={})
        state.add_line(inv.id, description="Implementation", quantity=1, unit_amount=42000)
        state.finalize(inv.id)
        state.pay(inv.id, "4242424242424242")  # its webhooks are late: the reconcile run sees it first
        async with reconciler(cli_settings, ledger_engine) as reconcile:
            report = await reconcile()
        assert report.status == "completed"
        late = [Delivery(e.id, e.type, event_body(e, hosted)) for e in state.events]
        await enqueue(redis, worker_settings.queue_name, late)
        await drain(worker_settings)
        await wait_for(lambda: len(http.at("/fulfilment")) >= 1, timeout=5)
        await drain(worker_settings)
    (callback,) = http.at("/fulfilment")
    assert json.loads(callback.body)["invoiceId"] == inv.id
    assert {(r.kind, r.channel, r.status) for r in await notices(ledger_engine)} == {("paid", "fulfilment", "sent")}


async def drain_swept_once(settings, batch: bool):
    """`drain`, with the sweep of the outbox at start-up only: its every-minute run, due within a
    second of a minute's turn, would be one more job in the counts."""
    from arq.cron import cron

    from worker.notices import sweep_notices

    away = (datetime.now(UTC).minute + 30) % 60
    return await drain(settings, batch=batch, crons=[
        cron(sweep_notices, name="sweep_notices", run_at_startup=True, unique=False, minute=away)])


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
async def test_what_a_worker_cannot_deliver_is_staged_undeliverable_and_queues_no_job(
    ledger_settings, ledger_engine, redis, prefix, http, batch
):
    """Issue 19: the worker stages every channel a fact owes; those it has not configured (here:
    no SMTP, no callback URL) are undeliverable at once, saying why, with no delivery job run."""
    settings = ledger_settings.model_copy(update={"alert_webhook_url": SecretStr(http.root + CHAT_PATH)})
    events = [Event(f"{prefix}_1", "invoice.payment_failed", failed("inv_u1", 5000), 1_763_800_000),
              Event(f"{prefix}_2", "invoice.paid", snapshot("inv_u1", "paid", 5000, 5000), 1_763_800_100)]
    # Batched, both in one batch (in the order queued). One by one, a drain each: a worker runs
    # two jobs at once, and the failure applied after the payment would owe no alert (stale).
    steps = [events] if batch else [[e] for e in events]
    workers = []
    for step in steps:
        await enqueue(redis, settings.queue_name, step)
        workers.append(await drain_swept_once(settings, batch))
    await wait_for(lambda: len(http.at(CHAT_PATH)) >= 1, timeout=5)
    rows = {(r.kind, r.channel): r for r in await notices(ledger_engine)}
    assert {key: row.status for key, row in rows.items()} == {
        ("payment_failed", "chat"): "sent",
        ("payment_failed", "email"): "undeliverable",
        ("paid", "fulfilment"): "undeliverable",
    }
    assert "no fulfilment channel" in rows[("paid", "fulfilment")].last_error
    assert rows[("payment_failed", "email")].attempts == 0  # nothing was tried
    # each event, the chat delivery and each drain's sweep at start-up: no job for what cannot go
    assert (sum(w.jobs_complete for w in workers), sum(w.jobs_failed for w in workers)) == (3 + len(steps), 0)


async def test_an_invoice_written_off_alerts_its_manager_once_whichever_path_sees_it(
    ledger_engine, redis, smtp, http, vinr_sandbox
):
    """Issue 20: dunning gave up. Reconciliation finds it first (the events have expired, so from
    the invoice itself), then its webhooks arrive three times each, then a second run: one email
    to the account manager, one chat message."""
    clock = [time.time() - 40 * 86_400]
    async with vinr_sandbox(SandboxConfig(rate_limit=0, clock=lambda: clock[0])) as (state, hosted, settings):
        customer = state.create_customer(email="ops@acme.example", name="Acme GmbH", metadata={"accountManager": MANAGER})
        inv = state.create_invoice(customer=customer.id, currency="EUR", collection_method="send_invoice",
                                   days_until_due=14, metadata={})
        state.add_line(inv.id, description="Implementation", quantity=1, unit_amount=88000)
        state.finalize(inv.id)
        state.mark_uncollectible(inv.id)
        clock[0] = time.time()  # 40 days later: its events are gone from the Events API
        async with reconciler(settings, ledger_engine) as reconcile:
            first = await reconcile()
            late = [Delivery(e.id, e.type, event_body(e, hosted)) for e in state.events]
            await enqueue(redis, settings.queue_name, late * 3)
            await drain(settings)
            second = await reconcile()
            await drain(settings)
            await wait_for(lambda: len(smtp.mails) >= 2 and len(http.at(CHAT_PATH)) >= 2, timeout=5)
    assert (first.status, first.events_backfilled, second.status) == ("completed", 0, "completed")
    # Besides the first run's drift summary (the ledger had never heard of the invoice):
    (mail,) = [m for m in smtp.mails if not m.message["Subject"].startswith("Reconciliation run")]
    assert mail.recipients == [MANAGER] and mail.message["Subject"].startswith("Uncollectible: ")
    assert "EUR 880.00 written off" in mail.message["Subject"] and inv.id in mail.text
    assert sum("Uncollectible" in json.loads(r.body)["text"] for r in http.at(CHAT_PATH)) == 1
    assert sorted((r.kind, r.channel, r.status) for r in await notices(ledger_engine)) == [
        ("drift", "chat", "sent"), ("drift", "email", "sent"),
        ("uncollectible", "chat", "sent"), ("uncollectible", "email", "sent")]
