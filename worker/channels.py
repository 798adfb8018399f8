"""The channels a notice goes out on: email over SMTP, a Slack-compatible chat webhook, and the
merchant app's signed fulfilment callback.

Why not apprise, though it reaches a hundred services by URL: its Slack plugin posts only to
hooks.slack.com (and its Mattermost and Rocket.Chat plugins build their own paths), so it cannot
post a Slack-format body to an arbitrary Slack-compatible URL, as ALERT_WEBHOOK_URL may be (a
Mattermost or Rocket.Chat hook, a proxy, a test server on loopback); its generic `json://` posts
apprise's own schema, not Slack's. It is synchronous (requests), and it reports a failure as
False plus a log line, where the outbox needs the error to store, retry and show. So: email with
aiosmtplib (asyncio, maintained, implicit TLS and STARTTLS), the two HTTP channels with httpx,
which the service already uses.

A failure raises `DeliveryError` (worth another try) or `Undeliverable` (no try will help), each
with a message safe to log and store: never the SMTP password, the chat URL (its path is the
credential), the callback secret or a signature.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpx
from pydantic import SecretStr

from vinr.signature import sign
from worker.render import Alert

SIGNATURE_HEADER = "x-vinr-recon-signature"
TIMEOUT = 10.0


class DeliveryError(Exception):
    """The channel did not take the notice this time."""


class Undeliverable(Exception):
    """The notice cannot be delivered as things are configured (no recipient, no channel)."""


@dataclass(frozen=True)
class SmtpServer:
    """Where SMTP_URL points: `smtp://user:password@host:port`, `smtps://` for implicit TLS."""

    host: str
    port: int
    username: str | None
    password: SecretStr | None
    implicit_tls: bool

    @classmethod
    def parse(cls, url: SecretStr) -> SmtpServer:
        parts = urlsplit(url.get_secret_value())
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:password@host:port (or smtps://)")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            implicit_tls=implicit,
        )


def email_message(sender: str, recipient: str, alert: Alert, notice_key: str | None = None) -> EmailMessage:
    """The alert as an email. With the outbox notice's key, its `Message-ID` is derived from it:
    a redelivery after a crash between the send and its record carries the same id, by which
    mail systems and clients recognise the copy."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, alert.subject
    message["Date"] = format_datetime(datetime.now(UTC))  # RFC 5322 wants one; clients sort by it
    if notice_key:
        digest = hashlib.sha256(notice_key.encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@{sender.rpartition('@')[2] or 'vinr-recon'}>"
    message.set_content(alert.text())
    return message


async def send_email(server: SmtpServer, message: EmailMessage) -> None:
    """Send `message`. With credentials, only over TLS: `smtps://`, or STARTTLS, which the server
    must offer (else `DeliveryError`, before any AUTH). Without, STARTTLS whenever offered.
    Certificates are verified against the system's CAs (SSL_CERT_FILE for a private one)."""
    tls_required = server.username is not None and not server.implicit_tls
    try:
        await aiosmtplib.send(
            message, hostname=server.host, port=server.port, username=server.username,
            password=server.password.get_secret_value() if server.password else None,
            # True: STARTTLS or nothing, before the login; None: STARTTLS whenever offered.
            use_tls=server.implicit_tls, start_tls=True if tls_required else None, timeout=TIMEOUT,
        )
    except aiosmtplib.SMTPException as exc:
        if tls_required and "STARTTLS extension not supported" in str(exc):
            raise DeliveryError(f"SMTP server {server.host}:{server.port} offers no STARTTLS: SMTP_URL's "
                                "credentials are never sent in clear text (use smtps:// or a server with "
                                "STARTTLS)") from None
        raise DeliveryError(f"SMTP server {server.host}:{server.port}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"SMTP server {server.host}:{server.port}: {type(exc).__name__}: {exc}") from None


async def post_chat(http: httpx.AsyncClient, url: SecretStr, body: dict[str, Any]) -> None:
    try:
        response = await http.post(url.get_secret_value(), json=body, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        # httpx's messages can carry the URL; its class says enough.
        raise DeliveryError(f"chat webhook: {type(exc).__name__}") from None
    if not response.is_success:
        raise DeliveryError(f"chat webhook answered {response.status_code}")


def signed_callback(payload: dict[str, Any], secret: SecretStr, now: int) -> tuple[bytes, dict[str, str]]:
    """The callback's exact bytes and headers: signed as VINR signs its webhooks (contract
    section 1), with the idempotency key the app dedupes on in a header as well as the body."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return body, {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(body, secret.get_secret_value(), now),
        "idempotency-key": payload["idempotencyKey"],
        "user-agent": "vinr-recon",
    }


async def post_callback(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        response = await http.post(url, content=body, headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"fulfilment callback: {type(exc).__name__}") from None
    if not response.is_success:
        raise DeliveryError(f"fulfilment callback answered {response.status_code}")
