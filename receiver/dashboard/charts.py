"""Per-day bar charts as inline SVG, drawn on the server (pure: series in, markup out).

The dashboard's CSP (`default-src 'none'; style-src 'self'`) allows no script, no `<style>` and
no `style=` attribute, so everything is a presentation attribute (`fill`, `font-size`); hovering
a bar shows its `<title>`. Each bar carries `data-day`, `data-series` and `data-value` (minor
units, or a count) so a test or a scraper reads the figures it was drawn from.

Why not a library: pygal draws SVG on the server but styles it with an inline `<style>` and
tooltips with script, both refused by the CSP; matplotlib's SVG uses `style=` attributes and
costs a heavy dependency for a few rectangles.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from ledger.charts import DayFigures
from ledger.money import format_money

WIDTH, HEIGHT = 960, 250
LEFT, RIGHT, TOP = 96, 12, 30
MONEY_HEIGHT, GAP, FAILED_HEIGHT = 120, 26, 40
COLOURS = {"invoiced": "#2952cc", "collected": "#1e9e5a", "failed": "#c0392b"}
LABELS = {"invoiced": "Invoiced", "collected": "Collected", "failed": "Failed payments"}
GRID, INK, MUTED = "#dfe3ea", "#1d2330", "#5d6678"


def _height(value: int, top: int, full: float) -> float:
    """`value` against `top` on a bar of `full` units; a value above zero is always visible."""
    if value <= 0 or top <= 0:
        return 0.0
    return max(round(value / top * full, 2), 1.0)


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = 12, colour: str = MUTED) -> str:
    return (f'<text x="{x:.2f}" y="{y:.2f}" text-anchor="{anchor}" font-size="{size}" fill="{colour}" '
            f'font-family="system-ui, sans-serif">{escape(text)}</text>')


def _bar(series: str, d: DayFigures, value: int, label: str, x: float, width: float, baseline: float,
         height: float) -> str:
    return (f'<rect data-series="{series}" data-day="{d.day.isoformat()}" data-value="{value}" '
            f'x="{x:.2f}" y="{baseline - height:.2f}" width="{width:.2f}" height="{height:.2f}" '
            f'fill="{COLOURS[series]}"><title>{escape(d.day.isoformat())} · {escape(LABELS[series])}: '
            f'{escape(label)}</title></rect>')


def _tick_days(n: int) -> range:
    """Which day indexes get a date under the axis: about six, the last always among them."""
    step = max(1, -(-n // 6))
    return range((n - 1) % step, n, step)


def activity_svg(currency: str, days: Sequence[DayFigures], *, chart_id: str) -> Markup:
    """Invoiced and collected amounts per day (two bars a day), failed payments below (a bar a
    day, a count), on one shared day axis."""
    n = max(len(days), 1)
    plot = WIDTH - LEFT - RIGHT
    slot = plot / n
    money_base = TOP + MONEY_HEIGHT
    failed_base = money_base + GAP + FAILED_HEIGHT
    top_money = max([max(d.invoiced, d.collected) for d in days] + [0])
    top_failed = max([d.failed for d in days] + [0])
    title = f"{currency}: invoiced, collected and failed payments per day, last {len(days)} days"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart_id)}" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'aria-labelledby="{escape(chart_id)}-title" data-currency="{escape(currency)}">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    # Legend.
    x = LEFT
    for series in ("invoiced", "collected", "failed"):
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{COLOURS[series]}"/>')
        parts.append(_text(x + 17, 18.5, LABELS[series] + (" (count)" if series == "failed" else ""), colour=INK))
        x += 150
    # Axes and scale: the tallest day's amount, and zero.
    for base, height, top_label in ((money_base, MONEY_HEIGHT, format_money(top_money, currency)),
                                    (failed_base, FAILED_HEIGHT, str(top_failed))):
        parts.append(f'<line x1="{LEFT}" y1="{base - height}" x2="{WIDTH - RIGHT}" y2="{base - height}" '
                     f'stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="{MUTED}" '
                     f'stroke-width="1"/>')
        if top_label != "0":
            parts.append(_text(LEFT - 6, base - height + 4, top_label, anchor="end"))
        parts.append(_text(LEFT - 6, base + 4, "0", anchor="end"))
    for i, d in enumerate(days):
        x0 = LEFT + i * slot
        parts.append(_bar("invoiced", d, d.invoiced, format_money(d.invoiced, currency), x0 + slot * 0.1,
                          slot * 0.4, money_base, _height(d.invoiced, top_money, MONEY_HEIGHT)))
        parts.append(_bar("collected", d, d.collected, format_money(d.collected, currency), x0 + slot * 0.5,
                          slot * 0.4, money_base, _height(d.collected, top_money, MONEY_HEIGHT)))
        parts.append(_bar("failed", d, d.failed, str(d.failed), x0 + slot * 0.25, slot * 0.5, failed_base,
                          _height(d.failed, top_failed, FAILED_HEIGHT)))
    for i in _tick_days(len(days)):
        last = i == len(days) - 1  # the last date ends at the right edge rather than past it
        parts.append(_text(WIDTH - RIGHT if last else LEFT + (i + 0.5) * slot, failed_base + 16,
                           days[i].day.strftime("%d %b"), anchor="end" if last else "middle"))
    parts.append("</svg>")
    return Markup("".join(parts))
