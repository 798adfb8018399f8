"""`vinr-recon db upgrade`: bring the ledger's schema to the latest migration."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="the ledger's database")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply the schema migrations (safe to run again)")
    upgrade.set_defaults(run=run_upgrade)


def run_upgrade(args: argparse.Namespace, settings) -> int:
    from sqlalchemy.engine import make_url

    from ledger.migrate import upgrade

    upgrade(settings.database_url)
    print(f"ledger schema up to date: {make_url(settings.database_url).render_as_string(hide_password=True)}")
    return 0
