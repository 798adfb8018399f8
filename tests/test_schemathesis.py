"""The OpenAPI document (receiver/openapi.py) against the live app: schemathesis over real HTTP.

The receiver runs under a real uvicorn (its own thread and event loop), on a migrated ledger
(SQLite, and the PostgreSQL of this machine) holding invoices in every state and a few
reconciliation runs; the webhook route talks to the real Redis on a queue of the test's own.
Every operation's answers must match the document: status codes, content types, headers
and response schemas, and never a 5xx.

`SCHEMATHESIS_EXAMPLES` sets the generated cases per operation (default 25, for CI).
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from redis import Redis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api_support import INVOICES, seed, served_in_thread
from conftest import API_TOKEN, REDIS_URL
from receiver.app import create_app
from receiver.openapi import DOCUMENT, MAX_RUN_ID
from vinr_recon.jobs import job_key, result_key

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
AUTH = {"authorization": f"Bearer {API_TOKEN}"}
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]

OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]
API_OPERATIONS = [op for op in OPERATIONS if op[1].startswith("/api/")]
OTHER_OPERATIONS = [op for op in OPERATIONS if not op[1].startswith("/api/")]


def label(operation: tuple[str, str]) -> str:
    return " ".join(operation)


@pytest.fixture
async def run_ids(ledger_engine) -> list[int]:
    return await seed(ledger_engine)


@pytest.fixture
def live(ledger_settings, run_ids):
    """The app on its ledger; yields (base URL, schema loaded from the served /openapi.json)."""
    with served_in_thread(create_app(ledger_settings)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

        # Through schemathesis' auth, so that `ignored_auth` knows the token and can take it away.
        @schema.auth.auth()
        class LedgerToken:
            def get(self, case, context):
                return API_TOKEN

            def set(self, case, token, context):
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

        yield url, schema
    redis = Redis.from_url(REDIS_URL)
    try:
        ids = [member.decode() for member in redis.zrange(ledger_settings.queue_name, 0, -1)]
        redis.delete(ledger_settings.queue_name, *(k for i in ids for k in (job_key(i), result_key(i))))
    finally:
        redis.close()


def fuzz(schema, operation: tuple[str, str], base_url: str, examples: int, *, mode=GenerationMode.POSITIVE,
         checks=CONFORMANCE) -> None:
    """`examples` generated cases of `operation`, each sent over HTTP and held to `checks`."""
    method, path = operation
    api_operation = schema[path][method]
    session = requests.Session()

    @hypothesis_settings(max_examples=examples, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))
    @given(case=api_operation.as_strategy(generation_mode=mode, auth_storage=schema.auth))
    def check(case):
        case.call_and_validate(base_url=base_url, session=session, checks=checks)

    try:
        check()
    finally:
        session.close()


# --- the tests ----------------------------------------------------------------------------


async def test_the_served_document_is_the_module_and_needs_no_token(ledger_settings):
    with served_in_thread(create_app(ledger_settings)) as url:
        response = requests.get(f"{url}/openapi.json", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == DOCUMENT
    assert API_TOKEN not in response.text and "whsec_" not in response.text


def test_the_document_covers_every_route_of_the_app(settings):
    """Every route the app serves is in the document, and the document names no other. The
    dashboard's HTML pages are for browsers, not the API (tests/test_dashboard*.py)."""
    app = create_app(settings)
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if getattr(route, "path", "") == "/dashboard":
            continue
        for inner in getattr(route, "routes", None) or [route]:
            path = (getattr(route, "path", "") if inner is not route else "") + inner.path
            path = path.replace("{run_id:int}", "{run_id}")
            served |= {(method, path) for method in inner.methods - {"HEAD"}}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize("operation", API_OPERATIONS, ids=label)
def test_every_api_operation_conforms_to_the_document(live, operation):
    """Generated requests with the token: answers as documented (200, 400, 404), never a 5xx.

    `ignored_auth` also sends each case without the token and with a wrong one: 401 both times.
    """
    url, schema = live
    fuzz(schema, operation, url, EXAMPLES, checks=[*CONFORMANCE, ignored_auth])


@pytest.mark.parametrize("operation", OTHER_OPERATIONS, ids=label)
def test_the_webhook_route_and_the_probes_conform_to_the_document(live, operation):
    url, schema = live
    fuzz(schema, operation, url, max(5, EXAMPLES // 2))


def served_as_documented(schema, url: str, path: str, **case) -> requests.Response:
    return schema[path]["GET"].Case(**case).call_and_validate(base_url=url, headers=AUTH, checks=CONFORMANCE)


def test_every_seeded_invoice_the_balances_and_the_csv_are_served_as_documented(live, run_ids):
    """The 200 answers of those shapes, on records the ledger really holds."""
    url, schema = live
    answers = [served_as_documented(schema, url, "/api/balances")]
    answers += [served_as_documented(schema, url, "/api/invoices/{invoice_id}", path_parameters={"invoice_id": i})
                for i in INVOICES]
    answers += [served_as_documented(schema, url, "/api/reconciliation/runs/{run_id}/findings.csv",
                                     path_parameters={"run_id": r}) for r in run_ids]
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert {b["account"] for b in answers[0].json()["balances"]} == {
        "accounts_receivable", "revenue", "vinr_clearing", "bad_debt", "customer_credit"}


def test_every_seeded_run_is_served_as_documented(live, run_ids):
    """Each run, its findings, and the pages of the history; timestamps as RFC 3339 with an offset."""
    url, schema = live
    for run_id in run_ids:
        served_as_documented(schema, url, "/api/reconciliation/runs/{run_id}", path_parameters={"run_id": run_id})
    for limit in (1, 2, 200, 10**6):
        runs = served_as_documented(schema, url, "/api/reconciliation/runs",
                                    query={"limit": limit, "before": max(run_ids)}).json()["runs"]
        assert [run["id"] for run in runs] == sorted(run_ids, reverse=True)[1:][:limit]


@pytest.mark.parametrize("operation", API_OPERATIONS, ids=label)
def test_invalid_api_requests_are_refused_with_a_4xx(live, operation):
    """Negative generation (ids and numbers out of the documented range, wrong types): a 4xx."""
    url, schema = live
    fuzz(schema, operation, url, max(5, EXAMPLES // 2), mode=GenerationMode.NEGATIVE,
         checks=[not_a_server_error, negative_data_rejection, content_type_conformance])


# --- the edges of the id columns, found by the fuzzing above -------------------------------


def test_a_run_id_beyond_the_id_column_is_refused_not_a_500(live):
    url, _ = live
    for big in (MAX_RUN_ID + 1, 2**63, 10**20):
        assert requests.get(f"{url}/api/reconciliation/runs/{big}", headers=AUTH, timeout=5).status_code == 404
        assert requests.get(f"{url}/api/reconciliation/runs/{big}/findings.csv", headers=AUTH,
                            timeout=5).status_code == 404
    for before in (-1, MAX_RUN_ID + 1, -(2**63) - 1, 10**20):
        listed = requests.get(f"{url}/api/reconciliation/runs", params={"before": before}, headers=AUTH, timeout=5)
        assert listed.status_code == 400


def test_a_nul_in_an_invoice_id_is_a_404_not_a_500(live):
    url, _ = live
    response = requests.get(f"{url}/api/invoices/inv%00x", headers=AUTH, timeout=5)
    assert (response.status_code, response.json()) == (404, {"error": "invoice inv\x00x not found"})
