import json

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from vinr.events import InvalidEvent, parse_event

INVOICE = {
    "id": "inv_1",
    "object": "invoice",
    "customer": "cust_1",
    "status": "open",
    "currency": "EUR",
    "subtotal": 196000,
    "total": 196000,
    "amountPaid": 50000,
    "amountDue": 146000,
    "number": "INV-2026-000142",
    "metadata": {"projectId": "proj_2291", "accountManager": "am@example.com"},
    "lines": {"data": [{"id": "li_1", "description": "Support", "quantity": 8, "unitAmount": 9500, "amount": 76000}]},
    "lastPaymentError": {"code": "card_declined", "declineCode": "generic_decline", "message": "Declined"},
}


def event(data, type_="invoice.updated", **extra):
    return json.dumps({"id": "evt_1", "object": "event", "type": type_, "created": 1763800000, "data": data, **extra})


def test_newer_shape_data_object():
    inv = parse_event(event({"object": INVOICE})).invoice()
    assert (inv.id, inv.status, inv.total, inv.amount_paid, inv.amount_due) == ("inv_1", "open", 196000, 50000, 146000)
    assert inv.metadata["projectId"] == "proj_2291"
    assert inv.lines.data[0].unit_amount == 9500
    assert inv.last_payment_error.decline_code == "generic_decline"


def test_older_shape_data_is_the_invoice_and_its_object_is_a_string():
    ev = parse_event(event(INVOICE))
    assert ev.data_object["object"] == "invoice"
    assert ev.invoice().amount_due == 146000


def test_snake_case_and_amount_remaining_are_accepted():
    snake = {
        "id": "inv_2", "object": "invoice", "status": "open", "total": 1000,
        "amount_paid": 400, "amount_remaining": 600, "hosted_invoice_url": "https://pay/x", "attempt_count": 2,
    }
    inv = parse_event(event(snake)).invoice()
    assert (inv.amount_paid, inv.amount_due, inv.hosted_invoice_url, inv.attempt_count) == (400, 600, "https://pay/x", 2)
    camel = dict(snake, amountRemaining=600)
    del camel["amount_remaining"]
    assert parse_event(event(camel)).invoice().amount_due == 600


def test_unknown_fields_are_kept():
    ev = parse_event(event({"object": dict(INVOICE, taxRate="19")}, futureField=1))
    assert ev.invoice().model_extra["taxRate"] == "19"
    assert ev.model_extra["futureField"] == 1


def test_unknown_event_types_parse_as_generic_events():
    ev = parse_event(event({"object": {"id": "cust_1", "object": "customer"}}, type_="customer.updated"))
    assert not ev.is_invoice_event and ev.data_object["id"] == "cust_1"


@pytest.mark.parametrize("bad", [1960.0, "196000", True])
def test_amounts_must_be_integers_and_the_error_names_the_field(bad):
    with pytest.raises(InvalidEvent, match="total"):
        parse_event(event({"object": dict(INVOICE, total=bad)})).invoice()


def test_status_must_be_one_of_the_five():
    with pytest.raises(InvalidEvent, match="status"):
        parse_event(event({"object": dict(INVOICE, status="refunded")})).invoice()


def test_currency_is_iso_4217_upper_case():
    assert parse_event(event({"object": dict(INVOICE, currency="usd")})).invoice().currency == "USD"
    with pytest.raises(InvalidEvent, match="currency"):
        parse_event(event({"object": dict(INVOICE, currency="EURO")})).invoice()


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"x"', b'{"type":"invoice.paid","created":1,"data":{}}',
                                  b'{"id":"","type":"invoice.paid","created":1,"data":{}}', b"\xff\xfe"])
def test_bodies_that_are_not_events(body):
    with pytest.raises(InvalidEvent):
        parse_event(body)


def test_ids_longer_than_the_ledger_can_record_are_not_vinr_objects():
    """The ledger's id columns hold 100 characters: a longer id would be retried until dead."""
    assert parse_event(json.dumps({"id": "e" * 100, "type": "t", "created": 1, "data": {}})).id == "e" * 100
    with pytest.raises(InvalidEvent, match="id"):
        parse_event(json.dumps({"id": "e" * 101, "type": "t", "created": 1, "data": {}}))
    with pytest.raises(InvalidEvent, match="type"):
        parse_event(json.dumps({"id": "evt_1", "type": "t" * 101, "created": 1, "data": {}}))
    with pytest.raises(InvalidEvent, match="id"):
        parse_event(event({"object": dict(INVOICE, id="i" * 101)})).invoice()


# --- contract section 3: amounts by status --------------------------------------------------


def invoice(**fields):
    return parse_event(event({"object": {**INVOICE, **fields}})).invoice()


@pytest.mark.parametrize("fields", [
    {"status": "open", "total": 1000, "amountPaid": 0, "amountDue": 1000},
    {"status": "open", "total": 1000, "appliedBalance": 300, "amountPaid": 200, "amountDue": 500},
    {"status": "uncollectible", "total": 1000, "amountPaid": 400, "amountDue": 600},
    {"status": "paid", "total": 1000, "amountPaid": 1000, "amountDue": 0},
    {"status": "paid", "total": 1000, "appliedBalance": 1000, "amountPaid": 0, "amountDue": 0},  # credit covers it
    {"status": "paid", "total": 0, "amountPaid": 0, "amountDue": 0},
    {"status": "paid", "total": -500, "amountPaid": 0, "amountDue": 0},  # a credit note
    {"status": "void", "total": 1000, "amountPaid": 300, "amountDue": 0},
    {"status": "draft", "total": 1000, "amountPaid": 0, "amountDue": 1000},
    {"status": "draft", "total": 1000, "amountPaid": 0, "amountDue": 0},  # a draft owes nothing yet
], ids=["open", "open with credit applied", "uncollectible", "paid", "paid by credit", "paid at zero",
        "credit note", "void after a part payment", "draft", "draft with nothing due"])
def test_snapshots_that_keep_the_contract_parse(fields):
    parsed = invoice(**fields)
    assert (parsed.total, parsed.amount_paid, parsed.amount_due) == (
        fields["total"], fields["amountPaid"], fields["amountDue"])


def test_applied_balance_defaults_to_0_and_takes_both_names():
    assert invoice().applied_balance == 0
    assert invoice(applied_balance=100, amountDue=146000 - 100).applied_balance == 100
    with pytest.raises(InvalidEvent, match="appliedBalance: Input should be greater than or equal to 0"):
        invoice(appliedBalance=-1, amountDue=146001)


@pytest.mark.parametrize("fields, broken", [
    ({"status": "paid", "amountPaid": -5000, "amountDue": 0}, "amountPaid -5000 is negative"),
    ({"status": "open", "total": 1000, "amountPaid": 1001, "amountDue": -1}, "amountPaid 1001 is above the total 1000"),
    ({"status": "open", "total": 1000, "amountPaid": 0, "amountDue": 900},
     "amountDue 900 is not total - appliedBalance - amountPaid = 1000 while open"),
    ({"status": "open", "total": 1000, "appliedBalance": 100, "amountPaid": 0, "amountDue": 1000},
     "amountDue 1000 is not total - appliedBalance - amountPaid = 900 while open"),
    ({"status": "paid", "total": 1000, "amountPaid": 1000, "amountDue": 5}, "amountDue 5 is not 0 once paid"),
    ({"status": "void", "total": 1000, "amountPaid": 0, "amountDue": 1000}, "amountDue 1000 is not 0 once void"),
    ({"status": "paid", "total": 0, "amountPaid": 10, "amountDue": 0},
     "amountPaid 10 is not 0 for an invoice paid with a total of 0"),
])
def test_a_snapshot_that_breaks_the_contract_names_the_invariant(fields, broken):
    with pytest.raises(InvalidEvent) as refused:
        invoice(**fields)
    assert str(refused.value) == f"event evt_1: invoice: breaks contract section 3: {broken}"


@pytest.mark.parametrize("field, value", [
    ("total", 2**63), ("amountDue", -(2**63)), ("subtotal", 10**19), ("created", -1), ("paidAt", 253402300800),
    ("dueDate", 10**12), ("attemptCount", 2**31), ("customer", "cust\x00"), ("number", "INV\n1"),
    ("customer", "c" * 101), ("number", "n" * 101),
])
def test_fields_the_ledger_cannot_keep_are_refused_naming_them(field, value):
    with pytest.raises(InvalidEvent, match=field):
        invoice(**{field: value})


# --- One pass over the bytes, the same verdict ---------------------------------------------------


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False), st.text(max_size=12), st.sampled_from(["evt_1", "1", "true", ""]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=8)
_wide_ints = st.integers(min_value=-(2**65), max_value=2**65)
_invoice_fields = st.fixed_dictionaries(
    {"id": st.just("inv_1"), "customer": st.just("cust_1"), "status": st.sampled_from(["open", "paid", "void"]),
     "currency": st.sampled_from(["EUR", "eur"]), "total": st.integers(0, 10**6), "amountDue": st.integers(0, 10**6)},
    optional={"number": st.text(max_size=8), "amountPaid": st.one_of(_wide_ints, _values),
              "created": st.one_of(_wide_ints, _values), "dueDate": st.one_of(_wide_ints, _values)})


@st.composite
def _events(draw):
    """A well-formed invoice event with a few of its fields (or its invoice's) drawn at random."""
    invoice = draw(_invoice_fields)
    document = {"id": "evt_1", "object": "event", "type": draw(st.sampled_from(
        ["invoice.paid", "invoice.payment_failed", "customer.updated"])), "created": 1763800000, "livemode": False,
        "data": draw(st.sampled_from([{"object": invoice}, invoice]))}
    for key in draw(st.lists(st.sampled_from([*document, "extra"]), max_size=2, unique=True)):
        document[key] = draw(_values)
    for key in draw(st.lists(st.sampled_from([*invoice, "id", "total"]), max_size=2, unique=True)):
        invoice[key] = draw(st.one_of(_wide_ints, _values))
    return document


@given(_events())
@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_bytes_are_parsed_in_one_pass_to_the_same_verdict_as_the_document(document):
    """parse_event reads bytes with pydantic's JSON parser; it accepts exactly what validating the
    stdlib's parse of them accepts, builds the same event, and refuses in the same words."""
    body = json.dumps(document).encode()
    try:
        expected = parse_event(json.loads(body))
    except InvalidEvent as exc:
        with pytest.raises(InvalidEvent) as caught:
            parse_event(body)
        assert str(caught.value) == str(exc)
    else:
        assert parse_event(body) == expected
