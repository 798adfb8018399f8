"""The OpenAPI 3.1 document of the receiver's HTTP interface (contract section 5), served at
`GET /openapi.json`.

Written by hand, as a plain dict, to say exactly what the handlers answer: `/api/*` from
receiver.api (shapes built by ledger.views and ledger.runs), `POST /webhooks/vinr` from
receiver.webhooks, and the probes of receiver.health. tests/test_schemathesis.py holds the
live app to it. The document names no secret and holds no data, so it is served without a token.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ledger.journal import COLUMNS as JOURNAL_COLUMNS
from ledger.tables import ACCOUNTS
from receiver import aging_api

JSON = "application/json"

# Run ids are the `id` column of reconciliation_runs, an INTEGER: 32 bits on PostgreSQL.
MAX_RUN_ID = 2**31 - 1


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object with every listed property required; further properties may come later."""
    return {"type": "object", "required": list(properties), "properties": properties, **extra}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
AMOUNT = {"type": "integer", "description": "Minor units of the currency (120000 EUR is 1,200.00)."}
UNIX_SECONDS = {"type": "integer", "description": "Unix seconds, as VINR sent it."}
TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC."}
CURRENCY = {"type": "string", "description": "ISO 4217, upper case.", "examples": ["EUR"]}
ACCOUNT = {"type": "string", "enum": list(ACCOUNTS)}
DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "examples": ["2026-11-30"]}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "What went wrong, for a human."}}),
    "Posting": _object({
        "account": ACCOUNT,
        "direction": {"type": "string", "enum": ["debit", "credit"]},
        "amount": {**AMOUNT, "minimum": 1},
        "currency": CURRENCY,
    }),
    "JournalEntry": _object({
        "id": INTEGER,
        "kind": {"type": "string", "description": "finalize, payment, void, write_off, recovery, credit, ..."},
        "currency": CURRENCY,
        "source": {"type": "string", "enum": ["webhook", "reconciliation", "backfill"]},
        "eventId": _nullable(STRING),
        "runId": _nullable({"type": "integer", "description": "The reconciliation run that posted it."}),
        "effectiveAt": TIMESTAMP,
        "recordedAt": TIMESTAMP,
        "postings": {"type": "array", "items": _ref("Posting"), "minItems": 2,
                     "description": "Debits equal credits within the entry's currency."},
    }),
    "ReceivedEvent": _object({
        "id": {"type": "string", "description": "The event id (evt_...)."},
        "type": STRING,
        "source": {"type": "string", "description": "webhook, or backfill when reconciliation fetched it."},
        "outcome": {"type": "string", "enum": ["applied", "stale", "ignored", "dead"]},
        "created": _nullable(UNIX_SECONDS),
        "receivedAt": TIMESTAMP,
        "appliedAt": _nullable(TIMESTAMP),
        "error": _nullable(STRING),
    }),
    "Invoice": _object(
        {
            "id": STRING,
            "status": {"type": "string", "enum": ["draft", "open", "paid", "void", "uncollectible"]},
            "currency": _nullable(CURRENCY),
            "total": AMOUNT,
            "amountPaid": AMOUNT,
            "amountDue": AMOUNT,
            "appliedBalance": {**AMOUNT, "description": "The customer's credit VINR applied at finalize."},
            "customer": _nullable(STRING),
            "number": _nullable(STRING),
            "writtenOff": AMOUNT,
            "credited": AMOUNT,
            "attemptCount": INTEGER,
            "created": _nullable(UNIX_SECONDS),
            "paidAt": _nullable(UNIX_SECONDS),
            "lastEventAt": _nullable(UNIX_SECONDS),
            "updatedAt": _nullable(TIMESTAMP),
            "entries": {"type": "array", "items": _ref("JournalEntry"), "description": "Oldest first."},
            "events": {"type": "array", "items": _ref("ReceivedEvent"), "description": "In the order received."},
            "corrections": {"type": "array", "items": _ref("JournalEntry"),
                            "description": "The entries of `entries` that reconciliation posted."},
        },
        description="The ledger's view of one invoice.",
    ),
    "Balance": _object(
        {"account": ACCOUNT, "currency": CURRENCY, "debits": AMOUNT, "credits": AMOUNT,
         "balance": {**AMOUNT, "description": "debits - credits"}},
    ),
    "Balances": _object({"balances": {"type": "array", "items": _ref("Balance")},
                         "asOf": {"type": "string", "format": "date",
                                  "description": "Present when asked with `?asOf=`: the UTC day the balances "
                                                 "stand at the end of."}},
                        required=["balances"]),
    "Run": _object({
        "id": {"type": "integer", "minimum": 1},
        "status": {"type": "string", "enum": ["running", "completed", "partial", "failed"]},
        "dryRun": {"type": "boolean"},
        "startedAt": TIMESTAMP,
        "finishedAt": _nullable(TIMESTAMP),
        "windowStart": _nullable(UNIX_SECONDS),
        "invoicesChecked": INTEGER,
        "eventsBackfilled": INTEGER,
        "correctionsPosted": INTEGER,
        "apiRequests": INTEGER,
        "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "Findings per category: differences still there when the run corrected them."},
        "caughtUpInFlight": {**INTEGER, "description": "Differences seen that webhooks closed before the run "
                                                       "could correct them: not drift."},
        "coveredUntil": {**_nullable(INTEGER), "description": "Unix seconds: every invoice created before was swept "
                                                                   "by a completed run; the next window starts "
                                                                   "a day before it."},
        "adopt": {"type": "boolean", "description": "The run adopted the account's history (reconcile --adopt)."},
        "adoptedQuietly": {**INTEGER, "description": "Invoices whose history an adopting run booked without "
                                                     "alerts or callbacks."},
        "message": _nullable(STRING),
    }),
    "Runs": _object({"runs": {"type": "array", "items": _ref("Run"), "description": "Newest first."}}),
    "Finding": _object({
        "invoice": STRING,
        "category": {"type": "string", "description": "missing_in_ledger, status_mismatch, amount_mismatch, ..."},
        "field": _nullable(STRING),
        "ledgerValue": _nullable(STRING),
        "vinrValue": _nullable(STRING),
        "currency": {**_nullable(STRING), "description": "The invoice's currency, as the ledger holds it."},
        "ledgerAmount": {**_nullable(STRING), "description": "ledgerValue for people (EUR 500.00), when an amount."},
        "vinrAmount": {**_nullable(STRING), "description": "vinrValue for people, when an amount."},
        "corrected": {"type": "boolean"},
        "entries": {"type": "array", "items": {"type": "integer"}, "description": "Ids of the correcting entries."},
    }),
    "RunWithFindings": {"allOf": [_ref("Run"), _object({"findings": {"type": "array", "items": _ref("Finding")}})]},
    "Event": {
        "type": "object",
        "required": ["id", "type", "created", "data"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "object": {"const": "event"},
            "type": {"type": "string", "minLength": 1},
            "created": UNIX_SECONDS,
            "livemode": {"type": "boolean"},
            "data": {"type": "object", "description": "`{\"object\": invoice}`, or (older) the invoice itself."},
        },
    },
}


SCHEMAS.update(aging_api.OPENAPI_SCHEMAS)


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


WWW_AUTHENTICATE = {"www-authenticate": {"schema": {"const": "Bearer"}, "required": True}}

# Every /api operation answers these as well as its own.
API_ERRORS = {
    "401": _json(_ref("Error"), "No bearer token, or not one of LEDGER_API_TOKEN's.", WWW_AUTHENTICATE),
    "503": _json(_ref("Error"), "LEDGER_API_TOKEN is not configured: the API never serves openly."),
}


def _not_found(what: str, unroutable: str) -> dict[str, Any]:
    """404: the handler's JSON, or the router's plain text when the path cannot name one at all."""
    response = _json(_ref("Error"), f"No {what} with this id ({unroutable}: the router's plain `Not Found`).")
    response["content"]["text/plain"] = {"schema": {"const": "Not Found"}}
    return response


def _api(summary: str, responses: dict[str, Any], parameters: list | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["ledger"],
        "summary": summary,
        "security": [{"bearerAuth": []}],
        "responses": {**responses, **API_ERRORS},
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


RUN_ID = {
    "name": "run_id", "in": "path", "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_RUN_ID},
}

REQUEST_ID = {"x-request-id": {"schema": {"type": "string"},
                               "description": "The caller's x-request-id when it is a sane token, else a fresh one."}}

PATHS: dict[str, Any] = {
    "/api/invoices/{invoice_id}": _api(
        "The ledger's view of one invoice: figures, journal entries, events applied, corrections",
        {
            "200": _json(_ref("Invoice"), "The invoice as the ledger holds it."),
            "404": _not_found("invoice the ledger saw", "an id with a slash or a line feed"),
        },
        [{"name": "invoice_id", "in": "path", "required": True,
          "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^/\\n\\x00]+$",
                     "description": "An invoice id: no slash, line feed or NUL (with a slash or a line feed the "
                                    "path reaches no handler: 404)."},
          "example": "inv_1Q2w3E4r5T6y"}],
    ),
    "/api/balances": _api(
        "Debits, credits and balance per account and currency, now or at the end of a day",
        {"200": _json(_ref("Balances"), "One row per account and currency that has postings (by then)."),
         "400": _json(_ref("Error"), "`asOf` is not a date YYYY-MM-DD.")},
        [{"name": "asOf", "in": "query", "required": False,
          "description": "Only the entries effective up to the end of this UTC day (before the next 00:00 UTC).",
          "schema": DAY}],
    ),
    "/api/journal.csv": _api(
        "The journal: one CSV row per posting of the entries effective from `from` to `to` (UTC days, both "
        "included), streamed",
        {
            "200": {
                "description": "A header row (" + ", ".join(JOURNAL_COLUMNS) + "), then one row per posting in "
                               "entry and posting order. Amounts in minor units: `debit` or `credit` holds it, the "
                               "other 0. A cell that a spreadsheet would evaluate starts with `'`.",
                "headers": {"content-disposition": {"schema": {"type": "string"}, "required": True}},
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            "400": _json(_ref("Error"), "`from` or `to` missing or not a date YYYY-MM-DD, or `to` before `from`."),
        },
        [{"name": "from", "in": "query", "required": True, "description": "First UTC day, included.",
          "schema": DAY},
         {"name": "to", "in": "query", "required": True, "description": "Last UTC day, included.", "schema": DAY}],
    ),
    "/api/aging": _api(aging_api.SUMMARY, aging_api.RESPONSES, aging_api.PARAMETERS),
    "/api/reconciliation/runs": _api(
        "Reconciliation runs, newest first",
        {
            "200": _json(_ref("Runs"), "Up to `limit` runs."),
            "400": _json(_ref("Error"), "`limit` or `before` is not an integer, or `limit` is below 1."),
        },
        [
            {"name": "limit", "in": "query", "required": False,
             "description": "How many runs, at most; values over 200 are taken as 200.",
             "schema": {"type": "integer", "minimum": 1, "default": 50}},
            {"name": "before", "in": "query", "required": False,
             "description": "Only runs with a smaller id: pass the last id of a page to get the next.",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_RUN_ID}},
        ],
    ),
    "/api/reconciliation/runs/{run_id}": _api(
        "One reconciliation run with its findings",
        {
            "200": _json(_ref("RunWithFindings"), "The run and every finding it recorded."),
            "404": _not_found("run", "an id that is not a decimal number"),
        },
        [RUN_ID],
    ),
    "/api/reconciliation/runs/{run_id}/findings.csv": _api(
        "One run's findings as CSV (what `vinr-recon reconcile --report` writes)",
        {
            "200": {
                "description": "A header row (run_id, invoice_id, category, field, ledger_value, vinr_value, "
                               "currency, ledger_amount, vinr_amount, corrected, entry_ids), then one row per "
                               "finding; the amounts are the minor-unit values for people.",
                "headers": {"content-disposition": {"schema": {"type": "string"}, "required": True}},
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            "404": _not_found("run", "an id that is not a decimal number"),
        },
        [RUN_ID],
    ),
    "/webhooks/vinr": {
        "post": {
            "tags": ["vinr"],
            "summary": "A VINR webhook delivery: verified, then queued; 200 only once it is in Redis",
            "security": [],
            "parameters": [
                {"name": "x-vinr-signature", "in": "header", "required": True,
                 "description": "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"{t}.{raw body}\">`; several `v1` "
                                "while a secret is rolled; other schemes (`v0`) are ignored.",
                 "schema": {"type": "string"},
                 "example": "t=1763800000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"},
            ],
            "requestBody": {
                "required": True,
                "description": "The event, as raw bytes: the signature covers them exactly.",
                "content": {JSON: {"schema": _ref("Event")}},
            },
            "responses": {
                "200": _json(_object({"received": {"const": True}}),
                             "The event is queued (or already was: a duplicate gets the same).", REQUEST_ID),
                "400": _json(_ref("Error"), "Missing, malformed or unmatched signature, a timestamp outside the "
                             "tolerance, or a body that is not an event.", REQUEST_ID),
                "413": _json(_ref("Error"), "The body is over VINR_WEBHOOK_MAX_BODY (default 1 MiB).", REQUEST_ID),
                "503": _json(_ref("Error"), "The queue cannot take it now; VINR retries.", {
                    **REQUEST_ID,
                    "retry-after": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True},
                }),
            },
        }
    },
    "/healthz": {
        "get": {
            "tags": ["operations"], "summary": "Liveness: 200 while the process serves requests", "security": [],
            "responses": {"200": _json(_object({"status": {"const": "ok"}}), "The process lives.")},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["operations"], "summary": "Readiness: Redis answers PING and the database SELECT 1",
            "security": [],
            "responses": {
                "200": _json(_object({
                    "status": {"const": "ready"},
                    "checks": _object({"redis": {"const": "ok"}, "database": {"const": "ok"}}),
                }), "Both answer."),
                "503": _json(_object({
                    "status": {"const": "unavailable"},
                    "failed": {"type": "array", "items": {"enum": ["redis", "database"]}, "minItems": 1},
                    "checks": _object({"redis": STRING, "database": STRING},
                                      description='"ok", "timeout", or the name of the error'),
                }), "At least one does not; `failed` names which."),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"], "summary": "Prometheus text exposition format", "security": [],
            "responses": {"200": {"description": "The receiver's metrics and the queue depth.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["operations"], "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "vinr-recon",
        "version": "0.1.0",
        "description": "VINR webhooks in, a double-entry ledger out. `/api/*` reads the ledger and needs "
                       "`Authorization: Bearer <LEDGER_API_TOKEN>`. Amounts are integers in minor units.",
    },
    "tags": [
        {"name": "ledger", "description": "The merchant's read API."},
        {"name": "vinr", "description": "What VINR calls."},
        {"name": "operations", "description": "Probes, metrics, this document."},
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "One of the comma-separated LEDGER_API_TOKEN values."}},
    },
}


async def openapi_json(request: Request) -> JSONResponse:
    """GET /openapi.json: the document, to anyone (it holds no data)."""
    return JSONResponse(DOCUMENT)
