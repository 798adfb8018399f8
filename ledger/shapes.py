"""The JSON shapes the ledger answers with, once: pydantic models of `/api/*`'s answers and of
the run report that `vinr-recon reconcile --json` prints.

ledger.views, ledger.journal and ledger.runs build them; the receiver serializes them
(`model_dump(mode="json")`) and publishes their JSON Schemas in `/openapi.json`
(receiver/openapi.py), so the document and the answers cannot drift apart. Field names are the
wire's (camelCase); a class's docstring and its fields' descriptions are the document's words.
The shapes of stored things read a row of their table as it is (`model_validate(row)`): each field
from its column, the snake_case of its name unless it says another (`validation_alias`).
Amounts are integers in minor units; moments are ISO 8601 in UTC, as `datetime.isoformat`
writes them (`+00:00`, which pydantic alone would write `Z`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_snake

from ledger.accounts import ACCOUNTS
from vinr.events import InvoiceStatus


def _iso(moment: datetime) -> str:
    return moment.isoformat()


Moment = Annotated[datetime, PlainSerializer(_iso, return_type=str),
                   WithJsonSchema({"type": "string", "format": "date-time", "description": "ISO 8601, UTC."})]
Amount = Annotated[int, Field(description="Minor units of the currency (120000 EUR is 1,200.00).")]
UnixSeconds = Annotated[int, Field(description="Unix seconds, as VINR sent it.")]
Currency = Annotated[str, Field(description="ISO 4217, upper case.", examples=["EUR"])]
# The accounts are the rows of the `accounts` table (a posting's foreign key holds them to it).
Account = Annotated[str, Field(json_schema_extra={"enum": list(ACCOUNTS)})]


class _FromRow(BaseModel):
    """A shape read from a row (its columns as attributes, or a mapping of them), or built by name."""

    model_config = ConfigDict(alias_generator=AliasGenerator(validation_alias=to_snake), validate_by_name=True,
                              validate_by_alias=True, from_attributes=True)


class Error(BaseModel):
    """Every refusal's body."""

    error: str = Field(description="What went wrong, for a human.")


# --- one invoice -------------------------------------------------------------------------------

class Posting(BaseModel):
    account: Account
    direction: Literal["debit", "credit"]
    amount: Amount = Field(ge=1)
    currency: Currency


class JournalEntry(_FromRow):
    id: int
    kind: str = Field(description="finalize, payment, void, write_off, recovery, credit, ...")
    currency: Currency
    source: Literal["webhook", "reconciliation", "backfill"]
    eventId: str | None
    runId: int | None = Field(description="The reconciliation run that posted it.")
    effectiveAt: Moment
    recordedAt: Moment
    postings: list[Posting] = Field(min_length=2, description="Debits equal credits within the entry's currency.")


class ReceivedEvent(_FromRow):
    id: str = Field(validation_alias="event_id", description="The event id (evt_...).")
    type: str
    source: str = Field(description="webhook, or backfill when reconciliation fetched it.")
    outcome: Literal["applied", "stale", "ignored", "dead"]
    created: UnixSeconds | None
    receivedAt: Moment
    appliedAt: Moment | None
    error: str | None


class Invoice(_FromRow):
    """The ledger's view of one invoice."""

    id: str = Field(validation_alias="invoice_id")
    status: InvoiceStatus
    currency: Currency | None
    total: Amount
    amountPaid: Amount
    amountDue: Amount
    appliedBalance: Amount = Field(description="The customer's credit VINR applied at finalize.")
    customer: str | None
    number: str | None
    writtenOff: Amount
    credited: Amount
    attemptCount: int
    created: UnixSeconds | None
    paidAt: UnixSeconds | None
    lastEventAt: UnixSeconds | None
    updatedAt: Moment | None
    entries: list[JournalEntry] = Field(description="Oldest first.")
    events: list[ReceivedEvent] = Field(description="In the order received.")
    corrections: list[JournalEntry] = Field(description="The entries of `entries` that reconciliation posted.")


# --- balances ----------------------------------------------------------------------------------

class Balance(BaseModel):
    account: Account
    currency: Currency
    debits: Amount
    credits: Amount
    balance: Amount = Field(description="debits - credits")


class Balances(BaseModel):
    # Absent, not null, when not asked for: the field is left out of the answer then.
    asOf: Annotated[date | None, WithJsonSchema({"type": "string", "format": "date"})] = Field(
        None, exclude_if=lambda day: day is None,
        description="Present when asked with `?asOf=`: the UTC day the balances stand at the end of.")
    balances: list[Balance]

    @classmethod
    def of(cls, trial: dict[tuple[str, str], tuple[int, int]], as_of: date | None = None) -> Balances:
        """From a trial balance, (account, currency) -> (debits, credits), in its order."""
        return cls(asOf=as_of, balances=[
            Balance(account=account, currency=currency, debits=debits, credits=credits, balance=debits - credits)
            for (account, currency), (debits, credits) in trial.items()])


# --- reconciliation runs -----------------------------------------------------------------------

class Run(_FromRow):
    id: int = Field(ge=1)
    status: Literal["running", "completed", "partial", "failed"]
    dryRun: bool
    startedAt: Moment
    finishedAt: Moment | None
    windowStart: UnixSeconds | None
    invoicesChecked: int
    eventsBackfilled: int
    correctionsPosted: int
    apiRequests: int
    counts: dict[str, int] = Field(
        description="Findings per category: differences still there when the run corrected them.")
    caughtUpInFlight: int = Field(
        validation_alias="caught_up",
        description="Differences seen that webhooks closed before the run could correct them: not drift.")
    adopt: bool = Field(description="The run adopted the account's history (reconcile --adopt).")
    adoptedQuietly: int = Field(
        validation_alias="adopted",
        description="Invoices whose history an adopting run booked without alerts or callbacks.")
    coveredUntil: int | None = Field(
        description="Unix seconds: every invoice created before was swept by a completed run; the next window "
                    "starts a day before it.")
    message: str | None


class Runs(BaseModel):
    runs: list[Run] = Field(description="Newest first.")


class Finding(_FromRow):
    invoice: str = Field(validation_alias="invoice_id")
    category: str = Field(description="missing_in_ledger, status_mismatch, amount_mismatch, ...")
    field: str | None
    ledgerValue: str | None
    vinrValue: str | None
    currency: str | None = Field(description="The invoice's currency, as the ledger holds it.")
    ledgerAmount: str | None = Field(description="ledgerValue for people (EUR 500.00), when an amount.")
    vinrAmount: str | None = Field(description="vinrValue for people, when an amount.")
    corrected: bool
    entries: list[int] = Field(validation_alias="entry_ids", description="Ids of the correcting entries.")


class RunWithFindings(Run):
    findings: list[Finding]


class ReconcileReport(RunWithFindings):
    """What `vinr-recon reconcile --json` prints: the run, its findings, and the verdict."""

    matches: bool = Field(description="The ledger matches VINR after the run.")


# --- receivables aging (ledger.aging's figures) ------------------------------------------------

class BucketFigure(BaseModel):
    amount: int = Field(description="Minor units of the row's currency: the sum of amountDue.")
    count: int = Field(description="How many invoices.")


class Buckets(BaseModel):
    notDue: BucketFigure
    days1to30: BucketFigure
    days31to60: BucketFigure
    days61to90: BucketFigure
    over90: BucketFigure


class BucketInfo(BaseModel):
    key: str
    label: str
    firstDay: int | None = Field(description="Days past due, inclusive; null: no lower bound.")
    lastDay: int | None = Field(description="Days past due, inclusive; null: no upper bound.")


class CurrencyAging(BaseModel):
    currency: str
    total: int = Field(description="Minor units: everything owed (open and uncollectible).")
    count: int
    overdue: int = Field(description="Minor units: the part past due.")
    buckets: Buckets


class ManagerAging(CurrencyAging):
    manager: str = Field(description="The invoice's accountManager, else its customer's, else "
                                     "ALERT_DEFAULT_RECIPIENT, else \"unassigned\".")


class AgingAnswer(BaseModel):
    asOf: date
    buckets: list[BucketInfo] = Field(description="The buckets, youngest first.")
    currencies: list[CurrencyAging] = Field(description="One row per currency, by currency code.")
    managers: list[ManagerAging] = Field(description="One row per manager and currency.")
