"""The categories of a reconciliation finding, as the findings table stores them (reconcile.diff
finds them; the metrics count them)."""

MISSING_IN_LEDGER = "missing_in_ledger"
STATUS_MISMATCH = "status_mismatch"
AMOUNT_MISMATCH = "amount_mismatch"
CURRENCY_MISMATCH = "currency_mismatch"
MISSING_AT_VINR = "missing_at_vinr"
# VINR listed or answered an invoice that breaks the contract: a person must look at it.
UNREADABLE_AT_VINR = "unreadable_at_vinr"
# The position kept moving under the run's fresh answers: the next run looks again.
UNSETTLED = "unsettled"
# The position agrees with VINR, but its entries were posted under an earlier posting rule.
POSTING_RULE = "posting_rule"
CATEGORIES = (MISSING_IN_LEDGER, STATUS_MISMATCH, AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_AT_VINR,
              UNREADABLE_AT_VINR, UNSETTLED, POSTING_RULE)
