"""Real peers for the notice tests: an SMTP server (aiosmtpd) and an HTTP server (Starlette under
uvicorn), both on loopback, recording what they receive.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import functools
import ssl
import subprocess
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from port_support import free_port
from vinr.sandbox.serving import serve

SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-pa55-" + "w" * 16


@functools.cache
def smtp_certificate() -> str:
    """A self-signed certificate for 127.0.0.1 (openssl), made once per test process: the path of a
    PEM holding it and its key. A client trusts it through SSL_CERT_FILE, as any OpenSSL client."""
    folder = tempfile.mkdtemp(prefix="vinr-smtp-tls-")
    pem = f"{folder}/smtp.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", pem, "-out", pem],
                   check=True, capture_output=True, timeout=60)
    return pem


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage

    @property
    def text(self) -> str:
        return self.message.get_content()


class SmtpSink:
    """An SMTP server on 127.0.0.1:`port` that offers AUTH (checking the credentials; `logins`
    shows who tried to log in) and keeps every message. With `starttls` (the default) it offers
    STARTTLS with `smtp_certificate()` and AUTH only after it; without, AUTH in clear text.

    Not listening until `start()`: a test can have the server down first, then up.
    """

    def __init__(self, port: int | None = None, starttls: bool = True) -> None:
        self.port = port or free_port()
        self.starttls = starttls
        self.mails: list[Mail] = []
        self.logins: list[bytes] = []
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{self.port}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(), SMTP_PASSWORD.encode())
        self.logins.append(auth_data.login if isinstance(auth_data, LoginPassword) else b"?")
        return AuthResult(success=ok)

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def start(self) -> None:
        tls = None
        if self.starttls:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(smtp_certificate())
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, authenticator=self._authenticate,
                                      tls_context=tls, auth_require_tls=self.starttls)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpSink:
    """What the loopback HTTP server received, by path. `failures[path]` answers 503 that many
    times first."""

    root: str = ""
    requests: list[Received] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@asynccontextmanager
async def http_sink():
    sink = HttpSink()

    async def record(request: Request):
        path = request.url.path
        if sink.failures.get(path, 0) > 0:
            sink.failures[path] -= 1
            return JSONResponse({"error": "down for a moment"}, status_code=503)
        sink.requests.append(Received(path, dict(request.headers), await request.body()))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    async with serve(app) as root:
        sink.root = root
        yield sink


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll `predicate` (sync or async) until it is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {predicate}")
        await asyncio.sleep(interval)


# --- Fixtures of the tests that deliver notices (import them into the test module) ---------------


@pytest.fixture(autouse=True)
def trust_the_test_smtp_server(monkeypatch):
    """The SMTP sinks offer STARTTLS with a self-signed certificate: trusted the way an operator
    trusts a private CA, through OpenSSL's SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", smtp_certificate())


@pytest.fixture
def smtp(monkeypatch):
    """A started SMTP sink, its certificate trusted (also where the autouse fixture is not imported)."""
    monkeypatch.setenv("SSL_CERT_FILE", smtp_certificate())
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()
