"""`vinr-recon serve [--host H] [--port P]`: the receiver and `/api` under uvicorn."""

from __future__ import annotations

import argparse
import gc

import structlog

from vinr_recon.settings import Settings, check_receiver

log = structlog.get_logger("receiver.serve")

# uvicorn stops accepting on SIGTERM and lets in-flight requests finish, for at most this long;
# a webhook request is bounded by its 1.5 s enqueue deadline, well below.
GRACEFUL_SHUTDOWN_SECONDS = 10


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the webhook receiver and /api (uvicorn)")
    # No argparse default: unset, the settings' HOST and PORT apply (validated there).
    parser.add_argument("--host", help="interface to bind (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: PORT, else 8000)")
    parser.set_defaults(run=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; refuses to start without VINR_WEBHOOK_SECRET, or with a short
    token (`vinr_recon.settings.check_receiver`)."""
    check_receiver(settings)
    import uvicorn  # only this command needs it

    from receiver.app import create_app
    from receiver.server import protocol_for

    host = args.host if args.host is not None else settings.host
    port = args.port if args.port is not None else settings.port
    app = create_app(settings)
    # What is loaded by now lives as long as the process: spare the collector walking it over and
    # over (under load that walk cost about a third of a delivery's CPU time). And collect the
    # young generation less often: a delivery allocates a few hundred short-lived objects.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    log.info("receiver starting", host=host, port=port, queue=settings.queue_name)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,  # our structlog configuration (vinr_recon.logging) applies
        access_log=False,  # a line per request costs as much as the delivery; /metrics counts them
        # httptools with a head cap, deadlines and a connection bound (receiver.server says why
        # not h11 or another server). uvicorn's "auto" would fall back silently to asyncio, far
        # slower: name uvloop, so a missing one fails loudly.
        http=protocol_for(settings),
        loop="uvloop",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0
