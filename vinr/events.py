"""VINR's events and invoices, parsed strictly (contract sections 2 and 3).

Both event shapes (`data.object` and the older `data` as the invoice itself), camelCase and
snake_case keys, `amountRemaining` for `amountDue`; unknown fields are kept. Amounts must be
JSON integers: a float, a numeric string or a boolean is a validation error naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator
from pydantic.alias_generators import to_camel

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


def _aliases(name: str, *older: str) -> AliasChoices:
    """Accept the camelCase name, its snake_case twin, and any older names."""
    return AliasChoices(to_camel(name), name, *older)


# VINR's ids and event types are short; the ledger's columns hold 100 characters, so a longer
# one is no VINR object (and could never be recorded).
MAX_ID = 100

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
    quantity: StrictInt = 1
    unit_amount: StrictInt | None = Field(None, validation_alias=_aliases("unit_amount"))
    amount: StrictInt


class Lines(_Model):
    data: list[LineItem] = []


class PaymentError(_Model):
    code: str | None = None
    decline_code: str | None = Field(None, validation_alias=_aliases("decline_code"))
    message: str | None = None


class Invoice(_Model):
    """An invoice as VINR says it stood at one moment: the truth the ledger moves to."""

    id: str = Field(min_length=1, max_length=MAX_ID)
    object: Literal["invoice"] = "invoice"
    customer: str | None = None
    status: InvoiceStatus
    currency: str = "EUR"
    subtotal: StrictInt | None = None
    total: StrictInt
    amount_paid: StrictInt = Field(0, validation_alias=_aliases("amount_paid"))
    amount_due: StrictInt = Field(
        validation_alias=_aliases("amount_due", "amountRemaining", "amount_remaining")
    )
    # Customer credit VINR applied when it finalized the invoice (contract section 3); 0 when none.
    applied_balance: StrictInt = Field(0, ge=0, validation_alias=_aliases("applied_balance"))
    number: str | None = None
    collection_method: str | None = Field(None, validation_alias=_aliases("collection_method"))
    days_until_due: StrictInt | None = Field(None, validation_alias=_aliases("days_until_due"))
    due_date: StrictInt | None = Field(None, validation_alias=_aliases("due_date"))
    hosted_invoice_url: str | None = Field(None, validation_alias=_aliases("hosted_invoice_url"))
    invoice_pdf: str | None = Field(None, validation_alias=_aliases("invoice_pdf"))
    metadata: dict[str, str] = {}
    lines: Lines = Lines()
    attempt_count: StrictInt = Field(0, validation_alias=_aliases("attempt_count"))
    last_payment_error: PaymentError | None = Field(None, validation_alias=_aliases("last_payment_error"))
    created: StrictInt | None = None
    finalized_at: StrictInt | None = Field(None, validation_alias=_aliases("finalized_at"))
    paid_at: StrictInt | None = Field(None, validation_alias=_aliases("paid_at"))
    voided_at: StrictInt | None = Field(None, validation_alias=_aliases("voided_at"))

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if len(value) != 3 or not value.isascii() or not value.isalpha():
            raise ValueError("currency must be a three-letter ISO 4217 code")
        return value.upper()


class Event(_Model):
    """One delivery's event. `data_object` is the object as sent, in either shape."""

    id: str = Field(min_length=1, max_length=MAX_ID)
    object: Literal["event"] = "event"
    type: str = Field(min_length=1, max_length=MAX_ID)
    created: StrictInt
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
            raise InvalidEvent(f"event {self.id}: {describe_errors(exc)}") from None


class InvalidEvent(ValueError):
    """The bytes are not a VINR event; the message says which field and why."""


def describe_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def parse_event(body: bytes | str | dict[str, Any]) -> Event:
    """Parse and validate a whole event (not its invoice: see `Event.invoice`)."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidEvent("body is not a JSON object")
    try:
        return Event.model_validate(body)
    except ValidationError as exc:
        raise InvalidEvent(describe_errors(exc)) from None
