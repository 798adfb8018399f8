"""`vinr-recon sandbox` as a real process: it prints the base URL and the test key once, serves
the API, and its log never shows the key."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from vinr_recon.cli import build_parser

KEY = "vinr_test_" + "c" * 32


def test_every_bad_day_has_a_flag():
    args = build_parser().parse_args(
        ["sandbox", "--port", "0", "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "whsec_a",
         "--webhook-secret", "whsec_b", "--seed", "3", "--duplicate-rate", "0.1", "--duplicate-count", "2",
         "--reorder-delay", "1.5", "--drop-rate", "0.05", "--old-shape-rate", "0.2", "--snake-case-rate", "0.3",
         "--error-rate", "0.01", "--rate-limit", "0", "--time-scale", "0.001", "--api-key", KEY]
    )  # fmt: skip
    assert (args.port, args.seed, args.duplicate_count, args.rate_limit) == (0, 3, 2, 0.0)
    assert args.webhook_secret == ["whsec_a", "whsec_b"] and callable(args.run)


async def test_the_command_prints_url_and_key_then_serves_without_logging_the_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VINR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vinr_recon", "sandbox", "--port", "0", "--api-key", KEY, "--preload", "30",
        "--rate-limit", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        printed = []
        while not printed or not printed[-1].startswith("seed:"):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the command exited early"
            printed.append(line.decode().strip())
        base_url = printed[0].split(": ", 1)[1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert printed[1] == f"test key (X-Api-Key): {KEY}"
        async with httpx.AsyncClient(base_url=base_url) as api:
            page = await api.get("/invoices", params={"limit": 5}, headers={"X-Api-Key": KEY})
            assert page.status_code == 200 and len(page.json()["data"]) == 5
            assert (await api.get("/invoices", headers={"X-Api-Key": KEY[:-1]})).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode in (0, 130)
    assert KEY not in out.decode() + err.decode()  # printed once above, never again
    assert "GET /v1/invoices" in err.decode()  # the access log was there to look at
