"""`vinr-recon db upgrade`: bring the ledger's schema to the latest migration.
`vinr-recon db check`: rebuild every invoice's position from its postings, the trial balance and
contract section 6's promises per currency; exit 0 when the books are sound."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledger.audit import Promise
    from vinr_recon.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="the ledger's database")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply the schema migrations (safe to run again)")
    upgrade.set_defaults(run=run_upgrade)
    check = actions.add_parser("check", help="rebuild every position from its postings; exit 0 when all agree "
                                             "and every currency's trial balance is zero")
    check.set_defaults(run=run_check)


def run_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.engine import make_url

    from ledger.migrate import upgrade

    upgrade(settings.database_url)
    print(f"ledger schema up to date: {make_url(settings.database_url).render_as_string(hide_password=True)}")
    return 0


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

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
                balances = await trial_balance(conn)
        finally:
            await engine.dispose()
        for d in found:
            print(f"{d.invoice_id} ({d.status}): {d.field} is {d.stored} in its position, {d.posted} in its postings")
        if orphans:
            print(f"{orphans} journal entries name an invoice that has no position")
        for invoice_id in old_rule:
            print(f"{invoice_id}: posted under an earlier posting rule; the next reconciliation corrects it")
        lines, unbalanced = balance_table(balances, kept, settings.money_locale)
        print("\n".join(lines))
        sound = not found and not orphans and not old_rule and not unbalanced and all(p.kept for p in kept)
        print("every position agrees with its postings" if sound else "the books are NOT sound")
        return 0 if sound else 1

    return asyncio.run(check())


def balance_table(balances: dict[tuple[str, str], tuple[int, int]], kept: list[Promise], locale: str | None = None
                  ) -> tuple[list[str], list[str]]:
    """`db check`'s table: per currency, each account's debits, credits and balance (Dr or Cr, as
    an accountant reads it) beside contract section 6's figure, then the currency's totals; and the
    currencies whose trial balance is not zero. Pure: `balances` is `ledger.book.trial_balance`'s,
    `kept` `ledger.audit.promises`'."""
    from ledger.accounts import ACCOUNTS, CREDIT_NORMAL, account_name
    from ledger.money import format_balance, format_money

    promised = {(p.currency, p.account): p for p in kept}
    currencies = sorted({currency for _, currency in balances} | {p.currency for p in kept})
    order = {account: i for i, account in enumerate(ACCOUNTS)}
    header = ("Currency", "Account", "Debits", "Credits", "Balance", "Expected (contract section 6)")
    rows: list[tuple[str, ...]] = []
    unbalanced: list[str] = []
    verdicts: list[str] = []
    for currency in currencies:
        named = {a for a, c in balances if c == currency} | {p.account for p in kept if p.currency == currency}
        accounts = sorted(named, key=lambda a: (order.get(a, len(order)), a))
        total_debits = total_credits = 0
        for account in accounts:
            debits, credits = balances.get((account, currency), (0, 0))
            total_debits, total_credits = total_debits + debits, total_credits + credits
            promise = promised.get((currency, account))
            expected = ""
            if promise is not None:
                # A promise is on the account's normal side; shown the way the balance is.
                net = -promise.promised if account in CREDIT_NORMAL else promise.promised
                expected = format_balance(max(net, 0), max(-net, 0), currency, locale)
                expected += "" if promise.kept else "  <- differs"
            rows.append((currency, account_name(account), format_money(debits, currency, locale),
                         format_money(credits, currency, locale), format_balance(debits, credits, currency, locale),
                         expected))
        difference = total_debits - total_credits
        rows.append((currency, "Total (trial balance)", format_money(total_debits, currency, locale),
                     format_money(total_credits, currency, locale),
                     format_balance(total_debits, total_credits, currency, locale), ""))
        verdicts.append(f"trial balance {currency}: {difference}"
                        + ("" if difference == 0 else "  <- does not balance"))
        if difference:
            unbalanced.append(currency)
    if not rows:
        return ["no postings yet"], []
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    numeric = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows), "", *verdicts], unbalanced
