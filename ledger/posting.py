"""The posting rule: (the ledger's position of an invoice, VINR's snapshot) -> journal entries.

Pure: no I/O, no clock. Webhooks and reconciliation both come through `post`, so applying a
snapshot is idempotent and indifferent to order: the rule moves the position to the snapshot,
and a snapshot already reached (or older) moves nothing.

An invoice's accounting is five facts, each a function of VINR's snapshot (contract sections 3
and 6):

    recognized   revenue recognised (negative for a credit note, 0 once void)
    collected    vinr_clearing, = amountPaid
    written_off  bad_debt
    credited     customer_credit owed to the customer: a negative total, or on void what the
                 invoice had collected and the credit it had used
    applied      customer_credit used up by this invoice, = appliedBalance

and receivable = recognized + credited - collected - written_off - applied, which is
`amountDue` while the invoice is open and 0 otherwise. Each change of a fact is one balanced
entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vinr.events import Invoice, unprintable

AR, REVENUE, CLEARING, BAD_DEBT, CREDIT = (
    "accounts_receivable",
    "revenue",
    "vinr_clearing",
    "bad_debt",
    "customer_credit",
)

FINAL = frozenset({"paid", "void"})
_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


class CannotApply(ValueError):
    """The snapshot contradicts the ledger in a way no entry may fix (e.g. a changed currency)."""


@dataclass(frozen=True)
class Facts:
    recognized: int = 0
    collected: int = 0
    written_off: int = 0
    credited: int = 0
    applied: int = 0

    @property
    def receivable(self) -> int:
        return self.recognized + self.credited - self.collected - self.written_off - self.applied


@dataclass(frozen=True)
class Position:
    """The ledger's position of one invoice; `status` None means the ledger never saw it."""

    invoice_id: str
    status: str | None = None
    currency: str | None = None
    total: int = 0
    amount_paid: int = 0
    amount_due: int = 0
    applied_balance: int = 0
    facts: Facts = Facts()
    attempt_count: int = 0
    version: int = 0
    last_event_at: int | None = None
    paid_at: int | None = None
    customer: str | None = None
    number: str | None = None
    created: int | None = None
    due_date: int | None = None
    account_manager: str | None = None  # the invoice's own `metadata.accountManager`


@dataclass(frozen=True)
class Line:
    account: str
    direction: str  # "debit" | "credit"
    amount: int     # > 0, minor units


@dataclass(frozen=True)
class Entry:
    kind: str
    currency: str
    lines: tuple[Line, ...]

    @property
    def balanced(self) -> bool:
        debits = sum(l.amount for l in self.lines if l.direction == "debit")
        credits = sum(l.amount for l in self.lines if l.direction == "credit")
        return debits == credits and all(l.amount > 0 for l in self.lines)


@dataclass(frozen=True)
class Outcome:
    position: Position
    entries: tuple[Entry, ...] = ()
    stale: bool = False
    became_paid: bool = False
    became_uncollectible: bool = False  # dunning gave up (issue 20: its account manager is told, once)


def target_facts(invoice: Invoice) -> Facts:
    """Where the ledger must stand for an invoice in this state (contract sections 3 and 6)."""
    status, total, paid, applied = invoice.status, invoice.total, invoice.amount_paid, invoice.applied_balance
    if status == "draft":
        return Facts()  # VINR applies credit at finalize: a draft has none
    if status == "void":
        # Void reverses all of the invoice's revenue: what it had collected, and the credit it
        # had used, are owed back to the customer as credit.
        return Facts(collected=paid, credited=paid + applied, applied=applied)
    if status == "uncollectible":
        return Facts(recognized=total, collected=paid, written_off=invoice.amount_due, applied=applied)
    return Facts(recognized=total, collected=paid, credited=max(0, -total), applied=applied)


def _move(kind: str, debit: str, credit: str, amount: int) -> tuple[str, str, str, int]:
    """A signed move: a negative amount swaps the sides."""
    return (kind, debit, credit, amount) if amount > 0 else (kind, credit, debit, -amount)


def entries_between(before: Facts, after: Facts, currency: str, *, voiding: bool) -> list[Entry]:
    """The balanced entries that move `before` to `after`, one per fact that changed."""
    moves = []
    credit = after.credited - before.credited
    if credit:
        moves.append(_move("credit" if credit > 0 else "credit_reversal", REVENUE, CREDIT, credit))
    # The credit entry already moved revenue by -credit; the rest is recognition proper.
    recognition = after.recognized - before.recognized + credit
    if recognition:
        if recognition > 0 and before.recognized == 0 and before.credited == 0:
            kind = "finalize"
        elif recognition < 0 and voiding:
            kind = "void"
        else:
            kind = "adjustment"
        moves.append(_move(kind, AR, REVENUE, recognition))
    applied = after.applied - before.applied
    if applied:
        moves.append(_move("credit_applied" if applied > 0 else "credit_applied_reversal", CREDIT, AR, applied))
    written_off = after.written_off - before.written_off
    if written_off < 0:
        moves.append(_move("recovery", BAD_DEBT, AR, written_off))
    collected = after.collected - before.collected
    if collected:
        moves.append(_move("payment" if collected > 0 else "payment_reversal", CLEARING, AR, collected))
    if written_off > 0:
        moves.append(_move("write_off", BAD_DEBT, AR, written_off))
    return [
        Entry(kind, currency, (Line(debit, "debit", amount), Line(credit_acc, "credit", amount)))
        for kind, debit, credit_acc, amount in moves
    ]


def is_stale(position: Position, invoice: Invoice, event_at: int | None = None) -> bool:
    """True for a snapshot older than the position: the lifecycle and amountPaid never go back,
    and within one stage of it (a draft's edits, failed attempts) the older event loses."""
    if position.status is None:
        return False
    if position.status in FINAL and invoice.status != position.status:
        return True
    rank, held = _RANK[invoice.status], _RANK[position.status]
    if rank < held or invoice.amount_paid < position.amount_paid:
        return True
    if rank == held and invoice.amount_paid == position.amount_paid:
        # Time alone decides here; progress (a higher rank, more paid) never waits on clocks.
        return event_at is not None and position.last_event_at is not None and event_at < position.last_event_at
    return False


def _sent_or_kept(position: Position, invoice: Invoice) -> tuple[int | None, str | None]:
    """The due date and account manager: VINR's where the snapshot carries the field (the
    merchant may move a due date or hand an invoice to another manager, or take it away), the
    position's where it does not (an older, thinner payload)."""
    sent = invoice.model_fields_set
    return (
        invoice.due_date if "due_date" in sent else position.due_date,
        manager_of(invoice.metadata) if "metadata" in sent else position.account_manager,
    )


def manager_of(metadata: dict[str, str]) -> str | None:
    """The `accountManager` named in VINR metadata, None when none is usable: metadata values
    are the merchant's free text, and one no text column holds (a NUL) must not stop a payment
    from being booked."""
    manager = (metadata.get("accountManager") or "").strip()
    return manager if manager and unprintable(manager) is None else None


def post(position: Position, invoice: Invoice, *, authoritative: bool = False, event_at: int | None = None) -> Outcome:
    """Move `position` to VINR's `invoice` snapshot.

    A webhook's snapshot may be older than what the ledger already holds; then nothing is
    posted and the outcome is stale. Reconciliation passes `authoritative=True`: VINR's answer
    now is the truth even where it moves backwards, and a currency change is reversed in the
    old currency and posted again in the new one.
    """
    if invoice.id != position.invoice_id:
        raise ValueError(f"snapshot of {invoice.id} applied to position of {position.invoice_id}")
    if not authoritative and is_stale(position, invoice, event_at):
        return Outcome(position=position, stale=True)

    target = target_facts(invoice)
    voiding = invoice.status == "void"
    entries: list[Entry] = []
    old_currency = position.currency
    if old_currency and old_currency != invoice.currency and position.facts != Facts():
        if not authoritative:
            raise CannotApply(
                f"currency of {invoice.id} changed from {old_currency} to {invoice.currency} after it was booked"
            )
        entries += entries_between(position.facts, Facts(), old_currency, voiding=True)
        entries += entries_between(Facts(), target, invoice.currency, voiding=voiding)
    else:
        entries += entries_between(position.facts, target, invoice.currency, voiding=voiding)

    due_date, account_manager = _sent_or_kept(position, invoice)
    new = replace(
        position,
        status=invoice.status,
        currency=invoice.currency,
        total=invoice.total,
        amount_paid=invoice.amount_paid,
        amount_due=invoice.amount_due,
        applied_balance=invoice.applied_balance,
        facts=target,
        attempt_count=max(position.attempt_count, invoice.attempt_count),
        last_event_at=max(filter(None, (position.last_event_at, event_at)), default=None),
        paid_at=position.paid_at or invoice.paid_at,
        customer=invoice.customer or position.customer,
        number=invoice.number or position.number,
        created=position.created or invoice.created,
        due_date=due_date,
        account_manager=account_manager,
    )
    if new != position:
        new = replace(new, version=position.version + 1)
    return Outcome(
        position=new,
        entries=tuple(entries),
        became_paid=invoice.status == "paid" and position.status != "paid",
        became_uncollectible=invoice.status == "uncollectible" and position.status != "uncollectible",
    )
