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
        if self.link and not any(self.link in value for _, value in self.fields):  # each link once
            lines += ["", self.link]
        return "\n".join(lines) + "\n\n-- vinr-recon\n"


# VINR's code for a 3-D Secure challenge the customer has not completed (contract sections 3, 4):
# no card was declined, the customer has a step to take.
AUTHENTICATION_REQUIRED = "authentication_required"
AUTHENTICATION_WORDING = "the customer must authenticate the payment (3-D Secure)"


def needs_authentication(failure: dict[str, Any] | None) -> bool:
    return (failure or {}).get("code") == AUTHENTICATION_REQUIRED


def payment_failed(payload: dict[str, Any], customer: dict[str, Any] | None = None, locale: str | None = None
                   ) -> Alert:
    """The alert for a failed payment; `customer` is VINR's customer object when it could be read.
    A 3-D Secure attempt is worded as what it is, a step the customer must take, not a decline."""
    invoice = payload.get("number") or payload["invoiceId"]
    who = _customer(payload.get("customer"), customer)
    label = _customer_label(payload.get("customer"), customer)
    due = format_money(payload["amountDue"], payload["currency"], locale)
    failure = payload.get("failure") or {}
    if needs_authentication(failure):
        subject = f"Authentication required: {invoice} ({label}), {due} due"
        intro = f"A payment for invoice {invoice} is waiting: {AUTHENTICATION_WORDING}."
        reason = ("Reason", AUTHENTICATION_WORDING)
    else:
        text = failure.get("code") or "unknown"
        if failure.get("declineCode") and failure.get("declineCode") != failure.get("code"):
            text += f" ({failure['declineCode']})"
        if failure.get("message"):
            text += f": {failure['message']}"
        subject, intro, reason = (f"Payment failed: {invoice} ({label}), {due} due",
                                  f"A payment for invoice {invoice} failed.", ("Failure", text))
    return Alert(
        subject=subject,
        intro=intro,
        fields=(
            ("Customer", who),
            ("Invoice", f"{payload.get('number') or '(no number)'} ({payload['invoiceId']})"),
            ("Amount due", due),
            reason,
            ("Attempts", str(payload.get("attemptCount", 0))),
            ("Invoice page", payload.get("hostedInvoiceUrl") or "(none)"),
        ),
        link=payload.get("hostedInvoiceUrl"),
    )


def uncollectible(payload: dict[str, Any], customer: dict[str, Any] | None = None, locale: str | None = None
                  ) -> Alert:
    """The alert for an invoice whose dunning gave up: what is still due is written off."""
    invoice = payload.get("number") or payload["invoiceId"]
    who = _customer(payload.get("customer"), customer)
    due = format_money(payload["amountDue"], payload["currency"], locale)
    return Alert(
        subject=f"Uncollectible: {invoice} ({_customer_label(payload.get('customer'), customer)}), {due} written off",
        intro=f"Invoice {invoice} was marked uncollectible: collection gave up and {due} is written off "
              "as bad debt. A late payment still closes it.",
        fields=(
            ("Customer", who),
            ("Invoice", f"{payload.get('number') or '(no number)'} ({payload['invoiceId']})"),
            ("Written off", due),
            ("Total", format_money(payload["total"], payload["currency"], locale)),
            ("Attempts", str(payload.get("attemptCount", 0))),
            ("Invoice page", payload.get("hostedInvoiceUrl") or "(none)"),
        ),
        link=payload.get("hostedInvoiceUrl"),
    )


def drift(payload: dict[str, Any], locale: str | None = None) -> Alert:
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
    fields += [(invoice_id, _differences(found, locale)) for invoice_id, found in by_invoice.items()]
    if found > len(differences) and differences:
        fields.append(("More", f"{found - len(differences)} more in the report"))
    if payload.get("message"):
        fields.append(("Message", payload["message"]))
    fields.append(("Report", f"GET {payload['report']} (findings as CSV: {payload['findingsCsv']})"))
    return Alert(subject=f"Reconciliation run {run_id} {what}", intro=f"Reconciliation run {run_id} {what}.",
                 fields=tuple(fields))


_AMOUNT_FIELDS = frozenset({"total", "amountPaid", "amountDue"})


def _differences(found: list[dict[str, Any]], locale: str | None = None) -> str:
    """One invoice's findings for people:
    `status: ledger open, VINR paid; amountPaid: ledger EUR 0.00, VINR EUR 500.00 (corrected)`."""

    def value(d: dict[str, Any], text: str | None) -> str:
        if text is None:
            return "none"
        if d.get("field") in _AMOUNT_FIELDS and d.get("currency") and text.lstrip("-").isdigit():
            return format_money(int(text), d["currency"], locale)
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


def _who(invoice: dict[str, Any]) -> str:
    name = invoice.get("customerName") or invoice.get("customerEmail")
    customer_id = invoice.get("customer")
    return f"{name} ({customer_id})" if name and customer_id else name or customer_id or "unknown customer"


def _digest_line(invoice: dict[str, Any], locale: str | None = None) -> list[str]:
    """One invoice of a digest: what it is and whose, what is due and why it is listed, its link."""
    due = format_money(invoice["amountDue"], invoice["currency"], locale)
    facts = [f"{due} written off" if invoice["section"] == "uncollectible" else f"{due} due"]
    if invoice.get("lastFailure") == AUTHENTICATION_REQUIRED:
        facts.append(AUTHENTICATION_WORDING)
    elif invoice.get("attemptCount"):
        facts.append(_plural(invoice["attemptCount"], "failed attempt"))
    if invoice.get("daysOverdue"):
        facts.append(f"{_plural(invoice['daysOverdue'], 'day')} overdue")
    lines = [f"  {invoice.get('number') or invoice['invoiceId']}, {_who(invoice)}", f"    {', '.join(facts)}"]
    if invoice.get("link"):
        lines.append(f"    {invoice['link']}")
    return lines


def _resolved_line(invoice: dict[str, Any], locale: str | None = None) -> list[str]:
    """An invoice whose payment had failed and that is paid now: the matter is closed."""
    paid = format_money(invoice["amountPaid"], invoice["currency"], locale)
    how = "authenticated (3-D Secure) and paid" if invoice.get("lastFailure") == AUTHENTICATION_REQUIRED else "paid"
    lines = [f"  {invoice.get('number') or invoice['invoiceId']}, {_who(invoice)}", f"    {how}: {paid}, closed"]
    if invoice.get("link"):
        lines.append(f"    {invoice['link']}")
    return lines


def digest(payload: dict[str, Any], locale: str | None = None) -> DigestEmail:
    """An account manager's invoices to chase on `payload["day"]`, by section (ledger.digest), and
    those whose failed payment was paid since the last digest (closed: nothing left to chase)."""
    count, day = payload["count"], payload["day"]
    totals = ", ".join(format_money(t["amountDue"], t["currency"], locale) for t in payload.get("totals", []))
    listed = payload.get("invoices", [])
    resolved = payload.get("resolved", [])
    lines = [f"{_plural(count, 'invoice')} of your customers to chase on {day} (as of {payload['asOf']}).", ""]
    for section, title in _SECTION_TITLES.items():
        invoices = [i for i in listed if i["section"] == section]
        if invoices:
            lines.append(f"{title} ({len(invoices)})")
            for invoice in invoices:
                lines += _digest_line(invoice, locale) + [""]
    if resolved:
        lines.append(f"Resolved since the last digest ({len(resolved)})")
        for invoice in resolved:
            lines += _resolved_line(invoice, locale) + [""]
    lines.append(f"Owed in all: {totals or 'nothing'}.")
    if count > len(listed):
        lines.append(f"{count - len(listed)} more are on your list than this email shows.")
    if payload.get("dashboard"):
        lines.append(f"Your whole list: {payload['dashboard']}")
    subject = f"{_plural(count, 'invoice')} to chase on {day}: {totals} owed" if count else f"Nothing to chase on {day}"
    if resolved:
        subject += f"; {len(resolved)} resolved"
    return DigestEmail(
        subject=subject,
        intro=lines[0],
        fields=(("Invoices", str(count)), ("Owed", totals or "nothing"), ("Resolved", str(len(resolved)))),
        link=payload.get("dashboard"),
        body="\n".join(lines) + "\n",
    )


def render(kind: str, payload: dict[str, Any], customer: dict[str, Any] | None = None,
           locale: str | None = None) -> Alert:
    """`locale`: MONEY_LOCALE, for amounts as their readers write them (ledger.money)."""
    if kind == "payment_failed":
        return payment_failed(payload, customer, locale)
    if kind == "uncollectible":
        return uncollectible(payload, customer, locale)
    if kind == "drift":
        return drift(payload, locale)
    if kind == "digest":
        return digest(payload, locale)
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
