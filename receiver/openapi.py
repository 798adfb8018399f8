"""The OpenAPI 3.1 document of the receiver's HTTP interface (contract section 5), served at
`GET /openapi.json`.

Its schemas are generated from the models the handlers answer with (ledger.shapes for `/api/*`,
the probes' in receiver.health, the webhook's in receiver.webhooks) and from the event model VINR's
deliveries are parsed with (vinr.events.Event); the paths, parameters, headers and status codes
are written here, by hand, to say exactly what each route answers. tests/test_schemathesis.py
holds the live app to it. The document names no secret and holds no data, so it is served
without a token.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from ledger import shapes
from ledger.journal import COLUMNS as JOURNAL_COLUMNS
from receiver import aging_api
from receiver.health import Liveness, Readiness, Unready
from receiver.webhooks import Received
from vinr.events import Event

JSON = "application/json"

# Run ids are the `id` column of reconciliation_runs, an INTEGER: 32 bits on PostgreSQL.
MAX_RUN_ID = 2**31 - 1


class _DocumentSchema(GenerateJsonSchema):
    """pydantic's JSON Schema without the titles it derives from Python names (`Amountpaid`),
    nor, in an answer, the defaults of the models' fields (which are the server's business)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        if self.mode == "serialization":
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def model_schema(self, schema: Any) -> JsonSchemaValue:
        generated = super().model_schema(schema)
        generated.pop("title", None)
        return generated


# Every shape the document names, from the models the handlers answer with; `Event` is what
# VINR sends (vinr.events, the worker's own model), so it is described as input.
ANSWERS: list[type[BaseModel]] = [
    shapes.Error, shapes.Invoice, shapes.Balances, shapes.Runs, shapes.RunWithFindings, shapes.AgingAnswer,
    Received, Liveness, Readiness, Unready,
]


def component_schemas() -> dict[str, Any]:
    """`components.schemas`: each model's JSON Schema, and the models they refer to."""
    _, generated = models_json_schema(
        [(model, "serialization") for model in ANSWERS] + [(Event, "validation")],
        ref_template="#/components/schemas/{model}", schema_generator=_DocumentSchema)
    schemas: dict[str, Any] = generated["$defs"]
    # The event model's docstring speaks of Python; the document speaks of the wire.
    event = schemas["Event"]
    event["description"] = "A VINR event. Further fields are accepted and kept."
    event["properties"]["created"]["description"] = "Unix seconds, as VINR sent it."
    event["properties"]["data"]["description"] = '`{"object": invoice}`, or (older) the invoice itself.'
    return schemas


SCHEMAS = component_schemas()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "examples": ["2026-11-30"]}


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


def _api(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
                "200": _json(_ref("Received"), "The event is queued (or already was: a duplicate gets the same).",
                             REQUEST_ID),
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
            "responses": {"200": _json(_ref("Liveness"), "The process lives.")},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["operations"], "summary": "Readiness: Redis answers PING and the database SELECT 1",
            "security": [],
            "responses": {
                "200": _json(_ref("Readiness"), "Both answer."),
                "503": _json(_ref("Unready"), "At least one does not; `failed` names which."),
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
