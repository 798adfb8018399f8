"""Helpers shared by the receiver's tests (no tests here): a real HTTP server around the app (and
the `client` fixture of one serving `settings`), signed deliveries, a private redis-server that
can be stopped and restarted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

# forget_queue and free_port are defined once, in conftest and port_support; many
# test files import them from here, with the other receiver helpers.
from conftest import WEBHOOK_SECRET, forget_queue as forget_queue, unique
from port_support import free_port as free_port
from receiver.app import create_app
from receiver.webhooks import identify
from vinr.events import InvalidEvent, parse_event
from vinr.signature import sign
from vinr_recon.settings import Settings

# Every signature value a test sends, so the log check can look for each of them.
SENT_SIGNATURES: set[str] = set()


def event_body(event_id: str | None = None, event_type: str = "invoice.paid") -> bytes:
    event = {
        "id": event_id or unique("evt"),
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": unique("inv"), "object": "invoice", "status": "paid", "total": 1200,
                            "amountPaid": 1200, "amountDue": 0, "currency": "EUR"}},
    }
    return json.dumps(event).encode()


def signed(body: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> dict[str, str]:
    """The headers of a VINR delivery of `body`."""
    header = sign(body, secret, int(time.time()) if at is None else at)
    SENT_SIGNATURES.add(header.partition("v1=")[2])
    return {"content-type": "application/json", "x-vinr-signature": header}


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """`app` under a real uvicorn on a free port, with its lifespan; a client pointed at it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # raises what stopped the start-up
        await asyncio.sleep(0.005)
    try:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The receiver app of `settings`, served; a client pointed at it."""
    async with served(create_app(settings)) as client:
        yield client


async def queued_ids(redis: Redis, settings: Settings) -> list[str]:
    return [member.decode() for member in await redis.zrange(settings.queue_name, 0, -1)]


class PrivateRedis:
    """A redis-server of our own on a free port, to stop, restart or starve of memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def private_redis():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def assert_identify_agrees_with_parse_event(body: bytes) -> None:
    """The receiver's fast path (identify) refuses exactly what parse_event does, in its words,
    and reads the same id and type from the rest."""
    try:
        expected = parse_event(body)
    except InvalidEvent as exc:
        with pytest.raises(InvalidEvent) as caught:
            identify(body)
        assert str(caught.value) == str(exc)
    else:
        assert identify(body) == (expected.id, expected.type)


def assert_no_secret_in(text: str) -> None:
    assert WEBHOOK_SECRET not in text
    leaked = [value for value in SENT_SIGNATURES if value and value in text]
    assert not leaked, f"signature values in the logs: {leaked[:3]}"
