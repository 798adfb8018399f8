"""`vinr-recon sandbox`: the VINR sandbox on its own, with webhook delivery and bad days.

Imports nothing heavy; uvicorn and the app are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vinr_recon.settings import Settings

if TYPE_CHECKING:
    from vinr.sandbox.delivery import Report


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a rate is between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sandbox",
        help="run the VINR sandbox (REST API and webhook delivery)",
        description="Emulate VINR: the REST API under /v1, signed webhook delivery with retries, "
        "and bad days on purpose. Prints the API base URL and the test key, then serves, printing each "
        "delivery attempt and its answer (-->/<--) on stdout. `vinr-recon sandbox trigger EVENT_TYPE` makes an "
        "event happen.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8111, help="0 picks a free port (default: 8111)")
    p.add_argument("--api-key", help="the test key to accept (default: VINR_API_KEY, else a generated one)")
    p.add_argument("--webhook-url", action="append", default=[], help="deliver every event here (repeatable)")
    p.add_argument(
        "--webhook-secret",
        action="append",
        default=[],
        help="sign with this secret; repeat to sign with several (default: VINR_WEBHOOK_SECRET, else generated)",
    )
    p.add_argument("--seed", type=int, help="seed of every random choice, to repeat a run")
    p.add_argument("--duplicate-rate", type=_rate, default=0.0, help="share of deliveries sent more than once")
    p.add_argument("--duplicate-count", type=int, default=1, help="extra copies of a duplicated delivery")
    p.add_argument("--reorder-delay", type=_non_negative, default=0.0, help="random delay up to this many seconds")
    p.add_argument("--drop-rate", type=_rate, default=0.0, help="share of webhooks never delivered")
    p.add_argument("--old-shape-rate", type=_rate, default=0.0, help="share sent with data = the invoice")
    p.add_argument("--snake-case-rate", type=_rate, default=0.0, help="share sent with snake_case keys")
    p.add_argument("--error-rate", type=_rate, default=0.0, help="share of API requests failed with 500 or 429")
    p.add_argument("--rate-limit", type=_non_negative, default=25.0, help="requests/s per key, 0 = off")
    p.add_argument("--time-scale", type=_non_negative, default=1.0, help="multiplies the retry schedule")
    p.add_argument("--list-latency", type=_non_negative, default=0.0,
                   help="seconds an invoice list page takes to arrive after it was read")
    p.add_argument("--preload", type=int, default=0, metavar="N", help="create N invoices in every state first")
    p.add_argument("--quiet", action="store_true", help="no delivery log (the -->/<-- lines on stdout)")
    p.set_defaults(run=run)
    _register_trigger(p.add_subparsers(dest="sandbox_command", metavar="COMMAND"))


def _register_trigger(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from vinr.sandbox.scenarios import NAMES

    t = subparsers.add_parser(
        "trigger",
        help="make VINR emit an event (the sandbox, or a test-mode account)",
        description="Walk a new invoice through VINR's REST API (customer, invoice, line, finalize, send, pay "
        "with the test card...) so that VINR emits EVENT_TYPE and delivers it to its webhook endpoints; print "
        "each step and the events produced. Reads VINR_API_BASE and VINR_API_KEY.",
    )
    t.add_argument("event_type", metavar="EVENT_TYPE", choices=NAMES, help=f"one of: {', '.join(NAMES)}")
    t.add_argument("--api-base", help="VINR's REST base URL (default: VINR_API_BASE)")
    t.add_argument("--api-key", help="the key for X-Api-Key (default: VINR_API_KEY)")
    t.add_argument("--amount", type=int, default=12000, help="the invoice's line in minor units (default 12000)")
    t.add_argument("--currency", default="EUR", help="ISO 4217 code (default EUR)")
    t.set_defaults(run=run_trigger)


def run_trigger(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from vinr.client import VinrClient, VinrError
    from vinr.sandbox.trigger import QUICK_RETRY, lines, quiet_retries, refusal, trigger
    from vinr_recon.settings import ConfigurationError

    base = args.api_base or settings.vinr_api_base
    key = args.api_key or (settings.vinr_api_key.get_secret_value() if settings.vinr_api_key else "")
    if not key.strip():
        raise ConfigurationError("VINR_API_KEY must be set, or --api-key given (vinr-recon sandbox prints its key)")

    quiet_retries()

    async def go() -> int:
        async with VinrClient(base, key.strip(), retry=QUICK_RETRY, rate=settings.vinr_api_rate) as client:
            try:
                outcome = await trigger(client, args.event_type, amount=args.amount, currency=args.currency)
            except VinrError as exc:
                print(f"vinr-recon sandbox trigger: {refusal(exc, base)}", file=sys.stderr)
                return 1
        print("\n".join(lines(args.event_type, outcome)), flush=True)
        return 0

    return asyncio.run(go())


def run(args: argparse.Namespace, settings: Settings) -> int:
    from secrets import token_hex

    from vinr.sandbox.app import create_app
    from vinr.sandbox.config import EndpointConfig, SandboxConfig
    from vinr.sandbox.delivery import new_secret
    from vinr.sandbox.serving import bind, root_url, server_for

    key = args.api_key or (
        settings.vinr_api_key.get_secret_value() if settings.vinr_api_key else "vinr_test_" + token_hex(16)
    )
    secrets = tuple(args.webhook_secret) or tuple(settings.webhook_secrets)
    generated_secret = None
    if args.webhook_url and not secrets:
        generated_secret = new_secret()
        secrets = (generated_secret,)
    config = SandboxConfig(
        api_keys=(key,),
        endpoints=tuple(EndpointConfig(url, secrets) for url in args.webhook_url),
        seed=args.seed,
        duplicate_rate=args.duplicate_rate,
        duplicate_count=args.duplicate_count,
        reorder_delay=args.reorder_delay,
        drop_rate=args.drop_rate,
        old_shape_rate=args.old_shape_rate,
        snake_case_rate=args.snake_case_rate,
        error_rate=args.error_rate,
        rate_limit=args.rate_limit,
        time_scale=args.time_scale,
        list_latency=args.list_latency,
    )
    app = create_app(config)
    sandbox = app.state.sandbox
    if not args.quiet:
        sandbox.deliverer.on_attempt = _print_attempt
    if args.preload:
        sandbox.seed(args.preload)
    sock = bind(args.host, args.port)
    # Printed once, here, because the user needs them; never logged.
    print(f"VINR sandbox API: {root_url(sock)}/v1")
    print(f"test key (X-Api-Key): {key}")
    for url in args.webhook_url:
        print(f"webhooks to: {url}")
    if generated_secret:
        print(f"webhook secret (set VINR_WEBHOOK_SECRET to it): {generated_secret}")
    print(f"seed: {sandbox.seed_used}", flush=True)
    sys.stdout.flush()
    server_for(app).run(sockets=[sock])
    return 0


def _print_attempt(report: Report) -> None:
    """The delivery log: each attempt and its answer, on stdout."""
    from vinr.delivery_log import answered, sent
    from vinr.sandbox.delivery import RETRY_DELAYS

    attempts = None if report.retry_in is not None else report.attempt
    print(sent(report.event_id, report.event_type, report.url, report.attempt, report.copy), "\n",
          answered(report.status, report.seconds, error=report.error, retry_in=report.retry_in,
                   attempts=attempts if report.attempt > len(RETRY_DELAYS) else None),
          sep="", flush=True)
