"""The daily digest per account manager (issue 20): which invoices, when, once a day.

The end-to-end tests apply VINR's events through the real worker (arq, real Redis), keep the
ledger on SQLite and PostgreSQL, and receive the emails on a real SMTP server (aiosmtpd, STARTTLS,
AUTH). The clock is the job's argument: the worker's start-up path runs the job with
ALERT_DIGEST_AT already past, so nothing waits for a wall-clock time. One test runs
`vinr-recon worker` itself, twice, on the real clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select

from conftest import tag_of
from ledger import digest as facts
from ledger.outbox import outbox
from ledger.tables import Customer
from lifecycles import Event, drain, enqueue, snapshot
from notify_support import SmtpSink, smtp, trust_the_test_smtp_server  # noqa: F401  (fixtures)
from vinr_recon.settings import Settings
from worker import render
from worker.digest import digest_crons, due_day, notice_key, payload

DAY = date(2026, 12, 2)
ANNA, BOB, CAROL = "anna.manager@merchant.example", "bob.manager@merchant.example", "carol.manager@merchant.example"
FINANCE = "finance@merchant.example"
PUBLIC_URL = "https://recon.merchant.example"


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


# --- Pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "expected"), [
    (at(DAY, 7, 59), None),  # before the day's time: nothing (yesterday's is not sent this morning)
    (at(DAY, 8, 0), DAY),  # at the time
    (at(DAY, 23, 59), DAY),  # a worker started late that day still owes that day's
    (at(DAY, 0, 30), DAY - timedelta(days=1)),  # a run queued before midnight that ran just after
    (at(DAY, 1, 0), None),
])
def test_the_digest_due_at_a_moment(now, expected):
    assert due_day(now, time(8, 0)) == expected


def test_a_digest_at_midnight_is_due_all_day():
    assert due_day(at(DAY, 0, 0), time(0, 0)) == DAY and due_day(at(DAY, 23, 59), time(0, 0)) == DAY


@pytest.mark.parametrize(("status", "attempts", "due", "section"), [
    ("open", 2, None, facts.FAILED),
    ("open", 0, ts(at(DAY, 0)) - 1, facts.OVERDUE),  # due yesterday, a second before midnight
    ("open", 0, ts(at(DAY, 0)), None),  # due today: not yet a day past due (as the aging counts)
    ("open", 0, None, None),
    ("open", 1, ts(at(DAY, 0)) - 86400, facts.FAILED),  # both: the failure is what to act on
    ("uncollectible", 3, None, facts.UNCOLLECTIBLE),
    ("paid", 2, ts(at(DAY, 0)) - 86400, None),
    ("void", 0, ts(at(DAY, 0)) - 86400, None),
    ("draft", 0, ts(at(DAY, 0)) - 86400, None),
])
def test_which_section_an_invoice_is_in(status, attempts, due, section):
    assert facts.section_of(status, attempts, due, DAY) == section


def test_the_key_is_per_manager_and_day_and_fits_the_column():
    assert notice_key(ANNA, DAY) == f"digest:{ANNA}:2026-12-02:email"
    long = "x" * 190 + "@merchant.example"
    assert len(notice_key(long, DAY)) <= 200 and notice_key(long, DAY) != notice_key(long + "y", DAY)


def worklist(manager: str, *chases: facts.Chase, count: int | None = None) -> facts.Worklist:
    totals: dict[str, int] = {}
    for chase in chases:
        totals[chase.currency] = totals.get(chase.currency, 0) + chase.amount_due
    return facts.Worklist(manager, DAY, list(chases), count if count is not None else len(chases), totals)


def chase(invoice_id: str, section: str, currency: str, due: int, **extra) -> facts.Chase:
    fields = dict(invoice_id=invoice_id, number=f"INV-2026-{invoice_id[-3:]}", customer="cust_acme",
                  customer_name="Acme GmbH", customer_email="billing@acme.example", status="open", section=section,
                  currency=currency, amount_due=due, total=due, attempt_count=0, due_date=None, days_overdue=0)
    return facts.Chase(**{**fields, **extra})


def test_the_email_lists_each_invoice_with_amounts_for_people_and_links():
    listed = worklist(ANNA, chase("inv_a142", facts.FAILED, "EUR", 196000, attempt_count=2),
                      chase("inv_b007", facts.OVERDUE, "JPY", 5000, days_overdue=3, customer_name=None),
                      chase("inv_c003", facts.UNCOLLECTIBLE, "EUR", 50000, status="uncollectible"))
    email = render.render("digest", payload(listed, at(DAY, 8), PUBLIC_URL))
    assert email.subject == "3 invoices to chase on 2026-12-02: EUR 2,460.00, JPY 5,000 owed"
    text = email.text()
    assert "Payment failed (1)\n  INV-2026-142, Acme GmbH (cust_acme)\n    EUR 1,960.00 due, 2 failed attempts\n" \
           f"    {PUBLIC_URL}/dashboard/invoices/inv_a142\n" in text
    assert "Overdue (1)\n  INV-2026-007, billing@acme.example (cust_acme)\n    JPY 5,000 due, 3 days overdue\n" in text
    assert "EUR 500.00 written off" in text
    assert text.index("Payment failed") < text.index("Overdue") < text.index("Uncollectible")
    assert f"Your whole list: {PUBLIC_URL}/dashboard/managers/anna.manager@merchant.example" in text


def test_without_public_url_the_email_has_no_links_and_says_what_it_leaves_out():
    listed = worklist(BOB, chase("inv_a142", facts.FAILED, "KWD", 1234, attempt_count=1), count=101)
    text = render.render("digest", payload(listed, at(DAY, 8), None)).text()
    assert "http" not in text and "KWD 1.234 due, 1 failed attempt\n" in text
    assert "100 more are on your list than this email shows." in text


@pytest.mark.parametrize("value", ["8:00", "24:00", "08:60", "0800", "08:00 UTC"])
def test_a_digest_time_that_is_no_time_of_day_is_refused(settings, value):
    with pytest.raises(ValidationError, match="alert_digest_at"):
        Settings(_env_file=None, alert_digest_at=value)


def test_the_digest_is_scheduled_only_when_its_time_and_smtp_are_set(settings):
    assert digest_crons(settings) == []  # off by default
    assert digest_crons(settings.model_copy(update={"alert_digest_at": " "})) == []
    assert digest_crons(settings.model_copy(update={"alert_digest_at": "07:30"})) == []  # no SMTP_URL: nothing to send with
    (job,) = digest_crons(settings.model_copy(update={"alert_digest_at": "07:30", "smtp_url": SecretStr("smtp://h:25")}))
    assert (job.hour, job.minute, job.run_at_startup) == (7, 30, True)
    assert job.name == f"stage_digests:{settings.queue_name}"  # arq's run ids are global to a Redis


# --- Through the ledger, the worker and SMTP -----------------------------------------------


def with_digest(settings, smtp: SmtpSink, **extra):
    return settings.model_copy(update={
        "smtp_url": SecretStr(smtp.url), "alert_email_from": "vinr-recon@merchant.example",
        "alert_default_recipient": FINANCE, "alert_digest_at": "08:00", "public_url": PUBLIC_URL, **extra,
    })


def invoice(invoice_id: str, status: str, total: int, paid: int = 0, *, customer: str = "cust_acme", manager: str | None = None,
            due: datetime | None = None, **extra) -> dict:
    return snapshot(invoice_id, status, total, paid, customer=customer, number=f"INV-2026-{invoice_id[-3:]}",
                    metadata={"accountManager": manager} if manager else {},
                    dueDate=ts(due) if due else None, **extra)


def the_ledger(tag: str) -> tuple[list[Event], dict[str, set[str]]]:
    """Events of invoices for Anna (named by the invoice), Bob (by the customer) and nobody
    (the default recipient), and which invoices each digest of DAY must list."""
    def i(name: str) -> str:
        return f"inv_{tag}_{name}"

    past, future, today = at(DAY, 12) - timedelta(days=3), at(DAY, 12) + timedelta(days=10), at(DAY, 2)
    steps = [
        ("invoice.payment_failed", invoice(i("a1"), "open", 196000, manager=ANNA, due=future, attempts=2)),
        ("invoice.finalized", invoice(i("a2"), "open", 5000, manager=ANNA, due=past, currency="JPY")),
        ("invoice.marked_uncollectible", invoice(i("a3"), "uncollectible", 50000, manager=ANNA, attempts=4)),
        ("invoice.paid", invoice(i("a4"), "paid", 7000, 7000, manager=ANNA, due=past, attempts=1)),
        ("invoice.finalized", invoice(i("a5"), "open", 8000, manager=ANNA, due=today)),  # due today: not yet
        ("invoice.finalized", invoice(i("a6"), "open", 9000, manager=ANNA, due=future)),
        ("invoice.voided", invoice(i("a7"), "void", 9100, manager=ANNA, due=past)),
        # Bob's customer, but the invoice names Anna: the invoice's own manager wins.
        ("invoice.finalized", invoice(i("a8"), "open", 12000, customer="cust_beta", manager=ANNA, due=past)),
        ("invoice.payment_failed", invoice(i("b1"), "open", 12345, customer="cust_beta", due=future, attempts=1)),
        ("invoice.finalized", invoice(i("b2"), "open", 2500, customer="cust_beta", due=past)),
        ("invoice.payment_failed", invoice(i("n1"), "open", 999, customer="cust_nobody", attempts=1)),
    ]
    events = [Event(f"evt_{tag}_{n}", kind, body, ts(at(DAY, 1)) + n) for n, (kind, body) in enumerate(steps)]
    return events, {ANNA: {i("a1"), i("a2"), i("a3"), i("a8")}, BOB: {i("b1"), i("b2")}, FINANCE: {i("n1")}}


async def seed(settings, engine, redis, events: list[Event]) -> None:
    """Apply `events` through the worker (no SMTP: their own alerts are no digest), and cache
    Bob's customer as reconciliation would."""
    async with engine.begin() as conn:
        await conn.execute(Customer.__table__.insert().values(
            id="cust_beta", name="Beta Ltd", email="ap@beta.example", account_manager=BOB, metadata={},
            refreshed_at=datetime.now(UTC)))
    await enqueue(redis, settings.queue_name, events)
    await drain(settings)


async def run_worker(settings, now: datetime):
    """The worker of `vinr-recon worker` (its class and settings) until its queue is empty, with
    the digest job's clock at `now`."""
    return await drain(settings, crons=digest_crons(settings, clock=lambda: now))


LINK = re.compile(re.escape(PUBLIC_URL) + r"/dashboard/invoices/(\S+)")


def listed(mails) -> dict[str, set[str]]:
    """Recipient -> the invoices their digest links to."""
    found: dict[str, set[str]] = {}
    for mail in mails:
        (to,) = mail.recipients
        assert to not in found, f"two digests to {to}"
        found[to] = set(LINK.findall(mail.text))
    return found


async def digest_rows(engine) -> list:
    async with engine.connect() as conn:
        return list((await conn.execute(
            select(outbox.c.key, outbox.c.status).where(outbox.c.kind == "digest").order_by(outbox.c.key))).all())


async def test_two_managers_get_their_invoices_once_a_day_across_a_restart(ledger_settings, ledger_engine, redis,
                                                                          smtp):
    tag = tag_of(ledger_settings.queue_name)
    events, expected = the_ledger(tag)
    await seed(ledger_settings, ledger_engine, redis, events)
    settings = with_digest(ledger_settings, smtp)

    await run_worker(settings, at(DAY, 9, 30))  # started after the day's time: its start-up stages the day's
    assert listed(smtp.mails) == expected
    anna = next(m for m in smtp.mails if m.recipients == [ANNA])
    assert anna.message["Subject"] == "4 invoices to chase on 2026-12-02: EUR 2,580.00, JPY 5,000 owed"
    assert "EUR 1,960.00 due, 2 failed attempts" in anna.text and "JPY 5,000 due, 3 days overdue" in anna.text
    bob = next(m for m in smtp.mails if m.recipients == [BOB])
    assert "Beta Ltd (cust_beta)" in bob.text and "EUR 123.45 due, 1 failed attempt" in bob.text
    assert [row.status for row in await digest_rows(ledger_engine)] == ["sent"] * 3

    # New failures for Bob and for Carol, who had nothing at the digest time; then the worker
    # restarts the same day: the day's digests were staged, so neither gets another (nor a late one).
    late = [Event(f"evt_{tag}_late_b", "invoice.payment_failed",
                  invoice(f"inv_{tag}_b3", "open", 4200, customer="cust_beta", attempts=1), ts(at(DAY, 10))),
            Event(f"evt_{tag}_late_c", "invoice.payment_failed",
                  invoice(f"inv_{tag}_c1", "open", 300, manager=CAROL, attempts=1), ts(at(DAY, 10)))]
    await enqueue(redis, ledger_settings.queue_name, late)
    await drain(ledger_settings)
    await run_worker(settings, at(DAY, 11))
    assert len(smtp.mails) == 3 and len(await digest_rows(ledger_engine)) == 3

    # The next day, before its time: nothing; at its time: a new digest each, Bob's with the new
    # invoice, Anna's with the one due yesterday, now a day overdue.
    await run_worker(settings, at(DAY + timedelta(days=1), 7, 59))
    assert len(smtp.mails) == 3
    await run_worker(settings, at(DAY + timedelta(days=1), 8, 0))
    next_day = listed(smtp.mails[3:])
    assert next_day == {**expected, ANNA: expected[ANNA] | {f"inv_{tag}_a5"}, BOB: expected[BOB] | {f"inv_{tag}_b3"},
                        CAROL: {f"inv_{tag}_c1"}}
    assert [key for key, _ in await digest_rows(ledger_engine)] == sorted(
        [notice_key(who, day) for who in (ANNA, BOB, FINANCE) for day in (DAY, DAY + timedelta(days=1))]
        + [notice_key(CAROL, DAY + timedelta(days=1))])


async def test_with_no_default_recipient_an_invoice_with_no_manager_is_on_no_list(ledger_settings, ledger_engine,
                                                                                  redis, smtp):
    tag = tag_of(ledger_settings.queue_name)
    events, expected = the_ledger(tag)
    await seed(ledger_settings, ledger_engine, redis, events)
    await run_worker(with_digest(ledger_settings, smtp, alert_default_recipient=None), at(DAY, 8, 5))
    assert listed(smtp.mails) == {ANNA: expected[ANNA], BOB: expected[BOB]}


async def test_the_list_is_bounded_and_its_totals_count_every_invoice(ledger_settings, ledger_engine, redis):
    tag = tag_of(ledger_settings.queue_name)
    events = [Event(f"evt_{tag}_{n}", "invoice.payment_failed",
                    invoice(f"inv_{tag}_{n:03}", "open", 100 + n, manager=ANNA, attempts=1), ts(at(DAY, 1)) + n)
              for n in range(12)]
    await enqueue(redis, ledger_settings.queue_name, events)
    await drain(ledger_settings)
    async with ledger_engine.connect() as conn:
        (anna,) = await facts.worklists(conn, DAY, None, listed=5)
    assert (anna.manager, anna.count, anna.totals) == (ANNA, 12, {"EUR": sum(100 + n for n in range(12))})
    # The largest amounts first when nothing else tells them apart.
    assert [c.invoice_id for c in anna.invoices] == [f"inv_{tag}_{n:03}" for n in (11, 10, 9, 8, 7)]


THREE_D_SECURE = {"code": "authentication_required", "declineCode": "authentication_required",
                  "message": "This payment requires 3-D Secure authentication; pay again with threeDSecure=approve."}
DECLINED = {"code": "card_declined", "declineCode": "generic_decline", "message": "Your card was declined."}


async def test_a_3ds_attempt_is_no_decline_and_a_failed_payment_later_paid_is_closed_in_the_next_digest(
    ledger_settings, ledger_engine, redis, smtp
):
    """Issue 21: a 3-D Secure challenge reads as the customer's step to take; once a failed
    payment is paid, the next digest says the matter is closed (also to a manager with nothing
    else on their list)."""
    tag = tag_of(ledger_settings.queue_name)
    secure = invoice(f"inv_{tag}_s1", "open", 196000, manager=ANNA, attempts=1, lastPaymentError=THREE_D_SECURE)
    declined = invoice(f"inv_{tag}_d1", "open", 4200, manager=CAROL, attempts=1, lastPaymentError=DECLINED)
    await enqueue(redis, ledger_settings.queue_name, [
        Event(f"evt_{tag}_s1", "invoice.payment_failed", secure, ts(at(DAY, 1))),
        Event(f"evt_{tag}_d1", "invoice.payment_failed", declined, ts(at(DAY, 1)) + 1)])
    await drain(ledger_settings)
    settings = with_digest(ledger_settings, smtp)

    await run_worker(settings, at(DAY, 9, 30))
    anna = next(m for m in smtp.mails if m.recipients == [ANNA])
    assert "EUR 1,960.00 due, the customer must authenticate the payment (3-D Secure)\n" in text(anna)
    assert "declin" not in text(anna).lower() and "failed attempt" not in text(anna)
    carol = next(m for m in smtp.mails if m.recipients == [CAROL])
    assert "EUR 42.00 due, 1 failed attempt" in text(carol) and "Resolved" not in text(carol)

    # The customer authenticates and pays; the other card is paid too.
    await enqueue(redis, ledger_settings.queue_name, [
        Event(f"evt_{tag}_s2", "invoice.paid", {**secure, **invoice(secure["id"], "paid", 196000, 196000, manager=ANNA,
                                                                      attempts=2)}, ts(at(DAY, 12))),
        Event(f"evt_{tag}_d2", "invoice.paid", invoice(declined["id"], "paid", 4200, 4200, manager=CAROL, attempts=2),
              ts(at(DAY, 12)) + 1)])
    await drain(ledger_settings)
    sent = len(smtp.mails)
    await run_worker(settings, at(DAY + timedelta(days=1), 8, 0))
    second = {m.recipients[0]: m for m in smtp.mails[sent:]}
    assert set(second) == {ANNA, CAROL}  # Carol has nothing to chase, but reads that it is closed
    assert "Resolved since the last digest (1)\n" "  INV-2026-_s1, cust_acme\n" \
           "    authenticated (3-D Secure) and paid: EUR 1,960.00, closed\n" in text(second[ANNA])
    assert "Payment failed" not in text(second[ANNA])
    assert second[CAROL].message["Subject"] == "Nothing to chase on 2026-12-03; 1 resolved"
    assert "    paid: EUR 42.00, closed\n" in text(second[CAROL])

    # The day after, nothing more was paid: nothing is resolved again, and Carol gets no digest,
    # though the paid invoice changed since (the merchant tagged it: invoice.updated).
    tagged = invoice(secure["id"], "paid", 196000, 196000, manager=ANNA, attempts=2)
    await enqueue(redis, ledger_settings.queue_name, [Event(
        f"evt_{tag}_s3", "invoice.updated", {**tagged, "metadata": {**tagged["metadata"], "projectId": "proj_7"}},
        ts(at(DAY + timedelta(days=1), 12)))])
    await drain(ledger_settings)
    sent = len(smtp.mails)
    await run_worker(settings, at(DAY + timedelta(days=2), 8, 0))
    assert [m.recipients for m in smtp.mails[sent:]] == []


def text(mail) -> str:
    return mail.text.replace("\r\n", "\n")


# --- `vinr-recon worker` itself --------------------------------------------------------------


def start_worker(settings, cwd) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "QUEUE_NAME": settings.queue_name, "SMTP_URL": settings.smtp_url.get_secret_value(),
           "ALERT_EMAIL_FROM": settings.alert_email_from, "ALERT_DEFAULT_RECIPIENT": settings.alert_default_recipient,
           "PUBLIC_URL": PUBLIC_URL, "ALERT_DIGEST_AT": "00:00", "LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "vinr_recon", "worker", "--burst"], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # two `vinr-recon worker` processes: about 5 s each here
async def test_the_worker_process_sends_the_days_digest_at_start_up_and_not_again_when_restarted(
    ledger_settings, ledger_engine, redis, smtp, tmp_path
):
    tag = tag_of(ledger_settings.queue_name)
    events, _ = the_ledger(tag)
    await seed(ledger_settings, ledger_engine, redis, events)
    settings = with_digest(ledger_settings, smtp)
    for run in range(2):  # at 00:00 UTC, a day's digest is due all day: the restart finds it staged
        process = start_worker(settings, tmp_path)
        _, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err[-2000:]
        assert ('"digests staged"' in err) == (run == 0) and ('"digests of the day already staged"' in err) == (run == 1)
    # Whatever the real date, each of the three has a failed payment to chase.
    assert sorted(m.recipients[0] for m in smtp.mails) == [ANNA, BOB, FINANCE]
    today = datetime.now(UTC).date()
    assert [key for key, _ in await digest_rows(ledger_engine)] == sorted(
        notice_key(who, today) for who in (ANNA, BOB, FINANCE))
