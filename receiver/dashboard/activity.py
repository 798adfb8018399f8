"""The overview's charts: per currency, the last 30 and 90 days (ledger.charts' figures drawn by
receiver.dashboard.charts), with each window's totals in words beside the picture."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.charts import daily_figures
from receiver.dashboard.charts import Day, activity_svg

WINDOWS = (30, 90)


async def activity(conn: AsyncConnection, today: date) -> list[dict]:
    """[{currency, charts: [{days, svg, invoiced, collected, failed}]}], one query for both windows."""
    longest = max(WINDOWS)
    series = await daily_figures(conn, today - timedelta(days=longest - 1), today)
    out = []
    for currency, figures in series.items():
        charts = []
        for window in WINDOWS:
            days = [Day(f.day, f.invoiced, f.collected, f.failed) for f in figures[-window:]]
            charts.append({
                "days": window,
                "svg": activity_svg(currency, days, chart_id=f"activity-{currency}-{window}"),
                "invoiced": sum(d.invoiced for d in days),
                "collected": sum(d.collected for d in days),
                "failed": sum(d.failed for d in days),
            })
        out.append({"currency": currency, "charts": charts})
    return out
