"""`GET /api/aging?asOf=YYYY-MM-DD[&manager=]`: receivables aging, per currency and account manager.

The figures come from ledger.aging; the answer's shape is ledger.shapes' `AgingAnswer`, whose
JSON Schema receiver/openapi.py publishes with the operation described here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from ledger.aging import Aging, aging, parse_as_of
from ledger.shapes import AgingAnswer
from receiver.answers import answer, refusal

MAX_MANAGER = 200


async def get_aging(request: Request) -> Response:
    params = request.query_params
    as_of = parse_as_of(params.get("asOf"), datetime.now(UTC).date())
    if as_of is None:
        return refusal(400, "asOf must be a date YYYY-MM-DD between 1970-01-01 and 9999-12-30")
    manager = params.get("manager")
    settings = request.state.settings
    if manager is not None and (len(manager) > MAX_MANAGER or not manager.isprintable()):
        # No manager is named so (and PostgreSQL refuses a NUL in a parameter): nothing owed.
        figures = Aging(as_of, [], [])
    else:
        async with request.state.engine.connect() as conn:
            figures = await aging(conn, as_of, settings.alert_default_recipient, manager=manager)
    return answer(AgingAnswer.model_validate(figures.as_json()))


# The operation, for receiver/openapi.py (which adds the bearer token and its refusals).
SUMMARY = "Receivables aging: open and uncollectible amounts due by days past due"
RESPONSES = {
    "200": {"description": "Per currency, and per account manager and currency.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AgingAnswer"}}}},
    "400": {"description": "asOf is not a date YYYY-MM-DD from 1970-01-01 to 9999-12-30.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}
PARAMETERS = [
    {"name": "asOf", "in": "query", "required": False,
     "description": "The day the ages are counted to (UTC); today by default. Invoices created after it "
                    "are left out; amounts are those the ledger holds now.",
     "schema": {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
    {"name": "manager", "in": "query", "required": False,
     "description": "Only this account manager's invoices (as `managers[].manager` names them).",
     "schema": {"type": "string"}},
]
