"""VINR's events and invoices, parsed strictly (contract sections 2 and 3).

Both event shapes (`data.object` and the older `data` as the invoice itself), camelCase and
snake_case keys, `amountRemaining` for `amountDue`; unknown fields are kept. Amounts must be
JSON integers: a float, a numeric string or a boolean is a validation error naming the field.

What the ledger could never store or compute is no VINR event either, so it is refused here,
where a refusal is final (a 400 at the receiver, a dead letter at once in the worker), rather
than failing later in a way that is retried: a control character in an id or a type (no
PostgreSQL text column takes a NUL), a timestamp no datetime holds, an amount beyond 64 bits, a
body nested deeper than the parser recurses, and an invoice that breaks the contract's
invariants of amounts by status.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]

INVOICE_EVENT_TYPES = frozenset(
    {
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.updated",
    }
)


def _keys(name: str, *older: str) -> tuple[str, ...]:
    """The keys a field is read by: the camelCase name, its snake_case twin, and any older names."""
    return (to_camel(name), name, *older)


def _aliases(name: str, *older: str) -> AliasChoices:
    """Accept the camelCase name, its snake_case twin, and any older names."""
    return AliasChoices(*_keys(name, *older))


# VINR's ids and event types are short; the ledger's columns hold 100 characters, so a longer
# one is no VINR object (and could never be recorded).
MAX_ID = 100
# Unix seconds a datetime can hold (1970-01-01 up to 9999-12-31 23:59:59): the ledger dates its
# entries with `datetime.fromtimestamp`, which cannot go further.
END_OF_TIME = 253_402_300_800
# The ledger's BIGINT, kept symmetric: the posting rule negates amounts (a credit note's -total).
MAX_AMOUNT = 2**63 - 1
MAX_COUNT = 2**31 - 1  # an INTEGER column (attemptCount)


def unprintable(text: str) -> str | None:
    """The first control or other unprintable character of `text` (as U+XXXX), or None."""
    if text.isprintable():
        return None
    char = next(c for c in text if not c.isprintable())
    return f"U+{ord(char):04X} at position {text.index(char)}"


def _printable(value: str) -> str:
    if (found := unprintable(value)) is not None:
        raise PydanticCustomError("unprintable", "must not contain control or other unprintable characters "
                                  "({found})", {"found": found})
    return value


# An id or an event type: what the ledger's text columns keep.
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_printable)]
Ref = Annotated[str, Field(max_length=MAX_ID), AfterValidator(_printable)]  # a customer id, a number
Timestamp = Annotated[StrictInt, Field(ge=0, lt=END_OF_TIME)]
Amount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
        frozen=True,
    )


class LineItem(_Model):
    id: str | None = None
    description: str | None = None
    quantity: Amount = 1
    unit_amount: Amount | None = Field(None, validation_alias=_aliases("unit_amount"))
    amount: Amount


class Lines(_Model):
    data: list[LineItem] = []


class PaymentError(_Model):
    code: str | None = None
    decline_code: str | None = Field(None, validation_alias=_aliases("decline_code"))
    message: str | None = None


class Invoice(_Model):
    """An invoice as VINR says it stood at one moment: the truth the ledger moves to."""

    id: Id
    object: Literal["invoice"] = "invoice"
    customer: Ref | None = None
    status: InvoiceStatus
    currency: str = "EUR"
    subtotal: Amount | None = None
    total: Amount
    amount_paid: Amount = Field(0, validation_alias=_aliases("amount_paid"))
    amount_due: Amount = Field(
        validation_alias=_aliases("amount_due", "amountRemaining", "amount_remaining")
    )
    # Customer credit VINR applied when it finalized the invoice (contract section 3); 0 when none.
    applied_balance: Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)] = Field(
        0, validation_alias=_aliases("applied_balance")
    )
    number: Ref | None = None
    collection_method: str | None = Field(None, validation_alias=_aliases("collection_method"))
    days_until_due: Amount | None = Field(None, validation_alias=_aliases("days_until_due"))
    due_date: Timestamp | None = Field(None, validation_alias=_aliases("due_date"))
    hosted_invoice_url: str | None = Field(None, validation_alias=_aliases("hosted_invoice_url"))
    invoice_pdf: str | None = Field(None, validation_alias=_aliases("invoice_pdf"))
    metadata: dict[str, str] = {}
    lines: Lines = Lines()
    attempt_count: Count = Field(0, validation_alias=_aliases("attempt_count"))
    last_payment_error: PaymentError | None = Field(None, validation_alias=_aliases("last_payment_error"))
    created: Timestamp | None = None
    finalized_at: Timestamp | None = Field(None, validation_alias=_aliases("finalized_at"))
    paid_at: Timestamp | None = Field(None, validation_alias=_aliases("paid_at"))
    voided_at: Timestamp | None = Field(None, validation_alias=_aliases("voided_at"))

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if len(value) != 3 or not value.isascii() or not value.isalpha():
            raise ValueError("currency must be a three-letter ISO 4217 code")
        return value.upper()

    @model_validator(mode="after")
    def _amounts_by_status(self) -> Invoice:
        """Contract section 3: a snapshot that breaks it is no VINR invoice, and applying it
        would leave books that are not sound."""
        if (broken := broken_invariant(self)) is not None:
            raise PydanticCustomError("contract", "breaks contract section 3: {broken}", {"broken": broken})
        return self


def broken_invariant(invoice: Invoice) -> str | None:
    """Which of contract section 3's rules of amounts the invoice breaks, in words; None if none."""
    status, total, paid, due = invoice.status, invoice.total, invoice.amount_paid, invoice.amount_due
    applied = invoice.applied_balance
    if paid < 0:
        return f"amountPaid {paid} is negative"
    if total > 0 and paid > total:
        return f"amountPaid {paid} is above the total {total}"
    if total <= 0 and status == "paid" and paid != 0:
        return f"amountPaid {paid} is not 0 for an invoice paid with a total of {total}"
    if status in ("open", "uncollectible") and due != total - applied - paid:
        return f"amountDue {due} is not total - appliedBalance - amountPaid = {total - applied - paid} while {status}"
    if status in ("paid", "void") and due != 0:
        return f"amountDue {due} is not 0 once {status}"
    return None


class Event(_Model):
    """One delivery's event. `data_object` is the object as sent, in either shape."""

    id: Id
    object: Literal["event"] = "event"
    type: Id
    created: Timestamp
    livemode: bool = False
    data: dict[str, Any]

    @property
    def data_object(self) -> dict[str, Any]:
        nested = self.data.get("object")
        return nested if isinstance(nested, dict) else self.data

    @property
    def is_invoice_event(self) -> bool:
        return self.type in INVOICE_EVENT_TYPES

    def invoice(self) -> Invoice:
        """The invoice snapshot of an invoice event; raises `InvalidEvent` if it is not one."""
        try:
            return Invoice.model_validate(self.data_object)
        except ValidationError as exc:
            raise InvalidEvent(f"event {self.id}: {describe_errors(exc, root='invoice')}") from None


class InvalidEvent(ValueError):
    """The bytes are not a VINR event; the message says which field and why."""


def describe_errors(exc: ValidationError, root: str = "body") -> str:
    """Each error as `field: why`; `root` names what an error of the whole object is about."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}" for err in exc.errors()
    )


# --- The invoice fields checked with the event ------------------------------------------------
# An invoice event's object is validated in full by `Event.invoice` (in the worker). These few
# fields are checked with the event itself, by `parse_event` and the receiver alike: what the
# ledger's columns could never hold, so that the receiver refuses it with a 400 rather than
# acknowledging an event no worker can apply. Each is named by the keys the invoice is read by,
# first match first, as `Invoice`'s aliases read it.

INVOICE_TEXT: dict[str, tuple[str, ...]] = {"id": ("id",), "customer": ("customer",), "number": ("number",)}
INVOICE_TIMES = {name: _keys(name) for name in ("created", "finalized_at", "paid_at", "voided_at", "due_date")}
INVOICE_AMOUNTS = {
    "subtotal": ("subtotal",), "total": ("total",), "amount_paid": _keys("amount_paid"),
    "amount_due": _keys("amount_due", "amountRemaining", "amount_remaining"),
    "applied_balance": _keys("applied_balance"),
}
INVOICE_KEYS = tuple(dict.fromkeys(key for keys in (*INVOICE_TEXT.values(), *INVOICE_TIMES.values(),
                                                    *INVOICE_AMOUNTS.values()) for key in keys))


def _first(fields: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    return next(((key, fields[key]) for key in keys if key in fields), None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def invoice_fields_problem(fields: Mapping[str, Any]) -> str | None:
    """The first of an invoice object's ids, timestamps and amounts that the ledger could not
    keep, as `key: why`; None when there is none. (A field of the wrong type is `Invoice`'s
    to refuse, with the rest of its validation.)"""
    for keys in INVOICE_TEXT.values():
        if (found := _first(fields, keys)) and isinstance(found[1], str) and (bad := unprintable(found[1])):
            return f"{found[0]}: must not contain control or other unprintable characters ({bad})"
    for keys in INVOICE_TIMES.values():
        if (found := _first(fields, keys)) and _is_int(found[1]) and not 0 <= found[1] < END_OF_TIME:
            return f"{found[0]}: {found[1]} is not Unix seconds between 0 and {END_OF_TIME - 1} (year 9999)"
    for keys in INVOICE_AMOUNTS.values():
        if (found := _first(fields, keys)) and _is_int(found[1]) and not -MAX_AMOUNT <= found[1] <= MAX_AMOUNT:
            return f"{found[0]}: {found[1]} is beyond 64 bits"
    return None


def _check_invoice_fields(event: Event) -> Event:
    if event.is_invoice_event:
        nested = isinstance(event.data.get("object"), dict)
        if (problem := invoice_fields_problem(event.data_object)) is not None:
            raise InvalidEvent(f"{'data.object' if nested else 'data'}.{problem}")
    return event


def parse_event(body: bytes | str | dict[str, Any]) -> Event:
    """Parse and validate a whole event, and the few fields of its invoice the ledger's columns
    constrain (the invoice in full: see `Event.invoice`)."""
    if not isinstance(body, dict):
        # One pass over the bytes by pydantic's own parser (9.8 against 11.7 µs for an invoice event
        # here); what it refuses is refused again below, in the words of the stdlib parser and the
        # Python checks (tests/test_events.py holds the two paths to one verdict).
        with contextlib.suppress(ValidationError):
            return _check_invoice_fields(Event.model_validate_json(body))
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent(f"body is not JSON: {exc}") from None
        except RecursionError:  # not a ValueError; the stdlib parser recurses per level
            raise InvalidEvent("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidEvent("body is not a JSON object")
    try:
        event = Event.model_validate(body)
    except ValidationError as exc:
        raise InvalidEvent(describe_errors(exc)) from None
    return _check_invoice_fields(event)
