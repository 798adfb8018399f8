"""The installed package as a new user meets it: the packages import without connecting to
anything, and `vinr-recon --help` lists every command of contract section 7."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

COMMANDS = ("serve", "worker", "reconcile", "replay", "db", "sandbox", "demo")
# Nothing listens here: an import that tried to connect would fail or hang, not pass.
NOWHERE = {"REDIS_URL": "redis://127.0.0.1:9/0", "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}


def test_the_packages_import_without_connecting_to_anything():
    probe = ("import socket\n"
             "def refuse(*a, **k): raise AssertionError('connected at import time')\n"
             "socket.socket.connect = socket.socket.connect_ex = refuse\n"
             "import receiver, worker, reconcile, ledger, vinr, vinr_recon\n"
             "import receiver.app, worker.settings, worker.jobs, reconcile.run, ledger.book, vinr.client, "
             "vinr.sandbox.app, vinr_recon.cli\n"
             "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", probe], env=os.environ | NOWHERE, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_vinr_recon_help_lists_every_command():
    script = shutil.which("vinr-recon", path=os.path.dirname(sys.executable)) or shutil.which("vinr-recon")
    assert script, "the vinr-recon script is installed with the package"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in COMMANDS:
        assert f"    {command}" in done.stdout, command
    for command in COMMANDS:
        sub = subprocess.run([script, command, "--help"], capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: vinr-recon {command}"), command
