"""ledger.audit on SQLite and PostgreSQL: every position rebuilt from its postings agrees with the
stored one after each lifecycle path, and a position that drifted from its journal is named."""

from __future__ import annotations

from sqlalchemy import update

from ledger.audit import Disagreement, disagreements, postings_without_position
from ledger.tables import InvoicePosition
from lifecycles import snapshot
from test_book import apply

positions = InvoicePosition.__table__


async def every_path(engine) -> None:
    """One invoice per lifecycle path of contract section 3."""
    steps = {
        "inv_paid": [("open", 196000, 0), ("paid", 196000, 196000)],
        "inv_partial": [("open", 50000, 0), ("open", 50000, 20000)],
        "inv_void_after_part": [("open", 30000, 0), ("open", 30000, 10000), ("void", 30000, 10000)],
        "inv_bad_then_paid": [("open", 8000, 0), ("uncollectible", 8000, 0), ("paid", 8000, 8000)],
        "inv_bad": [("open", 9000, 0), ("open", 9000, 4000), ("uncollectible", 9000, 4000)],
        "inv_credit": [("paid", -2500, 0)],
        "inv_draft": [("draft", 7000, 0)],
    }
    for invoice_id, path in steps.items():
        for n, (status, total, paid) in enumerate(path):
            await apply(engine, f"evt_{invoice_id}_{n}", "invoice.updated", snapshot(invoice_id, status, total, paid),
                        created=1_763_800_000 + n)


async def test_every_lifecycle_path_rebuilds_to_its_stored_position(ledger_engine):
    await every_path(ledger_engine)
    async with ledger_engine.connect() as conn:
        assert await disagreements(conn) == []
        assert await postings_without_position(conn) == 0


async def test_a_position_that_drifted_from_its_postings_is_named_with_both_figures(ledger_engine):
    await every_path(ledger_engine)
    async with ledger_engine.begin() as conn:
        await conn.execute(update(positions).where(positions.c.invoice_id == "inv_partial")
                           .values(amount_paid=positions.c.amount_paid + 1, amount_due=positions.c.amount_due - 1))
    async with ledger_engine.connect() as conn:
        found = await disagreements(conn)
    assert found == [Disagreement("inv_partial", "open", "amount_paid", 20001, 20000),
                     Disagreement("inv_partial", "open", "receivable", 29999, 30000)]
