"""The installed package as a new user meets it: the packages import without connecting to
anything, and `vinr-recon --help` lists every command of contract section 7."""

from __future__ import annotations

import argparse
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
    from importlib.metadata import version

    shown = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stdout.strip()) == (0, f"vinr-recon {version('vinr-recon')}")


BAD_SETTINGS = [  # (command, the setting a person got wrong, what the one line must say)
    (["db", "upgrade"], {"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL: unsupported database 'mysql'"),
    (["db", "upgrade"], {"DATABASE_URL": "notaurl"}, "DATABASE_URL: not a database URL"),
    (["db", "upgrade"], {"DATABASE_URL": "sqlite:////no/such/folder/ledger.db"},
     "DATABASE_URL: the SQLite file's folder /no/such/folder does not exist"),
    (["db", "upgrade"], {"DATABASE_URL": "postgresql://postgres:hunter2hunter2@127.0.0.1:5432/no_such_ledger"},
     'DATABASE_URL: the database refused or cannot be opened: database "no_such_ledger" does not exist'),
    (["db", "upgrade"], {"DATABASE_URL": "postgresql://postgres:hunter2hunter2@127.0.0.1:9/test"},
     "DATABASE_URL: the database cannot be reached"),
    (["serve"], {"VINR_WEBHOOK_TOLERANCE": "abc"}, "VINR_WEBHOOK_TOLERANCE: Input should be a valid integer"),
    (["worker"], {"RECONCILE_AT": "2am"}, "RECONCILE_AT: String should match pattern"),
    (["reconcile"], {"MONEY_LOCALE": "xx_QQ"}, "MONEY_LOCALE: not a locale Babel knows"),
]


def test_every_setting_a_person_gets_wrong_is_one_line_naming_it_and_exit_status_2(tmp_path):
    """Issue 21: configuration (2), not a crash (1), and never a traceback or a password."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "DATABASE_", "REDIS_", "MONEY_"))}
    base |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "VINR_WEBHOOK_SECRET": "whsec_" + "k" * 24}
    for argv, bad, said in BAD_SETTINGS:
        done = subprocess.run([sys.executable, "-m", "vinr_recon", *argv], env=base | bad, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and said in lines[0], (argv, bad, done.stderr[-800:])
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout


def test_replay_of_an_event_that_is_no_dead_letter_says_so_in_one_line_and_fails(tmp_path):
    """Issue 21: `vinr-recon replay --event evt_unknown` is an error a script sees (exit 1), in one
    line on stderr naming each id asked for that has no dead letter waiting."""
    from tests.conftest import REDIS_URL, unique

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "DATABASE_", "REDIS_", "QUEUE_"))}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": unique("arq:queue:cli"), "LOG_LEVEL": "WARNING"}
    cli = [sys.executable, "-m", "vinr_recon"]
    upgraded = subprocess.run([*cli, "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert upgraded.returncode == 0
    done = subprocess.run([*cli, "replay", "--event", "evt_unknown", "--event", "evt_other"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("vinr-recon replay: no dead letter waiting to be replayed for evt_other, evt_unknown")
    assert done.stdout == ""
    notices = subprocess.run([*cli, "replay", "--notice", "999999"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert notices.returncode == 1 and notices.stdout == ""
    assert notices.stderr.strip().splitlines() == [
        "vinr-recon replay: no dead notice 999999 (unknown, never dead, or sent since)"]
    # Nothing named, nothing dead: nothing to do is no error.
    quiet = subprocess.run([*cli, "replay"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (quiet.returncode, quiet.stdout.strip()) == (0, "no dead letters pending")


def test_each_commands_help_names_the_environment_variables_it_reads():
    """Issue 21: the mapping behind the epilogs names only real settings, and covers every command."""
    from vinr_recon.cli import COMMAND_ENVIRONMENT, build_parser
    from vinr_recon.settings import Settings

    fields = {name.upper() for name in Settings.model_fields}
    for command, names in COMMAND_ENVIRONMENT.items():
        assert set(names) <= fields, (command, set(names) - fields)
    (commands,) = [a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands) <= set(COMMAND_ENVIRONMENT), set(commands) - set(COMMAND_ENVIRONMENT)

    script = [sys.executable, "-m", "vinr_recon"]
    serve = subprocess.run([*script, "serve", "--help"], capture_output=True, text=True, timeout=60)
    epilog = " ".join(serve.stdout.split("environment variables:")[1].split())
    for name in ("VINR_WEBHOOK_SECRET", "REDIS_URL", "DATABASE_URL", "LEDGER_API_TOKEN", "HOST", "PORT"):
        assert f"{name}," in epilog, name
    check = subprocess.run([*script, "db", "check", "--help"], capture_output=True, text=True, timeout=60)
    assert "environment variables: DATABASE_URL, MONEY_LOCALE" in " ".join(check.stdout.split())
