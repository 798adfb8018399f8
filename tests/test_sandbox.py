"""The VINR sandbox over real HTTP: uvicorn on loopback, and a receiver on loopback that
verifies every delivery and parses it with our own event parser (issue 3's "Done when")."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vinr.events import Event, parse_event
from vinr.sandbox.app import create_app
from vinr.sandbox.config import EndpointConfig, SandboxConfig
from vinr.sandbox.sandbox import Sandbox
from vinr.sandbox.serving import serve
from vinr.signature import SignatureError, verify

SECRET = "whsec_sandbox_test_" + "s" * 24
KEY = "vinr_test_" + "k" * 32
DAY = 86_400


# --- a receiver on loopback ---------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    header: str | None
    verified: bool
    event: Event


class Receiver:
    """Records every delivery, verifies its signature, answers 500 to the first `fail_first`."""

    def __init__(self, secrets: list[str]):
        self.secrets = secrets
        self.deliveries: list[Received] = []
        self.fail_first = 0
        self.slow_first = 0  # the first N requests take `slow_seconds` to answer
        self.slow_seconds = 0.0
        self.hold = 0.0  # every request waits this long, so concurrent ones overlap
        self.in_flight = self.max_in_flight = 0
        self.requests = 0
        self.url = ""
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.requests += 1
        number = self.requests
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.body()
            header = request.headers.get("x-vinr-signature")
            if number <= self.slow_first:
                await asyncio.sleep(self.slow_seconds)
                return JSONResponse({"late": True})
            await asyncio.sleep(self.hold)
            try:
                verify(body, header, self.secrets, now=int(time.time()))
                verified = True
            except SignatureError:
                verified = False
            self.deliveries.append(Received(body, header, verified, parse_event(body)))
            if not verified:
                return JSONResponse({"error": "bad signature"}, status_code=400)
            if number <= self.fail_first:
                return JSONResponse({"error": "try later"}, status_code=500)
            return JSONResponse({"received": True})
        finally:
            self.in_flight -= 1

    def types(self) -> Counter[str]:
        return Counter(d.event.type for d in self.deliveries)

    def of_type(self, type_: str) -> list[Received]:
        return [d for d in self.deliveries if d.event.type == type_]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver([SECRET])
    async with serve(r.app) as root:
        r.url = root + "/hook"
        yield r


# --- the sandbox on loopback --------------------------------------------------------------------


@asynccontextmanager
async def running(receiver: Receiver | None = None, **options: Any) -> AsyncIterator[tuple[Sandbox, httpx.AsyncClient]]:
    """The sandbox under uvicorn, delivering to `receiver`, and a client holding the test key."""
    settings: dict[str, Any] = {"api_keys": (KEY,), "rate_limit": 0, "time_scale": 0.0001}
    if receiver is not None:
        settings["endpoints"] = (EndpointConfig(receiver.url, (SECRET,)),)
    app = create_app(SandboxConfig(**{**settings, **options}))
    async with serve(app) as root:
        async with httpx.AsyncClient(base_url=root + "/v1", headers={"X-Api-Key": KEY}) as client:
            yield app.state.sandbox, client


async def ok(response_or_coro: Any) -> dict[str, Any]:
    response = await response_or_coro
    assert response.status_code == 200, response.text
    return response.json()


async def refused(response_or_coro: Any, status: int, code: str | None = None) -> dict[str, Any]:
    response = await response_or_coro
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message"}
    if code is not None:
        assert error["code"] == code
    return error


async def acme_invoice(api: httpx.AsyncClient) -> dict[str, Any]:
    """Seed 000 up to the finalized invoice: Acme GmbH, two lines, total 196000."""
    customer = await ok(
        api.post("/customers", json={"email": "ops@acme.example", "name": "Acme GmbH", "metadata": {"accountId": "acct_8842"}})
    )
    invoice = await ok(
        api.post(
            "/invoices",
            json={
                "customer": customer["id"],
                "currency": "EUR",
                "collectionMethod": "send_invoice",
                "daysUntilDue": 14,
                "metadata": {"projectId": "proj_2291"},
            },
        )
    )
    assert invoice["status"] == "draft"
    lines = f"/invoices/{invoice['id']}/lines"
    await ok(api.post(lines, json={"description": "Implementation — May 2026", "quantity": 1, "unitAmount": 120000}))
    invoice = await ok(api.post(lines, json={"description": "Support hours", "quantity": 8, "unitAmount": 9500}))
    assert (invoice["subtotal"], invoice["total"], invoice["amountDue"]) == (196000, 196000, 196000)
    return await ok(api.post(f"/invoices/{invoice['id']}/finalize"))


INVOICE_FIELDS = {
    "id", "object", "customer", "status", "currency", "subtotal", "total", "amountPaid", "amountDue",
    "number", "collectionMethod", "daysUntilDue", "dueDate", "hostedInvoiceUrl", "invoicePdf",
    "metadata", "lines", "attemptCount", "lastPaymentError", "created", "finalizedAt", "paidAt", "voidedAt",
}  # fmt: skip


# --- seed 000, and the test cards -----------------------------------------------------------------


async def test_seed_000_send_an_invoice_paid_by_card(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        year = datetime.now(timezone.utc).year
        assert invoice["status"] == "open"
        assert re.fullmatch(rf"INV-{year}-\d{{6}}", invoice["number"])
        assert invoice["hostedInvoiceUrl"].startswith("https://") and invoice["invoicePdf"]
        assert invoice["dueDate"] == invoice["finalizedAt"] + 14 * DAY
        assert set(invoice) >= INVOICE_FIELDS
        await ok(api.post(f"/invoices/{invoice['id']}/send"))
        paid = await ok(api.post(f"/invoices/{invoice['id']}/pay", json={"card": "4242 4242 4242 4242"}))
        assert (paid["status"], paid["amountPaid"], paid["amountDue"]) == ("paid", 196000, 0)
        await sandbox.deliveries_idle()
        events = await ok(api.get("/events", params={"type": "invoice.paid"}))

    assert receiver.types() == Counter(
        {"invoice.created": 1, "invoice.finalized": 1, "invoice.sent": 1, "invoice.paid": 1}
    )
    assert all(d.verified for d in receiver.deliveries)
    [delivery] = receiver.of_type("invoice.paid")
    # An independent implementation of the scheme (Stripe's) accepts the signature too.
    stripe.WebhookSignature.verify_header(delivery.body, delivery.header, SECRET, tolerance=300)
    inv = delivery.event.invoice()
    assert (inv.id, inv.status, inv.amount_paid, inv.amount_due, inv.total) == (invoice["id"], "paid", 196000, 0, 196000)
    assert inv.metadata == {"projectId": "proj_2291"}
    assert [line.amount for line in inv.lines.data] == [120000, 76000]
    # The created event carries the draft as it stood then, not as it is now.
    assert receiver.of_type("invoice.created")[0].event.invoice().status == "draft"
    [listed] = events["data"]
    assert listed["id"] == delivery.event.id
    assert [a["status"] for a in listed["deliveryAttempts"]] == [200]


async def test_declined_card_fails_the_payment_and_leaves_the_invoice_open(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        path = f"/invoices/{invoice['id']}"
        error = await refused(api.post(path + "/pay", json={"card": "4000000000000002"}), 402, "card_declined")
        assert error["type"] == "card_error" and error["declineCode"] == "generic_decline"
        after = await ok(api.get(path))
        assert (after["status"], after["attemptCount"], after["amountDue"]) == ("open", 1, 196000)
        assert after["lastPaymentError"]["code"] == "card_declined"
        paid = await ok(api.post(path + "/pay", json={"card": "4242424242424242"}))
        assert (paid["status"], paid["attemptCount"], paid["lastPaymentError"]) == ("paid", 2, None)
        await sandbox.deliveries_idle()
    [failed] = receiver.of_type("invoice.payment_failed")
    inv = failed.event.invoice()
    assert (inv.status, inv.amount_due, inv.last_payment_error.decline_code) == ("open", 196000, "generic_decline")


async def test_3d_secure_card_needs_approval(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        path = f"/invoices/{invoice['id']}"
        await refused(api.post(path + "/pay", json={"card": "4000000000003220"}), 402, "authentication_required")
        still = await ok(api.get(path))
        assert still["status"] == "open" and still["lastPaymentError"]["code"] == "authentication_required"
        await refused(api.post(path + "/pay", json={"card": "4000000000003220"}), 402, "authentication_required")
        paid = await ok(api.post(path + "/pay", json={"card": "4000000000003220", "threeDSecure": "approve"}))
        assert (paid["status"], paid["amountPaid"], paid["attemptCount"]) == ("paid", 196000, 3)
        await sandbox.deliveries_idle()
    assert receiver.types()["invoice.payment_failed"] == 2
    assert receiver.of_type("invoice.paid")[0].event.invoice().amount_paid == 196000


async def test_seed_001_invoice_items_are_swept_into_the_next_invoice():
    async with running() as (sandbox, api):
        customer = await ok(api.post("/customers", json={"email": "ops@acme.example", "name": "Acme GmbH"}))
        item = await ok(
            api.post(
                "/invoiceitems",
                json={"customer": customer["id"], "amount": 15000, "currency": "EUR", "description": "Onboarding setup fee"},
            )
        )
        draft = await ok(
            api.post("/invoices", json={"customer": customer["id"], "collectionMethod": "send_invoice", "daysUntilDue": 14})
        )
        assert (draft["status"], draft["total"], draft["currency"]) == ("draft", 15000, "EUR")
        opened = await ok(api.post(f"/invoices/{draft['id']}/finalize"))
        assert (opened["status"], opened["total"]) == ("open", 15000)
        assert opened["hostedInvoiceUrl"] == f"https://pay.vinr.com/{draft['id']}"
        assert (await ok(api.get(f"/invoiceitems/{item['id']}")))["invoice"] == draft["id"]
        # Swept once: the customer's next invoice starts empty.
        assert (await ok(api.post("/invoices", json={"customer": customer["id"]})))["total"] == 0


async def test_partial_payment_keeps_the_invoice_open_with_both_amounts_moved(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        path = f"/invoices/{invoice['id']}"
        await refused(api.post(path + "/pay", json={"card": "4242424242424242", "amount": 196001}), 400)
        await refused(api.post(path + "/pay", json={"card": "4242424242424242", "amount": 500.5}), 400)
        part = await ok(api.post(path + "/pay", json={"card": "4242424242424242", "amount": 50000}))
        assert (part["status"], part["amountPaid"], part["amountDue"]) == ("open", 50000, 146000)
        rest = await ok(api.post(path + "/pay", json={"card": "4242424242424242"}))
        assert (rest["status"], rest["amountPaid"], rest["amountDue"]) == ("paid", 196000, 0)
        await sandbox.deliveries_idle()
    [updated] = receiver.of_type("invoice.updated")
    inv = updated.event.invoice()
    assert (inv.status, inv.amount_paid, inv.amount_due) == ("open", 50000, 146000)


async def test_void_keeps_what_was_paid_and_only_open_or_uncollectible_can_be_voided(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        path = f"/invoices/{invoice['id']}"
        await ok(api.post(path + "/pay", json={"card": "4242424242424242", "amount": 50000}))
        void = await ok(api.post(path + "/void"))
        assert (void["status"], void["amountPaid"], void["amountDue"]) == ("void", 50000, 0)
        assert void["voidedAt"] is not None
        for action in ("/void", "/mark_uncollectible", "/finalize"):
            await refused(api.post(path + action), 400)
        await refused(api.post(path + "/pay", json={"card": "4242424242424242"}), 400)
        draft = await ok(api.post("/invoices", json={"customer": invoice["customer"]}))
        await refused(api.post(f"/invoices/{draft['id']}/void"), 400, "invoice_unexpected_state")
        await sandbox.deliveries_idle()
    inv = receiver.of_type("invoice.voided")[0].event.invoice()
    assert (inv.status, inv.amount_paid, inv.amount_due) == ("void", 50000, 0)


async def test_uncollectible_is_still_owed_and_can_be_paid_late(receiver):
    async with running(receiver) as (sandbox, api):
        invoice = await acme_invoice(api)
        path = f"/invoices/{invoice['id']}"
        bad = await ok(api.post(path + "/mark_uncollectible"))
        assert (bad["status"], bad["amountDue"]) == ("uncollectible", 196000)
        await refused(api.post(path + "/mark_uncollectible"), 400)
        late = await ok(api.post(path + "/pay", json={"card": "4242424242424242"}))
        assert (late["status"], late["amountPaid"], late["amountDue"]) == ("paid", 196000, 0)
        await refused(api.post(path + "/void"), 400)
        other = await acme_invoice(api)
        await ok(api.post(f"/invoices/{other['id']}/mark_uncollectible"))
        assert (await ok(api.post(f"/invoices/{other['id']}/void")))["status"] == "void"
        await sandbox.deliveries_idle()
    assert receiver.of_type("invoice.marked_uncollectible")[0].event.invoice().amount_due == 196000
    [paid] = receiver.of_type("invoice.paid")
    assert paid.event.invoice().status == "paid"


async def test_zero_or_negative_total_is_paid_on_finalize_and_credits_the_customer():
    async with running() as (sandbox, api):
        customer = await ok(api.post("/customers", json={"name": "Credit GmbH"}))
        draft = await ok(api.post("/invoices", json={"customer": customer["id"]}))
        await ok(api.post(f"/invoices/{draft['id']}/lines", json={"description": "Plan", "unitAmount": 10000}))
        await ok(api.post(f"/invoices/{draft['id']}/lines", json={"description": "Unused time", "unitAmount": -15000}))
        done = await ok(api.post(f"/invoices/{draft['id']}/finalize"))
        assert (done["status"], done["total"], done["amountPaid"], done["amountDue"]) == ("paid", -5000, 0, 0)
        assert (await ok(api.get(f"/customers/{customer['id']}")))["creditBalance"] == {"EUR": 5000}
        types = [e["type"] for e in (await ok(api.get("/events")))["data"]]
        assert types == ["invoice.created", "invoice.finalized", "invoice.paid"]


async def test_credit_is_applied_to_the_next_invoice_in_its_currency_and_a_void_gives_it_back():
    async with running() as (sandbox, api):
        customer = (await ok(api.post("/customers", json={"name": "Credit GmbH"})))["id"]

        async def invoice(*amounts: int, currency: str = "EUR") -> dict:
            draft = await ok(api.post("/invoices", json={"customer": customer, "currency": currency}))
            for amount in amounts:
                await ok(api.post(f"/invoices/{draft['id']}/lines", json={"description": "x", "unitAmount": amount}))
            return await ok(api.post(f"/invoices/{draft['id']}/finalize"))

        async def credit() -> dict:
            return (await ok(api.get(f"/customers/{customer}")))["creditBalance"]

        await invoice(10_000, -13_000)  # a proration: 3,000 EUR of credit
        chf = await invoice(2_000, currency="CHF")  # another currency does not use it
        assert (chf["appliedBalance"], chf["amountDue"]) == (0, 2_000)
        used = await invoice(10_000)
        assert (used["status"], used["appliedBalance"], used["amountDue"]) == ("open", 3_000, 7_000)
        assert await credit() == {}
        paid = await ok(api.post(f"/invoices/{used['id']}/pay", json={"card": "4242424242424242"}))
        assert (paid["status"], paid["amountPaid"], paid["amountDue"]) == ("paid", 7_000, 0)

        partly = await invoice(5_000)
        await ok(api.post(f"/invoices/{partly['id']}/pay", json={"card": "4242424242424242", "amount": 1_200}))
        voided = await ok(api.post(f"/invoices/{partly['id']}/void"))
        assert (voided["status"], voided["amountPaid"], voided["amountDue"]) == ("void", 1_200, 0)
        assert await credit() == {"EUR": 1_200}  # what was collected is owed back
        covered = await invoice(1_000)  # covered wholly by credit: paid at once, with no cash
        assert (covered["status"], covered["appliedBalance"], covered["amountPaid"], covered["amountDue"]) == (
            "paid", 1_000, 0, 0)
        assert await credit() == {"EUR": 200}


async def test_lines_change_while_draft_and_are_refused_after_finalize():
    async with running() as (sandbox, api):
        customer = await ok(api.post("/customers", json={"name": "Acme GmbH"}))
        draft = await ok(api.post("/invoices", json={"customer": customer["id"]}))
        lines = f"/invoices/{draft['id']}/lines"
        one = await ok(api.post(lines, json={"description": "Support hours", "quantity": 8, "unitAmount": 9500}))
        two = await ok(api.post(lines, json={"description": "Typo", "unitAmount": 1}))
        first, second = (line["id"] for line in two["lines"]["data"])
        assert one["total"] == 76000
        changed = await ok(api.post(f"{lines}/{first}", json={"quantity": 10}))
        assert changed["total"] == 95000 + 1
        removed = await ok(api.delete(f"{lines}/{second}"))
        assert [line["amount"] for line in removed["lines"]["data"]] == [95000]
        await refused(api.post(lines, json={"unitAmount": 12.5}), 400, "parameter_invalid")
        await refused(api.post(lines, json={"unitAmount": "100"}), 400, "parameter_invalid")
        await ok(api.post(f"/invoices/{draft['id']}/finalize"))
        await refused(api.post(lines, json={"unitAmount": 100}), 400, "invoice_not_editable")
        await refused(api.post(f"{lines}/{first}", json={"quantity": 1}), 400, "invoice_not_editable")
        await refused(api.delete(f"{lines}/{first}"), 400, "invoice_not_editable")
        await refused(api.get("/invoices/inv_nope"), 404, "resource_missing")


async def test_form_bodies_work_like_json():
    async with running() as (sandbox, api):
        customer = await ok(api.post("/customers", data={"name": "Acme GmbH", "metadata[accountId]": "acct_1"}))
        assert customer["metadata"] == {"accountId": "acct_1"}
        draft = await ok(api.post("/invoices", data={"customer": customer["id"], "days_until_due": "7"}))
        assert draft["daysUntilDue"] == 7
        with_line = await ok(api.post(f"/invoices/{draft['id']}/lines", data={"quantity": "2", "unit_amount": "500"}))
        assert with_line["total"] == 1000


# --- the API's gate: keys, rate limits, injected faults --------------------------------------------


async def test_without_a_valid_key_every_call_is_401():
    async with running() as (sandbox, api):
        for headers in ({"X-Api-Key": ""}, {"X-Api-Key": "vinr_test_wrong"}):
            error = await refused(api.get("/invoices", headers=headers), 401, "api_key_invalid")
            assert error["type"] == "authentication_error"
        async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
            await refused(anonymous.post("/customers", json={"name": "x"}), 401)
        assert len(sandbox.state.customers) == 0


async def test_rate_limit_answers_429_with_retry_after():
    async with running(rate_limit=2) as (sandbox, api):
        responses = [await api.get("/invoices") for _ in range(6)]
    statuses = [r.status_code for r in responses]
    assert statuses[:2] == [200, 200] and 429 in statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


async def test_injected_faults_repeat_with_the_seed_and_also_work_without_a_server():
    async def statuses(seed: int) -> list[int]:
        # Over ASGITransport, as the REST client's tests do: no lifespan, no uvicorn.
        app = create_app(SandboxConfig(api_keys=(KEY,), rate_limit=0, error_rate=0.4, seed=seed))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox/v1", headers={"X-Api-Key": KEY}) as api:
            responses = [await api.get("/invoices") for _ in range(30)]
        for r in responses:
            if r.status_code == 429:
                assert r.headers["Retry-After"] == "1"
            if r.status_code != 200:
                assert r.json()["error"]["code"] in ("api_error", "rate_limited")
        return [r.status_code for r in responses]

    first = await statuses(7)
    assert set(first) == {200, 429, 500}
    assert await statuses(7) == first
    assert await statuses(8) != first


# --- lists and the Events API -----------------------------------------------------------------------


async def test_lists_page_oldest_first_with_starting_after_and_filters():
    async with running() as (sandbox, api):
        report = sandbox.seed(25, customers=3, seed=1)
        seen, after, pages = [], None, []
        while True:
            params: dict[str, Any] = {"limit": 10, **({"starting_after": after} if after else {})}
            page = await ok(api.get("/invoices", params=params))
            assert page["object"] == "list"
            pages.append((len(page["data"]), page["hasMore"]))
            seen += [inv["id"] for inv in page["data"]]
            if not page["hasMore"]:
                break
            after = page["data"][-1]["id"]
        assert pages == [(10, True), (10, True), (5, False)]
        assert seen == report.invoices
        for status, count in report.by_status.items():
            page = await ok(api.get("/invoices", params={"status": status, "limit": 100}))
            assert [inv["status"] for inv in page["data"]] == [status] * count
        customer = report.customers[1]
        page = await ok(api.get("/invoices", params={"customer": customer, "limit": 100}))
        assert {inv["customer"] for inv in page["data"]} == {customer} and len(page["data"]) == 8
        middle = sandbox.state.invoice(report.invoices[12]).created
        page = await ok(api.get("/invoices", params={"created[gte]": middle, "limit": 100}))
        assert page["data"][0]["id"] == report.invoices[12] and len(page["data"]) == 13
        for inv in (await ok(api.get("/invoices", params={"limit": 100})))["data"]:
            if inv["status"] in ("open", "uncollectible"):
                assert inv["amountDue"] == inv["total"] - inv["amountPaid"]
            elif inv["status"] in ("paid", "void"):
                assert inv["amountDue"] == 0
        await refused(api.get("/invoices", params={"limit": 101}), 400)
        await refused(api.get("/invoices", params={"limit": 0}), 400)
        await refused(api.get("/invoices", params={"starting_after": "inv_nope"}), 400, "resource_missing")
        await refused(api.get("/invoices", params={"status": "lost"}), 400)


class SteppedClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_events_api_keeps_30_days_and_filters_by_type():
    clock = SteppedClock(time.time() - 31 * DAY)
    async with running(clock=clock) as (sandbox, api):
        old = await ok(api.post("/customers", json={"name": "Old"}))
        old_invoice = await ok(api.post("/invoices", json={"customer": old["id"]}))
        clock.now = time.time()
        await acme_invoice(api)
        listed = await ok(api.get("/events", params={"limit": 100}))
        assert [e["type"] for e in listed["data"]] == ["invoice.created", "invoice.finalized"]
        assert all(e["data"]["object"]["id"] != old_invoice["id"] for e in listed["data"])
        old_event = next(iter(sandbox.state.events))
        await refused(api.get(f"/events/{old_event.id}"), 404)
        only = await ok(api.get("/events", params={"type": "invoice.finalized"}))
        assert [e["type"] for e in only["data"]] == ["invoice.finalized"]
        first = await ok(api.get("/events", params={"limit": 1}))
        assert first["hasMore"] is True
        rest = await ok(api.get("/events", params={"starting_after": first["data"][0]["id"]}))
        assert [e["type"] for e in rest["data"]] == ["invoice.finalized"] and rest["hasMore"] is False
        assert parse_event(rest["data"][0]).invoice().status == "open"


# --- webhook delivery ----------------------------------------------------------------------------------


async def test_delivery_retries_with_backoff_until_the_receiver_answers_2xx(receiver):
    receiver.fail_first = 3
    async with running(receiver) as (sandbox, api):
        customer = await ok(api.post("/customers", json={"name": "Acme GmbH"}))
        await ok(api.post("/invoices", json={"customer": customer["id"]}))
        await sandbox.deliveries_idle()
        [event] = (await ok(api.get("/events")))["data"]
    assert len(receiver.deliveries) == 4 and {d.event.id for d in receiver.deliveries} == {event["id"]}
    attempts = event["deliveryAttempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 500), (2, 500), (3, 500), (4, 200)]
    assert attempts[0]["at"] <= attempts[-1]["at"]


async def test_a_slow_receiver_is_a_failed_delivery_and_retried(receiver):
    receiver.slow_first, receiver.slow_seconds = 1, 0.6
    async with running(receiver, delivery_timeout=0.2) as (sandbox, api):
        customer = await ok(api.post("/customers", json={"name": "Acme GmbH"}))
        await ok(api.post("/invoices", json={"customer": customer["id"]}))
        await sandbox.deliveries_idle()
        [event] = (await ok(api.get("/events")))["data"]
    attempts = [(a["status"], a["error"]) for a in event["deliveryAttempts"]]
    assert attempts[0] == (None, "ReadTimeout") and attempts[-1] == (200, None)


async def test_dropped_webhooks_never_arrive_but_are_listed(receiver):
    async with running(receiver, drop_rate=1.0) as (sandbox, api):
        invoice = await acme_invoice(api)
        await sandbox.deliveries_idle()
        events = (await ok(api.get("/events")))["data"]
    assert receiver.deliveries == []
    assert [e["type"] for e in events] == ["invoice.created", "invoice.finalized"]
    assert all(e["deliveryAttempts"] == [] for e in events)
    assert events[1]["data"]["object"]["id"] == invoice["id"]


async def test_duplicates_arrive_as_configured_some_concurrently(receiver):
    receiver.hold = 0.02
    async with running(receiver, duplicate_rate=1.0, duplicate_count=2, seed=5) as (sandbox, api):
        await acme_invoice(api)
        await sandbox.deliveries_idle()
        events = (await ok(api.get("/events")))["data"]
    by_id = Counter(d.event.id for d in receiver.deliveries)
    assert by_id == Counter({e["id"]: 3 for e in events})
    for event_id in by_id:
        assert len({d.body for d in receiver.deliveries if d.event.id == event_id}) == 1  # the same bytes
    assert receiver.max_in_flight >= 2
    assert sorted(a["copy"] for a in events[0]["deliveryAttempts"]) == [0, 1, 2]


async def test_reordered_deliveries_arrive_out_of_order(receiver):
    async with running(receiver, reorder_delay=0.2, seed=11) as (sandbox, api):
        customer = await ok(api.post("/customers", json={"name": "Acme GmbH"}))
        for _ in range(8):
            await ok(api.post("/invoices", json={"customer": customer["id"]}))
        await sandbox.deliveries_idle()
        emitted = [e["id"] for e in (await ok(api.get("/events")))["data"]]
    arrived = [d.event.id for d in receiver.deliveries]
    assert sorted(arrived) == sorted(emitted) and arrived != emitted


async def test_both_shapes_and_snake_case_are_mixed_in_and_all_parse(receiver):
    async with running(receiver, old_shape_rate=0.5, snake_case_rate=0.5, seed=3) as (sandbox, api):
        invoices = [await acme_invoice(api) for _ in range(3)]
        for inv in invoices:
            await ok(api.post(f"/invoices/{inv['id']}/pay", json={"card": "4242424242424242", "amount": 1000}))
        await sandbox.deliveries_idle()
    shapes = Counter()
    for d in receiver.deliveries:
        raw = json.loads(d.body)["data"]
        old_shape = raw.get("object") == "invoice"
        invoice_keys = raw if old_shape else raw["object"]
        shapes["old" if old_shape else "new"] += 1
        shapes["snake" if "amount_paid" in invoice_keys else "camel"] += 1
        if old_shape:
            assert "amountRemaining" in invoice_keys or "amount_remaining" in invoice_keys
        inv = d.event.invoice()  # our own parser takes every shape
        assert inv.metadata == {"projectId": "proj_2291"}
        assert inv.total == (0 if d.event.type == "invoice.created" else 196000)
        if d.event.type == "invoice.updated":
            assert (inv.amount_paid, inv.amount_due) == (1000, 195000)
        if d.event.type == "invoice.finalized":
            assert inv.number and inv.hosted_invoice_url and inv.lines.data[0].unit_amount == 120000
    assert min(shapes["old"], shapes["new"], shapes["snake"], shapes["camel"]) >= 1, shapes


async def test_the_same_seed_repeats_the_same_bad_day():
    frozen = SteppedClock(float(int(time.time())))

    async def one_run(seed: int) -> tuple[list[bytes], list[tuple[str, int]]]:
        receiver = Receiver([SECRET])
        async with serve(receiver.app) as root:
            receiver.url = root + "/hook"
            knobs = dict(
                seed=seed, id_namespace="same", clock=frozen, drop_rate=0.3, duplicate_rate=0.3,
                duplicate_count=2, old_shape_rate=0.5, snake_case_rate=0.5, reorder_delay=0.02,
            )  # fmt: skip
            async with running(receiver, **knobs) as (sandbox, api):
                for _ in range(3):
                    invoice = await acme_invoice(api)
                    await ok(api.post(f"/invoices/{invoice['id']}/pay", json={"card": "4242424242424242"}))
                await sandbox.deliveries_idle()
                events = (await ok(api.get("/events", params={"limit": 100})))["data"]
        assert all(d.verified for d in receiver.deliveries)
        copies = [(e["id"], len(e["deliveryAttempts"])) for e in events]
        return sorted(d.body for d in receiver.deliveries), copies

    first = await one_run(42)
    assert first == await one_run(42)
    assert first != await one_run(43)
    assert any(n == 0 for _, n in first[1]) and any(n > 1 for _, n in first[1])  # drops and copies


async def test_webhook_endpoints_sign_with_every_secret_while_rolling(receiver):
    old, new = "whsec_old_" + "o" * 20, "whsec_new_" + "n" * 20
    receiver.secrets = [new]
    async with running() as (sandbox, api):
        endpoint = await ok(api.post("/webhook_endpoints", json={"url": receiver.url, "secrets": [old, new]}))
        assert endpoint["secrets"] == [old, new]
        listed = await ok(api.get("/webhook_endpoints"))
        assert listed["data"] == [{"id": endpoint["id"], "object": "webhook_endpoint", "url": receiver.url}]
        generated = await ok(api.post("/webhook_endpoints", json={"url": receiver.url + "?second"}))
        assert generated["secrets"][0].startswith("whsec_")
        await ok(api.delete(f"/webhook_endpoints/{generated['id']}"))
        await ok(api.post("/customers", json={"name": "x"}))
        await acme_invoice(api)
        await sandbox.deliveries_idle()
    assert len(receiver.deliveries) == 2 and all(d.verified for d in receiver.deliveries)
    assert all(d.header.count("v1=") == 2 for d in receiver.deliveries)


async def test_events_before_the_lifespan_are_delivered_once_it_starts(receiver):
    sandbox = Sandbox(SandboxConfig(api_keys=(KEY,), endpoints=(EndpointConfig(receiver.url, (SECRET,)),)))
    report = sandbox.seed(20, customers=2, emit_events=True)
    assert len(sandbox.state.events) > 20
    await sandbox.deliveries_idle()  # not delivering yet: nothing to wait for
    async with serve(create_app(sandbox=sandbox)):
        await sandbox.deliveries_idle()
    assert len(receiver.deliveries) == len(sandbox.state.events)
    assert {d.event.invoice().id for d in receiver.deliveries} == set(report.invoices)


# --- secrets stay out of logs, and bulk seeding ------------------------------------------------------


async def test_the_test_key_never_appears_in_logs_or_reprs(receiver, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    receiver.fail_first = 1
    other_key = "vinr_test_" + "o" * 32
    async with running(receiver, api_keys=(KEY, other_key), rate_limit=5) as (sandbox, api):
        statuses = Counter()
        for _ in range(8):  # the limit is per key: flooding with one leaves the other alone
            statuses[(await api.get("/invoices", headers={"X-Api-Key": other_key})).status_code] += 1
        assert statuses[429] >= 1
        await refused(api.get("/invoices", headers={"X-Api-Key": KEY + "x"}), 401)
        await acme_invoice(api)
        await sandbox.deliveries_idle()
        texts = [repr(sandbox), repr(sandbox.config), repr(sandbox.deliverer.endpoints)]
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "webhook delivery failed" in logged  # the logs were really captured
    for text in (logged, *texts):
        assert KEY not in text and other_key not in text and SECRET not in text


def test_seeding_makes_consistent_invoices_in_every_state():
    sandbox = Sandbox(SandboxConfig(rate_limit=0))
    started = time.perf_counter()
    report = sandbox.seed(5_000, customers=50, seed=9, emit_events=True)
    assert time.perf_counter() - started < 5
    assert set(report.by_status) == {"draft", "open", "paid", "void", "uncollectible"}
    assert len(report.invoices) == 5_000 and len(set(report.invoices)) == 5_000
    for invoice_id in report.invoices:
        inv = sandbox.state.invoice(invoice_id)
        if inv.status in ("open", "uncollectible"):
            assert inv.amount_due == inv.total - inv.applied_balance - inv.amount_paid > 0
        if inv.status != "draft":
            assert inv.number is not None
    created = [sandbox.state.invoice(i).created for i in report.invoices]
    assert created == sorted(created) and created[-1] <= time.time()
    assert Sandbox(SandboxConfig()).seed(5_000, customers=50, seed=9).by_status == report.by_status
    assert len(sandbox.state.events) > 10_000


async def test_an_invoice_list_page_arrives_late_showing_the_state_it_was_read_in():
    """`list_latency`: a page of the invoice list is read at once and delivered that much later,
    as over a real network; a payment made meanwhile is not on it."""
    with pytest.raises(ValueError):
        SandboxConfig(list_latency=-1)
    async with running(list_latency=0.5) as (sandbox, api):
        invoice = await acme_invoice(api)
        started = time.monotonic()
        page = asyncio.ensure_future(api.get("/invoices"))
        await asyncio.sleep(0.2)
        await ok(api.post(f"/invoices/{invoice['id']}/pay", json={"card": "4242424242424242"}))
        listed = (await ok(page))["data"]
        assert time.monotonic() - started >= 0.5
        assert [i["status"] for i in listed if i["id"] == invoice["id"]] == ["open"]
        assert (await ok(api.get(f"/invoices/{invoice['id']}")))["status"] == "paid"
