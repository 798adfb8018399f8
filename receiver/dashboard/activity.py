"""The overview's charts: per currency, the last 30 and 90 days (ledger.charts' figures drawn by
receiver.dashboard.charts), with each window's totals in words beside the picture."""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta

from markupsafe import Markup
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.charts import daily_figures
from receiver.dashboard.charts import activity_svg

WINDOWS = (30, 90)


class Chart(BaseModel):
    """One window's picture of a currency, and its totals in words beside it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)  # Markup: the SVG, already escaped

    days: int
    svg: Markup
    invoiced: int  # minor units
    collected: int  # minor units
    failed: int  # a count


class CurrencyActivity(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: str
    charts: list[Chart]  # one per window of WINDOWS, in its order


async def activity(conn: AsyncConnection, today: date) -> list[CurrencyActivity]:
    """Per currency, its charts of each window; one query for both windows."""
    longest = max(WINDOWS)
    series = await daily_figures(conn, today - timedelta(days=longest - 1), today)
    out = []
    for currency, figures in series.items():
        charts = []
        for window in WINDOWS:
            days = figures[-window:]
            charts.append(Chart(
                days=window,
                svg=activity_svg(currency, days, chart_id=f"activity-{currency}-{window}"),
                invoiced=sum(d.invoiced for d in days),
                collected=sum(d.collected for d in days),
                failed=sum(d.failed for d in days),
            ))
        out.append(CurrencyActivity(currency=currency, charts=charts))
    return out


class ActivityCache:
    """The charts of one dashboard, kept for `ttl` seconds: their query reads every posting of 90
    days (about 0.3 s at 100,000 invoices), and a picture of days need not be newer than a minute
    to be read. The page says when the charts were drawn. One query at a time refills it."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._kept: tuple[float, date, list[CurrencyActivity], float] | None = None  # (monotonic, day, charts, wall)
        self._lock = asyncio.Lock()

    async def get(self, conn: AsyncConnection, today: date) -> tuple[list[CurrencyActivity], float]:
        """(charts, when they were drawn, Unix seconds)."""
        kept = self._kept
        if kept is not None and kept[1] == today and time.monotonic() - kept[0] < self.ttl:
            return kept[2], kept[3]
        async with self._lock:
            kept = self._kept
            if kept is None or kept[1] != today or time.monotonic() - kept[0] >= self.ttl:
                drawn_at = time.time()
                kept = self._kept = (time.monotonic(), today, await activity(conn, today), drawn_at)
        return kept[2], kept[3]
