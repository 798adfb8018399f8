"""Money for people (ledger/money.py): ISO 4217's minor units, the reader's locale by Babel."""

from __future__ import annotations

import pytest
from babel.numbers import get_currency_precision

from ledger.money import as_decimal, exponent, format_money


@pytest.mark.parametrize(("amount", "currency", "locale", "shown"), [
    (196000, "EUR", None, "EUR 1,960.00"),
    (196000, "EUR", "de_DE", "1.960,00\xa0€"),
    (-300000, "EUR", "en_US", "-€3,000.00"),
    (5000, "JPY", "de_DE", "5.000\xa0¥"),
    (1234567, "KWD", "en_US", "KWD1,234.567"),
    (1234, "IQD", "fr_FR", "1,234\xa0IQD"),
    (5, "eur", "de-DE", "0,05\xa0€"),
])
def test_amounts_read_as_their_readers_write_them(amount, currency, locale, shown):
    assert format_money(amount, currency, locale) == shown


def test_minor_units_are_iso_4217s_where_cldr_shows_other_digits():
    """Why the table stays ours: read with CLDR's display digits, these amounts would be wrong."""
    for currency, iso in (("IQD", 3), ("HUF", 2), ("IDR", 2), ("COP", 2)):
        assert exponent(currency) == iso != get_currency_precision(currency)
    assert str(as_decimal(196000, "EUR")) == "1960.00" and str(as_decimal(1234, "IQD")) == "1.234"
