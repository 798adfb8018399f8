"""`vinr-recon sandbox`: the VINR sandbox on its own, with webhook delivery and bad days.

Imports nothing heavy; uvicorn and the app are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from vinr_recon.settings import Settings


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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sandbox",
        help="run the VINR sandbox (REST API and webhook delivery)",
        description="Emulate VINR: the REST API under /v1, signed webhook delivery with retries, "
        "and bad days on purpose. Prints the API base URL and the test key, then serves.",
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
    p.set_defaults(run=run)


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
