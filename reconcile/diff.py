"""Comparing the ledger's position of an invoice with VINR's answer. Pure.

The categories of what it finds are the ledger's (ledger.findings): its findings table stores them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.findings import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    MISSING_AT_VINR,
    MISSING_IN_LEDGER,
    POSTING_RULE,
    STATUS_MISMATCH,
)
from ledger.posting import Position, target_facts
from vinr.events import Invoice

_AMOUNTS = (("total", "total"), ("amountPaid", "amount_paid"), ("amountDue", "amount_due"),
            ("appliedBalance", "applied_balance"))


@dataclass(frozen=True)
class Finding:
    invoice_id: str
    category: str
    field: str | None = None
    ledger_value: str | None = None
    vinr_value: str | None = None


def compare(position: Position | None, invoice: Invoice | None, invoice_id: str) -> list[Finding]:
    """Every difference between the ledger (`position`, None if never seen) and VINR (`invoice`,
    None if VINR answered 404); an empty list when they agree."""
    if invoice is None:
        return [] if position is None else [Finding(invoice_id, MISSING_AT_VINR, "status", position.status, None)]
    if invoice.status == "draft" and (position is None or position.status in (None, "draft")):
        return []  # a draft has no accounting effect: a draft's edits are not drift
    if position is None or position.status is None:
        return [Finding(invoice_id, MISSING_IN_LEDGER, "status", None, invoice.status)]
    findings = []
    if position.currency != invoice.currency and position.status != "draft":
        findings.append(Finding(invoice_id, CURRENCY_MISMATCH, "currency", position.currency, invoice.currency))
    if position.status != invoice.status:
        findings.append(Finding(invoice_id, STATUS_MISMATCH, "status", position.status, invoice.status))
    for name, attr in _AMOUNTS:
        ours, theirs = getattr(position, attr), getattr(invoice, attr)
        if ours != theirs:
            findings.append(Finding(invoice_id, AMOUNT_MISMATCH, name, str(ours), str(theirs)))
    if not findings and position.facts != target_facts(invoice):
        findings.append(Finding(invoice_id, POSTING_RULE, "entries", "posted under an earlier rule", None))
    return findings
