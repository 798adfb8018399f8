"""The chart of accounts: each account's key (what the ledger, the API and the export keep), what
it holds, the name a person reads, and which side its balance normally sits on. No table here:
the dashboard and the reports read it without reaching the ledger's tables.
"""

from __future__ import annotations

ACCOUNTS = {
    "accounts_receivable": "Invoiced and still owed by customers",
    "revenue": "Revenue recognised on finalized invoices",
    "vinr_clearing": "Cash collected by VINR, awaiting payout",
    "bad_debt": "Receivables written off as uncollectible",
    "customer_credit": "Credit owed to customers (negative invoices, voids), less what their invoices used",
}
# The accounts as a person names them (the dashboard, `db check`); the ledger, the API and the
# export keep the keys above.
ACCOUNT_NAMES = {
    "accounts_receivable": "Accounts receivable",
    "revenue": "Revenue",
    "vinr_clearing": "VINR clearing",
    "bad_debt": "Bad debt",
    "customer_credit": "Customer credit",
}
# Accounts whose balance is normally a credit; the others are debit-normal.
CREDIT_NORMAL = frozenset({"revenue", "customer_credit"})


def account_name(account: str) -> str:
    return ACCOUNT_NAMES.get(account) or account.replace("_", " ").capitalize()
