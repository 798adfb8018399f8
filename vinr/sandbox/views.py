"""The JSON the API and the webhooks show: camelCase, every field of contract section 3.

Each call builds fresh dicts, so what a caller does with one never reaches the model.
"""

from __future__ import annotations

from typing import Any

from vinr.sandbox.state import DAY, Customer, EventRecord, Invoice, InvoiceItem


def customer_json(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "customer",
        "email": c.email,
        "name": c.name,
        "metadata": dict(c.metadata),
        "creditBalance": dict(c.credit_balance),
        "created": c.created,
    }


def invoice_item_json(item: InvoiceItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "invoiceitem",
        "customer": item.customer,
        "currency": item.currency,
        "description": item.description,
        "quantity": item.quantity,
        "unitAmount": item.unit_amount,
        "amount": item.amount,
        "invoice": item.invoice,
        "created": item.created,
    }


def invoice_json(inv: Invoice, hosted_base: str) -> dict[str, Any]:
    """The invoice object of contract section 3, every field, camelCase; a fresh deep copy."""
    total = inv.total
    finalized = inv.finalized_at is not None
    due_date = None
    if finalized and inv.days_until_due is not None:
        due_date = inv.finalized_at + inv.days_until_due * DAY
    return {
        "id": inv.id,
        "object": "invoice",
        "customer": inv.customer,
        "status": inv.status,
        "currency": inv.currency,
        "subtotal": total,
        "total": total,
        "amountPaid": inv.amount_paid,
        "amountDue": inv.amount_due,
        "appliedBalance": inv.applied_balance,
        "number": inv.number,
        "collectionMethod": inv.collection_method,
        "daysUntilDue": inv.days_until_due,
        "dueDate": due_date,
        "hostedInvoiceUrl": f"{hosted_base}/{inv.id}" if finalized else None,
        "invoicePdf": f"{hosted_base}/{inv.id}/pdf" if finalized else None,
        "metadata": dict(inv.metadata),
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": line.id,
                    "description": line.description,
                    "quantity": line.quantity,
                    "unitAmount": line.unit_amount,
                    "amount": line.amount,
                }
                for line in inv.lines
            ],
        },
        "attemptCount": inv.attempt_count,
        "lastPaymentError": dict(inv.last_payment_error) if inv.last_payment_error else None,
        "created": inv.created,
        "finalizedAt": inv.finalized_at,
        "paidAt": inv.paid_at,
        "voidedAt": inv.voided_at,
    }


def event_json(event: EventRecord, hosted_base: str) -> dict[str, Any]:
    """The event of contract section 2 in its newer shape (`data.object` is the invoice)."""
    return {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created": event.created,
        "livemode": False,
        "data": {"object": invoice_json(event.snapshot, hosted_base)},
    }
