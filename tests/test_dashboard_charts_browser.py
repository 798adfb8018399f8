"""The overview's charts in a real browser (Debian's headless Chromium driven by Playwright, as
tests/test_dashboard_browser.py does), after three days of real traffic from VINR's sandbox into
a migrated SQLite ledger: the charts are drawn, the strict CSP refuses nothing on the page, and
the overview's screenshot goes to SCREENSHOTS_DIR (`make screenshots`: docs/screenshots), else
to the test's folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api_support import served_in_thread
from browser_support import CHROMIUM, FLAGS, SCREENSHOTS_DIR, sync_api  # (skips this module without a browser)
from conftest import API_TOKEN, filled_ledger
from journal_support import three_days
from receiver.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def traffic_settings(settings, sqlite_template, tmp_path):
    """A SQLite ledger of its own holding three days of sandbox traffic; the day figures."""

    async def traffic(chosen, engine):
        async with three_days(chosen, engine) as t:
            return t.per_day

    return filled_ledger(settings, sqlite_template, tmp_path / "charts.db", traffic)


def test_the_overviews_charts_in_chromium(traffic_settings, tmp_path):
    settings, per_day = traffic_settings
    refused: list[str] = []
    with sync_api.sync_playwright() as playwright, served_in_thread(create_app(settings)) as base_url:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base_url).new_page()
            page.set_default_timeout(10_000)
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto("/dashboard/")
            page.get_by_label("Token").fill(API_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base_url}/dashboard/")

            for currency in ("EUR", "USD"):
                for window in (30, 90):
                    chart = page.locator(f"#activity-{currency}-{window}")
                    assert chart.is_visible()
                    box = chart.bounding_box()
                    assert box["width"] > 800 and box["height"] > 150, box  # laid out full width, legible
                    assert chart.locator("rect[data-series]").count() == 3 * window
            # A day's bar shows its amount on hover, the figure the test put through VINR.
            day, amount = next((d, c["collected"]) for (d, cur), c in sorted(per_day.items())
                               if cur == "EUR" and c["collected"])
            bar = page.locator(f'#activity-EUR-30 rect[data-series="collected"][data-day="{day}"]')
            assert f"EUR {amount / 100:,.2f}" in bar.locator("title").text_content()
            assert page.locator("#activity-EUR-30-figure figcaption").inner_text().startswith("EUR, last 30 days:")

            shots = Path(SCREENSHOTS_DIR) if SCREENSHOTS_DIR else tmp_path
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "overview.png"), full_page=True)
        finally:
            browser.close()
    assert refused == [], refused
