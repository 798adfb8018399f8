"""Health, readiness, metrics, the `/api` guard and `vinr-recon serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import API_TOKEN, REDIS_URL, WEBHOOK_SECRET, unique
from port_support import wait_listening
from receiver.api import RequireBearerToken
from receiver.app import create_app
from receiver_support import assert_no_secret_in, event_body, free_port, served, signed
from vinr_recon.jobs import event_job_id

URL = "/webhooks/vinr"
pytestmark = pytest.mark.usefixtures("logs")  # every test logs into the capture that the last inspects


# --- health and readiness ---------------------------------------------------------------


async def test_healthz_answers_while_the_process_lives_even_without_redis(settings):
    settings.redis_url = "redis://127.0.0.1:1/0"
    async with served(create_app(settings)) as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_is_200_when_redis_and_the_database_answer(settings):
    async with served(create_app(settings)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"redis": "ok", "database": "ok"}


async def test_readyz_is_503_naming_redis_when_redis_is_down(settings):
    settings.redis_url = "redis://127.0.0.1:1/0"
    async with served(create_app(settings)) as client:
        started = time.monotonic()
        response = await client.get("/readyz")
        assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert response.json()["failed"] == ["redis"] and response.json()["checks"]["database"] == "ok"


async def test_readyz_is_503_naming_the_database_when_it_does_not_answer(settings):
    settings.database_url = "postgresql://nobody@127.0.0.1:1/nothing"
    async with served(create_app(settings)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["database"] and response.json()["checks"]["redis"] == "ok"


async def test_creating_the_app_connects_to_nothing(settings):
    """Observed by a listener standing in for Redis and PostgreSQL: nothing reaches it while the
    app is made, and it does see the app's connections once the app serves (so it can tell)."""
    attempts: list[int] = []

    async def seen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(writer.get_extra_info("peername")[1])
        writer.close()

    listener = await asyncio.start_server(seen, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings.redis_url = f"redis://127.0.0.1:{port}/0"
    settings.database_url = f"postgresql://nobody@127.0.0.1:{port}/nothing"
    try:
        app = create_app(settings)
        await asyncio.sleep(0.3)  # a connection started in the background would have arrived by now
        assert attempts == []
        async with served(app) as client:
            assert (await client.get("/readyz")).status_code == 503
        assert attempts  # Redis and the database were tried, and the listener saw it
    finally:
        listener.close()
        await listener.wait_closed()


# --- metrics ----------------------------------------------------------------------------


def sample(exposition: str, name: str) -> float:
    [line] = [line for line in exposition.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_metrics_count_deliveries_failures_latency_and_queue_depth(settings, redis):
    async with served(create_app(settings)) as client:
        for _ in range(2):
            body = event_body()
            assert (await client.post(URL, content=body, headers=signed(body))).status_code == 200
        await client.post(URL, content=body, headers=signed(body))  # a duplicate
        await client.post(URL, content=body, headers=signed(body, at=int(time.time()) - 3600))
        await client.post(URL, content=b"[]", headers=signed(b"[]"))
        response = await client.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, 'vinr_webhook_deliveries_total{outcome="accepted",type="invoice.paid"}') == 2
    assert sample(text, 'vinr_webhook_deliveries_total{outcome="duplicate",type="invoice.paid"}') == 1
    assert sample(text, 'vinr_webhook_deliveries_total{outcome="bad_signature",type="unknown"}') == 1
    assert sample(text, 'vinr_webhook_deliveries_total{outcome="invalid",type="unknown"}') == 1
    assert sample(text, 'vinr_webhook_verification_failures_total{reason="timestamp too old"}') == 1
    assert sample(text, "vinr_webhook_enqueue_seconds_count") == 3
    assert sample(text, "vinr_queue_depth") == 2


async def test_two_apps_in_one_process_keep_separate_metrics(settings, redis):
    first, second = create_app(settings), create_app(settings)
    async with served(first) as client:
        body = event_body(event_type="something.new")
        await client.post(URL, content=body, headers=signed(body))
        counted = (await client.get("/metrics")).text
    async with served(second) as client:
        fresh = (await client.get("/metrics")).text
    assert sample(counted, 'vinr_webhook_deliveries_total{outcome="accepted",type="other"}') == 1
    assert "vinr_webhook_deliveries_total{" not in fresh


# --- the /api guard ---------------------------------------------------------------------


async def test_api_without_a_configured_token_answers_503_never_openly(settings):
    settings.ledger_api_token = None
    async with served(create_app(settings)) as client:
        response = await client.get("/api/balances", headers={"authorization": f"Bearer {API_TOKEN}"})
    assert (response.status_code, response.json()) == (503, {"error": "LEDGER_API_TOKEN is not configured"})


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer wrong-token", f"Basic {API_TOKEN}", f"Bearer {API_TOKEN}x"]
)
async def test_api_without_the_right_bearer_token_is_401(settings, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    async with served(create_app(settings)) as client:
        response = await client.get("/api/balances", headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


async def test_the_guard_lets_any_configured_token_through():
    async def hello(request):
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/hello", hello)],
        middleware=[Middleware(RequireBearerToken, tokens=["old-token", "new-token"])],
    )
    async with served(app) as client:
        for token in ("old-token", "new-token"):
            response = await client.get("/hello", headers={"authorization": f"bearer {token}"})
            assert (response.status_code, response.text) == (200, "hello")
        assert (await client.get("/hello", headers={"authorization": "Bearer other"})).status_code == 401


async def test_the_receivers_api_mount_passes_a_right_token_to_its_routes(settings):
    async with served(create_app(settings)) as client:
        response = await client.get("/api/no-such-route", headers={"authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 404  # through the guard; the ledger's routes are not in this room


# --- vinr-recon serve -------------------------------------------------------------------


def cli_env(tmp_path, **values: str) -> dict[str, str]:
    """The environment of a child `vinr-recon`, without the developer's VINR settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VINR_", "LEDGER_"))}
    return {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", **values}


def test_serve_refuses_to_start_without_the_webhook_secret(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vinr_recon", "serve", "--port", str(free_port())],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "VINR_WEBHOOK_SECRET" in result.stderr and "must be set" in result.stderr


async def test_serve_finishes_an_in_flight_delivery_on_sigterm(tmp_path, settings, redis, logs):
    port = free_port()
    env = cli_env(tmp_path, VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, REDIS_URL=REDIS_URL,
                  QUEUE_NAME=settings.queue_name, LOG_LEVEL="DEBUG")
    server = subprocess.Popen(
        [sys.executable, "-m", "vinr_recon", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_listening, "127.0.0.1", port)
        event_id = unique("evt")
        body = event_body(event_id)
        head = "".join(f"{name}: {value}\r\n" for name, value in signed(body).items())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {URL} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode())
        writer.write(body[:100])
        await writer.drain()
        await asyncio.sleep(0.3)

        server.send_signal(signal.SIGTERM)  # mid-delivery
        await asyncio.sleep(0.3)
        writer.write(body[100:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 200")
        # uvicorn re-raises the signal once shut down, so managers see how the process ended.
        assert server.wait(10) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
        _, stderr = server.communicate(timeout=10)
    assert await redis.zscore(settings.queue_name, event_job_id(settings.queue_name, event_id)) is not None
    text = stderr.decode()
    assert "Application shutdown complete" in text and "webhook accepted" in text
    assert_no_secret_in(text)


# --- last: the logs of everything above -------------------------------------------------


def test_the_logs_of_this_file_hold_no_secret_and_no_signature(logs):
    text = logs.text()
    assert "readiness check failed" in text  # it did capture
    assert_no_secret_in(text)
