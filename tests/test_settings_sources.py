"""Where `vinr-recon serve` takes its settings from, through the real command: HOST and PORT
(the flags still win), and secret files in SECRETS_DIR as Docker and Kubernetes mount them (the
environment still wins). Each server is a real process answering real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from conftest import REDIS_URL, WEBHOOK_SECRET, unique
from receiver_support import assert_no_secret_in, event_body, free_port, signed

URL = "/webhooks/vinr"
FILE_SECRET = "whsec_from_a_file_" + "f" * 24


def cli_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """A child's environment without the developer's settings (none of theirs may decide a test)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("VINR_", "LEDGER_", "METRICS_", "SECRETS_")) and name not in ("HOST", "PORT")}
    return {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": unique("arq:queue:sources"), "LOG_LEVEL": "DEBUG", **values}


@contextmanager
def serving(tmp_path: Path, env: dict[str, str], *args: str, port: int):
    """`vinr-recon serve ARGS` until it answers /healthz on 127.0.0.1:`port`; its base URL. Its
    output is kept in tmp_path/serve.log for the test to read after it stopped."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "vinr_recon", "serve", *args], env=env, cwd=tmp_path,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer on port {port}\n{log.read_text()}"
            time.sleep(0.1)
        yield base
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        queue = env["QUEUE_NAME"]
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{queue}*", count=1000))
            client.delete(queue, *keys)
        finally:
            client.close()


def deliver(base: str, secret: str) -> int:
    body = event_body(unique("evt"))
    return httpx.post(f"{base}{URL}", content=body, headers=signed(body, secret), timeout=10).status_code


def test_serve_listens_on_port_from_the_environment_and_the_flag_wins(tmp_path):
    port = free_port()
    env = cli_env(tmp_path, VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, HOST="127.0.0.1", PORT=str(port))
    with serving(tmp_path, env, port=port) as base:
        assert deliver(base, WEBHOOK_SECRET) == 200
    assert f'"port": {port}' in (tmp_path / "serve.log").read_text()

    flagged = free_port()
    with serving(tmp_path, env, "--port", str(flagged), port=flagged) as base:  # PORT says otherwise
        assert deliver(base, WEBHOOK_SECRET) == 200
        with pytest.raises(httpx.ConnectError):  # nothing took PORT's port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.parametrize("said_in", ["environment", ".env"])
def test_a_webhook_secret_only_in_a_secret_file_is_the_one_the_receiver_accepts(tmp_path, said_in):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # Named as Docker names a secret (lower case), with the newline `echo` leaves.
    (secrets / "vinr_webhook_secret").write_text(FILE_SECRET + "\n")
    port = free_port()
    env = cli_env(tmp_path, PORT=str(port))
    if said_in == ".env":  # the working directory's, read like every other setting
        (tmp_path / ".env").write_text(f"SECRETS_DIR={secrets}\n")
    else:
        env["SECRETS_DIR"] = str(secrets)
    with serving(tmp_path, env, port=port) as base:
        assert deliver(base, FILE_SECRET) == 200
        assert deliver(base, WEBHOOK_SECRET) == 400  # signed with anything else: refused
    text = (tmp_path / "serve.log").read_text()
    assert "webhook accepted" in text
    assert FILE_SECRET not in text
    assert_no_secret_in(text)


def test_the_environment_wins_over_a_secret_file(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "VINR_WEBHOOK_SECRET").write_text(FILE_SECRET)
    port = free_port()
    env = cli_env(tmp_path, SECRETS_DIR=str(secrets), VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, PORT=str(port))
    with serving(tmp_path, env, port=port) as base:
        assert deliver(base, WEBHOOK_SECRET) == 200
        assert deliver(base, FILE_SECRET) == 400
    assert FILE_SECRET not in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize("bad", [
    ({"SECRETS_DIR": "/no/such/secrets"}, "SECRETS_DIR: /no/such/secrets does not exist"),
    ({"SECRETS_DIR": "__file__"}, "is not a folder"),
    ({"PORT": "0"}, "PORT: Input should be greater than or equal to 1"),
    ({"PORT": "65536"}, "PORT: Input should be less than or equal to 65535"),
    ({"PORT": "http"}, "PORT: Input should be a valid integer"),
    ({"HOST": " "}, "HOST: an interface address or host name"),
], ids=["missing-folder", "a-file", "port-0", "port-too-big", "port-text", "blank-host"])
def test_a_bad_secrets_dir_host_or_port_is_one_line_naming_it_and_exit_status_2(tmp_path, bad):
    values, said = bad
    if values.get("SECRETS_DIR") == "__file__":
        (tmp_path / "secrets").write_text(FILE_SECRET)
        values = {"SECRETS_DIR": str(tmp_path / "secrets")}
    env = cli_env(tmp_path, VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, **values)
    done = subprocess.run([sys.executable, "-m", "vinr_recon", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and said in lines[0], done.stderr[-800:]
    assert FILE_SECRET not in done.stderr + done.stdout and "Traceback" not in done.stderr
