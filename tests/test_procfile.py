"""The repo's Procfile, run by honcho (a real Procfile runner): `release` migrates the ledger, then
`web` and `worker` take a signed webhook from the sandbox end to end into the ledger."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from honcho.environ import parse_procfile

from conftest import API_TOKEN, REDIS_URL, WEBHOOK_SECRET, unique
from port_support import free_port
from test_e2e import drop_keys
from vinr.sandbox.app import create_app
from vinr.sandbox.config import EndpointConfig, SandboxConfig
from vinr.sandbox.serving import serve
from vinr_recon.cli import build_parser

pytestmark = pytest.mark.slow

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
BIN = Path(sys.executable).parent  # where `vinr-recon` is installed
HONCHO = str(BIN / "honcho")


def processes() -> dict[str, str]:
    return dict(parse_procfile(PROCFILE.read_text()).processes)


def test_the_procfile_has_web_worker_and_release_all_through_vinr_recon():
    procs = processes()
    assert set(procs) == {"web", "worker", "release"}
    commands = {}
    for name, command in procs.items():
        argv = shlex.split(command)
        assert argv[0] == "vinr-recon", command
        commands[name] = build_parser().parse_args(argv[1:])  # each line is a valid command line
    # The web listens where the platform says, by HOST and PORT (honcho and Heroku set PORT).
    assert (commands["web"].command, commands["web"].host, commands["web"].port) == ("serve", None, None)
    assert commands["worker"].command == "worker"
    assert (commands["release"].command, commands["release"].db_command) == ("db", "upgrade")


def honcho(*args: str, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([HONCHO, "start", "--no-colour", "-f", str(PROCFILE), "-d", str(cwd), *args],
                                env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(runner: subprocess.Popen) -> list[str]:
    """Stop honcho as a platform would (SIGTERM); the command lines of anything it left running."""
    try:
        descendants = psutil.Process(runner.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if runner.poll() is None:
        runner.send_signal(signal.SIGTERM)
    try:
        runner.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait(5)
    left = []
    for process in descendants:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()))
                process.kill()
        except psutil.NoSuchProcess:
            pass
    return left


async def test_honcho_runs_release_then_web_and_worker_and_an_event_lands_in_the_ledger(tmp_path):
    queue = unique("arq:queue:procfile")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "LEDGER_", "PORT"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", VINR_WEBHOOK_SECRET=WEBHOOK_SECRET,
               LEDGER_API_TOKEN=API_TOKEN, REDIS_URL=REDIS_URL, QUEUE_NAME=queue,
               DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", LOG_LEVEL="INFO")
    log = tmp_path / "honcho.log"

    release = honcho("release", env=env, cwd=tmp_path, log=log)
    assert await asyncio.to_thread(release.wait, 60) == 0, log.read_text()
    assert "ledger schema up to date" in log.read_text()

    # honcho gives the first process named the port given with -p, as $PORT.
    runner = honcho("-p", str(port), "web", "worker", env=env, cwd=tmp_path, log=log)
    receiver = f"http://127.0.0.1:{port}"
    config = SandboxConfig(rate_limit=0, endpoints=(EndpointConfig(f"{receiver}/webhooks/vinr", (WEBHOOK_SECRET,)),))
    app = create_app(config)
    sandbox = app.state.sandbox
    left: list[str] = []
    namespace = None
    try:
        async with serve(app) as root, httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while True:
                assert runner.poll() is None, log.read_text()
                try:
                    if (await client.get(f"{receiver}/readyz")).status_code == 200 and \
                            "worker started" in log.read_text():
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)

            vinr = httpx.AsyncClient(base_url=root + "/v1", headers={"X-Api-Key": sandbox.api_key})
            async with vinr:
                customer = (await vinr.post("/customers", json={"name": "Acme GmbH"})).json()["id"]
                namespace = customer[len("cust_"):-6]
                invoice = (await vinr.post("/invoices", json={"customer": customer})).json()["id"]
                await vinr.post(f"/invoices/{invoice}/lines", json={"description": "Implementation",
                                                                     "unitAmount": 120000})
                finalized = (await vinr.post(f"/invoices/{invoice}/finalize")).json()
                assert finalized["status"] == "open"
                await sandbox.deliveries_idle(timeout=20)
                events = (await vinr.get("/events", params={"type": "invoice.finalized"})).json()["data"]
            [event] = [e for e in events if e["data"]["object"]["id"] == invoice]
            # Signed by the sandbox, verified by `web`, acknowledged with 200 on the first try.
            assert [a["status"] for a in event["deliveryAttempts"]] == [200]

            api = {"Authorization": f"Bearer {API_TOKEN}"}
            deadline = time.monotonic() + 20
            while (answer := await client.get(f"{receiver}/api/invoices/{invoice}", headers=api)).status_code != 200:
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            view = answer.json()
            assert (view["status"], view["total"], view["amountDue"]) == ("open", 120000, 120000)
            assert event["id"] in [e["id"] for e in view["events"]]
    finally:
        left = stop(runner)
        drop_keys(queue, namespace)
    assert left == [], left
    assert "web.1" in log.read_text() and "worker.1" in log.read_text()
