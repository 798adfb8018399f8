"""`vinr-recon db upgrade`: bring the ledger's schema to the latest migration.
`vinr-recon db check`: rebuild every invoice's position from its postings, the trial balance and
contract section 6's promises per currency; exit 0 when the books are sound."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="the ledger's database")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply the schema migrations (safe to run again)")
    upgrade.set_defaults(run=run_upgrade)
    check = actions.add_parser("check", help="rebuild every position from its postings; exit 0 when all agree "
                                             "and every currency's trial balance is zero")
    check.set_defaults(run=run_check)


def run_upgrade(args: argparse.Namespace, settings) -> int:
    from sqlalchemy.engine import make_url

    from ledger.migrate import upgrade

    upgrade(settings.database_url)
    print(f"ledger schema up to date: {make_url(settings.database_url).render_as_string(hide_password=True)}")
    return 0


def run_check(args: argparse.Namespace, settings) -> int:
    import asyncio
    from collections import Counter

    from ledger.audit import disagreements, outdated, postings_without_position, promises
    from ledger.book import trial_balance
    from ledger.db import create_engine

    async def check() -> int:
        engine = create_engine(settings.database_url, writer=False)
        try:
            async with engine.connect() as conn:
                found = await disagreements(conn)
                orphans = await postings_without_position(conn)
                old_rule = await outdated(conn, limit=1000)
                kept = await promises(conn)
                per_currency: Counter = Counter()
                for (_, currency), (debits, credits) in (await trial_balance(conn)).items():
                    per_currency[currency] += debits - credits
        finally:
            await engine.dispose()
        for d in found:
            print(f"{d.invoice_id} ({d.status}): {d.field} is {d.stored} in its position, {d.posted} in its postings")
        if orphans:
            print(f"{orphans} journal entries name an invoice that has no position")
        for invoice_id in old_rule:
            print(f"{invoice_id}: posted under an earlier posting rule; the next reconciliation corrects it")
        for currency, balance in sorted(per_currency.items()):
            print(f"trial balance {currency}: {balance}" + ("" if balance == 0 else "  <- does not balance"))
        for p in kept:  # contract section 6, per currency
            print(f"{p.currency} {p.account}: {p.posted} posted, {p.promised} promised"
                  + ("" if p.kept else "  <- differs"))
        sound = (not found and not orphans and not old_rule and not any(per_currency.values())
                 and all(p.kept for p in kept))
        print("every position agrees with its postings" if sound else "the books are NOT sound")
        return 0 if sound else 1

    return asyncio.run(check())
