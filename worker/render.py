"""What an alert says: pure functions from an outbox payload to an email and a chat message.

Amounts stay integers to the end (ledger/money.py formats them: ISO 4217's minor units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.money import format_money

@dataclass(frozen=True)
class Alert:
    """One alert, ready for any channel: a subject line and labelled fields."""

    subject: str
    intro: str
    fields: tuple[tuple[str, str], ...]
    link: str | None = None

    def text(self) -> str:
        width = max((len(label) for label, _ in self.fields), default=0) + 2
        lines = [self.intro, ""] + [f"{label + ':':<{width}}{value}" for label, value in self.fields]
        if self.link:
            lines += ["", self.link]
        return "\n".join(lines) + "\n\n-- vinr-recon\n"


def payment_failed(payload: dict[str, Any], customer: dict[str, Any] | None = None) -> Alert:
    """The alert for a failed payment; `customer` is VINR's customer object when it could be read."""
    invoice = payload.get("number") or payload["invoiceId"]
    who = _customer(payload.get("customer"), customer)
    due = format_money(payload["amountDue"], payload["currency"])
    failure = payload.get("failure") or {}
    reason = failure.get("code") or "unknown"
    if failure.get("declineCode") and failure.get("declineCode") != failure.get("code"):
        reason += f" ({failure['declineCode']})"
    if failure.get("message"):
        reason += f": {failure['message']}"
    return Alert(
        subject=f"Payment failed: {invoice} ({_customer_label(payload.get('customer'), customer)}), {due} due",
        intro=f"A payment for invoice {invoice} failed.",
        fields=(
            ("Customer", who),
            ("Invoice", f"{payload.get('number') or '(no number)'} ({payload['invoiceId']})"),
            ("Amount due", due),
            ("Failure", reason),
            ("Attempts", str(payload.get("attemptCount", 0))),
            ("Invoice page", payload.get("hostedInvoiceUrl") or "(none)"),
        ),
        link=payload.get("hostedInvoiceUrl"),
    )


def uncollectible(payload: dict[str, Any], customer: dict[str, Any] | None = None) -> Alert:
    """The alert for an invoice whose dunning gave up: what is still due is written off."""
    invoice = payload.get("number") or payload["invoiceId"]
    who = _customer(payload.get("customer"), customer)
    due = format_money(payload["amountDue"], payload["currency"])
    return Alert(
        subject=f"Uncollectible: {invoice} ({_customer_label(payload.get('customer'), customer)}), {due} written off",
        intro=f"Invoice {invoice} was marked uncollectible: collection gave up and {due} is written off "
              "as bad debt. A late payment still closes it.",
        fields=(
            ("Customer", who),
            ("Invoice", f"{payload.get('number') or '(no number)'} ({payload['invoiceId']})"),
            ("Written off", due),
            ("Total", format_money(payload["total"], payload["currency"])),
            ("Attempts", str(payload.get("attemptCount", 0))),
            ("Invoice page", payload.get("hostedInvoiceUrl") or "(none)"),
        ),
        link=payload.get("hostedInvoiceUrl"),
    )


def drift(payload: dict[str, Any]) -> Alert:
    run_id, status, counts = payload["runId"], payload["status"], payload.get("counts", {})
    found = sum(counts.values())
    what = f"found {found} difference{'s' * (found != 1)}" if found else "found no difference"
    if status != "completed":
        what += f" and ended {status}"
    fields = [("Run", str(run_id)), ("Status", status)]
    fields += [(category.replace("_", " ").capitalize(), str(n)) for category, n in sorted(counts.items())]
    fields += [
        ("Invoices checked", str(payload.get("invoicesChecked", 0))),
        ("Events backfilled", str(payload.get("eventsBackfilled", 0))),
        ("Corrections posted", str(payload.get("correctionsPosted", 0))),
        ("Left for a person", str(payload.get("unresolved", 0))),
    ]
    differences = payload.get("differences", [])
    by_invoice: dict[str, list[dict[str, Any]]] = {}
    for d in differences:
        by_invoice.setdefault(d["invoiceId"], []).append(d)
    fields += [(invoice_id, _differences(found)) for invoice_id, found in by_invoice.items()]
    if found > len(differences) and differences:
        fields.append(("More", f"{found - len(differences)} more in the report"))
    if payload.get("message"):
        fields.append(("Message", payload["message"]))
    fields.append(("Report", f"GET {payload['report']} (findings as CSV: {payload['findingsCsv']})"))
    return Alert(subject=f"Reconciliation run {run_id} {what}", intro=f"Reconciliation run {run_id} {what}.",
                 fields=tuple(fields))


_AMOUNT_FIELDS = frozenset({"total", "amountPaid", "amountDue"})


def _differences(found: list[dict[str, Any]]) -> str:
    """One invoice's findings for people:
    `status: ledger open, VINR paid; amountPaid: ledger EUR 0.00, VINR EUR 500.00 (corrected)`."""

    def value(d: dict[str, Any], text: str | None) -> str:
        if text is None:
            return "none"
        if d.get("field") in _AMOUNT_FIELDS and d.get("currency") and text.lstrip("-").isdigit():
            return format_money(int(text), d["currency"])
        return text

    parts = [f"{d.get('field') or d['category'].replace('_', ' ')}: ledger {value(d, d.get('ledger'))}, "
             f"VINR {value(d, d.get('vinr'))}" for d in found]
    outcome = "corrected" if all(d.get("corrected") for d in found) else "left for a person"
    return f"{'; '.join(parts)} ({outcome})"


@dataclass(frozen=True)
class DigestEmail(Alert):
    """An account manager's daily digest: its text is sections of invoices, not labelled fields."""

    body: str = ""

    def text(self) -> str:
        return self.body + "\n-- vinr-recon\n"


_SECTION_TITLES = {
    "payment_failed": "Payment failed",
    "overdue": "Overdue",
    "uncollectible": "Uncollectible (written off, still owed)",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _digest_line(invoice: dict[str, Any]) -> list[str]:
    """One invoice of a digest: what it is and whose, what is due and why it is listed, its link."""
    name = invoice.get("customerName") or invoice.get("customerEmail")
    customer_id = invoice.get("customer")
    who = f"{name} ({customer_id})" if name and customer_id else name or customer_id or "unknown customer"
    due = format_money(invoice["amountDue"], invoice["currency"])
    facts = [f"{due} written off" if invoice["section"] == "uncollectible" else f"{due} due"]
    if invoice.get("attemptCount"):
        facts.append(_plural(invoice["attemptCount"], "failed attempt"))
    if invoice.get("daysOverdue"):
        facts.append(f"{_plural(invoice['daysOverdue'], 'day')} overdue")
    lines = [f"  {invoice.get('number') or invoice['invoiceId']}, {who}", f"    {', '.join(facts)}"]
    if invoice.get("link"):
        lines.append(f"    {invoice['link']}")
    return lines


def digest(payload: dict[str, Any]) -> DigestEmail:
    """An account manager's invoices to chase on `payload["day"]`, by section (ledger.digest)."""
    count, day = payload["count"], payload["day"]
    totals = ", ".join(format_money(t["amountDue"], t["currency"]) for t in payload.get("totals", []))
    listed = payload.get("invoices", [])
    lines = [f"{_plural(count, 'invoice')} of your customers to chase on {day} (as of {payload['asOf']}).", ""]
    for section, title in _SECTION_TITLES.items():
        invoices = [i for i in listed if i["section"] == section]
        if invoices:
            lines.append(f"{title} ({len(invoices)})")
            for invoice in invoices:
                lines += _digest_line(invoice) + [""]
    lines.append(f"Owed in all: {totals or 'nothing'}.")
    if count > len(listed):
        lines.append(f"{count - len(listed)} more are on your list than this email shows.")
    if payload.get("dashboard"):
        lines.append(f"Your whole list: {payload['dashboard']}")
    return DigestEmail(
        subject=f"{_plural(count, 'invoice')} to chase on {day}: {totals} owed",
        intro=lines[0],
        fields=(("Invoices", str(count)), ("Owed", totals)),
        link=payload.get("dashboard"),
        body="\n".join(lines) + "\n",
    )


def render(kind: str, payload: dict[str, Any], customer: dict[str, Any] | None = None) -> Alert:
    if kind == "payment_failed":
        return payment_failed(payload, customer)
    if kind == "uncollectible":
        return uncollectible(payload, customer)
    if kind == "drift":
        return drift(payload)
    if kind == "digest":
        return digest(payload)
    raise ValueError(f"no alert for notices of kind {kind!r}")


def slack_message(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook body (Mattermost and Rocket.Chat take the same): `text` for
    clients without blocks, and a section with the fields."""
    lines = "\n".join(f"*{_escape(label)}:* {_escape(value)}" for label, value in alert.fields)
    return {
        "text": _escape(alert.subject),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(alert.subject)}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines}},
        ],
    }


def _customer(customer_id: str | None, customer: dict[str, Any] | None) -> str:
    """The customer in full: `Acme GmbH (cust_1), ap@acme.example`; its id alone when unknown."""
    name, email = (customer or {}).get("name"), (customer or {}).get("email")
    label = name or email
    who = f"{label} ({customer_id})" if label and customer_id else label or customer_id or "unknown customer"
    return f"{who}, {email}" if name and email and email != name else who


def _customer_label(customer_id: str | None, customer: dict[str, Any] | None) -> str:
    """The customer in a few words, for a subject line: its name, else its email, else its id."""
    return (customer or {}).get("name") or (customer or {}).get("email") or customer_id or "unknown customer"


def _escape(text: str) -> str:
    # Slack reads <...> as links and mentions: a customer's name must stay text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
