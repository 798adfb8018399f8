"""One reconciliation run: backfill missed events, sweep VINR's invoices, correct, record.

The run races the workers: webhooks keep arriving while it compares. Its rule is that VINR's
answer may correct a position only when the answer is at least as new as everything the
position holds, and only the version it was compared with:

- an answer requested after the position was read is *fresh*: every snapshot the position holds
  was taken by VINR before that read, so before the answer;
- a sweep page is read before its positions, so a difference against a position that holds
  anything is checked again with a fresh answer (one request per such invoice);
- the correction happens under the position's lock, and only if its version is still the one
  compared. If a worker moved it meanwhile, the position as it is now is compared with the
  answer: agreeing, the difference was caught up in flight (counted apart, never a finding);
  still differing, a fresh answer is asked for, `SETTLE_TRIES` times at most, then the
  invoice is left for the next run as an `unsettled` finding.

So a finding is a difference still there under the lock, and each corrected one names the
entries that corrected it. Positions are locked in code-point order of their ids, as a
worker's batch locks them (`ORDER BY ... COLLATE "C"`), so the two never deadlock.

Adopting an account (`adopt`, issue 19) is a full sweep whose facts older than the run's start
stage no alert and no callback, nor does its drift summary: the ledger books years of history
as usual (entries, findings, the run record) without calling the merchant app back for every
invoice ever paid. A fact of the run's own time (an event created, an invoice paid, since it
began) has its effects as always; `adopted` counts the invoices booked quietly.

The cost does not grow with history: one list page per 100 invoices created in the window;
for those created before it, one page per 100 of the invoices VINR holds as open, uncollectible
or draft (status-filtered lists); one fetch per ledger invoice not final that no list showed
(it became final, or was deleted, without the ledger hearing of it), and one per difference
seen. Memory holds two pages at a time (the next is read while one is checked) and the ids of
the not-final invoices seen. The corrections and findings of a page commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import outbox, runs
from ledger.audit import outdated
from ledger.book import apply_event, apply_snapshot, lock_position, record_dead
from ledger.findings import CATEGORIES, UNREADABLE_AT_VINR, UNSETTLED
from ledger.posting import FINAL, CannotApply, Position, post
from reconcile.diff import Finding, compare
from vinr.client import AuthenticationError, InvalidResponse, NotFound, RateLimited, Unreadable, VinrClient, VinrError
from vinr.events import InvalidEvent, Invoice, parse_event

log = structlog.get_logger(__name__)

PAGE = 100
IDS_AT_ONCE = 1_000                # ledger ids read at a time for the re-fetch
OVERLAP = timedelta(days=1)       # re-read a day before what the completed runs covered
EVENTS_RETENTION = timedelta(days=30)
NOT_FINAL = ("draft", "open", "uncollectible")
SETTLE_TRIES = 3                  # fresh answers for one invoice whose position keeps moving
STOPPED = "cancelled (the job's timeout or a shutdown)"

Answer = Invoice | Unreadable | None  # None: VINR answered 404
T = TypeVar("T")


@dataclass
class RunReport:
    run_id: int
    status: str = "running"
    dry_run: bool = False
    window_start: int | None = None
    covered_until: int | None = None
    invoices_checked: int = 0
    events_backfilled: int = 0
    corrections_posted: int = 0
    api_requests: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    caught_up: int = 0
    adopt: bool = False
    adopted: int = 0  # invoices whose history an adopting run booked without notices
    unresolved: int = 0
    message: str | None = None
    notices: list[int] = field(default_factory=list)  # outbox ids this run staged, to queue once it ends

    @property
    def matches(self) -> bool:
        """True when, at the end of this run, the ledger agrees with VINR."""
        if self.status != "completed":
            return False
        return self.unresolved == 0 if not self.dry_run else sum(self.counts.values()) == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "status": self.status,
            "dryRun": self.dry_run,
            "windowStart": self.window_start,
            "coveredUntil": self.covered_until,
            "invoicesChecked": self.invoices_checked,
            "eventsBackfilled": self.events_backfilled,
            "correctionsPosted": self.corrections_posted,
            "apiRequests": self.api_requests,
            "counts": {c: self.counts.get(c, 0) for c in CATEGORIES},
            "caughtUpInFlight": self.caught_up,
            "adopt": self.adopt,
            "adoptedQuietly": self.adopted,
            "matches": self.matches,
            "message": self.message,
        }


@dataclass(frozen=True)
class Check:
    """VINR's answer for one invoice beside the ledger's position it is compared with.

    `fresh`: the answer was requested after `position` was read (see the module's rule).
    `asked_at`: when the answer was requested, in Unix seconds; a correction is stamped with
    it, so a webhook older than the answer is stale when it arrives later. `seen`: an earlier
    look in this run saw a difference here.
    """

    invoice_id: str
    position: Position | None
    answer: Answer
    fresh: bool
    asked_at: int
    seen: bool = False

    @property
    def version(self) -> int:
        return self.position.version if self.position else 0

    def differences(self, position: Position | None = None) -> list[Finding]:
        """What differs between the answer and `position` (by default the one compared)."""
        position = position if position is not None else self.position
        if isinstance(self.answer, Unreadable):
            return [Finding(self.invoice_id, UNREADABLE_AT_VINR, None, None, self.answer.error[:500])]
        return compare(position, self.answer, self.invoice_id)

    def to_update(self, position: Position | None = None) -> bool:
        """A difference, or a draft's edits (no drift, but the ledger keeps its copy current)."""
        position = position if position is not None else self.position
        return bool(self.differences(position)) or (
            isinstance(self.answer, Invoice) and _draft_edited(position, self.answer))


def describe_failure(exc: VinrError) -> str:
    """What stopped a run, in what is known: a refused key is not an outage."""
    if isinstance(exc, AuthenticationError):
        return f"VINR refused the API key (401): check VINR_API_KEY ({exc})"
    if isinstance(exc, NotFound):  # a single invoice's 404 is an answer; a list's is a wrong base URL
        return f"VINR has no such route (404): does VINR_API_BASE end in /v1? ({exc})"
    if isinstance(exc, RateLimited):
        return f"VINR kept refusing for the rate limit (429): lower VINR_API_RATE ({exc})"
    if isinstance(exc, InvalidResponse):
        return f"VINR answered outside its contract: {exc}"
    if exc.status is None:
        return f"VINR did not answer: {exc}"
    return f"VINR failed: {exc}"


def coverage_after(previous: int | None, window_start: int | None, started_at: int) -> int | None:
    """What the completed runs cover once a run that started at `started_at` and swept from
    `window_start` completes: it moves forward only when the window reached back to it."""
    if window_start is None or (previous is not None and window_start <= previous):
        return max(started_at, previous or 0)
    return previous


async def _batches(items: AsyncIterable[T], size: int) -> AsyncGenerator[list[T], None]:
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _read_ahead(batches: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """The same batches, the next one read while the caller works on the current one.

    Asks for no more than the caller would have: the next page is requested only when the
    previous one said more follow. At most two batches are held.
    """
    pending = asyncio.ensure_future(anext(batches, None))
    try:
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(anext(batches, None))
            yield batch
    finally:
        # The caller stopped reading (done, or failed): what was being read no longer matters.
        pending.cancel()
        await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved, so that it is not logged as never retrieved
        await batches.aclose()


class Reconciler:
    """Runs one reconciliation against `client`, writing to `engine` unless `dry_run`.

    The alerts and callbacks its changes owe on `notices` (a backfilled payment failure, a first
    move to paid, the run's own drift summary) are staged in the transaction of each change.
    """

    def __init__(self, engine: AsyncEngine, client: VinrClient, *, dry_run: bool = False,
                 progress: Callable[[int], None] | None = None, notices: outbox.Channels = outbox.NO_CHANNELS,
                 full_sweep_every: timedelta | None = None, adopt: bool = False):
        self.engine = engine
        self.client = client
        self.dry_run = dry_run
        self.progress = progress or (lambda n: None)
        self.notices = notices
        self.full_sweep_every = full_sweep_every
        self.adopt = adopt
        self._quiet_before: int | None = None  # the adoption point, while an adopting run runs
        self._adopted: set[str] = set()
        # A dry run's picture of the positions its backfill would have moved (nothing is written):
        # the sweep compares VINR with these, so it reports what the real run would correct.
        self._preview: dict[str, Position] = {}

    async def run(self, since: int | None = None, now: datetime | None = None) -> RunReport:
        """One run. With `since`, sweep invoices created from then on; by default from what the
        completed runs covered, less `OVERLAP` (everything, the first time, and whenever the last
        full sweep is older than `full_sweep_every`)."""
        now = now or datetime.now(UTC)
        started = int(now.timestamp())
        if self.adopt:
            since, self._quiet_before, self._adopted = None, started, set()  # everything, quietly
        async with self.engine.begin() as conn:
            await runs.close_dead_runs(conn, now)
            covered = await runs.last_coverage(conn)
            window = since if since is not None else (
                None if covered is None or await self._full_sweep_due(conn, now)
                else covered - int(OVERLAP.total_seconds()))
            run_id = await runs.start_run(conn, now, dry_run=self.dry_run, adopt=self.adopt, window=window)
        report = RunReport(run_id=run_id, dry_run=self.dry_run, adopt=self.adopt, window_start=window,
                           covered_until=None if self.dry_run else covered)
        requests_before = self.client.requests_made
        log.info("reconciliation started", run_id=run_id, window_start=window, dry_run=self.dry_run)
        try:
            # Backfill first: missed events bring their own side effects, and VINR's answer
            # now, read after them, has the last word (an event is never newer than it).
            events_since = max(window or 0, int((now - EVENTS_RETENTION).timestamp()))
            await self._backfill(report, events_since)
            seen = await self._sweep(report, window, started)
            if window is not None:
                await self._not_final_before(report, window, started, seen)
            await self._refetch_unlisted(report, window, seen)
            report.status = "completed"
            if not self.dry_run:
                report.covered_until = coverage_after(covered, window, started)
        except VinrError as exc:
            # Work done so far stays; the next run redoes the rest without posting anything twice.
            report.status = self._stopped_status(report)
            report.message = describe_failure(exc)
            log.error("reconciliation stopped", run_id=run_id, error=str(exc))
        except asyncio.CancelledError as exc:
            report.status = self._stopped_status(report)
            report.message = f"stopped before the end: {exc.args[0] if exc.args else STOPPED}"
            log.error("reconciliation stopped", run_id=run_id, reason=report.message)
            raise
        except Exception as exc:
            report.status = "failed"
            report.message = f"{type(exc).__name__}: {exc}"
            log.exception("reconciliation failed", run_id=run_id)
            raise
        finally:
            report.api_requests = self.client.requests_made - requests_before
            report.adopted = len(self._adopted)
            # Shielded: a run cancelled mid-way still records how it ended.
            await asyncio.shield(self._record(report))
        log.info("reconciliation finished", **report.as_dict())
        return report

    async def _full_sweep_due(self, conn: AsyncConnection, now: datetime) -> bool:
        """The last completed full sweep is older than `full_sweep_every`: it catches an invoice
        the ledger never saw, created before the window, whose events have expired."""
        if self.full_sweep_every is None:
            return False
        last = await runs.last_full_sweep(conn)
        if last is None:
            return True
        return last <= now - self.full_sweep_every

    @staticmethod
    def _stopped_status(report: RunReport) -> str:
        return "partial" if report.invoices_checked or report.events_backfilled else "failed"

    async def _record(self, report: RunReport) -> None:
        async with self.engine.begin() as conn:
            # An adopting run's differences are the history it booked: no drift to alert.
            staged = {} if self.adopt else await outbox.stage(conn, outbox.for_run(
                {**report.as_dict(), "unresolved": report.unresolved,
                 "differences": await self._differences(conn, report.run_id)}, self.notices))
            await runs.finish_run(
                conn, report.run_id, datetime.now(UTC),
                status=report.status,
                covered_until=report.covered_until,
                invoices_checked=report.invoices_checked,
                events_backfilled=report.events_backfilled,
                corrections_posted=report.corrections_posted,
                api_requests=report.api_requests,
                counts={c: report.counts.get(c, 0) for c in CATEGORIES},
                caught_up=report.caught_up,
                adopted=report.adopted,
                message=report.message,
            )
        report.notices += staged.values()

    async def _differences(self, conn: AsyncConnection, run_id: int, limit: int = outbox.DRIFT_LISTED
                           ) -> list[dict[str, Any]]:
        """The first findings of the run, with their invoice's currency, for the drift alert."""
        if self.dry_run or not self.notices.alerts:
            return []
        return await runs.first_findings(conn, run_id, limit)

    async def _backfill(self, report: RunReport, since: int) -> None:
        """Record every event of the window that the ledger never received (source backfill).
        Its alerts are held until the last event is applied (a dead run's, by the next run)."""
        await self._release_held(report)
        async for page in _batches(self.client.iter_events(created_gte=since), PAGE):
            ids = [e["id"] for e in page]
            async with self.engine.connect() as conn:
                known = await runs.received_among(conn, ids)
            if self.dry_run:
                await self._preview_backfill(report, [raw for raw in page if raw["id"] not in known])
                continue
            for raw in page:
                if raw["id"] in known:
                    continue
                try:
                    event = parse_event(raw)
                except InvalidEvent as exc:
                    log.warning("backfill skipped an unreadable event", event_id=raw.get("id"), error=str(exc))
                    continue
                body = _canonical(raw)
                quiet = self._quiet(event.created)
                try:
                    async with self.engine.begin() as conn:
                        result = await apply_event(conn, event, body, {}, source="backfill")
                        (result,) = await outbox.stage_results(
                            conn, [event], [result], source="backfill", hold_alerts=True,
                            channels=outbox.NO_CHANNELS if quiet else self.notices)
                except (InvalidEvent, CannotApply) as exc:
                    # Kept as dead for a person to see; the sweep below still moves the invoice.
                    async with self.engine.begin() as conn:
                        await record_dead(conn, event.id, event.type, body, {}, str(exc), source="backfill")
                    log.warning("backfilled event cannot be applied", event_id=event.id, error=str(exc))
                    continue
                report.events_backfilled += result.outcome != "duplicate"
                report.notices += result.notices
                if quiet and result.outcome != "duplicate" and result.invoice is not None:
                    self._adopted.add(result.invoice.id)
        await self._release_held(report)

    async def _preview_backfill(self, report: RunReport, unknown: list[dict[str, Any]]) -> None:
        """What backfilling `unknown` would do to the positions, in memory (the posting rule is
        pure): a dry run is a faithful preview, not a list of what the backfill closes anyway."""
        report.events_backfilled += len(unknown)
        events = []
        for raw in unknown:
            with contextlib.suppress(InvalidEvent):
                event = parse_event(raw)
                if event.is_invoice_event:
                    events.append((event, event.invoice()))
        held = await self._positions(list({invoice.id for _, invoice in events}))
        for event, invoice in events:
            before = held.get(invoice.id) or Position(invoice.id)
            with contextlib.suppress(CannotApply):
                held[invoice.id] = self._preview[invoice.id] = post(before, invoice, event_at=event.created).position

    async def _release_held(self, report: RunReport) -> None:
        """The backfill's alerts go once it has applied all it found: a payment failure (or a
        write-off) that a later event of the same backfill settled is never sent (issue 20)."""
        if not self.dry_run:
            async with self.engine.begin() as conn:
                report.notices += await outbox.release_held(conn)

    async def _sweep(self, report: RunReport, window: int | None, started: int) -> set[str]:
        """Compare every invoice VINR lists for the window; return the ids of those not final."""
        seen: set[str] = set()
        await self._compare_list(report, self.client.iter_invoice_answers(created_gte=window), started, seen)
        return seen

    async def _not_final_before(self, report: RunReport, window: int, started: int, seen: set[str]) -> None:
        """Compare the invoices created before the window that VINR holds as not final, read as
        status-filtered lists (oldest first, so each list stops where the window begins): a page
        per 100 of them rather than a request each, however many years of history there are."""
        for status in NOT_FINAL:
            await self._compare_list(report, _created_before(
                self.client.iter_invoice_answers(status=status), window), started, seen)

    async def _compare_list(self, report: RunReport, answers: AsyncIterable[Invoice | Unreadable], started: int,
                            seen: set[str]) -> None:
        """Compare a list of VINR's invoices page by page, adding to `seen` the ids the re-fetch
        must not ask for again: not final on either side, or unreadable."""
        # The next page is read while this one is compared and corrected.
        pages = _read_ahead(_batches(answers, PAGE))
        async with contextlib.aclosing(pages):
            async for page in pages:
                held = await self._positions([answer.id for answer in page])
                # A page may have been read any time since the run started: stamped with that.
                await self._settle(report, [Check(a.id, held.get(a.id), a, False, started) for a in page])
                for answer in page:
                    position = held.get(answer.id)
                    # (a dry run leaves the ledger's stale status as it was)
                    if (not isinstance(answer, Invoice) or answer.status not in FINAL
                            or (position and position.status not in FINAL)):
                        seen.add(answer.id)
                self.progress(len(page))

    async def _refetch_unlisted(self, report: RunReport, window: int | None, seen: set[str]) -> None:
        """Fetch, one by one, what no list showed: the ledger's invoices created before the window
        that it holds as not final (VINR made them final, or deleted them, without the ledger
        hearing of it), and those whose entries an earlier posting rule made."""
        async with self.engine.connect() as conn:
            earlier_rule = [i for i in await outdated(conn) if i not in seen]
        await self._refetch(report, earlier_rule)
        seen.update(earlier_rule)
        # The ids a chunk at a time, in id order: memory does not grow with the ledger.
        after = ""
        while True:
            async with self.engine.connect() as conn:
                chunk = await runs.not_final_after(conn, NOT_FINAL, window, after, IDS_AT_ONCE)
            if not chunk:
                return
            after = chunk[-1]
            await self._refetch(report, [i for i in chunk if i not in seen])

    async def _refetch(self, report: RunReport, ids: list[str]) -> None:
        for start in range(0, len(ids), PAGE):
            batch = ids[start:start + PAGE]
            held = await self._positions(list(batch))  # read before the fetches: the answers are fresh
            await self._settle(report, [await self._ask(invoice_id, held.get(invoice_id)) for invoice_id in batch])
            self.progress(len(batch))

    async def _ask(self, invoice_id: str, position: Position | None, seen: bool = False) -> Check:
        """A fresh answer for `position`, read before this call."""
        asked_at = int(time.time())
        try:
            answer: Answer = await self.client.get_invoice(invoice_id)
        except NotFound:
            answer = None
        except InvalidResponse as exc:
            if exc.code != "invalid_object":
                raise
            answer = Unreadable(invoice_id, exc.message)
        return Check(invoice_id, position, answer, True, asked_at, seen)

    async def _positions(self, ids: list[str]) -> dict[str, Position]:
        async with self.engine.connect() as conn:
            held = await runs.positions_of(conn, ids)
        return held | {i: self._preview[i] for i in ids if i in self._preview}

    async def _settle(self, report: RunReport, checks: list[Check]) -> None:
        """Compare each check, correct what still differs under the lock, and ask VINR again
        for what moved meanwhile, until each invoice agrees, is corrected or is left over."""
        report.invoices_checked += len(checks)
        for attempt in range(SETTLE_TRIES + 1):
            ready, stale = [], []
            for check in checks:
                if not check.to_update():
                    report.caught_up += check.seen  # a difference seen before has closed
                    continue
                if not check.fresh and check.version > 0:
                    stale.append((check.invoice_id, check.position))  # the page may be older than it
                else:
                    ready.append(check)
            moved = await self._correct(report, ready)
            again = stale + moved
            if not again:
                return
            if attempt == SETTLE_TRIES:
                await self._leave_unsettled(report, again)
                return
            checks = [await self._ask(invoice_id, position, seen=True) for invoice_id, position in again]

    async def _correct(self, report: RunReport, checks: list[Check]) -> list[tuple[str, Position | None]]:
        """Correct each check whose position is still the one compared, and record its findings,
        all in one transaction. Returns (id, position now) of those that moved and still differ."""
        if not checks:
            return []
        counts: Counter[str] = Counter()
        corrections, unresolved, caught_up = 0, 0, 0
        staged: list[int] = []
        moved: list[tuple[str, Position | None]] = []
        rows: list[dict[str, Any]] = []
        async with self.engine.begin() as conn:
            corrected: list[str] = []
            # In code-point order of the ids, as a worker's batch locks them: no deadlock.
            for check in sorted(checks, key=lambda c: c.invoice_id):
                found = check.differences()
                if self.dry_run or not isinstance(check.answer, Invoice):
                    # A 404 or an unreadable answer is a person's to judge; a dry run changes nothing.
                    rows += _finding_rows(report.run_id, found, corrected=False)
                    counts.update(f.category for f in found)
                    unresolved += bool(found)
                    continue
                position = await lock_position(conn, check.invoice_id)
                if position.version != check.version:
                    if check.to_update(position):
                        moved.append((check.invoice_id, position))
                    else:
                        caught_up += 1  # a webhook closed it meanwhile
                    continue
                outcome = await apply_snapshot(conn, check.answer, source="reconciliation", run_id=report.run_id,
                                               authoritative=True, position=position, event_at=check.asked_at)
                if self._quiet(_fact_time(check.answer)):
                    if outcome.entries or position.version == 0:
                        self._adopted.add(check.invoice_id)
                elif self.notices:
                    staged += (await outbox.stage(conn, outbox.for_snapshot(
                        check.answer, outcome, "reconciliation", self.notices))).values()
                corrections += len(outcome.entries)
                if found:
                    corrected.append(check.invoice_id)
                    rows += _finding_rows(report.run_id, found, corrected=True)
                    counts.update(f.category for f in found)
            if corrected:
                entry_ids = await runs.entries_of_run(conn, report.run_id, corrected)
                rows = [{**row, "entry_ids": entry_ids.get(row["invoice_id"], [])} if row["corrected"] else row
                        for row in rows]
            await runs.record_findings(conn, rows)
        # Counted once the transaction holding the corrections and their findings committed.
        report.counts.update(counts)
        report.corrections_posted += corrections
        report.unresolved += unresolved
        report.caught_up += caught_up
        report.notices += staged
        return moved

    def _quiet(self, fact_time: int | None) -> bool:
        """A fact older than the adoption point (or of no known time) stages nothing."""
        return self._quiet_before is not None and (fact_time is None or fact_time < self._quiet_before)

    async def _leave_unsettled(self, report: RunReport, left: list[tuple[str, Position | None]]) -> None:
        rows = _finding_rows(report.run_id, [
            Finding(invoice_id, UNSETTLED, "version", str(position.version if position else 0),
                    f"still moving after {SETTLE_TRIES} fresh answers") for invoice_id, position in left],
            corrected=False)
        async with self.engine.begin() as conn:
            await runs.record_findings(conn, rows)
        report.counts[UNSETTLED] += len(rows)
        report.unresolved += len(rows)
        log.warning("invoices still moving, left for the next run", invoices=[i for i, _ in left])


def _finding_rows(run_id: int, found: list[Finding], *, corrected: bool) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "invoice_id": f.invoice_id, "category": f.category, "field": f.field,
             "ledger_value": f.ledger_value, "vinr_value": f.vinr_value, "corrected": corrected, "entry_ids": []}
            for f in found]


async def _created_before(answers: AsyncGenerator[Invoice | Unreadable, None], window: int
                          ) -> AsyncGenerator[Invoice | Unreadable, None]:
    """The answers of an oldest-first list up to the first one created at or after `window`."""
    async with contextlib.aclosing(answers):
        async for answer in answers:
            if answer.created is not None and answer.created >= window:
                return
            yield answer


def _fact_time(invoice: Invoice) -> int | None:
    """When VINR says the state the sweep found came about: what a correction to it owes is of
    that time (for adoption). Only a payment carries its time; the rest are of no known time."""
    return invoice.paid_at if invoice.status == "paid" else None


def _draft_edited(position: Position | None, invoice: Invoice) -> bool:
    return invoice.status == "draft" and position is not None and (
        position.total, position.amount_due) != (invoice.total, invoice.amount_due)


def _canonical(raw: dict[str, Any]) -> bytes:
    """Bytes to store for an event fetched from the API rather than delivered."""
    return json.dumps(raw, separators=(",", ":")).encode()
