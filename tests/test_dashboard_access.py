"""Who gets into the dashboard, over real HTTP (uvicorn) with the real Redis: sessions that end a
fixed time after the sign-in and at the sign-out, whichever receiver process asks; the sign-in
brake; the configured public origin and allowed hosts; `Secure` cookies and HSTS over HTTPS.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from itsdangerous import TimestampSigner

from conftest import API_TOKEN
from dashboard_support import csrf_of, seed
from receiver.app import create_app
from receiver.dashboard.access import SESSION_COOKIE, SESSION_MAX_AGE, SIGNIN_LIMIT, session_secret
from receiver_support import served

PUBLIC = "https://recon.example.com"


@pytest.fixture
async def seeded(ledger_engine):
    return await seed(ledger_engine)


async def sign_in(client, token=API_TOKEN, headers=None):
    return await client.post("/dashboard/signin", data={"token": token, "next": "/dashboard/"}, headers=headers)


def cookie_of(client) -> str:
    return client.cookies[SESSION_COOKIE]


def forged(payload: dict) -> str:
    """A cookie signed with the real session key: what a stolen or replayed cookie can be."""
    data = base64.b64encode(json.dumps(payload).encode())
    return TimestampSigner(session_secret([API_TOKEN])).sign(data).decode()


# --- sessions ---------------------------------------------------------------------------


async def test_the_cookie_of_a_signed_out_session_opens_nothing_in_any_receiver(ledger_settings, seeded, redis):
    async with served(create_app(ledger_settings)) as first, served(create_app(ledger_settings)) as second:
        assert (await sign_in(first)).status_code == 303
        old = cookie_of(first)
        second.cookies.set(SESSION_COOKIE, old, domain="127.0.0.1", path="/dashboard")
        assert (await second.get("/dashboard/")).status_code == 200  # one session, every process
        page = await first.get("/dashboard/")
        assert (await first.post("/dashboard/signout", data={"csrf": csrf_of(page.text)})).status_code == 303
        for client in (first, second):
            client.cookies.set(SESSION_COOKIE, old, domain="127.0.0.1", path="/dashboard")
            response = await client.get("/dashboard/")
            assert response.status_code == 303 and response.headers["location"].startswith("/dashboard/signin")


async def test_a_session_ends_a_fixed_time_after_its_sign_in_however_busy(ledger_settings, seeded, redis):
    async with served(create_app(ledger_settings)) as client:
        assert (await sign_in(client)).status_code == 303
        [key] = [k async for k in redis.scan_iter(match=f"{ledger_settings.queue_name}:dashboard:session:*")]
        first_ttl = await redis.ttl(key)
        assert 0 < first_ttl <= SESSION_MAX_AGE
        for _ in range(5):
            response = await client.get("/dashboard/")
            assert response.status_code == 200
            assert "set-cookie" not in response.headers  # nothing renewed
        assert await redis.ttl(key) <= first_ttl
        # The lifetime runs out (as if 12 hours had passed): the same cookie is no session.
        await redis.pexpire(key, 1)
        time.sleep(0.01)
        assert (await client.get("/dashboard/")).status_code == 303

    # A cookie that says it was signed in 13 hours ago, signed with the real key, is refused too.
    async with served(create_app(ledger_settings)) as client:
        stale = forged({"signed_in": int(time.time()) - 13 * 3600, "csrf": "x"})
        client.cookies.set(SESSION_COOKIE, stale, domain="127.0.0.1", path="/dashboard")
        assert (await client.get("/dashboard/")).status_code == 303


async def test_secure_cookies_and_hsts_when_the_public_origin_or_the_request_is_https(ledger_settings, seeded, redis):
    async with served(create_app(ledger_settings.model_copy(update={"public_url": PUBLIC}))) as client:
        response = await sign_in(client)
        assert response.status_code == 303
        assert "; secure" in response.headers["set-cookie"].lower()
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert "strict-transport-security" in (await client.get("/dashboard/signin")).headers
    async with served(create_app(ledger_settings)) as client:
        # TLS ended at a proxy on this host (uvicorn trusts X-Forwarded-Proto from 127.0.0.1).
        response = await sign_in(client, headers={"x-forwarded-proto": "https"})
        assert "; secure" in response.headers["set-cookie"].lower()
        assert "strict-transport-security" in response.headers
        client.cookies.clear()
        plain = await sign_in(client)
        assert "secure" not in plain.headers["set-cookie"].lower()
        assert "strict-transport-security" not in plain.headers


# --- the sign-in brake ------------------------------------------------------------------


async def test_failed_sign_ins_are_logged_counted_and_braked_per_client(ledger_settings, seeded, redis, log_capture):
    guesses = [f"guess-{n:04d}-" + "g" * 24 for n in range(SIGNIN_LIMIT + 5)]
    async with served(create_app(ledger_settings)) as client:
        codes = [(await sign_in(client, guess)).status_code for guess in guesses]
        assert codes == [401] * SIGNIN_LIMIT + [429] * 5
        braked = await sign_in(client)  # the right token too, while braked
        assert braked.status_code == 429 and 0 < int(braked.headers["retry-after"]) <= 15 * 60
        assert "set-cookie" not in braked.headers
        # Another client (behind the same proxy on this host) is not braked.
        other = await sign_in(client, headers={"x-forwarded-for": "198.51.100.7"})
        assert other.status_code == 303
        metrics = (await client.get("/metrics")).text
    assert 'vinr_dashboard_signins_total{outcome="failed"} 10.0' in metrics
    assert 'vinr_dashboard_signins_total{outcome="braked"} 6.0' in metrics
    assert 'vinr_dashboard_signins_total{outcome="ok"} 1.0' in metrics
    failures = [line for line in log_capture.lines() if line.get("event") == "dashboard sign-in failed"]
    assert len(failures) == SIGNIN_LIMIT and {line["client"] for line in failures} == {"127.0.0.1"}
    assert any(line.get("event") == "dashboard sign-in braked" for line in log_capture.lines())
    text = log_capture.text()
    assert not [guess for guess in guesses if guess in text]  # never the guessed token


# --- the public origin and the Host header -------------------------------------------------


async def test_no_redirect_is_built_from_the_host_header(ledger_settings, seeded, redis):
    async with served(create_app(ledger_settings)) as client:
        evil = {"host": "evil.example"}
        for path in ["/dashboard", "/dashboard/invoices/", "/healthz/"]:
            response = await client.get(path, headers=evil)
            assert "evil.example" not in response.headers.get("location", ""), path
        assert (await client.get("/dashboard", headers=evil)).headers["location"] == "/dashboard/"
        response = await client.get("/api/balances/", headers={**evil, "authorization": f"Bearer {API_TOKEN}"})
        assert "evil.example" not in response.headers.get("location", "")


async def test_the_same_origin_check_uses_the_configured_public_origin(ledger_settings, seeded, redis):
    configured = ledger_settings.model_copy(update={"public_url": PUBLIC})
    async with served(create_app(configured)) as client:
        own = str(client.base_url).rstrip("/")
        # The request's own Host and a matching Origin (DNS rebinding, a proxy passing Host) is not ours.
        assert (await sign_in(client, headers={"origin": own})).status_code == 403
        assert (await sign_in(client, headers={"origin": "http://evil.example", "host": "evil.example"})).status_code == 403
        assert (await sign_in(client, headers={"origin": PUBLIC})).status_code == 303
    async with served(create_app(ledger_settings)) as client:
        # Without PUBLIC_URL: the request's own URL, as before.
        assert (await sign_in(client, headers={"origin": "https://evil.example"})).status_code == 403
        assert (await sign_in(client, headers={"origin": str(client.base_url).rstrip("/")})).status_code == 303


async def test_allowed_hosts_refuse_any_other_host_but_the_probes_answer(ledger_settings, seeded, redis):
    limited = ledger_settings.model_copy(update={"public_url": PUBLIC, "allowed_hosts": "recon.example.com"})
    async with served(create_app(limited)) as client:
        assert (await client.get("/dashboard/signin", headers={"host": "evil.example"})).status_code == 400
        assert (await client.get("/api/balances", headers={"host": "evil.example",
                                                           "authorization": f"Bearer {API_TOKEN}"})).status_code == 400
        assert (await client.get("/dashboard/signin", headers={"host": "recon.example.com"})).status_code == 200
        for probe in ("/healthz", "/readyz"):
            assert (await client.get(probe, headers={"host": "10.0.0.7:8000"})).status_code == 200
