"""The overview's charts after three days of real traffic from VINR's sandbox: every bar of the
inline SVG says (and is as tall as) the day's amount the test computed from what it did at
VINR, on SQLite and PostgreSQL; the page stays within the strict CSP (no script, no style)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

from conftest import API_TOKEN
from journal_support import three_days
from receiver.app import create_app
from receiver.dashboard.charts import FAILED_HEIGHT, MONEY_HEIGHT
from receiver_support import served

SVG = "{http://www.w3.org/2000/svg}"


def charts(html: str) -> dict[str, ET.Element]:
    return {svg.get("id"): svg for svg in (ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", html, re.S))}


async def test_the_overviews_bars_are_the_days_amounts(ledger_settings, ledger_engine):
    async with three_days(ledger_settings, ledger_engine) as t:
        async with served(create_app(ledger_settings)) as client:
            await client.get("/dashboard/signin")
            signed = await client.post("/dashboard/signin", data={"token": API_TOKEN, "next": "/dashboard/"})
            assert signed.status_code == 303
            page = await client.get("/dashboard/")
    assert page.status_code == 200
    html = page.text
    assert "<script" not in html and "<style" not in html and " style=" not in html  # the CSP's terms

    found = charts(html)
    assert set(found) == {f"activity-{c}-{w}" for c in ("EUR", "USD") for w in (30, 90)}
    today = t.days[-1]
    for chart_id, svg in found.items():
        _, currency, window = chart_id.split("-")
        bars = svg.findall(f"{SVG}rect[@data-series]")
        first = today - timedelta(days=int(window) - 1)
        assert {b.get("data-day") for b in bars} == {str(first + timedelta(days=n)) for n in range(int(window))}
        drawn = {(b.get("data-day"), b.get("data-series")): int(b.get("data-value")) for b in bars}
        expected = {(str(day), what): amount for (day, c), counts in t.per_day.items() if c == currency
                    for what, amount in counts.items()}
        assert {k: v for k, v in drawn.items() if v} == expected, chart_id
        # Heights: against the tallest day, amounts on one scale, failed payments on their own.
        for series, full in (("invoiced", MONEY_HEIGHT), ("collected", MONEY_HEIGHT), ("failed", FAILED_HEIGHT)):
            same_scale = ("invoiced", "collected") if series != "failed" else ("failed",)
            top = max(v for (_, s), v in drawn.items() if s in same_scale)
            for b in (b for b in bars if b.get("data-series") == series):
                value = int(b.get("data-value"))
                assert abs(float(b.get("height")) - (value / top * full if value else 0)) <= 1.0, (chart_id, b.attrib)
    eur = re.search(r"EUR, last 30 days:</strong>(.*?)</figcaption>", html, re.S).group(1)
    invoiced = sum(c["invoiced"] for (_, cur), c in t.per_day.items() if cur == "EUR")
    assert f"invoiced EUR {invoiced / 100:,.2f}" in " ".join(eur.split())
    assert "3 failed payments" in " ".join(eur.split())


async def test_the_charts_are_redrawn_at_most_once_a_minute_and_say_when(ledger_engine):
    """The overview keeps its charts a minute (their query reads 90 days of postings)."""
    from datetime import date

    from receiver.dashboard.activity import ActivityCache

    kept, fresh = ActivityCache(ttl=60), ActivityCache(ttl=0)
    async with ledger_engine.connect() as conn:
        first, drawn = await kept.get(conn, date.today())
        again, drawn_again = await kept.get(conn, date.today())
        assert again is first and drawn_again == drawn
        _, one = await fresh.get(conn, date.today())
        _, two = await fresh.get(conn, date.today())
        assert two >= one and (await fresh.get(conn, date.today()))[0] is not (await fresh.get(conn, date.today()))[0]
