"""`vinr-recon sandbox trigger EVENT_TYPE`: make VINR emit an event, as `stripe trigger` does.

It walks an invoice through VINR's public REST API (contract section 4), as a merchant and its
customer would (customer, invoice, line, finalize, send, pay with a test card, void...), so
VINR itself emits the event and delivers it to the registered webhook endpoint. Nothing here
is a back door of the sandbox: the same steps work against a real test-mode account (whose
customers pay on the hosted page; `pay` is the sandbox's stand-in for it).

`scenarios.SCENARIOS` (pure data) says which steps make which event; `trigger` runs them with a
`VinrClient` and returns what happened, for `lines` to word.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vinr.client import InvalidRequest, RetryPolicy, VinrClient
from vinr.sandbox.scenarios import AWAITED, SCENARIOS, Step

# A person is waiting: a few quick tries, not the reconciliation's patient ones.
QUICK_RETRY = RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=2.0, max_retry_after=5.0)


def quiet_retries() -> None:
    """A one-shot command says how a call ended in one line; the client's retry lines would
    only bury it."""
    logging.getLogger("vinr.client").setLevel(logging.ERROR)


@dataclass
class Outcome:
    """What a trigger did, step by step, and the events VINR lists for its invoice."""

    done: list[str] = field(default_factory=list)
    invoice_id: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)  # (id, type), oldest first


def _card(number: str) -> str:
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4))


def _describe(step: Step, invoice: dict[str, Any], amount: int | None = None) -> str:
    status = invoice.get("status")
    if step.action == "finalize":
        return f"finalized: {status}, {invoice.get('number')}, {invoice.get('amountDue')} due"
    if step.action == "pay":
        paid = f"{amount} of " if amount is not None else ""
        return f"paid {paid}the invoice with {_card(step.fields['card'])}" + (
            " (3-D Secure approved)" if "threeDSecure" in step.fields else "") + f": {status}"
    return {"send": "sent to the customer", "void": "voided", "mark_uncollectible": "marked uncollectible"}[
        step.action] + f": {status}"


async def trigger(
    client: VinrClient,
    event_type: str,
    *,
    amount: int = 12000,
    currency: str = "EUR",
    wait: float = 5.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Outcome:
    """Make VINR emit `event_type` (a key of `SCENARIOS`) for a new invoice of `amount` minor
    units. Raises the client's `VinrError` when VINR refuses a step it should have taken."""
    steps, _ = SCENARIOS[event_type]
    out = Outcome()
    customer = await client.create_customer(
        email="trigger@example.test", name="vinr-recon trigger", metadata={"trigger": event_type})
    out.done.append(f"customer {customer['id']} created")
    invoice = await client.create_invoice(
        customer=customer["id"], currency=currency, collectionMethod="send_invoice", daysUntilDue=14,
        metadata={"trigger": event_type})
    out.invoice_id = invoice_id = invoice["id"]
    out.done.append(f"invoice {invoice_id} created: {invoice.get('status')}")
    invoice = await client.add_invoice_line(
        invoice_id, description=f"vinr-recon sandbox trigger {event_type}", quantity=1, unitAmount=amount)
    out.done.append(f"line added: 1 x {amount} {currency} (minor units)")
    for step in steps:
        fields = dict(step.fields)
        part = None
        if fields.get("amount") == "half":
            fields["amount"] = part = max(1, invoice["amountDue"] // 2)
        try:
            invoice = await client.invoice_action(invoice_id, step.action, **fields)
        except InvalidRequest as exc:
            if not (step.declines and exc.status == 402):
                raise
            out.done.append(f"paid with {_card(fields['card'])}: refused as it should be ({exc.code}: {exc.message})")
            continue
        out.done.append(_describe(step, invoice, part))
    out.events = await _events_of(client, invoice_id, invoice.get("created"), AWAITED.get(event_type, event_type),
                                  wait, sleep)
    return out


async def _events_of(
    client: VinrClient, invoice_id: str, since: Any, awaited: str, wait: float,
    sleep: Callable[[float], Awaitable[Any]],
) -> list[tuple[str, str]]:
    """The invoice's events from the Events API, read again (for up to `wait` s) until `awaited`
    is among them: a real VINR may list an event a moment after the call that caused it."""
    since = since if type(since) is int else None
    tries = max(1, int(wait / 0.5) + 1)
    found: list[tuple[str, str]] = []
    for attempt in range(tries):
        found = [(e["id"], str(e.get("type"))) async for e in client.iter_events(created_gte=since)
                 if _invoice_of(e) == invoice_id]
        if any(kind == awaited for _, kind in found) or attempt == tries - 1:
            break
        await sleep(0.5)
    return found


def _invoice_of(event: dict[str, Any]) -> str | None:
    """The invoice id of an event in either shape (`data.object` the invoice, or `data` itself)."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    inner = data.get("object")
    invoice = inner if isinstance(inner, dict) else data
    return invoice.get("id") if isinstance(invoice.get("id"), str) else None


def lines(event_type: str, outcome: Outcome) -> list[str]:
    """What the command prints: each step, then the events produced."""
    out = [f"trigger {event_type}: {SCENARIOS[event_type][1]}"]
    out += [f"  {step}" for step in outcome.done]
    if outcome.events:
        out.append(f"events of {outcome.invoice_id} (VINR delivers each to its webhook endpoints):")
        out += [f"  {event_id} {kind}" for event_id, kind in outcome.events]
    else:
        out.append(f"no event of {outcome.invoice_id} listed yet by the Events API")
    return out


def refusal(exc: Exception, base_url: str) -> str:
    """One line for a call VINR refused or never answered (a `VinrError`), with the likely fix."""
    status = getattr(exc, "status", None)
    where = f"{getattr(exc, 'method', '')} {getattr(exc, 'path', '')}".strip()
    if status == 401:
        return f"VINR refused the key (401) at {base_url}: check VINR_API_KEY or --api-key"
    if status == 404 and not base_url.rstrip("/").endswith("/v1"):
        return f"VINR answered 404 to {where} at {base_url}: the base URL usually ends in /v1 (VINR_API_BASE, --api-base)"
    if status == 404:
        return f"VINR answered 404 to {where} at {base_url}: {getattr(exc, 'message', exc)}"
    if status is None:
        return f"VINR did not answer at {base_url} ({where}): {getattr(exc, 'message', exc)}"
    return f"VINR refused {where} ({status} {getattr(exc, 'code', None) or 'error'}): {getattr(exc, 'message', exc)}"
