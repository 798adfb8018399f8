"""Balances as an accountant reads them (issue 21): each account by its name, its balance with its
side (revenue a credit balance, receivables a debit one), never a minus sign; `vinr-recon db check`
prints them as a table with headers on stdout, per currency with the trial balance's total."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from ledger.accounts import ACCOUNT_NAMES, ACCOUNTS, account_name
from ledger.book import apply_snapshot
from ledger.db import create_engine
from ledger.migrate import upgrade
from ledger.money import format_balance
from lifecycles import snapshot
from vinr.events import Invoice


def test_every_account_of_the_chart_has_a_name_a_person_reads():
    assert set(ACCOUNT_NAMES) == set(ACCOUNTS)
    assert account_name("accounts_receivable") == "Accounts receivable"
    assert account_name("customer_credit") == "Customer credit"


def test_a_balance_shows_its_side_not_a_sign():
    assert format_balance(0, 300000, "EUR") == "EUR 3,000.00 Cr"
    assert format_balance(50000, 0, "EUR") == "EUR 500.00 Dr"
    assert format_balance(700, 700, "JPY") == "JPY 0"
    assert format_balance(0, 196000, "EUR", "de_DE") == "1.960,00\xa0€ Cr"


def _ledger(tmp_path) -> str:
    path = tmp_path / "ledger.db"
    upgrade(f"sqlite:///{path}")

    async def fill() -> None:
        engine = create_engine(f"sqlite:///{path}")
        try:
            async with engine.begin() as conn:
                for invoice in (snapshot("inv_1", "open", 300000), snapshot("inv_2", "paid", 50000, 50000),
                                snapshot("inv_3", "open", 5000, currency="JPY")):
                    await apply_snapshot(conn, Invoice.model_validate(invoice), source="reconciliation",
                                         authoritative=True)
        finally:
            await engine.dispose()

    asyncio.run(fill())
    return f"sqlite:///{path}"


def _check(tmp_path, url: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "DATABASE_", "MONEY_"))}
    return subprocess.run([sys.executable, "-m", "vinr_recon", "db", "check"], env=env | {"DATABASE_URL": url, **extra},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_db_check_prints_each_accounts_balance_as_a_table_on_stdout(tmp_path):
    done = _check(tmp_path, _ledger(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["Currency", "Account", "Debits", "Credits", "Balance", "Expected", "(contract",
                                "section", "6)"]
    rows = {(line.split()[0], line[10:33].strip()): line for line in lines[2:] if line[:3] in ("EUR", "JPY")}
    # Revenue: a credit balance; receivables: a debit one; both as contract section 6 says.
    assert rows["EUR", "Revenue"].split()[-6:] == ["EUR", "3,500.00", "Cr", "EUR", "3,500.00", "Cr"]
    assert rows["EUR", "Accounts receivable"].split()[-6:] == ["EUR", "3,000.00", "Dr", "EUR", "3,000.00", "Dr"]
    assert rows["EUR", "VINR clearing"].split()[-6:] == ["EUR", "500.00", "Dr", "EUR", "500.00", "Dr"]
    assert rows["EUR", "Total (trial balance)"].split()[-6:] == ["EUR", "4,000.00", "EUR", "4,000.00", "EUR", "0.00"]
    assert rows["JPY", "Revenue"].split()[-3:] == ["JPY", "5,000", "Cr"]
    assert {account for _, account in rows} >= {"Bad debt", "Customer credit"}
    assert "-" not in "".join(line for line in lines[2:] if line[:3] in ("EUR", "JPY"))
    assert "trial balance EUR: 0" in lines and lines[-1] == "every position agrees with its postings"
    assert "Revenue" not in done.stderr


def test_db_check_reads_money_in_the_configured_locale(tmp_path):
    done = _check(tmp_path, _ledger(tmp_path), MONEY_LOCALE="de_DE")
    assert done.returncode == 0
    (revenue,) = [line for line in done.stdout.splitlines() if line.startswith("EUR") and "Revenue" in line]
    assert "3.500,00\xa0€ Cr" in revenue
