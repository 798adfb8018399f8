"""The dashboard over real HTTP (uvicorn), on SQLite and PostgreSQL: access control, CSRF, the
503 without tokens, no secret in any page, the pages' content, search and pagination.
"""

from __future__ import annotations

import re

import pytest
from arq.connections import RedisSettings, create_pool
from pydantic import SecretStr

from conftest import API_TOKEN, WEBHOOK_SECRET
from dashboard_support import (
    ACME,
    FILLER_CUSTOMER,
    FILLERS,
    GUIDE_ID,
    GUIDE_NUMBER,
    SIGNATURE,
    csrf_of,
    forget_replays,
    seed,
)
from ledger.book import apply_event
from lifecycles import body, snapshot
from receiver.app import create_app
from receiver.dashboard.access import SESSION_COOKIE, session_secret
from receiver_support import forget_queue, served
from vinr.events import parse_event
from vinr_recon.jobs import replay_job_id

PAGES = ["/dashboard/", "/dashboard/invoices", f"/dashboard/invoices/{GUIDE_ID}", "/dashboard/runs",
         "/dashboard/runs/1", "/dashboard/runs/1/findings.csv", "/dashboard/dead-letters"]


@pytest.fixture
async def ids(ledger_engine):
    return await seed(ledger_engine)


@pytest.fixture
async def client(ledger_settings, ids):
    async with served(create_app(ledger_settings)) as client:
        yield client
    redis = await create_pool(RedisSettings.from_dsn(ledger_settings.redis_url))
    try:
        await forget_queue(redis, ledger_settings.queue_name)
        await forget_replays(redis, ledger_settings.queue_name, ids)
    finally:
        await redis.aclose()


async def sign_in(client, token=API_TOKEN, next_="/dashboard/"):
    page = await client.get("/dashboard/signin")
    assert page.status_code == 200
    return await client.post("/dashboard/signin", data={"token": token, "next": next_})


async def test_signed_out_every_page_redirects_to_the_sign_in(client, ids):
    for path in PAGES + ["/dashboard/invoices?q=x&status=open"]:
        response = await client.get(path)
        assert response.status_code == 303, path
        location = response.headers["location"]
        assert location.startswith("/dashboard/signin?next=%2Fdashboard"), (path, location)
        assert GUIDE_NUMBER not in response.text
    replay = await client.post(f"/dashboard/dead-letters/{ids['letter']}/replay", data={"csrf": "x"})
    assert (replay.status_code, replay.headers["location"]) == (303, "/dashboard/signin")
    assert (await client.get("/dashboard/static/dashboard.css")).status_code == 200


async def test_a_wrong_token_is_refused_and_the_right_one_signs_in_with_a_safe_cookie(client):
    wrong = await sign_in(client, "ledger-token-wrong")
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert (await client.get("/dashboard/")).status_code == 303

    right = await sign_in(client, next_=f"/dashboard/invoices/{GUIDE_ID}")
    assert (right.status_code, right.headers["location"]) == (303, f"/dashboard/invoices/{GUIDE_ID}")
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "path=/dashboard" in cookie.lower()
    assert API_TOKEN not in cookie and session_secret([API_TOKEN]) not in cookie
    assert (await client.get("/dashboard/")).status_code == 200

    signout = await client.post("/dashboard/signout", data={"csrf": csrf_of((await client.get("/dashboard/")).text)})
    assert signout.status_code == 303
    assert (await client.get("/dashboard/")).status_code == 303


async def test_the_sign_in_sends_nowhere_but_the_dashboard(client):
    for target in ["https://evil.example/", "//evil.example/x", "/api/balances", "/dashboard\\@evil"]:
        client.cookies.clear()
        response = await sign_in(client, next_=target)
        assert (response.status_code, response.headers["location"]) == (303, "/dashboard/"), target


async def test_a_forged_cookie_is_not_a_session(client, ledger_settings):
    import base64
    import json

    from itsdangerous import TimestampSigner
    forged = TimestampSigner("not-the-secret").sign(base64.b64encode(json.dumps({"signed_in": 1}).encode()))
    client.cookies.set(SESSION_COOKIE, forged.decode(), domain="127.0.0.1", path="/dashboard")
    assert (await client.get("/dashboard/")).status_code == 303


async def test_without_tokens_the_dashboard_answers_503(ledger_settings, ids):
    closed = ledger_settings.model_copy(update={"ledger_api_token": None})
    async with served(create_app(closed)) as client:
        for path in ["/dashboard/", "/dashboard/signin", "/dashboard/invoices"]:
            response = await client.get(path)
            assert response.status_code == 503 and "LEDGER_API_TOKEN" in response.text
        assert (await client.post("/dashboard/signin", data={"token": ""})).status_code == 503
    blank = ledger_settings.model_copy(update={"ledger_api_token": SecretStr(" , ")})
    async with served(create_app(blank)) as client:
        assert (await client.get("/dashboard/")).status_code == 503


async def test_the_replay_refuses_cross_site_requests(client, ids, ledger_settings):
    await sign_in(client)
    page = await client.get("/dashboard/dead-letters")
    token = csrf_of(page.text)
    url = f"/dashboard/dead-letters/{ids['letter']}/replay"

    assert (await client.post(url)).status_code == 403
    assert (await client.post(url, data={"csrf": "forged"})).status_code == 403
    assert (await client.post(url, data={"csrf": token}, headers={"origin": "https://evil.example"})).status_code == 403
    assert (await client.get(url)).status_code == 405
    redis = await create_pool(RedisSettings.from_dsn(ledger_settings.redis_url))
    try:
        assert await redis.zcard(ledger_settings.queue_name) == 0  # nothing queued by any of those

        done = await client.post(url, data={"csrf": token}, headers={"origin": str(client.base_url).rstrip("/")})
        assert (done.status_code, done.headers["location"]) == (303, "/dashboard/dead-letters")
        job = replay_job_id(ledger_settings.queue_name, ids["dead_event"], ids["letter"])
        assert [m.decode() for m in await redis.zrange(ledger_settings.queue_name, 0, -1)] == [job]
        assert f"Queued {ids['dead_event']} again" in (await client.get("/dashboard/dead-letters")).text
        again = await client.post(url, data={"csrf": token})
        assert again.status_code == 303
        assert "already queued" in (await client.get("/dashboard/dead-letters")).text
    finally:
        await redis.aclose()
    # Another session's token is no good for this one.
    client.cookies.clear()
    await sign_in(client)
    assert (await client.post(url, data={"csrf": token})).status_code == 403
    assert (await client.post("/dashboard/signout", data={"csrf": token})).status_code == 403


async def test_no_page_shows_a_secret_a_key_or_a_signature(client):
    await sign_in(client)
    texts = []
    for path in PAGES + ["/dashboard/invoices/in_declined", "/dashboard/invoices/in_drift"]:
        response = await client.get(path)
        assert response.status_code == 200, path
        texts.append(response.text)
        assert response.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    everything = "\n".join(texts)
    for secret in [API_TOKEN, WEBHOOK_SECRET, session_secret([API_TOKEN]), SIGNATURE, "x-vinr-signature", "v1="]:
        assert secret not in everything, secret
    assert "[redacted]" in everything  # the dead letter's error named the webhook secret


async def test_the_overview_shows_money_per_currency_failures_the_last_run_and_what_waits(client, ids):
    await sign_in(client)
    page = (await client.get("/dashboard/")).text
    money = page.split('id="money"')[1].split("</table>")[0]
    assert "EUR 2,010.00" in money and "CHF 2,500.00" in money and "EUR 450.00" in money
    failed = page.split('id="failed"')[1].split("</table>")[0]
    assert "INV-2026-000143" in failed and "EUR 450.00" in failed
    assert f"Run {ids['run']}" in page and "completed" in page
    assert re.search(r'id="letters-waiting">1<', page) and re.search(r'id="notices-dead">1<', page)


async def test_the_overview_shows_each_accounts_balance_by_name_on_its_side(client, ledger_engine):
    """Issue 21: revenue reads as a credit balance, receivables as a debit one; names, not keys."""
    from ledger.book import trial_balance

    await sign_in(client)
    page = (await client.get("/dashboard/")).text
    table = page.split('id="balances"')[1].split("</table>")[0]
    rows = {tuple(re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)}
    by_account = {(row[0], row[1]): row[4] for row in rows if len(row) == 5}
    async with ledger_engine.connect() as conn:
        balances = await trial_balance(conn)
    debits, credits = balances["revenue", "EUR"]
    assert credits > debits and by_account["EUR", "Revenue"].endswith(" Cr")
    assert by_account["EUR", "Revenue"] == f"EUR {(credits - debits) // 100:,}.{(credits - debits) % 100:02d} Cr"
    assert by_account["EUR", "Accounts receivable"].endswith(" Dr")
    assert "accounts_receivable" not in table and "-" not in "".join(by_account.values())


async def test_a_dashboard_replay_that_dies_again_says_so_with_its_new_error(client, ledger_settings, ledger_engine):
    """Issue 21: after the replay job ran, the page shows that the replay died again and why,
    not a replay that looks done."""
    from datetime import UTC, datetime

    from conftest import unique
    from ledger.deadletters import bury
    from lifecycles import drain

    event_id = unique("evt_poison")
    poison = {**snapshot("inv_poison", "paid", 1000, 1000), "total": 1000.0}  # amounts are never floats
    async with ledger_engine.begin() as conn:
        letter = await bury(conn, event_id=event_id, event_type="invoice.paid",
                            body=body(event_id, "invoice.paid", poison), headers={}, error="InvalidEvent: total",
                            attempts=1, received_at=datetime.now(UTC))
    await sign_in(client)
    token = csrf_of((await client.get("/dashboard/dead-letters")).text)
    done = await client.post(f"/dashboard/dead-letters/{letter}/replay", data={"csrf": token},
                             headers={"origin": str(client.base_url).rstrip("/")})
    assert done.status_code == 303
    await drain(ledger_settings)  # the worker runs the replay: the event is still poison

    page = (await client.get("/dashboard/dead-letters")).text
    replayed = page.split('id="replayed"')[1].split("</table>")[0]
    row = replayed.split(f'id="replayed-{letter}"')[1].split("</tr>")[0]
    assert "replay died again" in row and "InvalidEvent" in row
    waiting = page.split('id="waiting"')[1].split("</table>")[0]
    assert event_id in waiting  # its new letter waits, to be fixed and replayed again


async def test_the_invoice_shows_its_entries_events_corrections_and_notices(client, ids):
    await sign_in(client)
    page = (await client.get(f"/dashboard/invoices/{GUIDE_ID}")).text
    assert GUIDE_NUMBER in page and "EUR 1,960.00" in page and ACME in page
    entries = page.split('id="entries"')[1].split("</table>")[0]
    assert "finalize" in entries and "payment" in entries and "accounts_receivable" in entries
    events = page.split('id="events"')[1].split("</table>")[0]
    assert "evt_guide_finalized" in events and "evt_guide_paid" in events and "applied" in events
    notices = page.split('id="notices"')[1].split("</table>")[0]
    assert "fulfilment" in notices and "sent" in notices

    drift = (await client.get("/dashboard/invoices/in_drift")).text
    corrections = drift.split('id="corrections"')[1].split("</table>")[0]
    assert f"run {ids['run']}" in corrections and "status_mismatch" in corrections and "paid" in corrections
    assert "reconciliation" in drift.split('id="entries"')[1]

    assert (await client.get("/dashboard/invoices/in_never_seen")).status_code == 404
    assert (await client.get("/dashboard/runs/999999")).status_code == 404
    assert (await client.get(f"/dashboard/runs/{2**40}")).status_code == 404


async def test_the_invoice_and_the_overview_show_credit_applied_and_outstanding(client, ledger_engine):
    async with ledger_engine.begin() as conn:
        for event_id, invoice in (("evt_credit_note", snapshot("in_credit_note", "paid", -5_000)),
                                  ("evt_credit_used", snapshot("in_credit_used", "open", 12_000, applied=4_000))):
            raw = body(event_id, "invoice.finalized", {**invoice, "currency": "CHF"}, 1_763_800_000)
            await apply_event(conn, parse_event(raw), raw, {})
    await sign_in(client)
    page = (await client.get("/dashboard/invoices/in_credit_used")).text
    facts = page.split('id="facts"')[1].split("</dl>")[0]
    assert "Credit applied</dt><dd>CHF 40.00" in facts and "Due</dt><dd>CHF 80.00" in facts
    overview = (await client.get("/dashboard/")).text
    chf = [row for row in overview.split("<tr>") if "<td>CHF</td>" in row]
    assert chf and chf[0].rstrip().endswith('<td class="num">CHF 10.00</td></tr>')  # 50.00 credited, 40.00 used


async def test_runs_their_findings_and_the_csv(client, ids):
    await sign_in(client)
    runs = (await client.get("/dashboard/runs")).text
    assert f'href="/dashboard/runs/{ids["run"]}"' in runs
    run = (await client.get(f"/dashboard/runs/{ids['run']}")).text
    assert "in_drift" in run and "status mismatch" in run
    csv = await client.get(f"/dashboard/runs/{ids['run']}/findings.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[1].startswith(f"{ids['run']},in_drift,status_mismatch,status,open,paid")


async def test_a_findings_amounts_read_for_people_in_the_readers_locale(ledger_settings, ledger_engine, ids):
    """Issue 21: `50,00 € (5000)`, not a bare 5000, on the run's page."""
    from sqlalchemy import insert

    from ledger.tables import Finding

    async with ledger_engine.begin() as conn:
        await conn.execute(insert(Finding.__table__).values(
            run_id=ids["run"], invoice_id="in_drift", category="amount_mismatch", field="amountPaid",
            ledger_value="0", vinr_value="5000", corrected=True, entry_ids=[7]))
    for locale, shown in ((None, "EUR 50.00 (5000)"), ("de_DE", "50,00\xa0€ (5000)")):
        settings = ledger_settings.model_copy(update={"money_locale": locale})
        async with served(create_app(settings)) as client:
            await sign_in(client)
            run = (await client.get(f"/dashboard/runs/{ids['run']}")).text
        assert shown in run.replace("&nbsp;", "\xa0") and "open" in run, locale


def _numbers(html: str) -> list[str]:
    return re.findall(r">(INV-\d{4}-\d{6})</a>", html.split('id="invoices"')[1].split("</table>")[0])


async def test_invoices_search_filter_and_pages(client):
    await sign_in(client)
    # By number, by id: one match goes straight to the invoice.
    for q in [GUIDE_NUMBER, GUIDE_ID, f"  {GUIDE_NUMBER} "]:
        found = await client.get("/dashboard/invoices", params={"q": q})
        assert (found.status_code, found.headers["location"]) == (303, f"/dashboard/invoices/{GUIDE_ID}")
    # By customer: Acme's invoices, newest first.
    acme = await client.get("/dashboard/invoices", params={"q": ACME})
    assert _numbers(acme.text) == ["INV-2026-000145", "INV-2026-000144", "INV-2026-000143", GUIDE_NUMBER]
    assert "EUR 1,960.00" in acme.text and "CHF 2,500.00" in acme.text
    # Paged: 50 at a time, every filler invoice once.
    seen: list[str] = []
    page, more = 1, True
    while more:
        response = await client.get("/dashboard/invoices", params={"q": FILLER_CUSTOMER, "page": page})
        numbers = _numbers(response.text)
        seen += numbers
        more = 'rel="next"' in response.text
        assert len(numbers) == (50 if more else FILLERS % 50)
        page += 1
    assert page - 1 == 3 and len(seen) == len(set(seen)) == FILLERS
    assert seen == sorted(seen)  # newest first: the higher a filler's number, the older it is
    # By status.
    paid = await client.get("/dashboard/invoices", params={"q": FILLER_CUSTOMER, "status": "paid"})
    assert "40 invoices" in paid.text and 'rel="next"' not in paid.text
    everything = await client.get("/dashboard/invoices")
    assert f"{FILLERS + 4:,} invoices" in everything.text and len(_numbers(everything.text)) == 50
    # Nonsense is harmless.
    for params in [{"page": "x"}, {"page": "-3"}, {"status": "nope"}, {"q": "a\x00b"}, {"q": "x" * 500}]:
        assert (await client.get("/dashboard/invoices", params=params)).status_code == 200, params
