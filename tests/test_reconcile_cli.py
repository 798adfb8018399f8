"""`vinr-recon reconcile` as a user runs it: a real process against the sandbox over HTTP and a
SQLite ledger made by `vinr-recon db upgrade`; its exit status, `--dry-run`, `--json` and
`--report FILE.csv`, and its refusal without `VINR_API_KEY`. Then `vinr-recon db check` on the
books it made, and on the same books with one position edited behind the journal's back."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import REDIS_URL, unique
from vinr.sandbox.app import create_app
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.serving import serve_in_thread

pytestmark = pytest.mark.slow


def vinr_recon(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vinr_recon", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "DATABASE_", "LEDGER_", "REDIS_"))}
    return base | {"DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "REDIS_URL": REDIS_URL,
                   "QUEUE_NAME": unique("arq:queue:cli"), "LOG_LEVEL": "WARNING"}


def test_dry_run_then_run_then_nothing_left(env, tmp_path):
    app = create_app(SandboxConfig(rate_limit=0, seed=5))
    sandbox = app.state.sandbox
    sandbox.seed(40)
    with serve_in_thread(app) as root:
        env = env | {"VINR_API_KEY": sandbox.api_key, "VINR_API_BASE": root + "/v1"}
        assert vinr_recon("db", "upgrade", env=env, cwd=tmp_path).returncode == 0

        dry = vinr_recon("reconcile", "--dry-run", "--json", env=env, cwd=tmp_path)
        assert dry.returncode == 1, dry.stderr  # the empty ledger does not match VINR
        dry_run = json.loads(dry.stdout)
        assert dry_run["dryRun"] is True and dry_run["matches"] is False
        assert dry_run["counts"]["missing_in_ledger"] > 0 and dry_run["correctionsPosted"] == 0

        report = tmp_path / "drift.csv"
        fixed = vinr_recon("reconcile", "--report", str(report), env=env, cwd=tmp_path)
        assert fixed.returncode == 0, fixed.stderr  # corrected: the ledger matches at the end
        assert "the ledger matches VINR" in fixed.stdout and "Measure" in fixed.stdout  # the report on stdout
        with report.open(newline="") as file:
            rows = list(csv.DictReader(file))
        missing = [r for r in rows if r["category"] == "missing_in_ledger"]
        assert len(missing) == dry_run["counts"]["missing_in_ledger"]
        assert {r["invoice_id"] for r in missing} <= {inv.id for inv in sandbox.state.invoices}

        again = vinr_recon("reconcile", "--json", env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["matches"] is True and not any(second["counts"].values()) and second["findings"] == []

        checked = vinr_recon("db", "check", env=env, cwd=tmp_path)
        assert checked.returncode == 0 and "every position agrees with its postings" in checked.stdout, checked.stdout
        assert "trial balance EUR: 0" in checked.stdout
        with sqlite3.connect(tmp_path / "ledger.db") as db:  # a position edited behind the journal's back
            (edited,) = db.execute("SELECT invoice_id FROM invoice_positions WHERE amount_paid > 0 LIMIT 1").fetchone()
            db.execute("UPDATE invoice_positions SET amount_paid = amount_paid - 1 WHERE invoice_id = ?", (edited,))
        db.close()
        unsound = vinr_recon("db", "check", env=env, cwd=tmp_path)
        assert unsound.returncode == 1 and f"{edited} (" in unsound.stdout and "NOT sound" in unsound.stdout


def test_without_an_api_key_it_refuses_to_start_and_says_so(env, tmp_path):
    refused = vinr_recon("reconcile", env=env, cwd=tmp_path)
    assert refused.returncode != 0 and "VINR_API_KEY" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_refused_key_and_a_base_url_without_v1_are_named_not_called_an_outage(env, tmp_path):
    app = create_app(SandboxConfig(rate_limit=0, seed=5))
    with serve_in_thread(app) as root:
        assert vinr_recon("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
        refused = vinr_recon("reconcile", env=env | {"VINR_API_KEY": "sk_test_" + "x" * 24,
                                                     "VINR_API_BASE": root + "/v1"}, cwd=tmp_path)
        no_v1 = vinr_recon("reconcile", env=env | {"VINR_API_KEY": app.state.sandbox.api_key,
                                                   "VINR_API_BASE": root}, cwd=tmp_path)
    assert refused.returncode == 1 and "VINR refused the API key (401)" in refused.stdout, refused.stdout
    assert "did not answer" not in refused.stdout and "does not match" not in refused.stdout
    assert "the ledger was not fully checked" in refused.stdout
    assert no_v1.returncode == 1 and "does VINR_API_BASE end in /v1?" in no_v1.stdout, no_v1.stdout
    assert "sk_test_" not in refused.stdout + refused.stderr


def test_on_a_terminal_log_lines_print_above_the_progress_bar_and_the_report_has_headers(env, tmp_path):
    """Issue 21: run in a pseudo-terminal, as a person runs it, with INFO logs on."""
    import pty

    app = create_app(SandboxConfig(rate_limit=0, seed=5))
    app.state.sandbox.seed(150)
    with serve_in_thread(app) as root:
        env = env | {"VINR_API_KEY": app.state.sandbox.api_key, "VINR_API_BASE": root + "/v1",
                     "LOG_LEVEL": "INFO", "VINR_API_RATE": "100"}
        assert vinr_recon("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command on the terminal
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, "-m", "vinr_recon", "reconcile"], env)
        out = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = screen(out.decode())
    logged = [line for line in lines if "reconciliation started" in line or "reconciliation finished" in line]
    assert len(logged) == 2 and not any("reconciling:" in line for line in logged), logged
    assert "reconciling:" in out.decode()  # the bar did show (and went: it is transient)
    assert any("Measure" in line and "Value" in line for line in lines)


def screen(output: str) -> list[str]:
    """The lines a terminal shows for `output`: a carriage return goes back to the start of the
    line and what follows overwrites it; erase-line and cursor-up are obeyed; colours dropped."""
    import re

    rows, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", output):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(rows):
                rows.append([])
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            rows[row] = []
        elif re.fullmatch(r"\x1b\[\d*A", token):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            line = rows[row]
            line.extend(" " * (col - len(line)))
            line[col:col + 1] = [token]
            col += 1
    return ["".join(line) for line in rows]
