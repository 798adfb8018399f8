"""One reconciliation run: backfill missed events, sweep VINR's invoices, correct, record.

The cost is the minimum the API allows: one list page per 100 invoices created in the
window, plus one fetch per invoice the ledger holds as not final that the sweep did not
return. Memory holds two pages at a time (the next is read while one is checked) and the ids
of the open invoices seen. The corrections and findings of a page commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import outbox
from ledger.book import apply_event, record_dead, apply_snapshot, lock_position, position_from_row, positions, received
from ledger.posting import FINAL, CannotApply, Position
from ledger.tables import Finding as FindingRow, JournalEntry, ReconciliationRun
from reconcile.diff import CATEGORIES, MISSING_AT_VINR, Finding, compare
from vinr.client import NotFound, VinrClient, VinrError
from vinr.events import Invoice, InvalidEvent, parse_event

log = structlog.get_logger(__name__)

runs = ReconciliationRun.__table__
findings_table = FindingRow.__table__
journal = JournalEntry.__table__

PAGE = 100
IDS_AT_ONCE = 1_000                # ledger ids read at a time for the re-fetch
OVERLAP = timedelta(days=1)       # re-read a day before the last completed run's start
EVENTS_RETENTION = timedelta(days=30)
NOT_FINAL = ("draft", "open", "uncollectible")


@dataclass
class RunReport:
    run_id: int
    status: str = "running"
    dry_run: bool = False
    window_start: int | None = None
    invoices_checked: int = 0
    events_backfilled: int = 0
    corrections_posted: int = 0
    api_requests: int = 0
    counts: Counter = field(default_factory=Counter)
    unresolved: int = 0
    message: str | None = None
    notices: list[int] = field(default_factory=list)  # outbox ids this run staged, to queue once it ends

    @property
    def matches(self) -> bool:
        """True when, at the end of this run, the ledger agrees with VINR."""
        if self.status != "completed":
            return False
        return self.unresolved == 0 if not self.dry_run else sum(self.counts.values()) == 0

    def as_dict(self) -> dict:
        return {
            "id": self.run_id,
            "status": self.status,
            "dryRun": self.dry_run,
            "windowStart": self.window_start,
            "invoicesChecked": self.invoices_checked,
            "eventsBackfilled": self.events_backfilled,
            "correctionsPosted": self.corrections_posted,
            "apiRequests": self.api_requests,
            "counts": {c: self.counts.get(c, 0) for c in CATEGORIES},
            "matches": self.matches,
            "message": self.message,
        }


async def _batches(items: AsyncIterator, size: int) -> AsyncIterator[list]:
    batch = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _read_ahead(batches: AsyncIterator[list]) -> AsyncIterator[list]:
    """The same batches, the next one read while the caller works on the current one.

    Asks for no more than the caller would have: the next page is requested only when the
    previous one said more follow. At most two batches are held.
    """
    iterator = aiter(batches)
    pending = asyncio.ensure_future(anext(iterator, None))
    try:
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(anext(iterator, None))
            yield batch
    finally:
        # The caller stopped reading (done, or failed): what was being read no longer matters.
        pending.cancel()
        await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved, so that it is not logged as never retrieved
        await iterator.aclose()


async def _window_start(engine: AsyncEngine, since: int | None) -> int | None:
    if since is not None:
        return since
    async with engine.connect() as conn:
        last = await conn.scalar(
            select(runs.c.started_at)
            .where(runs.c.status == "completed", runs.c.dry_run.is_(False))
            .order_by(runs.c.id.desc())
            .limit(1)
        )
    if last is None:
        return None
    if last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=UTC)
    return int((last - OVERLAP).timestamp())


class Reconciler:
    """Runs one reconciliation against `client`, writing to `engine` unless `dry_run`.

    The alerts and callbacks its changes owe on `notices` (a backfilled payment failure, a first
    move to paid, the run's own drift summary) are staged in the transaction of each change.
    """

    def __init__(self, engine: AsyncEngine, client: VinrClient, *, dry_run: bool = False,
                 progress: Callable[[int], None] | None = None, notices: outbox.Channels = outbox.NO_CHANNELS):
        self.engine = engine
        self.client = client
        self.dry_run = dry_run
        self.progress = progress or (lambda n: None)
        self.notices = notices

    async def run(self, since: int | None = None, now: datetime | None = None) -> RunReport:
        now = now or datetime.now(UTC)
        window = await _window_start(self.engine, since)
        async with self.engine.begin() as conn:
            run_id = await conn.scalar(
                insert(runs).values(started_at=now, status="running", dry_run=self.dry_run,
                                    window_start=window, counts={}).returning(runs.c.id)
            )
        report = RunReport(run_id=run_id, dry_run=self.dry_run, window_start=window)
        requests_before = self.client.requests_made
        log.info("reconciliation started", run_id=run_id, window_start=window, dry_run=self.dry_run)
        try:
            # Backfill first: missed events bring their own side effects, and VINR's answer
            # now, read after them, has the last word (an event is never newer than it).
            events_since = max(window or 0, int((now - EVENTS_RETENTION).timestamp()))
            await self._backfill(report, events_since)
            seen_open = await self._sweep(report, window)
            await self._refetch_open(report, window, seen_open)
            report.status = "completed"
        except VinrError as exc:
            # Work done so far stays; the next run redoes the rest without posting anything twice.
            report.status = "partial" if report.invoices_checked or report.events_backfilled else "failed"
            report.message = f"VINR did not answer: {exc}"
            log.error("reconciliation stopped", run_id=run_id, error=str(exc))
        except Exception as exc:
            report.status = "failed"
            report.message = f"{type(exc).__name__}: {exc}"
            log.exception("reconciliation failed", run_id=run_id)
            raise
        finally:
            report.api_requests = self.client.requests_made - requests_before
            await self._record(report)
        log.info("reconciliation finished", **report.as_dict())
        return report

    async def _record(self, report: RunReport) -> None:
        async with self.engine.begin() as conn:
            staged = await outbox.stage(conn, outbox.for_run(
                {**report.as_dict(), "unresolved": report.unresolved}, self.notices))
            await conn.execute(
                update(runs).where(runs.c.id == report.run_id).values(
                    finished_at=datetime.now(UTC),
                    status=report.status,
                    invoices_checked=report.invoices_checked,
                    events_backfilled=report.events_backfilled,
                    corrections_posted=report.corrections_posted,
                    api_requests=report.api_requests,
                    counts={c: report.counts.get(c, 0) for c in CATEGORIES},
                    message=report.message,
                )
            )
        report.notices += staged.values()

    async def _backfill(self, report: RunReport, since: int) -> None:
        """Record every event of the window that the ledger never received (source backfill)."""
        async for page in _batches(self.client.iter_events(created_gte=since), PAGE):
            ids = [e["id"] for e in page]
            async with self.engine.connect() as conn:
                known = set((await conn.execute(
                    select(received.c.event_id).where(received.c.event_id.in_(ids))
                )).scalars())
            for raw in page:
                if raw["id"] in known or self.dry_run:
                    report.events_backfilled += raw["id"] not in known
                    continue
                try:
                    event = parse_event(raw)
                except InvalidEvent as exc:
                    log.warning("backfill skipped an unreadable event", event_id=raw.get("id"), error=str(exc))
                    continue
                body = _canonical(raw)
                try:
                    async with self.engine.begin() as conn:
                        result = await apply_event(conn, event, body, {}, source="backfill")
                        (result,) = await outbox.stage_results(conn, [event], [result], source="backfill",
                                                               channels=self.notices)
                except (InvalidEvent, CannotApply) as exc:
                    # Kept as dead for a person to see; the sweep below still moves the invoice.
                    async with self.engine.begin() as conn:
                        await record_dead(conn, event.id, event.type, body, {}, str(exc), source="backfill")
                    log.warning("backfilled event cannot be applied", event_id=event.id, error=str(exc))
                    continue
                report.events_backfilled += result.outcome != "duplicate"
                report.notices += result.notices

    async def _sweep(self, report: RunReport, window: int | None) -> set[str]:
        """Compare every invoice VINR lists for the window; return the ids of those not final."""
        seen_open: set[str] = set()
        # The next page is read while this one is compared and corrected.
        pages = _read_ahead(_batches(self.client.iter_invoices(created_gte=window), PAGE))
        async with contextlib.aclosing(pages):
            async for page in pages:
                held = await self._positions([inv.id for inv in page])
                await self._check_batch(report, [(held.get(inv.id), inv, inv.id) for inv in page])
                for invoice in page:
                    position = held.get(invoice.id)
                    # Open on either side: the re-fetch must not check it again (a dry run leaves
                    # the ledger's stale status as it was).
                    if invoice.status not in FINAL or (position and position.status not in FINAL):
                        seen_open.add(invoice.id)
                self.progress(len(page))
        return seen_open

    async def _refetch_open(self, report: RunReport, window: int | None, seen_open: set[str]) -> None:
        """Fetch, one by one, the ledger's open invoices the sweep did not return."""
        condition = positions.c.status.in_(NOT_FINAL)
        if window is not None:
            condition = and_(condition, or_(positions.c.created < window, positions.c.created.is_(None)))
        # The ids a chunk at a time, in id order: memory does not grow with the ledger.
        after = ""
        while True:
            async with self.engine.connect() as conn:
                chunk = list((await conn.execute(
                    select(positions.c.invoice_id).where(condition, positions.c.invoice_id > after)
                    .order_by(positions.c.invoice_id).limit(IDS_AT_ONCE)
                )).scalars())
            if not chunk:
                return
            after = chunk[-1]
            await self._refetch(report, [i for i in chunk if i not in seen_open])

    async def _refetch(self, report: RunReport, ids: list[str]) -> None:
        for start in range(0, len(ids), PAGE):
            batch = ids[start:start + PAGE]
            held = await self._positions(list(batch))
            fetched = []
            for invoice_id in batch:
                try:
                    invoice = await self.client.get_invoice(invoice_id)
                except NotFound:
                    invoice = None
                fetched.append((held.get(invoice_id), invoice, invoice_id))
            await self._check_batch(report, fetched)
            self.progress(len(batch))

    async def _positions(self, ids: list[str]) -> dict[str, Position]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(positions).where(positions.c.invoice_id.in_(ids)))
            return {row.invoice_id: position_from_row(row) for row in rows}

    async def _check_batch(self, report: RunReport,
                           batch: list[tuple[Position | None, Invoice | None, str]]) -> None:
        """Compare each (ledger position, VINR's invoice or None for a 404, id) of `batch`;
        correct every difference and record the findings, all in one transaction."""
        checks = [(invoice, invoice_id, compare(position, invoice, invoice_id),
                   invoice is not None and _draft_edited(position, invoice))
                  for position, invoice, invoice_id in batch]
        report.invoices_checked += len(batch)
        drifted = [c for c in checks if c[2] or (c[3] and not self.dry_run)]
        if not drifted:
            return
        counts, corrections, unresolved, staged = Counter(), 0, 0, []
        async with self.engine.begin() as conn:
            corrected: set[str] = set()
            # Positions are locked in id order, as a worker's batch locks them: no deadlock.
            for invoice, invoice_id, found, _ in sorted(drifted, key=lambda c: c[1]):
                counts.update(f.category for f in found)
                if invoice is not None and not self.dry_run:
                    # A draft's edits are no drift, but keep the ledger's copy of the draft current.
                    corrections += await self._correct(conn, report.run_id, invoice, staged)
                    corrected.add(invoice_id)
                elif found:
                    unresolved += 1
            entry_ids: dict[str, list[int]] = {}
            if corrections:
                posted = await conn.execute(
                    select(journal.c.invoice_id, journal.c.id)
                    .where(journal.c.run_id == report.run_id, journal.c.invoice_id.in_(sorted(corrected)))
                    .order_by(journal.c.id)
                )
                for invoice_id, entry_id in posted:
                    entry_ids.setdefault(invoice_id, []).append(entry_id)
            rows = [
                {"run_id": report.run_id, "invoice_id": f.invoice_id, "category": f.category, "field": f.field,
                 "ledger_value": f.ledger_value, "vinr_value": f.vinr_value,
                 "corrected": invoice_id in corrected, "entry_ids": entry_ids.get(invoice_id, [])}
                for _, invoice_id, found, _ in drifted
                for f in found
            ]
            if rows:
                await conn.execute(insert(findings_table), rows)
        # Counted once the transaction holding the corrections and their findings committed.
        report.counts.update(counts)
        report.corrections_posted += corrections
        report.unresolved += unresolved
        report.notices += staged

    async def _correct(self, conn, run_id: int, invoice: Invoice, staged: list[int]) -> int:
        """Move the ledger to VINR's answer through the posting rule; entries name this run.
        Returns the number of entries posted; adds the ids of the notices it owes to `staged`."""
        position = await lock_position(conn, invoice.id)
        # Stamped with the time of VINR's answer, so an older webhook arriving later is stale.
        outcome = await apply_snapshot(conn, invoice, source="reconciliation", run_id=run_id,
                                       authoritative=True, position=position, event_at=int(time.time()))
        if self.notices:
            staged += (await outbox.stage(conn, outbox.for_snapshot(invoice, outcome, "reconciliation",
                                                                    self.notices))).values()
        return len(outcome.entries)


def _draft_edited(position: Position | None, invoice: Invoice) -> bool:
    return invoice.status == "draft" and position is not None and (
        position.total, position.amount_due) != (invoice.total, invoice.amount_due)


def _canonical(raw: dict) -> bytes:
    """Bytes to store for an event fetched from the API rather than delivered."""
    return json.dumps(raw, separators=(",", ":")).encode()
