"""Security checks: the API's token guard, its constant-time comparison, logs without secrets,
and SQL built only through the ORM or bound parameters.
"""

from __future__ import annotations

import ast
import hmac
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from api_support import INVOICES, seed
from conftest import API_TOKEN, WEBHOOK_SECRET, unique
from receiver.app import create_app
from receiver.openapi import DOCUMENT
from receiver_support import assert_no_secret_in, event_body, forget_queue, free_port, served, signed
from vinr_recon import tokens as api
from vinr_recon.tokens import token_matches

ROOT = Path(__file__).resolve().parent.parent
API_PATHS = [path for path in DOCUMENT["paths"] if path.startswith("/api/")]


# The query a documented route needs before it can answer data (the journal: its period).
REQUIRED_QUERY = {"/api/journal.csv": "?from=2025-01-01&to=2026-12-31"}


def concrete(path: str, run_id: int) -> str:
    """A documented path with ids the seeded ledger holds, so that the right token gets data."""
    return path.replace("{invoice_id}", INVOICES[0]).replace("{run_id}", str(run_id)) + REQUIRED_QUERY.get(path, "")


@pytest.fixture
async def api_client(ledger_settings, ledger_engine):
    run_ids = await seed(ledger_engine)
    settings = ledger_settings.model_copy(update={"ledger_api_token": SecretStr(f"{API_TOKEN},second-token-xyz")})
    async with served(create_app(settings)) as client:
        yield client, run_ids[0]


# Authorization headers that must never get data: none, wrong tokens, near misses, other schemes.
NOT_THE_TOKEN = {
    "no header": None,
    "empty": "",
    "bearer, no token": "Bearer",
    "bearer, tab, no token": "Bearer\t-",
    "wrong token": "Bearer wrong-token",
    "prefix of the token": f"Bearer {API_TOKEN[:-1]}",
    "token plus a char": f"Bearer {API_TOKEN}x",
    "token upper-cased": f"Bearer {API_TOKEN.upper()}",
    "both tokens, comma-joined": f"Bearer {API_TOKEN},second-token-xyz",
    "basic scheme": f"Basic {API_TOKEN}",
    "token without scheme": API_TOKEN,
    "scheme glued to the token": f"Bearer{API_TOKEN}",
    "the webhook secret": f"Bearer {WEBHOOK_SECRET}",
    "non-ASCII": "Bearer t\xf6ken",
}


async def test_every_documented_api_route_answers_data_only_to_a_configured_token(api_client):
    client, run_id = api_client
    for path in API_PATHS:
        url = concrete(path, run_id)
        for token in (API_TOKEN, "second-token-xyz"):
            assert (await client.get(url, headers={"authorization": f"bearer  {token}"})).status_code == 200, url
        for name, value in NOT_THE_TOKEN.items():
            headers = [] if value is None else [(b"authorization", value.encode("latin-1"))]
            response = await client.get(url, headers=headers)
            assert response.status_code == 401, (url, name)
            assert response.json() == {"error": "missing or invalid bearer token"}, (url, name)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_without_a_configured_token_the_api_answers_503_to_everyone(ledger_settings, ledger_engine):
    run_ids = await seed(ledger_engine)
    settings = ledger_settings.model_copy(update={"ledger_api_token": None})
    async with served(create_app(settings)) as client:
        for path in API_PATHS:
            for value in (None, f"Bearer {API_TOKEN}", "Bearer", "Bearer None"):
                headers = {} if value is None else {"authorization": value}
                response = await client.get(concrete(path, run_ids[0]), headers=headers)
                assert (response.status_code, response.json()) == (503, {"error": "LEDGER_API_TOKEN is not configured"})


async def test_an_empty_token_in_the_list_does_not_open_the_api(ledger_settings, ledger_engine):
    """`LEDGER_API_TOKEN=",tok,"`: the empty pieces are no token at all."""
    settings = ledger_settings.model_copy(update={"ledger_api_token": SecretStr(f",{API_TOKEN}, ,")})
    async with served(create_app(settings)) as client:
        for value in ("Bearer", "Bearer ,", ""):
            assert (await client.get("/api/balances", headers={"authorization": value})).status_code == 401
        assert (await client.get("/api/balances", headers={"authorization": f"Bearer {API_TOKEN}"})).status_code == 200


# --- the comparison itself --------------------------------------------------------------


class Recorded(list):
    """A list of tokens that records which of them were read."""

    def __init__(self, items):
        super().__init__(items)
        self.read: list[str] = []

    def __iter__(self):
        for item in super().__iter__():
            self.read.append(item)
            yield item


@pytest.mark.parametrize("position", [0, 1, 2, None], ids=["first", "middle", "last", "none"])
def test_the_token_is_compared_with_every_configured_token_without_an_early_exit(monkeypatch, position):
    configured = ["token-aaaaaaaaaaaa", "token-bbbbbbbbbbbb", "token-cccccccccccc"]
    tokens = Recorded(configured)
    presented = configured[position] if position is not None else "token-dddddddddddd"
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording_compare_digest(a, b):  # the real comparison, seen from outside
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", recording_compare_digest)
    assert token_matches(presented, tokens) is (position is not None)
    assert tokens.read == configured  # every token read, whichever matched
    assert compared == [(t.encode(), presented.encode()) for t in configured]  # each by compare_digest


def test_token_matches_accepts_exactly_the_configured_tokens():
    tokens = [API_TOKEN, "second-token-xyz"]
    assert token_matches(API_TOKEN, tokens) and token_matches("second-token-xyz", tokens)
    for near in ["", API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(), " " + API_TOKEN, "second-token-xy",
                 API_TOKEN + "\x00", "t\xf6ken"]:
        assert not token_matches(near, tokens), near
    assert not token_matches(API_TOKEN, [])


def test_token_matches_has_no_return_or_break_inside_its_loop():
    """Read from the source: the loop runs over every token; the only return is after it."""
    function = next(node for node in ast.walk(ast.parse(Path(api.__file__).read_text()))
                    if isinstance(node, ast.FunctionDef) and node.name == "token_matches")
    [loop] = [node for node in ast.walk(function) if isinstance(node, ast.For)]
    assert not [node for node in ast.walk(loop) if isinstance(node, (ast.Return, ast.Break, ast.If))]
    calls = {node.func.attr for node in ast.walk(loop)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "compare_digest" in calls


# --- logs -------------------------------------------------------------------------------

API_KEY = "vinr_sk_test_" + "a" * 24
SMTP_PASSWORD = "smtp-pass-" + "p" * 12
FULFILMENT_SECRET = "whsec_fulfil_" + "f" * 20


async def test_the_receivers_logs_hold_no_secret_signature_or_token(ledger_settings, ledger_engine, log_capture):
    """Every receiver path (accepted, duplicate, each rejection, 413, queue down, the API with the
    right and wrong tokens, readiness failing), logged at DEBUG as in production (JSON)."""
    from redis.asyncio import Redis

    from conftest import REDIS_URL

    await seed(ledger_engine)
    settings = ledger_settings.model_copy(update={
        "vinr_webhook_max_body": 4096,
        "vinr_api_key": SecretStr(API_KEY),
        "smtp_url": SecretStr(f"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:2525"),
        "fulfilment_secret": SecretStr(FULFILMENT_SECRET),
    })
    sent_headers: list[str] = []
    async with served(create_app(settings)) as client:
        async def deliver(body: bytes, headers: dict) -> int:
            sent_headers.append(headers.get("x-vinr-signature", ""))
            response = await client.post("/webhooks/vinr", content=body,
                                         headers={**headers, "x-request-id": unique("req")})
            return response.status_code

        body = event_body()
        now = int(time.time())
        assert await deliver(body, signed(body)) == 200
        assert await deliver(body, signed(body)) == 200  # duplicate
        assert await deliver(body, signed(body, secret="whsec_someone_else")) == 400
        assert await deliver(body, signed(body, at=now - 3600)) == 400
        assert await deliver(body, signed(body, at=now + 3600)) == 400
        assert await deliver(body + b" ", signed(body)) == 400
        assert await deliver(body, {"x-vinr-signature": f"t={now},v0={WEBHOOK_SECRET}"}) == 400
        assert await deliver(body, {"x-vinr-signature": f"{WEBHOOK_SECRET}"}) == 400
        assert await deliver(b"{not json", signed(b"{not json")) == 400
        assert await deliver(b"x" * 5000, signed(b"x" * 5000)) == 413
        for path in ("/api/balances", f"/api/invoices/{INVOICES[0]}", "/api/reconciliation/runs"):
            await client.get(path, headers={"authorization": f"Bearer {API_TOKEN}"})
            await client.get(path, headers={"authorization": f"Bearer {API_TOKEN}-wrong"})
        await client.get("/readyz")
        await client.get("/metrics")
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with served(create_app(down)) as client:
        body = event_body()
        response = await client.post("/webhooks/vinr", content=body, headers=signed(body))
        assert response.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
    redis = Redis.from_url(REDIS_URL)
    await forget_queue(redis, settings.queue_name)
    await redis.aclose()

    text = log_capture.text()
    lines = log_capture.lines()
    assert "webhook signature rejected" in text and "queue unavailable" in text and "readiness check failed" in text
    assert len(lines) >= 10
    assert_no_secret_in(text)  # the webhook secret, and every signature value sent
    for secret in (API_TOKEN, API_KEY, SMTP_PASSWORD, FULFILMENT_SECRET, f"{API_TOKEN}-wrong"):
        assert secret not in text
    hex_runs = set(re.findall(r"[0-9a-f]{64}", text))
    signatures = {v for h in sent_headers for v in re.findall(r"v[01]=([0-9a-f]{64})", h)}
    assert not hex_runs & signatures


# --- SQL only through the ORM or bound parameters ---------------------------------------

SOURCE_DIRS = ["ledger", "receiver", "worker", "reconcile", "vinr", "vinr_recon"]

# Calls whose first argument is raw SQL text.
RAW_SQL_CALLS = {"text", "exec_driver_sql", "execute", "executescript", "executemany"}

# Reviewed places where raw SQL is built with string formatting; each names what is formatted
# in and why no value can reach it. Keyed by (file, enclosing function or module-level name).
REVIEWED = {
    ("ledger/book.py", "_WRITE_PG"): (
        "column names and SQL type names from the constant _POSITION_COLUMNS dict in the same module "
        "(itself built from the positions table), "
        "joined at import time; every value travels as a bound array parameter (:invoice_id, :status, ...)"
    ),
}


def _formats_a_string(node: ast.AST) -> bool:
    """Whether `node` builds a string by formatting: f-string with fields, %, .format(), or +."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return not (isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return True
    return False


def _raw_sql_formatting(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing name, line, call) of every raw-SQL call whose SQL argument is formatted."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = child.name
            elif isinstance(child, (ast.Assign, ast.AnnAssign)) and scope == "<module>":
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                name = next((t.id for t in targets if isinstance(t, ast.Name)), scope)
            if isinstance(child, ast.Call) and child.args:
                func = child.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in RAW_SQL_CALLS and _formats_a_string(child.args[0]):
                    found.append((name, child.lineno, called))
            visit(child, name)

    visit(tree, "<module>")
    return found


async def test_a_database_error_names_no_parameter(ledger_engine):
    """A failed write's error, which a dead letter keeps and a log line shows, carries its SQL
    but not the values: the raw body and headers, the signature among them."""
    from datetime import UTC, datetime

    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from ledger.tables import ReceivedEvent

    signature = "t=1763800000,v1=" + "5257a869" * 8
    row = {"event_id": unique("evt_hidden"), "type": "invoice.paid", "body": b'{"secret": "' + WEBHOOK_SECRET.encode() + b'"}',
           "headers": {"x-vinr-signature": signature}, "received_at": datetime.now(UTC), "outcome": "applied"}
    async with ledger_engine.begin() as conn:
        await conn.execute(insert(ReceivedEvent.__table__).values(**row))
    with pytest.raises(IntegrityError) as caught:
        async with ledger_engine.begin() as conn:
            await conn.execute(insert(ReceivedEvent.__table__).values(**row))
    text = str(caught.value)
    assert "received_events" in text  # the SQL is still there to read
    assert signature not in text and WEBHOOK_SECRET not in text and row["event_id"] not in text


def test_the_scanner_sees_formatted_sql(tmp_path):
    """The scan itself, on a sample: it must catch each form it claims to."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(conn, x):\n"
        "    conn.execute(text(f'SELECT * FROM t WHERE id = {x}'))\n"
        "    conn.exec_driver_sql('SELECT %s' % x)\n"
        "    cursor.execute('SELECT {}'.format(x))\n"
        "    conn.execute(text('SELECT ' + x))\n"
        "    conn.execute(text('SELECT * FROM t WHERE id = :x'), {'x': x})\n"
    )
    assert [(line, call) for _, line, call in _raw_sql_formatting(sample)] == [
        (2, "text"), (3, "exec_driver_sql"), (4, "execute"), (5, "text")]


def test_sql_is_built_only_through_the_orm_or_bound_parameters():
    found = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for name, line, call in _raw_sql_formatting(path):
                found[(relative, name)] = f"{relative}:{line} {call}()"
    unreviewed = {key: where for key, where in found.items() if key not in REVIEWED}
    assert not unreviewed, f"raw SQL built by string formatting: {sorted(unreviewed.values())}"
    assert set(REVIEWED) <= set(found), "a reviewed exception is gone: drop it from REVIEWED"


def test_the_suite_wide_log_check_knows_a_secret_when_it_sees_one():
    """conftest.no_secret_in_any_log searches every log line of the suite with `_leak`."""
    from conftest import _leak

    for leaked in (WEBHOOK_SECRET, "whsec_" + "9f" * 12, "t=1763800000,v1=" + "ab" * 32, "vinr_test_" + "c" * 32,
                   API_TOKEN):
        assert _leak("here", f'{{"event": "x", "value": "{leaked}"}}'), leaked
    for harmless in ("postgresql://postgres@127.0.0.1:5432/vinr_test_ceec243e7a774180", "v1=[redacted]",
                     "evt_1Q2w3E4r5T6y", '"signature": "[redacted]"'):
        assert _leak("here", harmless) is None, harmless


# --- start-up refuses what is no secret -------------------------------------------------


def _serve(tmp_path, **values: str) -> subprocess.CompletedProcess:
    """`vinr-recon serve` in a child with exactly these VINR/LEDGER/METRICS settings; it must exit."""
    import os

    env = {name: value for name, value in os.environ.items() if not name.startswith(("VINR_", "LEDGER_", "METRICS_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", REDIS_URL="redis://127.0.0.1:6379/0",
               QUEUE_NAME=unique("arq:queue:test"), **values)
    return subprocess.run([sys.executable, "-m", "vinr_recon", "serve", "--port", str(free_port())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("values, variable", [
    ({"VINR_WEBHOOK_SECRET": " "}, "VINR_WEBHOOK_SECRET"),
    ({"VINR_WEBHOOK_SECRET": ","}, "VINR_WEBHOOK_SECRET"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "LEDGER_API_TOKEN": "short-but-secret-9"}, "LEDGER_API_TOKEN"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "LEDGER_API_TOKEN": f"{API_TOKEN},short-but-secret-9"}, "LEDGER_API_TOKEN"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "LEDGER_API_TOKEN": " , "}, "LEDGER_API_TOKEN"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "METRICS_TOKEN": "short-but-secret-9"}, "METRICS_TOKEN"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "PUBLIC_URL": "recon.example.com/path"}, "PUBLIC_URL"),
    ({"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "ALLOWED_HOSTS": "recon.*.com"}, "ALLOWED_HOSTS"),
], ids=["blank secret", "comma secret", "short token", "one short token", "blank tokens", "short metrics token",
        "public url not an origin", "allowed hosts wildcard"])
def test_serve_refuses_to_start_with_a_blank_secret_list_or_a_short_token(tmp_path, values, variable):
    try:
        result = _serve(tmp_path, **values)
    except subprocess.TimeoutExpired:
        pytest.fail(f"vinr-recon serve started with {variable} = {values[variable]!r}")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()  # one line, naming the variable, never its value
    assert line.startswith("vinr-recon serve: ") and variable in line
    assert "short-but-secret-9" not in line


def test_serve_starts_with_tokens_of_32_characters(tmp_path):
    """The bound itself: 32 characters are enough (the refusal above is no blanket refusal)."""
    import os
    import signal

    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VINR_", "LEDGER_", "METRICS_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", REDIS_URL="redis://127.0.0.1:6379/0",
               VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, LEDGER_API_TOKEN="x" * 32, METRICS_TOKEN="m" * 32,
               QUEUE_NAME=unique("arq:queue:test"))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "vinr_recon", "serve", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        assert server.poll() is None, log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
