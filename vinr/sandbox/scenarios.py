"""Which calls to VINR's REST API make which event (`vinr-recon sandbox trigger`): pure data,
cheap to import (the command line lists the names in its help).

Each scenario starts from a new customer and a draft invoice with one line; its steps follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vinr.sandbox.state import CARD_3DS, CARD_DECLINED, CARD_SUCCEEDS


@dataclass(frozen=True)
class Step:
    """One call: an invoice `action` (`pay` with `fields`); `declines` when a 402 is its point."""

    action: str
    fields: dict[str, Any] = field(default_factory=dict)
    declines: bool = False


FINALIZE, SEND, VOID, WRITE_OFF = Step("finalize"), Step("send"), Step("void"), Step("mark_uncollectible")
PAY = Step("pay", {"card": CARD_SUCCEEDS})
DECLINED = Step("pay", {"card": CARD_DECLINED}, declines=True)
CHALLENGED = Step("pay", {"card": CARD_3DS}, declines=True)
APPROVED = Step("pay", {"card": CARD_3DS, "threeDSecure": "approve"})
HALF = Step("pay", {"card": CARD_SUCCEEDS, "amount": "half"})

# After the customer, the draft invoice and its line: the steps of each event, and what it is.
SCENARIOS: dict[str, tuple[tuple[Step, ...], str]] = {
    "invoice.created": ((), "a draft invoice"),
    "invoice.finalized": ((FINALIZE,), "finalized: open, numbered"),
    "invoice.sent": ((FINALIZE, SEND), "finalized and emailed"),
    "invoice.paid": ((FINALIZE, SEND, PAY), "paid in full with 4242 4242 4242 4242"),
    "invoice.payment_failed": ((FINALIZE, SEND, DECLINED), "declined: 4000 0000 0000 0002"),
    "invoice.updated": ((FINALIZE, SEND, HALF), "half paid (a partial payment)"),
    "invoice.voided": ((FINALIZE, SEND, VOID), "voided"),
    "invoice.marked_uncollectible": ((FINALIZE, SEND, WRITE_OFF), "written off"),
    "3d_secure": ((FINALIZE, SEND, CHALLENGED, APPROVED),
                  "4000 0000 0000 3220: a 3-D Secure challenge (invoice.payment_failed, authentication_required), "
                  "approved (invoice.paid)"),
}
# The event that shows the scenario happened (the Events API is read until it lists it).
AWAITED = {"3d_secure": "invoice.paid"}
NAMES: tuple[str, ...] = tuple(SCENARIOS)
