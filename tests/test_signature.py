import time

import pytest
import stripe
from hypothesis import given, settings as hsettings, strategies as st

from vinr.signature import Reason, SignatureError, sign, sign_many, verify

SECRET = "whsec_" + "a" * 32
OTHER = "whsec_" + "b" * 32
BODY = b'{"id":"evt_1","object":"event","type":"invoice.paid","created":1763800000,"data":{}}'
NOW = 1_763_800_000


def reason_of(body, header, secrets=(SECRET,), now=NOW, tolerance=300) -> Reason:
    with pytest.raises(SignatureError) as caught:
        verify(body, header, list(secrets), now, tolerance)
    return caught.value.reason


def test_valid_signature_returns_its_timestamp():
    assert verify(BODY, sign(BODY, SECRET, NOW), [SECRET], NOW) == NOW


def test_the_contract_example_shape():
    header = sign(BODY, SECRET, NOW)
    t, v1 = header.split(",")
    assert t == f"t={NOW}" and v1.startswith("v1=") and len(v1) == 3 + 64 and v1[3:] == v1[3:].lower()


def test_any_of_several_v1_entries_may_match():
    header = sign_many(BODY, [OTHER, SECRET], NOW)
    assert header.count("v1=") == 2
    assert verify(BODY, header, [SECRET], NOW) == NOW


def test_v0_entries_are_ignored():
    good = sign(BODY, SECRET, NOW)
    assert verify(BODY, f"{good},v0=deadbeef", [SECRET], NOW) == NOW
    assert reason_of(BODY, f"t={NOW},v0=deadbeef") == Reason.NO_V1_SIGNATURE


def test_any_of_several_configured_secrets():
    assert verify(BODY, sign(BODY, SECRET, NOW), [OTHER, SECRET], NOW) == NOW


def test_whitespace_around_elements_is_tolerated():
    t, v1 = sign(BODY, SECRET, NOW).split(",")
    assert verify(BODY, f"  {t} ,  {v1}  ", [SECRET], NOW) == NOW


@pytest.mark.parametrize("skew", [300, -300])
def test_timestamp_at_the_tolerance_is_accepted(skew):
    assert verify(BODY, sign(BODY, SECRET, NOW - skew), [SECRET], NOW, tolerance=300) == NOW - skew


def test_one_second_too_old_is_rejected():
    assert reason_of(BODY, sign(BODY, SECRET, NOW - 301)) == Reason.TIMESTAMP_TOO_OLD


def test_one_second_too_new_is_rejected():
    assert reason_of(BODY, sign(BODY, SECRET, NOW + 301)) == Reason.TIMESTAMP_TOO_NEW


def test_body_changed_by_one_byte_is_rejected():
    assert reason_of(BODY + b"\n", sign(BODY, SECRET, NOW)) == Reason.NO_MATCHING_SIGNATURE


def test_signature_under_another_secret_is_rejected():
    assert reason_of(BODY, sign(BODY, OTHER, NOW)) == Reason.NO_MATCHING_SIGNATURE


def test_non_utf8_body_is_signed_as_bytes():
    body = b"\xff\xfe\x00 not utf-8 \xc3"
    assert verify(body, sign(body, SECRET, NOW), [SECRET], NOW) == NOW
    assert reason_of(body[:-1], sign(body, SECRET, NOW)) == Reason.NO_MATCHING_SIGNATURE


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header(header):
    assert reason_of(BODY, header) == Reason.MISSING_HEADER


@pytest.mark.parametrize(
    "header",
    ["garbage", "t=abc,v1=00", "v1=00", f"t={NOW},v1", "t=-5,v1=00", "t=" + "9" * 5000 + ",v1=00"],
)
def test_malformed_header(header):
    assert reason_of(BODY, header) == Reason.MALFORMED_HEADER


def test_no_configured_secret_matches_nothing():
    assert reason_of(BODY, sign(BODY, SECRET, NOW), secrets=()) == Reason.NO_MATCHING_SIGNATURE


def test_stripes_own_verifier_accepts_what_sign_produces():
    """An implementation nobody here wrote: the scheme really is Stripe's."""
    now = int(time.time())
    header = sign(BODY, SECRET, now)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY.decode() + " ", header, SECRET, tolerance=300)


@hsettings(max_examples=2000, deadline=None)
@given(header=st.one_of(st.none(), st.text(), st.text(alphabet="tv01=, \t;abcdef").map(str)), body=st.binary())
def test_no_header_whatsoever_raises_anything_but_signature_error(header, body):
    try:
        verify(body, header, [SECRET, OTHER], NOW)
    except SignatureError:
        pass
