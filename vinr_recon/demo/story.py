"""What happens at VINR in the demo, told through the sandbox's REST API (contract section 4).

Customer Acme GmbH; the seed guide's invoice (implementation plus eight support hours,
EUR 1,960.00) paid by card; a second invoice declined; a 3-D Secure payment; a setup fee
through pending invoice items; a partial payment (in CHF, for a second currency); a void; an
uncollectible invoice paid late; a plan downgrade whose proration credit the next invoice uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_3DS = "4000000000003220"

ACCOUNT_MANAGER = "jana.weber@merchant.example"


@dataclass
class StoryInvoice:
    label: str
    id: str = ""
    currency: str = "EUR"
    happened: list[str] = field(default_factory=list)


class StoryError(Exception):
    pass


class Vinr:
    """A thin caller of the sandbox's API that expects each step to do what the guide says."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def call(self, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        if response.status_code != expect:
            raise StoryError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    async def invoice(self, customer: str, lines: list[tuple[str, int, int]], *, currency: str = "EUR",
                      metadata: dict[str, str] | None = None, send: bool = True) -> dict[str, Any]:
        """A finalized invoice (sent by email when `send`) with these (description, quantity, unit) lines."""
        inv = await self.call("POST", "/invoices", {
            "customer": customer, "currency": currency, "collectionMethod": "send_invoice",
            "daysUntilDue": 14, "metadata": metadata or {}})
        for description, quantity, unit_amount in lines:
            await self.call("POST", f"/invoices/{inv['id']}/lines",
                            {"description": description, "quantity": quantity, "unitAmount": unit_amount})
        inv = await self.call("POST", f"/invoices/{inv['id']}/finalize")
        if send and inv["status"] == "open":  # one the customer's credit paid in full is not sent
            await self.call("POST", f"/invoices/{inv['id']}/send")
        return inv

    async def pay(self, invoice_id: str, card: str, expect: int = 200, **extra: Any) -> dict[str, Any]:
        return await self.call("POST", f"/invoices/{invoice_id}/pay", {"card": card, **extra}, expect=expect)


async def tell(client: httpx.AsyncClient) -> tuple[str, list[StoryInvoice]]:
    """Play the story; returns the customer's id and the invoices in the order they were made."""
    vinr = Vinr(client)
    customer = await vinr.call("POST", "/customers", {
        "email": "ops@acme.example", "name": "Acme GmbH",
        "metadata": {"accountId": "acct_8842", "accountManager": ACCOUNT_MANAGER}})
    cust = customer["id"]
    story: list[StoryInvoice] = []

    guide = StoryInvoice("The guide's invoice: implementation + 8 support hours")
    inv = await vinr.invoice(cust, [("Implementation — May 2026", 1, 120000), ("Support hours", 8, 9500)],
                             metadata={"projectId": "proj_2291"})
    guide.id = inv["id"]
    guide.happened += ["finalized and sent", "paid by card 4242"]
    await vinr.pay(guide.id, CARD_OK)
    story.append(guide)

    declined = StoryInvoice("Hosting, June 2026: card declined")
    inv = await vinr.invoice(cust, [("Managed hosting — June 2026", 1, 45000)],
                             metadata={"projectId": "proj_2291"})
    declined.id = inv["id"]
    await vinr.pay(declined.id, CARD_DECLINED, expect=402)
    declined.happened += ["finalized and sent", "card 0002 declined: the account manager is alerted"]
    story.append(declined)

    secure = StoryInvoice("Workshop: paid with 3-D Secure")
    inv = await vinr.invoice(cust, [("On-site workshop, 2 days", 2, 80000)], metadata={"projectId": "proj_2307"})
    secure.id = inv["id"]
    await vinr.pay(secure.id, CARD_3DS, expect=402)
    await vinr.pay(secure.id, CARD_3DS, threeDSecure="approve")
    secure.happened += ["finalized and sent", "card 3220 asked for 3-D Secure", "approved and paid"]
    story.append(secure)

    setup = StoryInvoice("Setup fee (pending invoice item) + first month")
    await vinr.call("POST", "/invoiceitems", {
        "customer": cust, "currency": "EUR", "description": "One-time setup fee", "unitAmount": 25000})
    inv = await vinr.invoice(cust, [("Platform licence — July 2026", 1, 39900)], metadata={"projectId": "proj_2311"})
    setup.id = inv["id"]
    await vinr.pay(setup.id, CARD_OK)
    setup.happened += ["setup fee added as a pending item, swept into the next invoice", "paid by card"]
    story.append(setup)

    partial = StoryInvoice("Zurich office rollout (CHF): paid in part")
    inv = await vinr.invoice(cust, [("Rollout, Zurich office", 1, 300000)], currency="CHF",
                             metadata={"projectId": "proj_2320"})
    partial.id, partial.currency = inv["id"], "CHF"
    await vinr.pay(partial.id, CARD_OK, amount=100000)
    partial.happened += ["finalized and sent", "CHF 1,000.00 paid of 3,000.00"]
    story.append(partial)

    void = StoryInvoice("Duplicate of the hosting invoice: voided")
    inv = await vinr.invoice(cust, [("Managed hosting — June 2026", 1, 45000)], send=False)
    void.id = inv["id"]
    await vinr.call("POST", f"/invoices/{void.id}/void")
    void.happened += ["finalized by mistake", "voided"]
    story.append(void)

    late = StoryInvoice("Travel expenses: written off, then paid late")
    inv = await vinr.invoice(cust, [("Travel expenses, Q1", 1, 18750)], metadata={"projectId": "proj_2291"})
    late.id = inv["id"]
    await vinr.call("POST", f"/invoices/{late.id}/mark_uncollectible")
    await vinr.pay(late.id, CARD_OK)
    late.happened += ["finalized and sent", "marked uncollectible", "paid late by card"]
    story.append(late)

    # Last, so that no other EUR invoice takes the credit first.
    downgrade = StoryInvoice("Plan downgrade: a proration credit")
    inv = await vinr.invoice(cust, [("Standard plan, rest of August", 1, 20000),
                                    ("Unused Enterprise plan, August", 1, -50000)], send=False)
    downgrade.id = inv["id"]
    downgrade.happened += ["finalized with a negative total: paid at once", "EUR 300.00 credit for the customer"]
    story.append(downgrade)

    next_month = StoryInvoice("Standard plan, September: the credit applied")
    inv = await vinr.invoice(cust, [("Standard plan — September 2026", 1, 45000)])
    next_month.id = inv["id"]
    await vinr.pay(next_month.id, CARD_OK)
    next_month.happened += ["EUR 300.00 of credit applied at finalize", "the other EUR 150.00 paid by card"]
    story.append(next_month)
    return cust, story
