"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (no browser
download), against the receiver app under uvicorn, a migrated SQLite ledger and the real Redis.

Signs in, finds the seed guide's invoice by its number, opens it, downloads the latest run's CSV,
replays a dead letter and sees the worker (burst mode, in a thread) apply it; reads the receivables
aging, follows a bucket to its invoices and an account manager to their worklist; signed out, every
page sends the browser to the sign-in. Saves overview.png, invoice.png, aging.png and manager.png in
the test's folder, or, with SCREENSHOTS_DIR set (`make screenshots`), there: `make test` leaves the
work tree as it was.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from arq.connections import RedisSettings, create_pool
from sqlalchemy import insert

from api_support import served_in_thread
from browser_support import CHROMIUM, FLAGS, SCREENSHOTS_DIR, sync_api  # (skips this module without a browser)
from conftest import API_TOKEN, _in_thread, filled_ledger
from dashboard_support import DEAD_INVOICE, GUIDE_ID, GUIDE_NUMBER, forget_replays, seed
from ledger.tables import Customer, InvoicePosition
from lifecycles import drain
from receiver.app import create_app
from receiver_support import forget_queue

pytestmark = pytest.mark.slow

DANA, SAM = "dana@merchant.example", "sam@merchant.example"
# Invoices for the aging: (number, customer, manager of the invoice, currency, amount due,
# days past due or None for no due date, status).
AGED = [
    ("INV-2026-000201", "cus_globex", None, "EUR", 1_250_000, -12, "open"),
    ("INV-2026-000202", "cus_globex", None, "EUR", 480_000, 9, "open"),
    ("INV-2026-000203", "cus_globex", None, "EUR", 315_050, 44, "open"),
    ("INV-2026-000204", "cus_globex", None, "USD", 99_900, 67, "open"),
    ("INV-2026-000205", "cus_globex", None, "EUR", 760_000, 131, "uncollectible"),
    ("INV-2026-000206", "cus_initech", SAM, "EUR", 220_000, 3, "open"),
    ("INV-2026-000207", "cus_initech", SAM, "EUR", 1_020_000, 95, "open"),
    ("INV-2026-000208", "cus_initech", SAM, "JPY", 184_000, 28, "open"),
    ("INV-2026-000209", "cus_initech", SAM, "USD", 45_000, -20, "open"),
]


async def seed_aging(engine) -> None:
    """Customers with names and managers, and invoices due at set days before today."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(Customer.__table__), [
            dict(id="cus_globex", name="Globex Corporation", email="ap@globex.example", account_manager=DANA,
                 metadata={"accountManager": DANA}, refreshed_at=now),
            dict(id="cus_initech", name="Initech", email="billing@initech.example", account_manager=None,
                 metadata={}, refreshed_at=now)])
        await conn.execute(insert(InvoicePosition.__table__), [
            dict(invoice_id=f"in_aged_{n}", customer=customer, number=number, status=status, currency=currency,
                 total=due, amount_paid=0, amount_due=due, account_manager=manager, version=1,
                 created=int((now - timedelta(days=200)).timestamp()),
                 due_date=int((now - timedelta(days=days)).timestamp()))
            for n, (number, customer, manager, currency, due, days, status) in enumerate(AGED)])


@pytest.fixture
def dashboard_settings(settings, sqlite_template, tmp_path):
    """A seeded SQLite ledger of its own and the test's own queue on the real Redis."""

    async def seeded(chosen, engine):
        ids = await seed(engine)
        await seed_aging(engine)
        return ids

    chosen, ids = filled_ledger(settings, sqlite_template, tmp_path / "dashboard.db", seeded)
    chosen.__dict__["_ids"] = ids
    yield chosen

    async def forget():
        redis = await create_pool(RedisSettings.from_dsn(chosen.redis_url))
        try:
            await forget_queue(redis, chosen.queue_name)
            await forget_replays(redis, chosen.queue_name, chosen.__dict__["_ids"])
        finally:
            await redis.aclose()

    _in_thread(asyncio.run, forget())


@pytest.fixture
def browser(tmp_path):
    with sync_api.sync_playwright() as playwright:
        # launch() gives the browser a fresh, empty profile of its own every time.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_the_dashboard_in_chromium(dashboard_settings, browser, tmp_path):
    ids = dashboard_settings.__dict__["_ids"]
    dead_event = ids["dead_event"]
    with served_in_thread(create_app(dashboard_settings)) as base_url:
        context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True,
                                      base_url=base_url)
        page = context.new_page()
        page.set_default_timeout(10_000)

        # Signed out, each page sends the browser to the sign-in.
        for path in ["/dashboard/", "/dashboard/invoices", f"/dashboard/invoices/{GUIDE_ID}", "/dashboard/runs",
                     f"/dashboard/runs/{ids['run']}", "/dashboard/dead-letters", "/dashboard/aging",
                     f"/dashboard/managers/{DANA}"]:
            page.goto(path)
            assert page.url.startswith(f"{base_url}/dashboard/signin?next="), path
            assert page.get_by_role("heading", name="Sign in").is_visible()

        # A wrong token, then the right one.
        page.goto("/dashboard/")
        page.get_by_label("Token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text() == "That token is not valid."
        page.get_by_label("Token").fill(API_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base_url}/dashboard/")
        assert page.get_by_role("heading", name="Where the money stands").is_visible()
        assert "EUR 2,010.00" in page.locator("#money").inner_text()
        assert "INV-2026-000143" in page.locator("#failed").inner_text()
        cookie = next(c for c in context.cookies() if c["name"] == "vinr_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and API_TOKEN not in cookie["value"]
        SCREENSHOTS = Path(SCREENSHOTS_DIR) if SCREENSHOTS_DIR else tmp_path
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

        # Find the seed guide's invoice by its number and open it.
        page.get_by_role("link", name="Invoices").click()
        page.get_by_role("searchbox", name="Search").fill(GUIDE_NUMBER)
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(f"{base_url}/dashboard/invoices/{GUIDE_ID}")
        assert GUIDE_NUMBER in page.get_by_role("heading", level=1).inner_text()
        entries, events = page.locator("#entries").inner_text(), page.locator("#events").inner_text()
        assert "finalize" in entries and "payment" in entries and "EUR 1,960.00" in entries
        assert "evt_guide_finalized" in events and "evt_guide_paid" in events and "applied" in events
        assert "fulfilment" in page.locator("#notices").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "invoice.png"), full_page=True)

        # The latest reconciliation run and its CSV.
        page.get_by_role("link", name="Reconciliation").click()
        page.locator("#runs tbody tr").first.get_by_role("link").click()
        page.wait_for_url(f"{base_url}/dashboard/runs/{ids['run']}")
        assert "in_drift" in page.locator("#findings").inner_text()
        with page.expect_download() as download_info:
            page.get_by_role("link", name="Download CSV").click()
        download = download_info.value
        assert download.suggested_filename == f"reconciliation-run-{ids['run']}.csv"
        csv_path = tmp_path / "findings.csv"
        download.save_as(csv_path)
        lines = csv_path.read_text().splitlines()
        assert lines[0].startswith("run_id,invoice_id,category") and f"{ids['run']},in_drift,status_mismatch" in lines[1]

        # Replay the dead letter; the worker applies it.
        page.get_by_role("link", name="Dead letters").click()
        row = page.locator(f"#letter-{ids['letter']}")
        assert dead_event in row.inner_text() and "[redacted]" in row.inner_text()
        row.get_by_role("button", name="Replay").click()
        page.wait_for_url(f"{base_url}/dashboard/dead-letters")
        assert f"Queued {dead_event} again" in page.get_by_role("status").inner_text()
        worker = _in_thread(asyncio.run, drain(dashboard_settings))
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        page.reload()
        assert page.locator(f"#letter-{ids['letter']}").count() == 0
        assert "applied" in page.locator(f"#replayed-{ids['letter']}").inner_text()
        page.goto(f"/dashboard/invoices/{DEAD_INVOICE}")
        # Its entry names the event (the received event of a dead letter carries no invoice id).
        assert dead_event in page.locator("#entries").inner_text()
        assert "EUR 70.00" in page.locator("#facts").inner_text()

        # The receivables aging: per currency, each bucket a link to its invoices.
        page.get_by_role("link", name="Aging", exact=True).click()
        page.wait_for_url(f"{base_url}/dashboard/aging")
        assert page.get_by_role("heading", name="Receivables aging").is_visible()
        eur = page.locator("#aging tbody tr", has_text="EUR")
        assert eur.locator('[data-bucket="days1to30"]').inner_text() == "EUR 7,000.00"  # 4,800 + 2,200
        assert eur.locator('[data-bucket="over90"]').inner_text() == "EUR 17,800.00"   # 7,600 + 10,200
        dana = page.locator("#managers tbody tr", has_text=DANA).filter(has_text="EUR")
        assert dana.locator('[data-bucket="days31to60"]').inner_text() == "EUR 3,150.50"
        page.screenshot(path=str(SCREENSHOTS / "aging.png"), full_page=True)

        eur.locator('[data-bucket="over90"]').get_by_role("link").click()
        page.wait_for_url(f"{base_url}/dashboard/invoices?*")
        assert "over 90 days past due" in page.locator("#narrowing").inner_text().lower()
        listed = page.locator("#invoices tbody").inner_text()
        assert "INV-2026-000205" in listed and "INV-2026-000207" in listed and "INV-2026-000203" not in listed
        assert page.locator("#invoices tbody tr").count() == 2

        # An account manager's page: what they are owed, and what to chase, longest overdue first.
        page.go_back()
        page.get_by_role("link", name=DANA).first.click()
        page.wait_for_url(f"{base_url}/dashboard/managers/*")
        assert page.get_by_role("heading", name=f"Worklist of {DANA}").is_visible()
        rows = page.locator("#worklist tbody tr")
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == [
            "INV-2026-000205", "INV-2026-000204", "INV-2026-000203", "INV-2026-000202"]
        assert "Globex Corporation" in rows.first.inner_text() and "uncollectible" in rows.first.inner_text()
        assert "EUR 7,600.00" in rows.first.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "manager.png"), full_page=True)
        rows.first.get_by_role("link").click()
        page.wait_for_url(f"{base_url}/dashboard/invoices/in_aged_4")

        # Signed out again, the pages are closed.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{base_url}/dashboard/signin")
        page.goto("/dashboard/invoices")
        assert page.url.startswith(f"{base_url}/dashboard/signin?next=")
        context.close()
