from ledger.findings import AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_AT_VINR, MISSING_IN_LEDGER, STATUS_MISMATCH
from ledger.posting import Position, post
from reconcile.diff import compare
from vinr.events import Invoice


def invoice(**fields) -> Invoice:
    base = dict(id="inv_1", status="open", currency="EUR", total=1000, amount_paid=0, amount_due=1000)
    return Invoice(**{**base, **fields})


def booked(**fields) -> Position:
    return post(Position("inv_1"), invoice(**fields)).position


def test_agreement_finds_nothing():
    assert compare(booked(), invoice(), "inv_1") == []


def test_an_invoice_the_ledger_never_saw():
    [finding] = compare(None, invoice(), "inv_1")
    assert (finding.category, finding.ledger_value, finding.vinr_value) == (MISSING_IN_LEDGER, None, "open")


def test_a_draft_the_ledger_never_saw_is_not_missing():
    assert compare(None, invoice(status="draft", total=0, amount_due=0), "inv_1") == []


def test_stale_status_and_wrong_paid_amount_name_each_field_and_value():
    found = compare(booked(), invoice(status="paid", amount_paid=1000, amount_due=0), "inv_1")
    assert {(f.category, f.field, f.ledger_value, f.vinr_value) for f in found} == {
        (STATUS_MISMATCH, "status", "open", "paid"),
        (AMOUNT_MISMATCH, "amountPaid", "0", "1000"),
        (AMOUNT_MISMATCH, "amountDue", "1000", "0"),
    }


def test_currency_mismatch():
    found = compare(booked(), invoice(currency="USD"), "inv_1")
    assert [(f.category, f.ledger_value, f.vinr_value) for f in found] == [(CURRENCY_MISMATCH, "EUR", "USD")]


def test_missing_at_vinr():
    [finding] = compare(booked(), None, "inv_1")
    assert (finding.category, finding.ledger_value) == (MISSING_AT_VINR, "open")


def test_a_drafts_edits_are_not_drift():
    draft = post(Position("inv_1"), invoice(status="draft", total=0, amount_due=0)).position
    assert compare(draft, invoice(status="draft", total=500, amount_due=500), "inv_1") == []


def test_a_draft_the_ledger_saw_finalized_for_more_is_a_total_mismatch():
    draft = post(Position("inv_1"), invoice(status="draft", total=250, amount_due=250)).position
    found = compare(draft, invoice(status="open", total=649, amount_due=649), "inv_1")
    assert {(f.category, f.field, f.ledger_value, f.vinr_value) for f in found} == {
        (STATUS_MISMATCH, "status", "draft", "open"),
        (AMOUNT_MISMATCH, "total", "250", "649"),
        (AMOUNT_MISMATCH, "amountDue", "250", "649"),
    }
