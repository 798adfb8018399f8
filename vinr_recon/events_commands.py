"""`vinr-recon events resend EVENT_ID [--to URL]`: fetch an event from VINR's Events API and
deliver it to the receiver, signed with the endpoint secret as VINR signs (contract section 1).

The development loop's other half (beside `vinr-recon sandbox trigger`): replay what VINR sent,
for a receiver that was down, changed, or is being debugged. The pure parts (`delivery_body`,
`target_url`) are apart from the I/O; nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from vinr_recon.settings import ConfigurationError, Settings, require

if TYPE_CHECKING:
    import httpx

WEBHOOK_PATH = "/webhooks/vinr"
DEFAULT_TARGET = "http://127.0.0.1:8000" + WEBHOOK_PATH
# Fields the Events API adds to its own answer that are no part of a delivered event (the
# sandbox lists each event's delivery attempts beside it).
LISTING_ONLY = ("deliveryAttempts",)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = subparsers.add_parser("events", help="VINR's events: deliver one again to the receiver",
                                   description="Work with the events VINR's Events API keeps (30 days).")
    commands = events.add_subparsers(dest="events_command", metavar="COMMAND", required=True)
    resend = commands.add_parser(
        "resend", help="fetch an event from VINR and POST it, signed, to the receiver",
        description="Fetch EVENT_ID from VINR's Events API (GET /events/{id}), sign it with the endpoint secret "
                    "(the first of VINR_WEBHOOK_SECRET) and POST it to the receiver; print the delivery and the "
                    "answer. Exit 0 on a 2xx. Reads VINR_API_BASE, VINR_API_KEY, VINR_WEBHOOK_SECRET and "
                    "PUBLIC_URL.")
    resend.add_argument("event_id", metavar="EVENT_ID")
    resend.add_argument("--to", metavar="URL",
                        help=f"where to deliver (default: PUBLIC_URL + {WEBHOOK_PATH}, else {DEFAULT_TARGET})")
    resend.add_argument("--api-base", help="VINR's REST base URL (default: VINR_API_BASE)")
    resend.add_argument("--api-key", help="the key for X-Api-Key (default: VINR_API_KEY)")
    resend.set_defaults(run=run_resend)


def target_url(to: str | None, public_origin: str | None) -> str:
    """`--to`, else the receiver at `PUBLIC_URL`, else the local default."""
    if to:
        if not to.startswith(("http://", "https://")):
            raise ConfigurationError(f"--to must be an http(s) URL, such as {DEFAULT_TARGET}")
        return to
    return public_origin + WEBHOOK_PATH if public_origin else DEFAULT_TARGET


def delivery_body(event: dict[str, Any]) -> bytes:
    """The bytes VINR would deliver: the event as the Events API showed it, without what only the
    listing adds. Signed as they are sent, never re-serialized after."""
    kept = {key: value for key, value in event.items() if key not in LISTING_ONLY}
    return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()


def _refused_reason(response: httpx.Response) -> str | None:
    """What a refusing receiver said (`{"error": "..."}`), short; None for a 2xx."""
    if response.is_success:
        return None
    try:
        said = response.json().get("error")
    except (ValueError, AttributeError):
        said = response.text
    return str(said).strip()[:200] or None if said else None


def run_resend(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from vinr.sandbox.trigger import quiet_retries

    require(settings, "vinr_webhook_secret")
    quiet_retries()
    url = target_url(args.to, settings.public_origin)
    base = args.api_base or settings.vinr_api_base
    key = args.api_key or (settings.vinr_api_key.get_secret_value() if settings.vinr_api_key else "")
    if not key.strip():
        raise ConfigurationError("VINR_API_KEY must be set, or --api-key given (see .env.example)")
    return asyncio.run(_resend(args.event_id, url, base, key.strip(), settings))


async def _resend(event_id: str, url: str, base: str, key: str, settings: Settings) -> int:
    import time

    import httpx

    from vinr.client import NotFound, VinrClient, VinrError
    from vinr.delivery_log import answered, sent
    from vinr.sandbox.trigger import QUICK_RETRY, refusal
    from vinr.signature import sign

    async with VinrClient(base, key, retry=QUICK_RETRY, rate=settings.vinr_api_rate) as client:
        try:
            event = await client.get_event(event_id)
        except NotFound:
            print(f"vinr-recon events resend: VINR has no event {event_id} (404; it keeps events 30 days)",
                  file=sys.stderr)
            return 1
        except VinrError as exc:
            print(f"vinr-recon events resend: {refusal(exc, base)}", file=sys.stderr)
            return 1
    body = delivery_body(event)
    print(sent(event["id"], str(event.get("type")), url), flush=True)
    headers = {"content-type": "application/json", "user-agent": "vinr-recon-resend",
               "x-vinr-signature": sign(body, settings.webhook_secrets[0], int(time.time()))}
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:  # VINR's own deadline for an answer
            response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        print(answered(None, time.perf_counter() - started, error=type(exc).__name__), flush=True)
        return 1
    print(answered(response.status_code, time.perf_counter() - started, reason=_refused_reason(response)),
          flush=True)
    return 0 if response.is_success else 1
