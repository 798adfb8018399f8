"""The sandbox's world in memory: customers, invoice items, invoices and events. Pure, no I/O.

The lifecycle and amount rules of contract section 3 live here. Every change of an invoice
appends an event holding a snapshot of the invoice as it stood, so later changes cannot leak
into its `data.object`. The clock is injectable; a refused change raises a `SandboxError`,
which the API answers in the contract's error shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vinr.sandbox.errors import CardError, invalid, missing
from vinr.sandbox.ordered import Ordered

DAY = 86_400
EVENT_RETENTION = 30 * DAY

STATUSES = ("draft", "open", "paid", "void", "uncollectible")
COLLECTION_METHODS = ("charge_automatically", "send_invoice")

CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_3DS = "4000000000003220"


# --- the objects -------------------------------------------------------------------------------


@dataclass(slots=True)
class Customer:
    id: str
    email: str | None
    name: str | None
    metadata: dict[str, str]
    created: int
    # Credit owed to the customer per currency, in minor units, never negative (contract section 3).
    credit_balance: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Line:
    id: str
    description: str | None
    quantity: int
    unit_amount: int

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_amount


@dataclass(slots=True)
class InvoiceItem:
    id: str
    customer: str
    currency: str
    description: str | None
    quantity: int
    unit_amount: int
    created: int
    invoice: str | None = None

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_amount


@dataclass(slots=True)
class Invoice:
    id: str
    customer: str
    currency: str
    collection_method: str
    days_until_due: int | None
    metadata: dict[str, str]
    created: int
    lines: list[Line] = field(default_factory=list)
    status: str = "draft"
    amount_paid: int = 0
    applied_balance: int = 0  # the customer's credit applied at finalize
    number: str | None = None
    attempt_count: int = 0
    last_payment_error: dict[str, str] | None = None
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None

    @property
    def total(self) -> int:
        # No tax or discounts in the sandbox: total is the subtotal, frozen with the lines.
        return sum(line.quantity * line.unit_amount for line in self.lines)

    @property
    def amount_due(self) -> int:
        if self.status in ("paid", "void"):
            return 0
        return self.total - self.applied_balance - self.amount_paid

    def snapshot(self) -> Invoice:
        """A copy of the invoice as it stands, unaffected by its later changes.

        Shares only what never changes once shared: `metadata` (never edited after creation),
        the lines of a finalized invoice (frozen) and `last_payment_error` (replaced, never
        edited); a draft's lines are copied. Cheap enough for an event per change at 100,000s.
        """
        lines = self.lines
        if self.status == "draft":
            lines = [Line(line.id, line.description, line.quantity, line.unit_amount) for line in lines]
        return Invoice(
            self.id,
            self.customer,
            self.currency,
            self.collection_method,
            self.days_until_due,
            self.metadata,
            self.created,
            lines,
            self.status,
            self.amount_paid,
            self.applied_balance,
            self.number,
            self.attempt_count,
            self.last_payment_error,
            self.finalized_at,
            self.paid_at,
            self.voided_at,
        )


@dataclass(slots=True)
class EventRecord:
    id: str
    type: str
    created: int
    snapshot: Invoice  # the invoice as it stood (`Invoice.snapshot`)
    attempts: list[Any] | None = None  # delivery attempts, appended by the delivery side


# --- the world ----------------------------------------------------------------------------------


def _money(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer amount in minor units")
    return value


def _add(balances: dict[str, int], currency: str, amount: int) -> None:
    """Move a customer's credit in `currency` by `amount`; a currency at zero is not listed."""
    value = balances.get(currency, 0) + amount
    if value:
        balances[currency] = value
    else:
        balances.pop(currency, None)


def _quantity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid("quantity must be a positive integer")
    return value


def _currency(value: str) -> str:
    if not (isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha()):
        raise invalid("currency must be a three-letter ISO 4217 code")
    return value.upper()


class State:
    """Customers, invoices and events, with the rules of contract section 3.

    `on_event` (if set) is called with each new event, synchronously, in order; `quiet` stops
    events from being recorded at all (bulk seeding without events).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        namespace: str | None = None,
        hosted_base: str = "https://pay.vinr.com",
    ):
        self.clock = clock
        self.hosted_base = hosted_base.rstrip("/")
        self.on_event: Callable[[EventRecord], None] | None = None
        self.quiet = False
        self._namespace = namespace if namespace is not None else os.urandom(4).hex()
        self._counters: dict[str, int] = {}
        self._numbers = 0
        self.customers: Ordered[Customer] = Ordered()
        self.invoices: Ordered[Invoice] = Ordered()
        self.events: Ordered[EventRecord] = Ordered()
        self._items: dict[str, InvoiceItem] = {}
        self._pending: dict[str, list[InvoiceItem]] = {}  # customer id -> items not yet invoiced

    def now(self) -> int:
        return int(self.clock())

    def new_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}_{self._namespace}{n:06d}"

    # customers

    def create_customer(
        self, email: str | None = None, name: str | None = None, metadata: dict[str, str] | None = None
    ) -> Customer:
        customer = Customer(self.new_id("cust"), email, name, dict(metadata or {}), self.now())
        self.customers.add(customer)
        return customer

    def customer(self, id_: str) -> Customer:
        customer = self.customers.get(id_)
        if customer is None:
            raise missing("customer", id_)
        return customer

    # invoice items and lines

    def create_invoice_item(
        self,
        customer: str,
        unit_amount: int,
        quantity: int = 1,
        currency: str = "EUR",
        description: str | None = None,
        invoice: str | None = None,
    ) -> InvoiceItem:
        """A pending item swept up by the customer's next invoice, or a line of draft `invoice`."""
        self.customer(customer)
        item = InvoiceItem(
            self.new_id("ii"),
            customer,
            _currency(currency),
            description,
            _quantity(quantity),
            _money(unit_amount, "amount"),
            self.now(),
        )
        if invoice is not None:
            target = self._draft(invoice)
            if target.customer != customer or target.currency != item.currency:
                raise invalid("the invoice belongs to another customer or currency")
            self._add_line(target, item.description, item.quantity, item.unit_amount)
            item.invoice = target.id
        else:
            self._pending.setdefault(customer, []).append(item)
        self._items[item.id] = item
        return item

    def invoice_item(self, id_: str) -> InvoiceItem:
        item = self._items.get(id_)
        if item is None:
            raise missing("invoiceitem", id_)
        return item

    def add_line(
        self, invoice: str, unit_amount: int, quantity: int = 1, description: str | None = None
    ) -> Invoice:
        inv = self._draft(invoice)
        self._add_line(inv, description, _quantity(quantity), _money(unit_amount, "unitAmount"))
        return inv

    def update_line(
        self,
        invoice: str,
        line_id: str,
        description: str | None = None,
        quantity: int | None = None,
        unit_amount: int | None = None,
    ) -> Invoice:
        inv = self._draft(invoice)
        line = self._line(inv, line_id)
        if quantity is not None:
            line.quantity = _quantity(quantity)
        if unit_amount is not None:
            line.unit_amount = _money(unit_amount, "unitAmount")
        if description is not None:
            line.description = description
        return inv

    def remove_line(self, invoice: str, line_id: str) -> Invoice:
        inv = self._draft(invoice)
        inv.lines.remove(self._line(inv, line_id))
        return inv

    def _add_line(self, inv: Invoice, description: str | None, quantity: int, unit_amount: int) -> None:
        inv.lines.append(Line(self.new_id("il"), description, quantity, unit_amount))

    def _line(self, inv: Invoice, line_id: str) -> Line:
        for line in inv.lines:
            if line.id == line_id:
                return line
        raise missing("line item", line_id)

    # invoices

    def invoice(self, id_: str) -> Invoice:
        inv = self.invoices.get(id_)
        if inv is None:
            raise missing("invoice", id_)
        return inv

    def create_invoice(
        self,
        customer: str,
        currency: str = "EUR",
        collection_method: str = "charge_automatically",
        days_until_due: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Invoice:
        """A draft that sweeps up the customer's pending invoice items of its currency."""
        self.customer(customer)
        if collection_method not in COLLECTION_METHODS:
            raise invalid(f"collectionMethod must be one of {', '.join(COLLECTION_METHODS)}")
        if days_until_due is not None and (
            isinstance(days_until_due, bool) or not isinstance(days_until_due, int) or days_until_due < 0
        ):
            raise invalid("daysUntilDue must be a non-negative integer")
        inv = Invoice(
            self.new_id("inv"),
            customer,
            _currency(currency),
            collection_method,
            days_until_due,
            dict(metadata or {}),
            self.now(),
        )
        still_pending = []
        for item in self._pending.pop(customer, []):
            if item.currency == inv.currency:
                self._add_line(inv, item.description, item.quantity, item.unit_amount)
                item.invoice = inv.id
            else:
                still_pending.append(item)
        if still_pending:
            self._pending[customer] = still_pending
        self.invoices.add(inv)
        self._emit("invoice.created", inv)
        return inv

    def finalize(self, id_: str) -> Invoice:
        """draft -> open, numbered. The customer's credit in the currency is applied, as much as
        the total takes; an invoice it covers wholly, or a total of zero or less, is `paid` at
        once (a negative total adds to the customer's credit)."""
        inv = self._draft(id_)
        now = self.now()
        self._numbers += 1
        year = datetime.fromtimestamp(now, timezone.utc).year
        inv.number = f"INV-{year}-{self._numbers:06d}"
        inv.finalized_at = now
        total = inv.total
        credit = self.customer(inv.customer).credit_balance
        if total > 0:
            inv.applied_balance = min(credit.get(inv.currency, 0), total)
            _add(credit, inv.currency, -inv.applied_balance)
        if inv.amount_due > 0:
            inv.status = "open"
            self._emit("invoice.finalized", inv)
            return inv
        inv.status, inv.paid_at = "paid", now
        if total < 0:
            _add(credit, inv.currency, -total)
        self._emit("invoice.finalized", inv)
        self._emit("invoice.paid", inv)
        return inv

    def send(self, id_: str) -> Invoice:
        """Email the hosted page (not really); only an open `send_invoice` invoice can be sent."""
        inv = self._in_status(id_, ("open",), "send")
        if inv.collection_method != "send_invoice":
            raise invalid("only invoices with collectionMethod send_invoice can be sent", "invoice_not_sendable")
        self._emit("invoice.sent", inv)
        return inv

    def void(self, id_: str) -> Invoice:
        """open or uncollectible -> void: nothing more is due. Void reverses any accounting: what
        was paid, and the credit the invoice had used, are the customer's credit again."""
        inv = self._in_status(id_, ("open", "uncollectible"), "void")
        inv.status, inv.voided_at = "void", self.now()
        _add(self.customer(inv.customer).credit_balance, inv.currency, inv.amount_paid + inv.applied_balance)
        self._emit("invoice.voided", inv)
        return inv

    def mark_uncollectible(self, id_: str) -> Invoice:
        """open -> uncollectible: still owed (and payable), written off as bad debt."""
        inv = self._in_status(id_, ("open",), "mark uncollectible")
        inv.status = "uncollectible"
        self._emit("invoice.marked_uncollectible", inv)
        return inv

    def pay(
        self, id_: str, card: str, three_d_secure: str | None = None, amount: int | None = None
    ) -> Invoice:
        """The customer pays with a test card, in full or in part (`amount`).

        A full payment makes the invoice `paid`; a partial one moves `amountPaid`/`amountDue`
        (`invoice.updated`). A declined card or a 3-D Secure challenge not approved records the
        attempt and `lastPaymentError`, emits `invoice.payment_failed`, then raises `CardError`.
        """
        inv = self._in_status(id_, ("open", "uncollectible"), "pay")
        card = "".join(str(card).split())
        if card not in (CARD_SUCCEEDS, CARD_DECLINED, CARD_3DS):
            raise invalid("card must be a test card: 4242424242424242, 4000000000000002 or 4000000000003220")
        due = inv.amount_due
        if amount is None:
            amount = due
        elif isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= due:
            raise invalid(f"amount must be an integer between 1 and the amount due ({due})")
        inv.attempt_count += 1
        if card == CARD_DECLINED:
            self._fail(inv, "card_declined", "generic_decline", "Your card was declined.")
        if card == CARD_3DS and three_d_secure != "approve":
            self._fail(
                inv,
                "authentication_required",
                "authentication_required",
                "This payment requires 3-D Secure authentication; pay again with threeDSecure=approve.",
            )
        inv.amount_paid += amount
        inv.last_payment_error = None
        if amount < due:
            self._emit("invoice.updated", inv)
            return inv
        inv.status, inv.paid_at = "paid", self.now()
        self._emit("invoice.paid", inv)
        return inv

    def _fail(self, inv: Invoice, code: str, decline_code: str, message: str) -> None:
        inv.last_payment_error = {"code": code, "declineCode": decline_code, "message": message}
        self._emit("invoice.payment_failed", inv)
        raise CardError(code, decline_code, message, inv.id)

    def _draft(self, id_: str) -> Invoice:
        inv = self.invoice(id_)
        if inv.status != "draft":
            raise invalid(f"invoice {inv.id} is {inv.status}; only a draft can change", "invoice_not_editable")
        return inv

    def _in_status(self, id_: str, allowed: tuple[str, ...], action: str) -> Invoice:
        inv = self.invoice(id_)
        if inv.status not in allowed:
            raise invalid(
                f"cannot {action} invoice {inv.id}: it is {inv.status} (needs {' or '.join(allowed)})",
                "invoice_unexpected_state",
            )
        return inv

    # events

    def _emit(self, type_: str, inv: Invoice) -> None:
        if self.quiet:
            return
        event = EventRecord(self.new_id("evt"), type_, self.now(), inv.snapshot())
        self.events.add(event)
        if self.on_event is not None:
            self.on_event(event)

    def event(self, id_: str) -> EventRecord:
        event = self.events.get(id_)
        if event is None or event.created < self.now() - EVENT_RETENTION:
            raise missing("event", id_)
        return event

    # lists

    def list_invoices(
        self,
        limit: int = 10,
        starting_after: str | None = None,
        created_gte: int | None = None,
        status: str | None = None,
        customer: str | None = None,
    ) -> tuple[list[Invoice], bool]:
        if status is not None and status not in STATUSES:
            raise invalid(f"status must be one of {', '.join(STATUSES)}")

        def keep(inv: Invoice) -> bool:
            return (status is None or inv.status == status) and (customer is None or inv.customer == customer)

        filtered = status is not None or customer is not None
        return self.invoices.page(limit, starting_after, created_gte, keep if filtered else None)

    def list_events(
        self,
        limit: int = 10,
        starting_after: str | None = None,
        created_gte: int | None = None,
        type_: str | None = None,
    ) -> tuple[list[EventRecord], bool]:
        """Events of the last 30 days only, as VINR keeps them."""
        oldest = self.now() - EVENT_RETENTION
        created_gte = oldest if created_gte is None else max(created_gte, oldest)
        keep = None if type_ is None else (lambda event: event.type == type_)
        return self.events.page(limit, starting_after, created_gte, keep)

    def list_customers(self, limit: int = 10, starting_after: str | None = None) -> tuple[list[Customer], bool]:
        return self.customers.page(limit, starting_after)
