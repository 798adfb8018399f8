"""What the demo runs beside the service: a Redis, and a mailbox for what the worker sends out.

Redis, in order of preference: the one at REDIS_URL if it answers (the demo then keeps to a
queue name of its own and removes its keys afterwards), a private `redis-server` from PATH on
a free port, and only where neither exists an emulation (fakeredis) served over TCP from this
process, good enough for the demo's few dozen events and never for production.

The mailbox is an SMTP server (aiosmtpd) and a small HTTP listener on loopback: the alert
emails, the Slack-compatible chat messages and the signed fulfilment callbacks land there.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vinr_recon.demo.processes import Child, DemoFailure, Processes

INSTALL_REDIS = (
    "production needs a real Redis: `apt-get install redis-server` (Debian, Ubuntu), "
    "`brew install redis` (macOS) or `docker run -p 6379:6379 redis`, then set REDIS_URL"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- Redis ---------------------------------------------------------------------------------------


async def redis_answers(url: str, timeout: float = 1.0) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@dataclass
class RedisChoice:
    url: str
    description: str
    shared: bool  # someone else's Redis: remove our keys afterwards
    note: str | None = None
    stop: Callable[[], None] = lambda: None


async def choose_redis(url: str, procs: Processes, folder: Path) -> RedisChoice:
    if await redis_answers(url):
        return RedisChoice(url, f"Redis at REDIS_URL ({_hide_password(url)})", shared=True)
    if shutil.which("redis-server"):
        private, _ = await start_private_redis(procs, folder)
        port = private.rsplit(":", 1)[1].split("/")[0]
        return RedisChoice(private, f"a private redis-server on port {port} (none answered at REDIS_URL)",
                           shared=False)
    emulated = EmulatedRedis.start()
    return RedisChoice(emulated.url, "an in-process Redis emulation (fakeredis): no Redis found",
                       shared=False, note=INSTALL_REDIS, stop=emulated.stop)


async def start_private_redis(procs: Processes, folder: Path, *, port: int | None = None,
                              appendfsync: str | None = None, name: str = "redis") -> tuple[str, Child]:
    """A `redis-server` from PATH on loopback, its files in `folder`; returns (URL, child) once
    it answers. With `appendfsync` (always, everysec) it persists to an append-only file there,
    so a restart on the same port and folder keeps what it had acknowledged; else nothing."""
    server = shutil.which("redis-server")
    if server is None:
        raise DemoFailure("no redis-server on PATH: " + INSTALL_REDIS)
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync else ["--appendonly", "no"]
    child = procs.start(name, [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               *persistence, "--dir", str(folder)])
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not await redis_answers(url, 0.5):
        if child.popen.poll() is not None:
            raise DemoFailure(f"redis-server exited with status {child.popen.returncode}: {child.tail(5)}")
        if time.monotonic() > deadline:
            raise DemoFailure("the private redis-server did not answer within 10 s")
        await asyncio.sleep(0.05)
    return url, child


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url  # renders any URL with its password hidden

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the configured URL"


async def remove_keys(url: str, patterns: list[str]) -> int:
    """Delete the demo's keys from a shared Redis; returns how many."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    removed = 0
    try:
        for pattern in patterns:
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 500):
                removed += await client.delete(*keys[start:start + 500])
    finally:
        await client.aclose()
    return removed


class EmulatedRedis:
    """fakeredis over TCP on a free loopback port, in a thread of this process.

    fakeredis lacks INFO, which an arq worker calls once at start-up: a minimal one is added.
    """

    def __init__(self, server: Any, thread: threading.Thread):
        self._server, self._thread = server, thread
        self.url = f"redis://127.0.0.1:{server.server_address[1]}/0"

    @classmethod
    def start(cls) -> EmulatedRedis:
        try:
            from fakeredis import TcpFakeServer
        except ImportError:
            raise DemoFailure(
                "no Redis answers at REDIS_URL and no redis-server is on PATH; install the demo's extras "
                "(pip install 'vinr-recon[demo]') for an emulation, or " + INSTALL_REDIS
            ) from None
        _add_info_command()
        server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
        thread.start()
        return cls(server, thread)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _add_info_command() -> None:
    from fakeredis._commands import command
    from fakeredis._socket import FakeSocket

    if hasattr(FakeSocket, "info"):
        return

    @command((), (bytes,))
    def info(self: Any, *sections: bytes) -> bytes:
        return (b"# Server\r\nredis_version:7.0.0-fakeredis\r\n# Memory\r\nused_memory_human:0B\r\n"
                b"# Clients\r\nconnected_clients:1\r\n")

    FakeSocket.info = info


# --- the mailbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Email:
    sender: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    message_id: str = field(default="", compare=False)
    at: float = field(default_factory=time.monotonic, compare=False)  # when it arrived


@dataclass(frozen=True)
class Chat:
    text: str
    body: dict | None = field(default=None, compare=False)  # the whole JSON message (Slack blocks)
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class Callback:
    body: dict | None
    signature: str  # "verified", or why not
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass
class Mailbox:
    """Receives on loopback; `smtp_url`, `chat_url` and `fulfilment_url` are where to send."""

    fulfilment_secret: str
    emails: list[Email] = field(default_factory=list)
    chats: list[Chat] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    smtp_url: str = ""
    chat_url: str = ""
    fulfilment_url: str = ""
    host: str = "127.0.0.1"  # where it listens (chaos --hosts: the test network's gateway)

    def __post_init__(self) -> None:
        self._stack = ExitStack()

    def count(self) -> int:
        return len(self.emails) + len(self.chats) + len(self.callbacks)

    def start(self) -> None:
        self._start_smtp()
        self._start_http()

    def stop(self) -> None:
        self._stack.close()

    def _start_smtp(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            return  # no email shown; said in the report
        import logging

        logging.getLogger("mail.log").setLevel(logging.WARNING)
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.original_content or envelope.content,
                                                   policy=email.policy.default)
                part = message.get_body(("plain", "html")) if message.is_multipart() else message
                body = part.get_content() if part is not None else ""
                mailbox.emails.append(Email(envelope.mail_from, tuple(envelope.rcpt_tos),
                                            str(message.get("subject", "")), body.strip(),
                                            str(message.get("message-id", ""))))
                return "250 Message accepted for delivery"

        port = free_port(self.host)
        controller = Controller(Handler(), hostname=self.host, port=port)
        controller.start()
        self._stack.callback(controller.stop)
        self.smtp_url = f"smtp://{self.host}:{port}"

    def _start_http(self) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from vinr.sandbox.serving import serve_in_thread
        from vinr.signature import SignatureError, verify

        async def chat(request: Request) -> JSONResponse:
            body = await request.body()
            try:
                document = json.loads(body)
                text = document.get("text") or body.decode(errors="replace")
            except (ValueError, AttributeError):
                document, text = None, body.decode(errors="replace")
            self.chats.append(Chat(str(text), document if isinstance(document, dict) else None))
            return JSONResponse({"ok": True})

        async def fulfilment(request: Request) -> JSONResponse:
            body = await request.body()
            try:
                verify(body, request.headers.get("x-vinr-recon-signature"), [self.fulfilment_secret],
                       now=int(time.time()))
                verdict = "verified"
            except SignatureError as exc:
                verdict = f"NOT verified ({exc})"
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            self.callbacks.append(Callback(document if isinstance(document, dict) else None, verdict))
            return JSONResponse({"received": True})

        app = Starlette(routes=[Route("/chat", chat, methods=["POST"]),
                                Route("/fulfilment", fulfilment, methods=["POST"])])
        root = self._stack.enter_context(serve_in_thread(app, host=self.host))
        self.chat_url = root + "/chat"
        self.fulfilment_url = root + "/fulfilment"
