"""The ledger's tables (SQLModel). Journal entries and postings are append-only.

Amounts are integers in minor units of `currency`; a posting's amount is positive and its
direction says debit or credit. Constraint names follow one naming convention, so migrations
can name what they alter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeAlias, Unpack

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, DateTime, Index, LargeBinary, MetaData, Table, false
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

def _money() -> Any:
    return Field(default=0, sa_type=BigInteger, nullable=False)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment in UTC, aware on every database: the ledger writes UTC, and SQLite, which keeps no
    zone, hands back naive datetimes that this reads as UTC (PostgreSQL's come aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _when(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    name: str = Field(primary_key=True, max_length=40)
    description: str


class JournalEntry(SQLModel, table=True):
    """One balanced movement. `idempotency_key` is unique: the same fact is never posted twice."""

    __tablename__ = "journal_entries"
    __table_args__ = (
        CheckConstraint("source IN ('webhook', 'reconciliation', 'backfill')", name="source"),
    )
    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=200)
    kind: str = Field(max_length=40)
    invoice_id: str = Field(index=True, max_length=100)
    currency: str = Field(max_length=3)
    source: str = Field(max_length=20)
    event_id: str | None = Field(default=None, max_length=100)
    run_id: int | None = Field(default=None)
    effective_at: datetime = _when()
    recorded_at: datetime = _when()


class Posting(SQLModel, table=True):
    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("direction IN ('debit', 'credit')", name="direction"),
        # Covers the trial balance (sum per account, currency and direction) without the table.
        Index("ix_postings_balance", "account", "currency", "direction", "amount"),
    )
    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="journal_entries.id", index=True)
    account: str = Field(foreign_key="accounts.name", max_length=40)
    direction: str = Field(max_length=6)
    amount: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)


class InvoicePosition(SQLModel, table=True):
    """The ledger's view of one invoice; `version` counts its changes (optimistic lock)."""

    __tablename__ = "invoice_positions"
    __table_args__ = (
        # The dashboard's invoice list: newest first, all or one status (receiver/dashboard).
        Index("ix_invoice_positions_created_invoice_id", "created", "invoice_id"),
        Index("ix_invoice_positions_status_created", "status", "created", "invoice_id"),
    )
    invoice_id: str = Field(primary_key=True, max_length=100)
    customer: str | None = Field(default=None, index=True, max_length=100)
    number: str | None = Field(default=None, index=True, max_length=100)
    status: str | None = Field(default=None, index=True, max_length=20)
    currency: str | None = Field(default=None, max_length=3)
    total: int = _money()
    amount_paid: int = _money()
    amount_due: int = _money()
    applied_balance: int = Field(default=0, sa_type=BigInteger, nullable=False,
                                 sa_column_kwargs={"server_default": "0"})
    recognized: int = _money()
    written_off: int = _money()
    credited: int = _money()
    attempt_count: int = Field(default=0)
    version: int = Field(default=0)
    last_event_at: int | None = Field(default=None, sa_type=BigInteger)
    paid_at: int | None = Field(default=None, sa_type=BigInteger)
    created: int | None = Field(default=None, sa_type=BigInteger, index=True)
    updated_at: datetime | None = _when(default=None)
    # VINR's `dueDate` (Unix seconds; none for invoices charged automatically) and the invoice's
    # own `metadata.accountManager`: what aging, worklists and digests select by (issue 20).
    due_date: int | None = Field(default=None, sa_type=BigInteger, index=True)
    account_manager: str | None = Field(default=None, index=True)


class Customer(SQLModel, table=True):
    """VINR's customer as its API last answered (contract section 4), so pages and alerts show
    a name, not an id. Reconciliation refreshes it; `account_manager` is the customer's
    `metadata.accountManager`, the manager of its invoices that name none of their own."""

    __tablename__ = "customers"
    id: str = Field(primary_key=True, max_length=100)
    name: str | None = Field(default=None)
    email: str | None = Field(default=None)
    account_manager: str | None = Field(default=None, index=True)
    # `metadata` is SQLModel's own attribute: the column keeps VINR's name, the field another.
    customer_metadata: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    refreshed_at: datetime = _when()


class ReceivedEvent(SQLModel, table=True):
    """Every event received, exactly as VINR sent it; its unique id makes a redelivery a no-op."""

    __tablename__ = "received_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('applied', 'stale', 'ignored', 'dead')", name="outcome"),
        # The dashboard's failed payments of the last days.
        Index("ix_received_events_type_received_at", "type", "received_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=100)
    type: str = Field(max_length=100)
    invoice_id: str | None = Field(default=None, index=True, max_length=100)
    source: str = Field(default="webhook", max_length=20)
    body: bytes = Field(sa_type=LargeBinary)
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    created: int | None = Field(default=None, sa_type=BigInteger)
    received_at: datetime = _when()
    applied_at: datetime | None = _when(default=None)
    outcome: str = Field(max_length=10)
    error: str | None = Field(default=None)


class DeadLetter(SQLModel, table=True):
    """An event the worker could not apply, kept with its error until it is replayed."""

    __tablename__ = "dead_letters"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, max_length=100)
    type: str = Field(max_length=100)
    body: bytes = Field(sa_type=LargeBinary)
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    error: str
    attempts: int = Field(default=1)
    dead_at: datetime = _when()
    replayed_at: datetime | None = _when(default=None)


class ReconciliationRun(SQLModel, table=True):
    """One reconciliation run: its window, outcome and counts, for the audit trail."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'completed', 'partial', 'failed')", name="status"),
    )
    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = _when()
    finished_at: datetime | None = _when(default=None)
    status: str = Field(default="running", max_length=10)
    dry_run: bool = False
    window_start: int | None = Field(default=None, sa_type=BigInteger)
    # Every invoice created before this moment has been swept by some completed run; the next
    # run's window starts from it (less an overlap). A narrower run (--since) leaves it as it was.
    covered_until: int | None = Field(default=None, sa_type=BigInteger)
    invoices_checked: int = 0
    events_backfilled: int = 0
    corrections_posted: int = 0
    api_requests: int = 0
    counts: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    # Differences seen that webhooks closed before the run could correct them: not drift.
    caught_up: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # An adopting run books an account's history without alerts or callbacks for facts older
    # than its start; `adopted` counts the invoices it booked so.
    adopt: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    adopted: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    message: str | None = None


class Finding(SQLModel, table=True):
    """One difference a run found between the ledger and VINR, and the entry that corrected it."""

    __tablename__ = "reconciliation_findings"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="reconciliation_runs.id", index=True)
    invoice_id: str = Field(index=True, max_length=100)
    category: str = Field(max_length=30)
    field: str | None = Field(default=None, max_length=30)
    ledger_value: str | None = None
    vinr_value: str | None = None
    corrected: bool = False
    entry_ids: list[int] = Field(default_factory=list, sa_type=JSON)


class Notice(SQLModel, table=True):
    """An alert or callback to deliver, staged in the transaction of the ledger change behind it.

    `key` is unique (`payment_failed:{event_id}:email`, `paid:{invoice_id}:fulfilment`,
    `drift:{run_id}:chat`): a redelivered event or a second path to `paid` stages nothing new.
    `payload` holds everything needed to render it, as it stood when it was staged.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("channel IN ('email', 'chat', 'fulfilment')", name="channel"),
        CheckConstraint("kind IN ('payment_failed', 'paid', 'drift', 'uncollectible', 'digest')", name="kind"),
        # undeliverable: the delivering worker has not configured its channel (or there is no
        # recipient); dead: tried, and failed; held: a backfill's alert, until the backfill has
        # applied all it found; resolved: that backfill showed the matter settled, never sent
        CheckConstraint("status IN ('pending', 'sent', 'dead', 'undeliverable', 'held', 'resolved')",
                        name="status"),
        Index("ix_outbox_status_created_at", "status", "created_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=200)
    channel: str = Field(max_length=20)
    kind: str = Field(max_length=20)
    invoice_id: str | None = Field(default=None, index=True, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(default="pending", max_length=20)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None)
    created_at: datetime = _when()
    sent_at: datetime | None = _when(default=None)


# --- The tables, for statements (SQL Core) ---------------------------------------------------

# A result row of any columns (SQLAlchemy types a row by the types of its columns).
AnyRow: TypeAlias = Row[Unpack[tuple[Any, ...]]]


def _table_of(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]  # SQLModel sets it but does not declare it
    return table


accounts = _table_of(Account)
entries = _table_of(JournalEntry)
postings = _table_of(Posting)
positions = _table_of(InvoicePosition)
customers = _table_of(Customer)
received = _table_of(ReceivedEvent)
dead_letters = _table_of(DeadLetter)
runs = _table_of(ReconciliationRun)
findings = _table_of(Finding)
outbox = _table_of(Notice)
