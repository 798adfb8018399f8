"""The posting rule alone (ledger/posting.py): each lifecycle path of contract section 3."""

from __future__ import annotations

import pytest

from ledger.posting import AR, BAD_DEBT, CLEARING, CREDIT, REVENUE, CannotApply, Outcome, Position, post
from lifecycles import snapshot
from vinr.events import Invoice


def inv(status: str, total: int, paid: int = 0, **kw) -> Invoice:
    return Invoice.model_validate(snapshot("inv_1", status, total, paid, **kw))


def run(*invoices: Invoice, position: Position | None = None, authoritative: bool = False) -> list[Outcome]:
    """Post each snapshot in turn; every entry of every step must balance."""
    position = position or Position("inv_1")
    outcomes = []
    for invoice in invoices:
        outcome = post(position, invoice, authoritative=authoritative)
        assert all(entry.balanced for entry in outcome.entries)
        outcomes.append(outcome)
        position = outcome.position
    return outcomes


def moves(outcome: Outcome) -> list[tuple]:
    """Each entry as (kind, currency, debit account, credit account, amount)."""
    result = []
    for entry in outcome.entries:
        (debit,) = [line for line in entry.lines if line.direction == "debit"]
        (credit,) = [line for line in entry.lines if line.direction == "credit"]
        assert debit.amount == credit.amount
        result.append((entry.kind, entry.currency, debit.account, credit.account, debit.amount))
    return result


def test_finalize_recognizes_revenue_against_receivable():
    (outcome,) = run(inv("open", 196000))
    assert moves(outcome) == [("finalize", "EUR", AR, REVENUE, 196000)]
    position = outcome.position
    assert (position.status, position.total, position.amount_paid, position.amount_due) == ("open", 196000, 0, 196000)
    assert position.version == 1 and not outcome.stale and not outcome.became_paid


def test_a_draft_has_no_accounting_effect():
    (outcome,) = run(inv("draft", 5000))
    assert outcome.entries == () and outcome.position.status == "draft"


def test_partial_then_full_payment_clears_the_receivable():
    _, partial, full = run(inv("open", 1000), inv("open", 1000, 300), inv("paid", 1000, 1000))
    assert moves(partial) == [("payment", "EUR", CLEARING, AR, 300)]
    assert moves(full) == [("payment", "EUR", CLEARING, AR, 700)]
    assert full.became_paid and not partial.became_paid
    assert (full.position.status, full.position.amount_due) == ("paid", 0)


def test_void_before_any_payment_reverses_the_whole_receivable():
    _, void = run(inv("open", 1000), inv("void", 1000))
    assert moves(void) == [("void", "EUR", REVENUE, AR, 1000)]
    assert (void.position.status, void.position.amount_due) == ("void", 0)


def test_void_after_a_partial_payment_reverses_all_revenue_and_owes_what_was_collected_as_credit():
    _, _, void = run(inv("open", 1000), inv("open", 1000, 300), inv("void", 1000, 300))
    # "void ... reverses any accounting": the 300 collected is owed back to the customer.
    assert moves(void) == [("credit", "EUR", REVENUE, CREDIT, 300), ("void", "EUR", REVENUE, AR, 700)]
    assert void.position.facts.recognized == 0 and void.position.facts.credited == 300


def test_credit_applied_at_finalize_settles_that_much_of_the_receivable():
    (open_,) = run(inv("open", 10_000, applied=3_000))
    assert moves(open_) == [("finalize", "EUR", AR, REVENUE, 10_000),
                            ("credit_applied", "EUR", CREDIT, AR, 3_000)]
    assert (open_.position.amount_due, open_.position.applied_balance) == (7_000, 3_000)
    (paid,) = run(inv("paid", 10_000, 7_000, applied=3_000), position=open_.position)
    assert moves(paid) == [("payment", "EUR", CLEARING, AR, 7_000)] and paid.became_paid


def test_an_invoice_covered_wholly_by_credit_is_paid_at_finalize_with_no_cash():
    (paid,) = run(inv("paid", 2_500, 0, applied=2_500))
    assert moves(paid) == [("finalize", "EUR", AR, REVENUE, 2_500), ("credit_applied", "EUR", CREDIT, AR, 2_500)]
    assert paid.became_paid and paid.position.facts.receivable == 0 and paid.position.facts.collected == 0


def test_a_void_gives_back_the_credit_the_invoice_had_used_and_what_it_collected():
    _, void = run(inv("open", 10_000, 1_000, applied=3_000), inv("void", 10_000, 1_000, applied=3_000))
    assert moves(void) == [("credit", "EUR", REVENUE, CREDIT, 4_000), ("void", "EUR", REVENUE, AR, 6_000)]
    facts = void.position.facts
    assert (facts.recognized, facts.receivable, facts.credited - facts.applied) == (0, 0, 1_000)


def test_uncollectible_writes_off_the_remainder_and_a_late_payment_recovers_it():
    _, _, written_off, paid_late = run(
        inv("open", 1000), inv("open", 1000, 200), inv("uncollectible", 1000, 200), inv("paid", 1000, 1000)
    )
    assert moves(written_off) == [("write_off", "EUR", BAD_DEBT, AR, 800)]
    assert written_off.position.amount_due == 800
    assert moves(paid_late) == [("recovery", "EUR", AR, BAD_DEBT, 800), ("payment", "EUR", CLEARING, AR, 800)]
    assert paid_late.became_paid and paid_late.position.facts.written_off == 0


def test_a_partial_payment_while_uncollectible_recovers_that_part():
    *_, partly = run(inv("open", 1000), inv("uncollectible", 1000), inv("uncollectible", 1000, 400))
    assert moves(partly) == [("recovery", "EUR", AR, BAD_DEBT, 400), ("payment", "EUR", CLEARING, AR, 400)]
    assert partly.position.facts.written_off == 600


def test_a_negative_total_is_credited_to_the_customer():
    (outcome,) = run(inv("paid", -5000))
    assert moves(outcome) == [("credit", "EUR", REVENUE, CREDIT, 5000)]
    assert outcome.position.facts.receivable == 0 and outcome.position.amount_due == 0


def test_a_zero_total_posts_nothing_but_is_paid():
    (outcome,) = run(inv("paid", 0))
    assert outcome.entries == () and outcome.position.status == "paid" and outcome.became_paid


def test_a_failed_payment_posts_nothing_and_records_the_attempt_then_success_pays():
    _, failed, paid = run(inv("open", 1000), inv("open", 1000, attempts=1), inv("paid", 1000, 1000, attempts=1))
    assert failed.entries == () and not failed.stale
    assert failed.position.attempt_count == 1 and failed.position.version == 2
    assert moves(paid) == [("payment", "EUR", CLEARING, AR, 1000)]
    assert paid.position.attempt_count == 1


def test_the_same_snapshot_again_moves_nothing():
    first, again = run(inv("open", 1000), inv("open", 1000))
    assert again.entries == () and not again.stale and again.position == first.position


@pytest.mark.parametrize(
    "history, older",
    [
        ([inv("open", 1000), inv("paid", 1000, 1000)], inv("open", 1000)),
        ([inv("open", 1000), inv("open", 1000, 300)], inv("open", 1000, 0)),
        ([inv("open", 1000), inv("void", 1000)], inv("paid", 1000, 1000)),
        ([inv("open", 1000), inv("uncollectible", 1000)], inv("open", 1000)),
        ([inv("open", 1000), inv("open", 1000)], inv("draft", 1000)),
    ],
    ids=["open-after-paid", "smaller-amount-paid", "paid-after-void", "open-after-uncollectible", "draft-after-open"],
)
def test_a_stale_snapshot_posts_nothing_and_keeps_the_position(history, older):
    *_, last = run(*history)
    stale = post(last.position, older)
    assert stale.stale and stale.entries == () and stale.position == last.position


def test_authoritative_mode_moves_backwards():
    *_, paid = run(inv("open", 1000), inv("paid", 1000, 1000))
    (back,) = run(inv("open", 1000, 300), position=paid.position, authoritative=True)
    assert moves(back) == [("payment_reversal", "EUR", AR, CLEARING, 700)]
    assert (back.position.status, back.position.amount_due) == ("open", 700)


def test_authoritative_mode_reverses_a_changed_currency_and_books_it_again():
    *_, open_eur = run(inv("open", 1000), inv("open", 1000, 300))
    (usd,) = run(inv("open", 1200, 300, currency="USD"), position=open_eur.position, authoritative=True)
    assert sorted(moves(usd)) == sorted([
        ("void", "EUR", REVENUE, AR, 1000),
        ("payment_reversal", "EUR", AR, CLEARING, 300),
        ("finalize", "USD", AR, REVENUE, 1200),
        ("payment", "USD", CLEARING, AR, 300),
    ])
    assert (usd.position.currency, usd.position.amount_due) == ("USD", 900)


def test_a_changed_currency_cannot_apply_from_a_webhook():
    (first,) = run(inv("open", 1000))
    with pytest.raises(CannotApply, match="EUR to USD"):
        post(first.position, inv("paid", 1000, 1000, currency="USD"))


def test_a_changed_currency_before_anything_was_booked_is_fine():
    (draft,) = run(inv("draft", 1000))
    (usd,) = run(inv("open", 1000, currency="USD"), position=draft.position)
    assert moves(usd) == [("finalize", "USD", AR, REVENUE, 1000)]


def test_a_snapshot_of_another_invoice_is_refused():
    with pytest.raises(ValueError):
        post(Position("inv_2"), inv("open", 1000))
