"""Money for people: integer minor units, per currency, formatted without floats.

The minor-unit exponents are ISO 4217's, which VINR's amounts follow (contract section 3), and
they stay a table of our own: Babel's CLDR data gives the digits a currency is *shown* with,
which differ from ISO's minor units for some (CLDR shows the Iraqi dinar, the forint, the rupiah
and the Colombian peso with 0 digits; their minor units are 3, 2, 2 and 2), so an amount read
with CLDR's digits would be wrong by a factor of 100 or 1,000. Babel does the locale's part:
separators, symbol and where it goes (`1.960,00 €` for de_DE), with ISO's digits.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Babel itself is imported when a locale is first asked for
    from babel import Locale
    from babel.numbers import NumberPattern

# ISO 4217 currencies whose minor unit is not a hundredth.
_EXPONENTS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4, "UYW": 4,
}


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def as_decimal(amount: int, currency: str) -> Decimal:
    """`196000, "EUR"` -> `Decimal("1960.00")`: exact, never a float."""
    return Decimal(amount).scaleb(-exponent(currency))


def format_money(amount: int, currency: str, locale: str | None = None) -> str:
    """`120000, "EUR"` -> `EUR 1,200.00`; `5000, "JPY"` -> `JPY 5,000`; `1234, "KWD"` -> `KWD 1.234`.
    With a `locale` (`de_DE`), as its readers write it: `1.200,00 €`."""
    if locale:
        return _locale_format(amount, currency.upper(), locale)
    digits = exponent(currency)
    units, minor = divmod(abs(amount), 10**digits)
    text = f"{units:,}" + (f".{minor:0{digits}d}" if digits else "")
    return f"{currency.upper()} {'-' if amount < 0 else ''}{text}"


def _locale_format(amount: int, currency: str, locale: str) -> str:
    pattern, parsed = _currency_pattern(locale.replace("-", "_"), exponent(currency))
    text: str = pattern.apply(as_decimal(amount, currency), parsed, currency=currency, currency_digits=False)
    return text  # Babel's `apply` declares no return type


@lru_cache(maxsize=64)
def _currency_pattern(locale: str, digits: int) -> tuple[NumberPattern, Locale]:
    from babel import Locale

    parsed = Locale.parse(locale)
    pattern = copy.copy(parsed.currency_formats["standard"])
    pattern.frac_prec = (digits, digits)  # ISO's minor units, not CLDR's display digits
    return pattern, parsed


# The invoice's amount fields, as VINR names them (a reconciliation finding names its field so).
AMOUNT_FIELDS = frozenset({"total", "amountPaid", "amountDue", "appliedBalance"})
_INTEGER = re.compile(r"-?[0-9]+")


def field_amount(field: str | None, value: str | None, currency: str | None, locale: str | None = None
                 ) -> str | None:
    """An invoice field's value held as text (a finding's `5000`) for people (`EUR 50.00`), when
    the field is an amount; None otherwise."""
    if field not in AMOUNT_FIELDS or not currency or value is None or not _INTEGER.fullmatch(value):
        return None
    return format_money(int(value), currency, locale)


def format_balance(debits: int, credits: int, currency: str, locale: str | None = None) -> str:
    """An account's balance as an accountant reads it: the amount with its side, `EUR 3,000.00 Cr`
    when credits exceed debits (revenue), `EUR 500.00 Dr` when debits do (receivables); no side
    when even. Never a minus sign: the side says it."""
    net = debits - credits
    side = " Dr" if net > 0 else " Cr" if net < 0 else ""
    return format_money(abs(net), currency, locale) + side
