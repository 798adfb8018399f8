"""Adopting an account with years of history (issues 19 and 20), through the real parts: VINR's
sandbox over HTTP delivering to the real receiver under uvicorn, the real Redis and arq worker,
`vinr-recon reconcile --adopt` as a subprocess, a real SMTP server and a real HTTP sink for the
chat alerts and the merchant app's callbacks.

The account's history happened before vinr-recon was installed: no endpoint was registered, so
no webhook of it was ever sent. Installation registers the endpoint (live traffic starts) and
adopts. Nothing of the history may be alerted or called back; every new fact, once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select

from conftest import WEBHOOK_SECRET
from ledger.outbox import outbox
from ledger.tables import Customer
from lifecycles import drain
from notify_support import http_sink, smtp, wait_for  # noqa: F401  (smtp: a fixture)
from receiver.app import create_app as create_receiver
from receiver_support import forget_queue, served
from reconcile.service import reconcile_once
from reconcile_support import FAST, ledger_matches
from vinr.client import VinrClient
from vinr.sandbox.app import create_app as create_sandbox
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.errors import SandboxError
from vinr.sandbox.serving import serve

DAY = 86_400
customer_copies = Customer.__table__
CHAT_PATH = "/hooks/T0000/B0000/chattoken" + "c" * 16
MANAGERS = ("anna@merchant.example", "ben@merchant.example")
OK, DECLINED = "4242424242424242", "4000000000000002"
# What each history invoice went through, in turn: ten kinds of fate over 300 invoices.
FATES = ("paid", "failed_then_paid", "failed", "open", "uncollectible", "void", "draft", "paid",
         "uncollectible_then_paid", "failed")


def live_fate(state, invoice_id: str, fate: str) -> None:
    if fate == "draft":
        return
    state.finalize(invoice_id)
    if fate in ("failed", "failed_then_paid", "uncollectible", "uncollectible_then_paid"):
        with pytest.raises(SandboxError):
            state.pay(invoice_id, DECLINED)
    if fate in ("uncollectible", "uncollectible_then_paid"):
        state.mark_uncollectible(invoice_id)
    if fate in ("paid", "failed_then_paid", "uncollectible_then_paid"):
        state.pay(invoice_id, OK)
    if fate == "void":
        state.void(invoice_id)


def new_invoice(state, customer: str, amount: int, manager: str | None = None) -> str:
    inv = state.create_invoice(customer=customer, currency="EUR", collection_method="send_invoice",
                               days_until_due=14, metadata={"accountManager": manager} if manager else {})
    state.add_line(inv.id, description="Retainer", quantity=1, unit_amount=amount)
    return inv.id


async def adopt(settings) -> dict:
    """`vinr-recon reconcile --adopt --json`, as the installation guide runs it."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "QUEUE_NAME": settings.queue_name, "VINR_API_KEY": settings.vinr_api_key.get_secret_value(),
           "VINR_API_BASE": settings.vinr_api_base, "VINR_API_RATE": "0", "LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vinr_recon", "reconcile", "--adopt", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


async def outbox_by_status(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
        return dict(rows.all())


async def test_an_adopted_history_sends_nothing_and_every_new_fact_its_notices_once(
    ledger_settings, ledger_engine, smtp
):
    now = time.time()
    clock: list[float | None] = [now - 2 * 365 * DAY]
    config = SandboxConfig(rate_limit=0, clock=lambda: clock[0] or time.time(), duplicate_rate=1.0, duplicate_count=2)
    sandbox_app = create_sandbox(config)
    redis = Redis.from_url(ledger_settings.redis_url)
    try:
        async with http_sink() as http, serve(sandbox_app) as root:
            sandbox = sandbox_app.state.sandbox
            state = sandbox.state
            settings = ledger_settings.model_copy(update={
                "vinr_api_key": SecretStr(sandbox.api_key), "vinr_api_base": root + "/v1",
                "smtp_url": SecretStr(smtp.url), "alert_email_from": "vinr-recon@merchant.example",
                "alert_default_recipient": "finance@merchant.example",
                "alert_webhook_url": SecretStr(http.root + CHAT_PATH),
                "fulfilment_url": http.root + "/fulfilment", "fulfilment_secret": SecretStr("fulfil-" + "s" * 24),
            })
            customers = [state.create_customer(email=f"ap{i}@client{i}.example", name=f"Client {i}",
                                               metadata={"accountManager": MANAGERS[i % 2]}).id for i in range(6)]

            # Two years of history, half of it in the last month (its events still in the Events API).
            history: dict[str, str] = {}
            unseen_drafts: set[str] = set()
            for i in range(300):
                clock[0] = now - 730 * DAY + i * 4.7 * DAY if i < 150 else now - 29 * DAY + (i - 150) * 0.18 * DAY
                fate = FATES[i % len(FATES)]
                invoice_id = new_invoice(state, customers[i % len(customers)], 10_000 + 100 * i)
                live_fate(state, invoice_id, fate)
                history[invoice_id] = fate
                if fate == "draft" and i < 150:
                    unseen_drafts.add(invoice_id)  # no event left to name it, no accounting effect
            assert sum(e.created >= now - 30 * DAY for e in state.events) > 100  # backfilled ones among them
            still_open = [i for i, fate in history.items() if fate in ("open", "failed")]
            written_off = [i for i, fate in history.items() if fate == "uncollectible"]
            clock[0] = None  # from installation on, the sandbox keeps real time

            async with served(create_receiver(settings)) as receiver:
                # Installation: the endpoint is registered, live traffic starts, then the account is adopted.
                sandbox.add_endpoint(str(receiver.base_url) + "/webhooks/vinr", (WEBHOOK_SECRET,))
                paid_before_adoption = still_open.pop()
                state.pay(paid_before_adoption, OK)
                await sandbox.deliveries_idle()
                await drain(settings)
                await asyncio.sleep(1.1)  # the adoption point is the run's start, in whole seconds

                report = await adopt(settings)
                await drain(settings)
                assert (report["status"], report["adopt"], report["matches"]) == ("completed", True, True)
                assert report["adoptedQuietly"] == len(history) - len(unseen_drafts)
                await ledger_matches(ledger_engine, sandbox)
                async with ledger_engine.connect() as conn:  # the run copied VINR's customers, names and all
                    named = dict((await conn.execute(select(customer_copies.c.id, customer_copies.c.name))).all())
                assert named == {c: f"Client {i}" for i, c in enumerate(customers)}
                assert smtp.mails == [] and http.at(CHAT_PATH) == []
                assert [json.loads(r.body)["invoiceId"] for r in http.at("/fulfilment")] == [paid_before_adoption]

                # Live traffic: every webhook delivered three times.
                await asyncio.sleep(1.1)
                fresh_paid = new_invoice(state, customers[0], 50_000)
                live_fate(state, fresh_paid, "paid")
                fresh_failed = new_invoice(state, customers[1], 70_000, manager="carla@merchant.example")
                live_fate(state, fresh_failed, "failed")
                gives_up = still_open.pop()
                state.mark_uncollectible(gives_up)
                late_payment = written_off.pop()
                state.pay(late_payment, OK)
                await sandbox.deliveries_idle()
                await drain(settings)
                # The next nightly run sees the same facts again: nothing more.
                async with VinrClient(settings.vinr_api_base, settings.vinr_api_key, retry=FAST) as client:
                    nightly = await reconcile_once(settings, engine=ledger_engine, client=client)
                assert nightly.status == "completed" and nightly.matches
                await drain(settings)
                await wait_for(lambda: len(smtp.mails) >= 2 and len(http.at(CHAT_PATH)) >= 2, timeout=10)
                await drain(settings)
    finally:
        await forget_queue(redis, ledger_settings.queue_name)
        await redis.aclose()

    called_back = sorted(json.loads(r.body)["invoiceId"] for r in http.at("/fulfilment"))
    assert called_back == sorted([paid_before_adoption, fresh_paid, late_payment])
    subjects = sorted(m.message["Subject"].split(":")[0] for m in smtp.mails)
    assert subjects == ["Payment failed", "Uncollectible"]
    by_subject = {m.message["Subject"].split(":")[0]: m for m in smtp.mails}
    assert by_subject["Payment failed"].recipients == ["carla@merchant.example"]
    assert gives_up in by_subject["Uncollectible"].text
    assert by_subject["Uncollectible"].recipients == [MANAGERS[customers.index(state.invoice(gives_up).customer) % 2]]
    assert len(http.at(CHAT_PATH)) == 2
    assert (await outbox_by_status(ledger_engine)) == {"sent": 7}
