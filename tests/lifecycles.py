"""VINR as the tests see it: invoice snapshots, event bodies, lifecycles, and queued jobs.

`snapshot` follows contract section 3 (amountDue by status); `lifecycles` is a hypothesis
strategy that simulates one invoice from draft to its end and yields the events VINR would
send (`open_invoice` makes one in the sandbox); `enqueue` puts jobs on an arq queue in the receiver's exact format, and `drain` runs the
worker until that queue is empty (`run_burst` with settings of one's own); `booked` reads what
the ledger recorded of each event.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass

from arq.jobs import serialize_job
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.db import create_engine
from ledger.tables import ReceivedEvent
from vinr_recon.jobformat import dumps
from vinr_recon.jobs import APPLY_EVENT, job_key

T0 = 1_763_800_000


def snapshot(invoice_id: str, status: str, total: int, paid: int = 0, *, currency: str = "EUR",
             attempts: int = 0, applied: int = 0, **extra) -> dict:
    """The invoice as VINR would send it, with amountDue following the status and the credit
    `applied` at finalize (appliedBalance)."""
    due = total - applied - paid if status in ("open", "uncollectible", "draft") else 0
    return {"id": invoice_id, "object": "invoice", "customer": "cust_1", "status": status, "currency": currency,
            "total": total, "subtotal": total, "amountPaid": paid, "amountDue": due, "appliedBalance": applied,
            "attemptCount": attempts, **extra}


def body(event_id: str, event_type: str, invoice: dict, created: int = T0) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": event_type, "created": created,
                       "data": {"object": invoice}}).encode()


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    invoice: dict
    created: int

    @property
    def body(self) -> bytes:
        return body(self.id, self.type, self.invoice, self.created)


@st.composite
def lifecycles(draw, invoice_id: str) -> list[Event]:
    """One invoice's events, in VINR's order: draft, finalize, payments and failures, an end."""
    currency = draw(st.sampled_from(["EUR", "USD", "JPY"]))
    total = draw(st.one_of(st.integers(1, 500_000), st.integers(1, 500_000), st.integers(-50_000, 0)))
    states: list[tuple[str, dict]] = []

    applied = 0  # the customer's credit VINR applies at finalize

    def emit(event_type: str, status: str, paid: int, attempts: int = 0) -> None:
        states.append((event_type, snapshot(invoice_id, status, total, paid, currency=currency, attempts=attempts,
                                            applied=applied if status != "draft" else 0)))

    if draw(st.booleans()):
        emit("invoice.created", "draft", 0)
    if total <= 0:  # a zero or negative invoice is paid on finalize (a credit to the customer)
        emit("invoice.finalized", "paid", 0)
        emit("invoice.paid", "paid", 0)
        return _events(invoice_id, states)

    applied = draw(st.sampled_from([0, 0, total, draw(st.integers(0, total))]))
    if applied == total:  # covered wholly by credit: paid at finalize, with no cash
        emit("invoice.finalized", "paid", 0)
        emit("invoice.paid", "paid", 0)
        return _events(invoice_id, states)

    emit("invoice.finalized", "open", 0)
    due = total - applied  # what cash must still cover
    paid = attempts = 0
    for step in draw(st.lists(st.sampled_from(["part", "fail"]), max_size=4)):
        if step == "fail":
            attempts += 1
            emit("invoice.payment_failed", "open", paid, attempts)
        elif due - paid > 1:
            paid += draw(st.integers(1, due - paid - 1))
            emit("invoice.updated", "open", paid, attempts)
    end = draw(st.sampled_from(["paid", "void", "uncollectible", "open"]))
    if end == "paid":
        emit("invoice.paid", "paid", due, attempts)
    elif end == "void":
        emit("invoice.voided", "void", paid, attempts)
    elif end == "uncollectible":
        emit("invoice.marked_uncollectible", "uncollectible", paid, attempts)
        if due - paid > 1 and draw(st.booleans()):
            paid += draw(st.integers(1, due - paid - 1))
            emit("invoice.updated", "uncollectible", paid, attempts)
        if draw(st.booleans()):
            emit("invoice.paid", "paid", due, attempts)  # paid late: a recovery
    return _events(invoice_id, states)


def _events(invoice_id: str, states: list[tuple[str, dict]]) -> list[Event]:
    return [Event(f"evt_{invoice_id}_{i}", kind, invoice, T0 + i * 60) for i, (kind, invoice) in enumerate(states)]


def open_invoice(state, customer: str, *amounts: int, currency: str = "EUR", metadata: dict | None = None,
                 description: str = "work") -> str:
    """An invoice made and finalized in the sandbox's `state` (sent, due in 14 days), a line of
    each amount; its id."""
    inv = state.create_invoice(customer=customer, currency=currency, collection_method="send_invoice",
                               days_until_due=14, metadata=metadata or {})
    for amount in amounts:
        state.add_line(inv.id, description=description, quantity=1, unit_amount=amount)
    state.finalize(inv.id)
    return inv.id


async def enqueue(redis, queue_name: str, events, *, job_id=lambda event: event.id) -> None:
    """Queue `apply_event` jobs exactly as the receiver does (arq's fields, data-only format, no expiry)."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            now_ms = int(time.time() * 1000)
            args = (event.id, event.type, event.body, {"content-type": "application/json"}, now_ms / 1000)
            pipe.set(job_key(job_id(event)), serialize_job(APPLY_EVENT, args, {}, None, now_ms, serializer=dumps))
            pipe.zadd(queue_name, {job_id(event): now_ms})
        await pipe.execute()


async def drain(settings, crons=(), **options):
    """Run the worker (`vinr-recon worker`'s class and settings) until its queue is empty,
    deferred retries included; returns it, for its counts of jobs. `crons` replace the worker's
    cron jobs of the same names (a test's clock, or schedule)."""
    from worker.settings import worker_settings

    options = worker_settings(settings, burst=True, poll_delay=0, **options)
    replaced = {job.name for job in crons}
    options["cron_jobs"] = [job for job in options["cron_jobs"] if job.name not in replaced] + list(crons)
    return await run_burst(options)


async def run_burst(options: dict):
    """`vinr-recon worker`'s class with `options` (`worker_settings(..., burst=True)`, maybe
    altered) run until its queue is empty, then closed; returns it, for its counts of jobs."""
    from worker.settings import Worker

    worker = Worker(**options, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await close_worker(worker)
    return worker


async def close_worker(worker) -> None:
    """Close an arq worker that has run."""
    with warnings.catch_warnings():
        # arq 0.28 closes its pool with redis 5's deprecated close().
        warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
        await worker.close()


async def booked(settings) -> dict[str, str]:
    """What the ledger of `settings` recorded of each event it received: {event id: outcome}."""
    received = ReceivedEvent.__table__
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            return dict((await conn.execute(select(received.c.event_id, received.c.outcome))).all())
    finally:
        await engine.dispose()
