"""The merchant's read API over real HTTP: /api/invoices, /api/balances, /api/reconciliation/runs.

The ledger is written through the same functions the worker and reconciliation use; the
answers are read back through the receiver app under uvicorn, with and without the token.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import insert

from conftest import API_TOKEN
from ledger.book import apply_event, apply_snapshot
from ledger.tables import Finding, ReconciliationRun
from lifecycles import body, snapshot
from receiver.app import create_app
from receiver_support import served
from vinr.events import Invoice, parse_event

AUTH = {"authorization": f"Bearer {API_TOKEN}"}


async def deliver(engine, event_id, event_type, invoice, created):
    raw = body(event_id, event_type, invoice, created)
    async with engine.begin() as conn:
        await apply_event(conn, parse_event(raw), raw, {"x-vinr-signature": "t=1,v1=elided"})


async def a_run_with_one_correction(engine) -> int:
    """A run as reconciliation records it: inv_2 was paid at VINR, the ledger still had it open."""
    async with engine.begin() as conn:
        run_id = (await conn.execute(insert(ReconciliationRun.__table__).values(
            started_at=datetime(2026, 11, 22, 2, 0, tzinfo=UTC), finished_at=datetime(2026, 11, 22, 2, 1, tzinfo=UTC),
            status="completed", invoices_checked=2, corrections_posted=1, counts={"status_mismatch": 1},
        ).returning(ReconciliationRun.__table__.c.id))).scalar_one()
        outcome = await apply_snapshot(conn, Invoice.model_validate(snapshot("inv_2", "paid", 5000, 5000)),
                                       source="reconciliation", run_id=run_id)
        await conn.execute(insert(Finding.__table__).values(
            run_id=run_id, invoice_id="inv_2", category="status_mismatch", field="status",
            ledger_value="open", vinr_value="paid", corrected=True, entry_ids=[1],
        ))
    assert outcome.entries
    return run_id


@pytest.fixture
async def api(ledger_settings, ledger_engine):
    await deliver(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 196000), 1_763_800_000)
    await deliver(ledger_engine, "evt_2", "invoice.updated", snapshot("inv_1", "open", 196000, 50000), 1_763_800_060)
    await deliver(ledger_engine, "evt_3", "invoice.finalized", snapshot("inv_2", "open", 5000), 1_763_800_100)
    async with served(create_app(ledger_settings)) as client:
        yield client


async def test_an_invoice_answers_with_the_ledgers_figures_entries_and_events(api):
    response = await api.get("/api/invoices/inv_1", headers=AUTH)

    assert response.status_code == 200
    view = response.json()
    assert {k: view[k] for k in ("id", "status", "currency", "total", "amountPaid", "amountDue")} == {
        "id": "inv_1", "status": "open", "currency": "EUR", "total": 196000, "amountPaid": 50000, "amountDue": 146000,
    }
    assert [(e["kind"], e["eventId"]) for e in view["entries"]] == [("finalize", "evt_1"), ("payment", "evt_2")]
    assert [(e["id"], e["outcome"]) for e in view["events"]] == [("evt_1", "applied"), ("evt_2", "applied")]
    assert view["corrections"] == []
    assert "elided" not in response.text  # the stored headers are not served


async def test_an_invoice_shows_the_credit_applied_to_it(api, ledger_engine):
    await deliver(ledger_engine, "evt_credit", "invoice.finalized",
                  snapshot("inv_credit", "open", 10_000, applied=3_000), 1_763_800_200)
    view = (await api.get("/api/invoices/inv_credit", headers=AUTH)).json()
    assert (view["appliedBalance"], view["amountDue"]) == (3_000, 7_000)
    assert [e["kind"] for e in view["entries"]] == ["finalize", "credit_applied"]


async def test_an_invoice_the_ledger_never_saw_is_404(api):
    response = await api.get("/api/invoices/inv_never_seen", headers=AUTH)
    assert (response.status_code, response.json()) == (404, {"error": "invoice inv_never_seen not found"})


async def test_balances_are_debits_credits_and_balance_per_account_and_currency(api):
    response = await api.get("/api/balances", headers=AUTH)

    assert response.status_code == 200
    rows = {(b["account"], b["currency"]): (b["debits"], b["credits"], b["balance"]) for b in response.json()["balances"]}
    assert rows == {
        ("accounts_receivable", "EUR"): (201000, 50000, 151000),
        ("revenue", "EUR"): (0, 201000, -201000),
        ("vinr_clearing", "EUR"): (50000, 0, 50000),
    }


async def test_reconciliation_runs_their_findings_and_the_csv(api, ledger_engine):
    run_id = await a_run_with_one_correction(ledger_engine)

    runs = (await api.get("/api/reconciliation/runs", headers=AUTH)).json()["runs"]
    assert [(r["id"], r["status"], r["counts"]) for r in runs] == [(run_id, "completed", {"status_mismatch": 1})]

    run = (await api.get(f"/api/reconciliation/runs/{run_id}", headers=AUTH)).json()
    assert run["findings"] == [{"invoice": "inv_2", "category": "status_mismatch", "field": "status",
                                "ledgerValue": "open", "vinrValue": "paid", "currency": "EUR",
                                "ledgerAmount": None, "vinrAmount": None, "corrected": True, "entries": [1]}]
    correction = (await api.get("/api/invoices/inv_2", headers=AUTH)).json()["corrections"]
    assert [(c["kind"], c["runId"]) for c in correction] == [("payment", run_id)]

    report = await api.get(f"/api/reconciliation/runs/{run_id}/findings.csv", headers=AUTH)
    assert report.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [(r["invoice_id"], r["category"], r["ledger_value"], r["vinr_value"]) for r in rows] == [
        ("inv_2", "status_mismatch", "open", "paid")
    ]

    assert (await api.get(f"/api/reconciliation/runs/{run_id + 1}", headers=AUTH)).status_code == 404
    assert (await api.get("/api/reconciliation/runs?limit=x", headers=AUTH)).status_code == 400
    assert (await api.get(f"/api/reconciliation/runs?before={run_id}", headers=AUTH)).json() == {"runs": []}


@pytest.mark.parametrize("path", ["/api/invoices/inv_1", "/api/balances", "/api/reconciliation/runs"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
async def test_no_route_answers_data_without_the_right_token(api, path, authorization):
    headers = {"authorization": authorization} if authorization else {}
    response = await api.get(path, headers=headers)
    assert response.status_code == 401 and "196000" not in response.text and "inv_" not in response.text


# --- CSV injection, nosniff, the metrics token -------------------------------------------------

# Finding values as VINR or a merchant's metadata could make them, each the start of a formula in
# a spreadsheet (OWASP's CSV injection list), and integers that must stay numbers.
HOSTILE = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
           "\t=1+1", "\r=1+1"]


async def a_run_with_hostile_findings(engine) -> int:
    async with engine.begin() as conn:
        run_id = (await conn.execute(insert(ReconciliationRun.__table__).values(
            started_at=datetime(2026, 11, 22, 2, 0, tzinfo=UTC), status="completed", counts={},
        ).returning(ReconciliationRun.__table__.c.id))).scalar_one()
        await conn.execute(insert(Finding.__table__), [
            dict(run_id=run_id, invoice_id=value, category="amount_mismatch", field="@" + value[:20],
                 ledger_value=value, vinr_value="-5000", corrected=False, entry_ids=[]) for value in HOSTILE])
    return run_id


def assert_no_cell_starts_a_formula(text: str) -> None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(HOSTILE)
    for row, value in zip(rows[1:], HOSTILE):
        assert row[1] == row[4] == "'" + value and row[3] == "'@" + value[:20]  # kept whole, behind a quote
        assert row[5] == "-5000"  # an integer is a number, not a formula
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")) and (not cell.startswith("-") or cell == "-5000")


async def test_findings_csv_cells_cannot_start_a_formula_in_the_api_and_the_dashboard(api, ledger_engine):
    run_id = await a_run_with_hostile_findings(ledger_engine)
    report = await api.get(f"/api/reconciliation/runs/{run_id}/findings.csv", headers=AUTH)
    assert report.status_code == 200
    assert_no_cell_starts_a_formula(report.text)
    await api.post("/dashboard/signin", data={"token": API_TOKEN, "next": "/dashboard/"})
    page = await api.get(f"/dashboard/runs/{run_id}/findings.csv")
    assert page.status_code == 200
    assert page.text == report.text  # one writer for both


async def test_every_api_answer_carries_nosniff(api, ledger_settings):
    for path, headers in [("/api/balances", AUTH), ("/api/invoices/inv_never_seen", AUTH), ("/api/balances", {}),
                          ("/api/reconciliation/runs?limit=x", AUTH)]:
        response = await api.get(path, headers=headers)
        assert response.headers["x-content-type-options"] == "nosniff", (path, response.status_code)
    closed = ledger_settings.model_copy(update={"ledger_api_token": None})
    async with served(create_app(closed)) as client:
        response = await client.get("/api/balances")
        assert response.status_code == 503 and response.headers["x-content-type-options"] == "nosniff"


async def test_metrics_behind_a_token_when_one_is_configured(ledger_settings):
    token = "metrics-token-" + "m" * 24
    guarded = ledger_settings.model_copy(update={"metrics_token": SecretStr(token)})
    async with served(create_app(guarded)) as client:
        for headers in [{}, {"authorization": "Bearer wrong"}, AUTH, {"authorization": f"Basic {token}"}]:
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401 and "vinr_" not in response.text, headers
            assert response.headers["www-authenticate"] == "Bearer"
        response = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200 and "vinr_webhook_deliveries" in response.text
    async with served(create_app(ledger_settings)) as client:  # no token: open, as before
        assert (await client.get("/metrics")).status_code == 200


async def test_a_findings_amounts_are_shown_for_people_beside_the_minor_units(api, ledger_engine):
    """Issue 21: EUR 50.00 beside 5000, in the run's JSON and its CSV."""
    run_id = await a_run_with_one_correction(ledger_engine)
    async with ledger_engine.begin() as conn:
        await conn.execute(insert(Finding.__table__).values(
            run_id=run_id, invoice_id="inv_2", category="amount_mismatch", field="amountPaid",
            ledger_value="0", vinr_value="5000", corrected=True, entry_ids=[1]))
    run = (await api.get(f"/api/reconciliation/runs/{run_id}", headers=AUTH)).json()
    (paid,) = [f for f in run["findings"] if f["field"] == "amountPaid"]
    assert (paid["ledgerValue"], paid["vinrValue"], paid["ledgerAmount"], paid["vinrAmount"]) == (
        "0", "5000", "EUR 0.00", "EUR 50.00")
    report = await api.get(f"/api/reconciliation/runs/{run_id}/findings.csv", headers=AUTH)
    rows = {r["field"]: r for r in csv.DictReader(io.StringIO(report.text))}
    assert (rows["amountPaid"]["vinr_value"], rows["amountPaid"]["currency"], rows["amountPaid"]["vinr_amount"]) == (
        "5000", "EUR", "EUR 50.00")
    assert rows["status"]["vinr_amount"] == ""
