"""The journal export (`vinr-recon export journal`, `GET /api/journal.csv`) and the balances as
of a date (`GET /api/balances?asOf=`), after three days of real traffic from VINR's sandbox.

What the files and answers must say is computed here from the sandbox's own state (contract
section 6), never from the ledger; the CLI runs as a real subprocess on the same database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import API_TOKEN
from journal_support import three_days
from ledger.cells import csv_cell
from ledger.journal import COLUMNS, period
from receiver.app import create_app
from receiver_support import served

AUTH = {"authorization": f"Bearer {API_TOKEN}"}
VINR_RECON = str(Path(sys.executable).with_name("vinr-recon"))
# What an accountant maps to a chart of accounts (README: "The journal export").
EXPECTED_COLUMNS = ["entry_id", "entry_date", "effective_at", "kind", "account", "debit", "credit", "currency",
                    "invoice_id", "invoice_number", "customer", "source", "event_id", "run_id", "posting_id"]
INTEGERS = ("entry_id", "debit", "credit", "run_id", "posting_id")


def typed(rows: list[dict]) -> list[dict]:
    """CSV rows with the JSON export's types: integers as integers, empty cells as None."""
    return [{k: (None if v == "" else int(v) if k in INTEGERS else v) for k, v in row.items()} for row in rows]


def sums(rows, until: date | None = None) -> dict[tuple[str, str], int]:
    """debit - credit per (account, currency) over the rows dated up to `until`; zeros left out."""
    out: Counter = Counter()
    for row in rows:
        if until is None or date.fromisoformat(row["entry_date"]) <= until:
            out[row["account"], row["currency"]] += int(row["debit"]) - int(row["credit"])
    return {k: v for k, v in out.items() if v}


def cli_export(settings, start: date, end: date, fmt: str) -> str:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": settings.database_url, "LOG_LEVEL": "WARNING"}
    done = subprocess.run([VINR_RECON, "export", "journal", "--from", str(start), "--to", str(end), "--format", fmt],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_export_and_the_balances_as_of_each_day_agree_with_vinr(ledger_settings, ledger_engine):
    async with three_days(ledger_settings, ledger_engine) as t:
        first, middle, last = t.days
        state = t.d.state
        async with served(create_app(ledger_settings)) as api:
            response = await api.get("/api/journal.csv", params={"from": str(first), "to": str(last)}, headers=AUTH)
            one_day = await api.get("/api/journal.csv", params={"from": str(middle), "to": str(middle)}, headers=AUTH)
            as_of = {day: (await api.get("/api/balances", params={"asOf": str(day)}, headers=AUTH)).json()
                     for day in [first - timedelta(days=1), *t.days]}
        from_cli = await asyncio.to_thread(cli_export, ledger_settings, first, last, "csv")
        as_json = json.loads(await asyncio.to_thread(cli_export, ledger_settings, first, last, "json"))

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="journal-{first}-{last}.csv"'
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == EXPECTED_COLUMNS == list(COLUMNS)
    rows = list(reader)
    # The command writes the same bytes as the API, and its JSON the same rows.
    assert from_cli.replace("\r\n", "\n") == response.text.replace("\r\n", "\n")
    assert as_json == typed(rows)

    # Up to the end of each day, the postings sum to what VINR's state said that evening; so do
    # the balances as of that day; before the first day there was nothing.
    for day in t.days:
        assert sums(rows, day) == t.expected[day], day
        answer = as_of[day]
        assert answer["asOf"] == str(day)
        assert {(b["account"], b["currency"]): b["balance"] for b in answer["balances"] if b["balance"]} \
            == t.expected[day], day
        assert all(b["balance"] == b["debits"] - b["credits"] for b in answer["balances"])
    assert as_of[first - timedelta(days=1)]["balances"] == []
    assert {r["entry_date"] for r in rows} == {str(day) for day in t.days}

    # One day's export is that day's rows, and the day's movement.
    day_rows = list(csv.DictReader(io.StringIO(one_day.text)))
    assert day_rows == [r for r in rows if r["entry_date"] == str(middle)]
    moved = Counter(t.expected[middle])
    moved.subtract(t.expected[first])
    assert sums(day_rows) == {k: v for k, v in moved.items() if v}

    # Every entry balances per currency; each row names its invoice as VINR does, and the event
    # that moved it is one of that invoice's events.
    by_entry: Counter = Counter()
    events = {e.id: e.snapshot.id for e in state.events}
    for r in rows:
        assert (int(r["debit"]) > 0) != (int(r["credit"]) > 0)
        by_entry[r["entry_id"], r["currency"]] += int(r["debit"]) - int(r["credit"])
        inv = state.invoice(r["invoice_id"])
        assert (r["invoice_number"], r["customer"], r["currency"]) == (inv.number, inv.customer, inv.currency)
        assert r["source"] == "webhook" and events[r["event_id"]] == r["invoice_id"] and r["run_id"] == ""
    assert not any(by_entry.values())
    assert {r["invoice_id"] for r in rows} == {inv.id for inv in state.invoices}


async def test_the_api_refuses_what_is_not_a_period_and_strangers(ledger_settings):
    async with served(create_app(ledger_settings)) as api:
        assert (await api.get("/api/journal.csv", params={"from": "2026-11-01", "to": "2026-11-30"})).status_code == 401
        for params in [{}, {"from": "2026-11-01"}, {"from": "2026-11-01", "to": "30.11.2026"},
                       {"from": "2026-11-30", "to": "2026-11-01"}, {"from": "20261101", "to": "20261130"}]:
            answer = await api.get("/api/journal.csv", params=params, headers=AUTH)
            assert answer.status_code == 400 and "error" in answer.json(), params
        assert (await api.get("/api/balances", params={"asOf": "yesterday"}, headers=AUTH)).status_code == 400
        # The last day there is still has an end, and an empty ledger exports its header alone.
        answer = await api.get("/api/journal.csv", params={"from": "9999-12-31", "to": "9999-12-31"}, headers=AUTH)
        assert answer.status_code == 200 and answer.text.strip() == ",".join(EXPECTED_COLUMNS)
        assert (await api.get("/api/balances", params={"asOf": "9999-12-31"}, headers=AUTH)).json()["balances"] == []


def test_the_command_refuses_a_period_that_ends_before_it_starts(settings):
    done = subprocess.run([VINR_RECON, "export", "journal", "--from", "2026-11-30", "--to", "2026-11-01"],
                          env={"PATH": os.environ["PATH"], "DATABASE_URL": settings.database_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "before" in done.stderr and done.stdout == ""


def test_a_period_includes_both_days_and_a_cell_is_never_a_formula():
    since, until = period(date(2026, 11, 1), date(2026, 11, 30))
    assert (since.isoformat(), until.isoformat()) == ("2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00")
    with pytest.raises(ValueError):
        period(date(2026, 11, 2), date(2026, 11, 1))
    assert [csv_cell(v) for v in ("=HYPERLINK(1)", "-5", "+x", "inv_1", None, 0)] == ["'=HYPERLINK(1)", "-5", "'+x",
                                                                                     "inv_1", "", "0"]
