"""CSV cells a spreadsheet shows and never evaluates: every CSV the service writes (a run's
findings, the journal export) goes through `csv_cell`, since ids and values come from VINR, so
from anyone."""

from __future__ import annotations

import re

# What a spreadsheet takes for the start of a formula (OWASP, CSV injection); an integer (an
# amount, `-5000`) is a number there, not a formula, and stays one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_INTEGER = re.compile(r"-?[0-9]+")


def csv_cell(value: object) -> str:
    """`value` as a CSV cell: text that starts with `= + - @`, a tab or a CR gets a leading `'`;
    anything else is its `str` (None: empty)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.startswith(FORMULA_STARTS) and not _INTEGER.fullmatch(text):
        return "'" + text
    return text
