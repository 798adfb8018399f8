"""`vinr-recon demo`: the seed guide's story end to end on this machine, with a report."""

from __future__ import annotations

import argparse

DEFAULT_SEED = 2291  # the bad days of every run alike, unless --seed says otherwise


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole flow of the seed guide end to end on this machine, with a report",
        description="Start the VINR sandbox, the receiver and the worker as processes on loopback, with a "
        "SQLite ledger in a temporary folder and Redis at REDIS_URL (else a private redis-server); play the "
        "seed guide's story with VINR's bad days on; reconcile; print what the ledger shows beside VINR. "
        "Exit 0 only when the ledger matches VINR.",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the sandbox's bad days (default {DEFAULT_SEED})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, ledger) at the end")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings) -> int:
    from vinr_recon.demo.run import run as run_demo

    return run_demo(args, settings)
