"""`vinr-recon demo` as a user runs it: a subprocess that prints the report, exits 0 when the ledger
matches VINR, leaves no process, folder or Redis key behind, and does it again the next time;
also when interrupted, and on machines with a different Redis at hand."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from conftest import REDIS_URL

pytestmark = pytest.mark.slow

DEMO_TIMEOUT = 60  # the demo promises under a minute


class Watched:
    """`vinr-recon demo` in a subprocess, with every descendant it ever had recorded."""

    def __init__(self, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "vinr_recon", "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=cwd, text=True,
            # A background job ignores SIGINT by default; the demo must take Ctrl-C all the same.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        self.seen: dict[int, psutil.Process] = {}
        self.command_of: dict[int, str] = {}  # each descendant's command line, as last seen alive
        self.folders: set[Path] = set()  # and its working directories (the demo's temporary folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            root = psutil.Process(self.popen.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                for child in root.children(recursive=True):
                    process = self.seen.setdefault(child.pid, child)
                    try:  # again each time: between fork and exec a child still looks like the demo
                        command = " ".join(process.cmdline())
                        if command:  # a zombie has none left
                            self.command_of[child.pid] = command
                            self.folders.add(Path(process.cwd()))
                    except psutil.Error:
                        pass
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def finish(self, timeout: float = DEMO_TIMEOUT) -> tuple[int, str]:
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        finally:
            self._stop.set()
            self._thread.join()
        return self.popen.returncode, out

    @property
    def commands(self) -> list[str]:
        return list(self.command_of.values())

    def left_behind(self) -> list[str]:
        """The descendants still running (psutil tells a reused pid from the original)."""
        alive = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(process.cmdline()))
            except psutil.NoSuchProcess:
                pass
        return alive


def demo_keys() -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match="vinr-recon-demo:*", count=1000))
    finally:
        client.close()


def assert_clean(watched: Watched, out: str) -> None:
    assert any("vinr_recon worker" in command for command in watched.commands), watched.commands
    assert watched.left_behind() == []
    folder = re.search(r"Ledger: SQLite in (\S+)", out)
    assert folder and Path(folder.group(1)) in watched.folders, "the parts did not run in the demo's folder"
    assert not Path(folder.group(1)).exists(), "the temporary folder is still there"


def assert_report(code: int, out: str) -> None:
    assert code == 0, out[-6000:]
    assert "Invoices: VINR beside the ledger" in out
    assert "The guide's invoice" in out and "EUR 1,960.00" in out  # implementation + 8 support hours
    for label in ("card declined", "3-D Secure", "Setup fee", "paid in part", "voided", "paid late",
                  "a proration credit", "the credit applied"):
        assert label in out, label
    # The downgrade's EUR 300.00 credit was used up by the next invoice, at VINR and in the ledger.
    assert "customer credit 0.00 = the customer's credit balance at VINR 0.00" in out
    assert "Trial balance, EUR" in out and "Trial balance, CHF" in out
    assert "✗" not in out
    assert "Alerts and callbacks sent by the worker" in out
    # The declined card's alert reached the account manager, by email and chat; the guide's
    # invoice, paid, called the merchant app back with a signature that verifies.
    assert re.search(r"email to jana\.weber@merchant\.example: Payment failed: INV-\d{4}-\d{6} .*EUR 450\.00 due", out)
    assert re.search(r"chat: Payment failed: INV-\d{4}-\d{6} .*EUR 450\.00 due", out)
    # The guide's, the workshop's, the setup fee's, the late one's, the credit note's and September's.
    assert len(re.findall(r"fulfilment callback invoice\.paid inv_\w+: signature verified", out)) == 6
    assert "NOT verified" not in out  # every fulfilment callback that arrived was signed right
    assert "✓ The ledger matches VINR" in out


def test_the_demo_prints_the_report_and_leaves_nothing_behind_twice_in_a_row(tmp_path):
    for attempt in (1, 2):
        watched = Watched(env={"REDIS_URL": REDIS_URL}, cwd=tmp_path)
        code, out = watched.finish()
        assert_report(code, out)
        assert "Redis at REDIS_URL" in out
        assert_clean(watched, out)
        # Its queue had a name of its own, and its keys are gone from the shared Redis.
        assert demo_keys() == [], attempt
        seconds = float(re.search(r"the demo took ([\d.]+) s", out).group(1))
        assert seconds < DEMO_TIMEOUT


def test_ctrl_c_stops_every_process_and_removes_the_folder(tmp_path):
    watched = Watched(env={"REDIS_URL": REDIS_URL}, cwd=tmp_path)
    deadline = time.monotonic() + 30
    # Wait until the receiver and the worker are up (the sandbox, serve and worker children).
    while len([p for p in watched.seen.values() if p.is_running()]) < 3:
        assert time.monotonic() < deadline and watched.popen.poll() is None, "the demo did not start its parts"
        time.sleep(0.05)
    time.sleep(0.5)
    watched.popen.send_signal(signal.SIGINT)
    code, out = watched.finish(timeout=30)
    assert code == 130, out
    assert "interrupted" in out
    assert watched.left_behind() == []
    assert [f for f in watched.folders if f.name.startswith("vinr-recon-demo-")], watched.folders
    assert not any(folder.exists() for folder in watched.folders if folder != tmp_path), "a folder is left"
    assert demo_keys() == []


def test_without_redis_at_redis_url_it_starts_a_private_redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    watched = Watched(env={"REDIS_URL": "redis://127.0.0.1:1/0"}, cwd=tmp_path)
    code, out = watched.finish()
    assert_report(code, out)
    assert "a private redis-server" in out
    assert any(command.startswith(shutil.which("redis-server")) for command in watched.commands), watched.commands
    assert_clean(watched, out)


def test_with_no_redis_at_all_it_runs_on_an_emulation_and_says_production_needs_redis(tmp_path):
    bin_dir = Path(sys.executable).parent  # PATH without redis-server
    watched = Watched(env={"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": str(bin_dir)}, cwd=tmp_path)
    code, out = watched.finish()
    assert_report(code, out)
    assert "in-process Redis emulation" in out and "production needs a real Redis" in out
    assert_clean(watched, out)
