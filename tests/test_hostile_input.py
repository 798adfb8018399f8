"""Input that must be refused, not retried (issues 15 and 16).

At the receiver (the app over real HTTP, the real Redis): control characters in ids, fields out
of range and deep nesting are a 400, never a 200 the worker could not apply and never a 500 VINR
would retry for three days. In the worker (a real arq burst worker, the real Redis, the ledger on
SQLite and PostgreSQL): whatever reaches it anyway, from an older receiver's queue or a replay,
and snapshots that break the contract's invariants, are dead letters at once, with their error
named; and one bad event never fails the group commit of its neighbours.
"""

from __future__ import annotations

import json
import time

import pytest
from arq.jobs import Job
from sqlalchemy import func, select

from conftest import unique
from ledger.deadletters import storable
from ledger.tables import DeadLetter, JournalEntry, ReceivedEvent
from lifecycles import Event, drain, enqueue, snapshot
from receiver_support import assert_identify_agrees_with_parse_event, client, signed  # noqa: F401 (client: a fixture)
from vinr.events import InvalidEvent, parse_event
from vinr_recon.jobformat import loads

URL = "/webhooks/vinr"
dead_letters, entries, received = DeadLetter.__table__, JournalEntry.__table__, ReceivedEvent.__table__

YEAR_10000 = 253_402_300_800  # the first second a datetime cannot hold
INT64 = 2**63


DEEP = "deeply nested"


def event_dict(event_id: str | None = None, event_type: str = "invoice.paid", *, at: int | None = None,
               shape: str = "newer", **invoice) -> dict:
    """An event and its invoice (`invoice` sets its fields); `at` is the event's `created`."""
    inv = {"id": unique("inv"), "object": "invoice", "customer": "cust_1", "status": "paid", "total": 1200,
           "amountPaid": 1200, "amountDue": 0, "currency": "EUR", **invoice}
    return {"id": event_id or unique("evt"), "object": "event", "type": event_type,
            "created": int(time.time()) if at is None else at, "livemode": False,
            "data": {"object": inv} if shape == "newer" else inv}


def older_due(**due) -> dict:
    """An event of the older shape whose invoice names amountDue by an older name."""
    event = event_dict(shape="older", **due)
    del event["data"]["amountDue"]
    return event


def raw(event: dict, depth: int = 0) -> bytes:
    """The event's JSON; the string DEEP in it becomes arrays nested `depth` levels (json.dumps
    itself cannot write them)."""
    return json.dumps(event).encode().replace(f'"{DEEP}"'.encode(), b"[" * depth + b"]" * depth)


# --- the receiver ---------------------------------------------------------------------------


REFUSED = {
    "NUL in the event id": (raw(event_dict("evt_\x00x")), "id"),
    "escape in the event id": (raw(event_dict("evt_\x1b[2J")), "id"),
    "C1 control in the event id": (raw(event_dict("evt_\x85")), "id"),
    "lone surrogate in the event id": (raw(event_dict("evt_\ud800")), "id"),
    "newline in the event type": (raw(event_dict(event_type="invoice.paid\n")), "type"),
    "NUL in an unknown type": (raw(event_dict(event_type="customer\x00created")), "type"),
    "NUL in the invoice id": (raw(event_dict(id="inv_\x00")), "data.object.id"),
    "NUL in the invoice id, older shape": (raw(event_dict(id="inv_\x00", shape="older")), "data.id"),
    "tab in the customer id": (raw(event_dict(customer="cust\t1")), "data.object.customer"),
    "NUL in the customer id, older shape": (raw(event_dict(customer="cust_\x00", shape="older")), "data.customer"),
    "NUL in the invoice number": (raw(event_dict(number="INV-\x00")), "data.object.number"),
    "created 10^12": (raw(event_dict(at=10**12)), "created"),
    "created negative": (raw(event_dict(at=-1)), "created"),
    "created in the year 10000": (raw(event_dict(at=YEAR_10000)), "created"),
    "invoice created 10^12": (raw(event_dict(created=10**12)), "data.object.created"),
    "finalizedAt beyond a datetime": (raw(event_dict(finalizedAt=YEAR_10000)), "data.object.finalizedAt"),
    "paid_at negative, older shape": (raw(event_dict(paid_at=-5, shape="older")), "data.paid_at"),
    "voidedAt 2^64": (raw(event_dict(voidedAt=2**64)), "data.object.voidedAt"),
    "dueDate 10^15": (raw(event_dict(dueDate=10**15)), "data.object.dueDate"),
    "total 2^63": (raw(event_dict(total=INT64)), "data.object.total"),
    "amountPaid below -2^63": (raw(event_dict(amountPaid=-INT64 - 1)), "data.object.amountPaid"),
    "amount_remaining 10^30, older shape": (raw(older_due(amount_remaining=10**30)), "data.amount_remaining"),
    "appliedBalance 2^64": (raw(event_dict(appliedBalance=2**64)), "data.object.appliedBalance"),
    "nested 1,000 levels in data": (raw(event_dict(lines=DEEP), 1000), "nested"),
    "nested 100,000 levels at the top": (b'{"id": "evt_deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                         "nested"),
}


@pytest.mark.parametrize("body, field", list(REFUSED.values()), ids=list(REFUSED))
async def test_the_receiver_refuses_hostile_bodies_with_a_400_naming_the_field(client, redis, settings, body, field):
    response = await client.post(URL, content=body, headers=signed(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("not an event: ") and field in error, error
    assert await redis.zcard(settings.queue_name) == 0


KEPT = {
    "the last second a datetime holds": raw(event_dict(at=YEAR_10000 - 1, paidAt=YEAR_10000 - 1)),
    "created 0": raw(event_dict(at=0)),
    "amounts at the edge of 64 bits": raw(event_dict(status="open", total=INT64 - 1, amountPaid=0,
                                                     amountDue=INT64 - 1)),
    "printable Unicode in ids": raw(event_dict("evt_é✓", customer="cust_名前")),
    "nested 150 levels": raw(event_dict(x=DEEP), 150),
    # Not an invoice event: its object is kept, not applied, so its fields are not the ledger's.
    "an unknown type's object with a NUL": raw(event_dict(event_type="customer.updated", id="cust_\x00",
                                                          created=10**15)),
}


@pytest.mark.parametrize("body", list(KEPT.values()), ids=list(KEPT))
async def test_the_receiver_still_accepts_what_is_in_range(client, redis, settings, body):
    response = await client.post(URL, content=body, headers=signed(body))
    assert (response.status_code, response.json()) == (200, {"received": True})
    assert await redis.zcard(settings.queue_name) == 1


# --- the worker -----------------------------------------------------------------------------


@pytest.fixture
def new_id(prefix):
    """Event ids of this test's own (job and result keys live in the shared Redis)."""
    return lambda: unique(prefix)


async def outcome(redis, job_id: str):
    return await Job(job_id, redis, _deserializer=loads).result_info()


class Raw(Event):
    """A queued event whose body is given as bytes (it need not be an event at all)."""

    def __init__(self, event_id: str, event_type: str, body: bytes) -> None:
        super().__init__(event_id, event_type, {}, 0)
        object.__setattr__(self, "_body", body)

    @property
    def body(self) -> bytes:
        return self._body


def queued(event: dict, depth: int = 0) -> Raw:
    return Raw(event["id"], event["type"], raw(event, depth))


def invoice_event(event_id: str, n: int, status: str, total: int, paid: int = 0, **extra) -> dict:
    inv = snapshot(f"inv_{n}", status, total, paid, **extra)
    return {"id": event_id, "object": "event", "type": "invoice.updated", "created": 1_763_800_000 + n,
            "data": {"object": inv}}


BROKEN = {
    # (the invoice, what the dead letter's error must say)
    "amountPaid negative": ({"status": "paid", "total": 1000, "amountPaid": -5000, "amountDue": 0},
                            "amountPaid -5000 is negative"),
    "amountPaid above the total": ({"status": "open", "total": 1000, "amountPaid": 1500, "amountDue": -500},
                                   "amountPaid 1500 is above the total 1000"),
    "amountDue not total - amountPaid while open": (
        {"status": "open", "total": 1000, "amountPaid": 400, "amountDue": 1000},
        "amountDue 1000 is not total - appliedBalance - amountPaid = 600 while open"),
    "amountDue not total - appliedBalance - amountPaid while uncollectible": (
        {"status": "uncollectible", "total": 1000, "appliedBalance": 300, "amountPaid": 200, "amountDue": 800},
        "amountDue 800 is not total - appliedBalance - amountPaid = 500 while uncollectible"),
    "amountDue left once paid": ({"status": "paid", "total": 1000, "amountPaid": 1000, "amountDue": 1},
                                 "amountDue 1 is not 0 once paid"),
    "amountDue left once void": ({"status": "void", "total": 1000, "amountPaid": 0, "amountDue": 1000},
                                 "amountDue 1000 is not 0 once void"),
    "a credit note paid with money": ({"status": "paid", "total": -500, "amountPaid": 100, "amountDue": 0},
                                      "amountPaid 100 is not 0 for an invoice paid with a total of -500"),
    "appliedBalance negative": ({"status": "open", "total": 1000, "appliedBalance": -1, "amountPaid": 0,
                                 "amountDue": 1001}, "appliedBalance"),
}


@pytest.mark.parametrize("invoice, error", list(BROKEN.values()), ids=list(BROKEN))
async def test_a_snapshot_that_breaks_the_contract_is_dead_at_once_naming_the_invariant(
    ledger_settings, ledger_engine, redis, new_id, invoice, error
):
    finalized = invoice_event(new_id(), 1, "open", 1000)
    broken = invoice_event(new_id(), 1, "paid", 1000)
    broken["created"] += 60
    broken["data"]["object"].update(invoice)
    await enqueue(redis, ledger_settings.queue_name, [queued(finalized)])
    await drain(ledger_settings)
    await enqueue(redis, ledger_settings.queue_name, [queued(broken)])
    worker = await drain(ledger_settings)

    assert worker.jobs_retried == 0
    assert (await outcome(redis, broken["id"])).result == "dead"
    async with ledger_engine.connect() as conn:
        (letter,) = (await conn.execute(select(dead_letters))).all()
        kinds = (await conn.execute(select(entries.c.kind))).scalars().all()
    assert (letter.event_id, letter.attempts) == (broken["id"], 1)
    assert letter.error.startswith("InvalidEvent: ") and error in letter.error, letter.error
    assert kinds == ["finalize"]  # the broken snapshot posted nothing


UNSAFE = {
    "NUL in the event id": ("{id}\x00", "invoice.paid", {}),
    "NUL in the type": ("{id}", "invoice.\x00paid", {}),
    "NUL in the invoice id": ("{id}", "invoice.paid", {"id": "inv_\x00"}),
    "an event id over 100 characters": ("{id}" + "x" * 100, "invoice.paid", {}),
}


@pytest.mark.parametrize("event_id, event_type, invoice", list(UNSAFE.values()), ids=list(UNSAFE))
async def test_an_unsafe_id_already_queued_is_dead_lettered_at_once_and_its_letter_written(
    ledger_settings, ledger_engine, redis, new_id, event_id, event_type, invoice
):
    """Queued by a receiver before the check: on PostgreSQL a NUL in a text column used to fail
    even the dead letter, so the job was retried for ever."""
    event_id = event_id.format(id=new_id())
    event = event_dict(event_id, event_type, **invoice)
    await enqueue(redis, ledger_settings.queue_name, [queued(event)])
    worker = await drain(ledger_settings, tries=3)

    assert (worker.jobs_complete, worker.jobs_retried) == (1, 0)
    assert (await outcome(redis, event_id)).result == "dead"
    async with ledger_engine.connect() as conn:
        (letter,) = (await conn.execute(select(dead_letters))).all()
        stored = await conn.scalar(select(received.c.outcome))
    assert letter.attempts == 1 and stored == "dead"
    assert letter.body == raw(event)  # kept exactly as received
    # Stored escaped: printable, and telling which character it was.
    escaped_id, escaped_type = (text.replace("\x00", "\\x00") for text in (event_id, event_type))
    if len(escaped_id) > 100:  # the column's length
        escaped_id = escaped_id[:99] + "…"
    assert (letter.event_id, letter.type) == (escaped_id, escaped_type)
    assert letter.error.isprintable() and letter.error.startswith("InvalidEvent: ")


async def test_one_bad_event_never_fails_its_batch(ledger_settings, ledger_engine, redis, new_id):
    """Twenty good events and bad ones of each kind, queued together so the worker's group
    commit takes them together: every good one is applied at its first try, each bad one is a
    dead letter at its first try."""
    good = [invoice_event(new_id(), n, "open", 100 * n) for n in range(1, 21)]
    bad = [
        event_dict(new_id(), at=10**12),  # year 33658: used to fail the whole batch
        event_dict(new_id(), finalizedAt=10**13),
        event_dict(new_id(), status="paid", total=1000, amountPaid=-5000, amountDue=0),
        event_dict(new_id() + "\x00"),
        event_dict(new_id(), x=DEEP),
        event_dict(new_id(), total=10**20, amountPaid=10**20),
    ]
    mixed = [*good[:7], *bad[:3], *good[7:14], *bad[3:], *good[14:]]
    await enqueue(redis, ledger_settings.queue_name, [queued(e, 1000 if e is bad[4] else 0) for e in mixed])
    worker = await drain(ledger_settings, tries=3)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (len(mixed), 0, 0)
    infos = {e["id"]: await outcome(redis, e["id"]) for e in mixed}
    assert {e["id"]: (infos[e["id"]].result, infos[e["id"]].job_try) for e in good} == {
        e["id"]: ("applied", 1) for e in good}
    assert {e["id"]: (infos[e["id"]].result, infos[e["id"]].job_try) for e in bad} == {
        e["id"]: ("dead", 1) for e in bad}
    async with ledger_engine.connect() as conn:
        letters = (await conn.execute(select(dead_letters.c.attempts))).scalars().all()
        applied = await conn.scalar(select(func.count()).where(received.c.outcome == "applied"))
    assert sorted(letters) == [1] * len(bad) and applied == len(good)


# --- parse_event, the worker's reading of a body ----------------------------------------------


@pytest.mark.parametrize("body, field", list(REFUSED.values()), ids=list(REFUSED))
def test_parse_event_refuses_them_too_as_poison(body, field):
    with pytest.raises(InvalidEvent) as refused:
        event = parse_event(body)
        if event.is_invoice_event:
            event.invoice()
    assert field in str(refused.value)


@pytest.mark.parametrize("body", [*(b for b, _ in REFUSED.values()), *KEPT.values()], ids=[*REFUSED, *KEPT])
def test_the_receiver_and_the_worker_agree_on_each(body):
    """The receiver's fast path (identify) refuses exactly what parse_event does, in its words."""
    assert_identify_agrees_with_parse_event(body)


@pytest.mark.parametrize("text, limit, stored", [
    ("evt_1", 100, "evt_1"),
    ("evt_é✓名", 100, "evt_é✓名"),
    ("evt_\x00\x1b\x7f\x85", 100, "evt_\\x00\\x1b\\x7f\\x85"),
    ("evt_\ud800\u2028", 100, "evt_\\ud800\\u2028"),
    ("evt_\U000e0001", 100, "evt_\\U000e0001"),
    ("e" * 101, 100, "e" * 99 + "…"),
    ("\x00" * 50, 100, "\\x00" * 24 + "\\x0…"),
])
def test_a_dead_letter_stores_text_printable_and_within_its_column(text, limit, stored):
    assert storable(text, limit) == stored
    assert stored.isprintable() and len(stored) <= limit
