"""Names, not ids (issue 20): the ledger's copy of VINR's customers (ledger/customers.py), its
refresh by reconciliation (reconcile/customers.py) and the dashboard showing it, on SQLite and
PostgreSQL. The end-to-end tests run VINR's sandbox over real HTTP delivering to the real
receiver, drained by the real worker, as the reconciliation tests do."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from conftest import API_TOKEN
from ledger.book import apply_snapshot
from ledger.customers import (
    account_manager_of,
    cached_customer,
    customers_swept,
    names_for,
    upsert_customers,
)
from lifecycles import snapshot
from notify_support import smtp, wait_for  # noqa: F401  (smtp: a fixture)
from receiver.app import create_app
from receiver_support import served
from reconcile.customers import refresh_customers, refresh_swept_customers
from reconcile.run import Reconciler
from reconcile_support import deployment
from vinr.events import Invoice
from vinr.sandbox.errors import CardError
from vinr.sandbox.state import CARD_DECLINED

T = datetime(2026, 12, 1, tzinfo=UTC)


def acme(name="Acme GmbH", **extra) -> dict:
    return {"id": "cust_acme", "object": "customer", "name": name, "email": "ap@acme.example",
            "metadata": {"accountManager": "am@merchant.example", "tier": "gold"}, "creditBalance": {}, **extra}


# --- the copy ----------------------------------------------------------------------------------


async def test_the_ledger_keeps_the_last_answer_for_each_customer(ledger_engine):
    async with ledger_engine.begin() as conn:
        assert await upsert_customers(conn, [acme(), {"id": "cust_bare"}], T) == 2
    async with ledger_engine.begin() as conn:  # renamed at VINR, and its manager taken away
        await upsert_customers(conn, [acme("Acme Holding AG", metadata={})], T + timedelta(days=1))
    async with ledger_engine.connect() as conn:
        names = await names_for(conn, ["cust_acme", "cust_bare", "cust_unknown", None])
        assert {i: (n.name, n.email, n.label) for i, n in names.items()} == {
            "cust_acme": ("Acme Holding AG", "ap@acme.example", "Acme Holding AG"),
            "cust_bare": (None, None, "cust_bare"),
            "cust_unknown": (None, None, "cust_unknown"),  # never copied: shown by its id
        }
        assert await account_manager_of(conn, "cust_acme") is None
        assert await cached_customer(conn, "cust_acme") == {
            "id": "cust_acme", "name": "Acme Holding AG", "email": "ap@acme.example", "metadata": {}}
        assert await cached_customer(conn, "cust_unknown") is None


async def test_a_customer_is_kept_whatever_text_vinr_sends(ledger_engine):
    odd = acme("Acme\x00 GmbH\n" + "x" * 2000, email=["not", "text"],
               metadata={"accountManager": "am\x00@merchant.example", "n": 7})
    async with ledger_engine.begin() as conn:
        assert await upsert_customers(conn, [odd, {"id": "cust_\x00"}, {"name": "no id"}, "junk"], T) == 1
        names = await names_for(conn, ["cust_acme"])
        assert await account_manager_of(conn, "cust_acme") is None
    name = names["cust_acme"].name
    assert name.startswith("Acme  GmbH") and len(name) == 500 and names["cust_acme"].email is None


async def test_a_run_refreshes_the_customers_it_swept_never_copied_first(ledger_engine):
    async with ledger_engine.begin() as conn:
        for n, (customer, status, created) in enumerate([
            ("cust_a", "paid", 100), ("cust_b", "open", 100), ("cust_c", "paid", 5_000), ("cust_d", "paid", 6_000),
        ]):
            invoice = Invoice.model_validate(snapshot(f"inv_{n}", status, 1000, 1000 if status == "paid" else 0,
                                                      customer=customer, created=created))
            await apply_snapshot(conn, invoice, source="reconciliation", authoritative=True)
        await upsert_customers(conn, [{"id": "cust_c", "name": "C"}], T)
    async with ledger_engine.connect() as conn:
        # From 1,000: the invoices created since (c, d) and the one not final (b); d before c
        # (never copied), and a (paid before the window) not at all.
        assert await customers_swept(conn, 1_000, limit=10) == ["cust_b", "cust_d", "cust_c"]
        assert await customers_swept(conn, 1_000, limit=2) == ["cust_b", "cust_d"]
        assert await customers_swept(conn, None, limit=10) == ["cust_a", "cust_b", "cust_d", "cust_c"]


# --- through the sandbox -----------------------------------------------------------------------


async def sign_in(client) -> None:
    await client.get("/dashboard/signin")
    assert (await client.post("/dashboard/signin", data={"token": API_TOKEN, "next": "/dashboard/"})).status_code == 303


def customer_cell(page: str, row_marker: str) -> str:
    """The text of the customer cell in the table row that mentions `row_marker`."""
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", page, re.S) if row_marker in r)
    return html.unescape(row)


async def test_after_a_reconciliation_the_dashboard_names_the_customer(ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        invoice_id = d.new_open(45_000)
        with pytest.raises(CardError):
            d.state.pay(invoice_id, CARD_DECLINED)
        await d.settle()
        number = d.state.invoice(invoice_id).number
        async with served(create_app(d.settings)) as dashboard:
            await sign_in(dashboard)
            listed = (await dashboard.get("/dashboard/invoices")).text
            assert "Acme GmbH" not in listed and d.customer in customer_cell(listed, invoice_id)  # not copied yet

            report = await Reconciler(ledger_engine, d.client).run()
            refreshed = await refresh_swept_customers(d.client, ledger_engine, report.window_start)
            assert report.matches and refreshed.refreshed == 1

            listed = (await dashboard.get("/dashboard/invoices")).text
            cell = customer_cell(listed, invoice_id)
            assert "Acme GmbH" in cell and "ap@acme.example" in cell and f'title="{d.customer}"' in cell
            page = (await dashboard.get(f"/dashboard/invoices/{invoice_id}")).text
            shown = html.unescape(re.search(r'<dd id="customer">(.*?)</dd>', page, re.S).group(1))
            assert "Acme GmbH" in shown and "ap@acme.example" in shown and d.customer in shown
            overview = (await dashboard.get("/dashboard/")).text
            assert "Acme GmbH" in customer_cell(overview, number or invoice_id)  # its failed payment

            # Renamed at VINR: the next run shows the new name.
            d.state.customer(d.customer).name = "Acme Holding AG"
            report = await Reconciler(ledger_engine, d.client).run()
            await refresh_swept_customers(d.client, ledger_engine, report.window_start)
            listed = (await dashboard.get("/dashboard/invoices")).text
            assert "Acme Holding AG" in customer_cell(listed, invoice_id) and "Acme GmbH" not in listed
            # Found by its name or email, whatever the case (one match: straight to the invoice).
            for q in ("acme holding ag", "AP@acme.example"):
                found = await dashboard.get("/dashboard/invoices", params={"q": q})
                assert found.status_code == 303 and found.headers["location"].endswith(f"/invoices/{invoice_id}")
            assert "No invoice." in (await dashboard.get("/dashboard/invoices", params={"q": "Acme GmbH"})).text


async def test_a_refresh_asks_vinr_once_per_customer_up_to_its_bound(ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        ids = [d.state.create_customer(email=f"c{n}@x.example", name=f"Customer {n}", metadata={}).id
               for n in range(5)]
        before = d.client.requests_made
        first = await refresh_customers(d.client, ledger_engine, ids + ids[:2], limit=3)
        assert (first.refreshed, first.missing, first.left) == (3, 0, 2)
        assert d.client.requests_made - before == 3
        # Those never copied first: the two left over and one VINR does not know.
        second = await refresh_customers(d.client, ledger_engine, ids + ["cust_gone"], limit=3)
        assert (second.refreshed, second.missing, second.left) == (2, 1, 3)
        assert d.client.requests_made - before == 6
        async with ledger_engine.connect() as conn:
            names = await names_for(conn, ids)
        assert [names[i].name for i in ids] == [f"Customer {n}" for n in range(5)]


# --- alerts --------------------------------------------------------------------------------------


async def test_an_alert_email_names_the_customer_from_the_ledgers_copy(ledger_settings, ledger_engine, smtp):
    # The worker has no VINR key: only the ledger's copy can name the customer, and name its
    # account manager as the recipient (the invoice names none).
    settings = ledger_settings.model_copy(update={
        "smtp_url": SecretStr(smtp.url), "alert_email_from": "vinr-recon@merchant.example",
        "alert_default_recipient": "finance@merchant.example"})
    async with deployment(settings, ledger_engine) as d:
        d.state.customer(d.customer).metadata["accountManager"] = "jana@merchant.example"
        d.new_open(10_000)
        await d.settle()
        report = await Reconciler(ledger_engine, d.client).run()
        await refresh_swept_customers(d.client, ledger_engine, report.window_start)

        inv = d.state.create_invoice(customer=d.customer, currency="EUR", collection_method="send_invoice",
                                     days_until_due=14, metadata={})
        d.state.add_line(inv.id, description="work", quantity=1, unit_amount=45_000)
        d.state.finalize(inv.id)
        with pytest.raises(CardError):
            d.state.pay(inv.id, CARD_DECLINED)
        await d.settle()
        await wait_for(lambda: any("Payment failed" in m.message["Subject"] for m in smtp.mails))
    (mail,) = [m for m in smtp.mails if "Payment failed" in m.message["Subject"]]
    number = d.state.invoice(inv.id).number
    assert mail.message["Subject"] == f"Payment failed: {number} (Acme GmbH), EUR 450.00 due"
    assert f"Acme GmbH ({d.customer}), ap@acme.example" in mail.text
    assert mail.recipients == ["jana@merchant.example"]
