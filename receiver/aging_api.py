"""`GET /api/aging?asOf=YYYY-MM-DD[&manager=]`: receivables aging, per currency and account manager.

The figures come from ledger.aging; the answer's shape is the pydantic model `AgingAnswer`,
whose JSON Schema receiver/openapi.py publishes (`OPENAPI_SCHEMAS`, `OPENAPI_PATHS`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledger.aging import Aging, aging, parse_as_of

MAX_MANAGER = 200


class BucketFigure(BaseModel):
    amount: int = Field(description="Minor units of the row's currency: the sum of amountDue.")
    count: int = Field(description="How many invoices.")


class Buckets(BaseModel):
    notDue: BucketFigure
    days1to30: BucketFigure
    days31to60: BucketFigure
    days61to90: BucketFigure
    over90: BucketFigure


class BucketInfo(BaseModel):
    key: str
    label: str
    firstDay: int | None = Field(description="Days past due, inclusive; null: no lower bound.")
    lastDay: int | None = Field(description="Days past due, inclusive; null: no upper bound.")


class CurrencyAging(BaseModel):
    currency: str
    total: int = Field(description="Minor units: everything owed (open and uncollectible).")
    count: int
    overdue: int = Field(description="Minor units: the part past due.")
    buckets: Buckets


class ManagerAging(CurrencyAging):
    manager: str = Field(description="The invoice's accountManager, else its customer's, else "
                                     "ALERT_DEFAULT_RECIPIENT, else \"unassigned\".")


class AgingAnswer(BaseModel):
    asOf: date
    buckets: list[BucketInfo] = Field(description="The buckets, youngest first.")
    currencies: list[CurrencyAging] = Field(description="One row per currency, by currency code.")
    managers: list[ManagerAging] = Field(description="One row per manager and currency.")


def _error(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, 400)


async def get_aging(request: Request) -> Response:
    params = request.query_params
    as_of = parse_as_of(params.get("asOf"), datetime.now(UTC).date())
    if as_of is None:
        return _error("asOf must be a date YYYY-MM-DD between 1970-01-01 and 9999-12-30")
    manager = params.get("manager")
    settings = request.state.settings
    if manager is not None and (len(manager) > MAX_MANAGER or not manager.isprintable()):
        # No manager is named so (and PostgreSQL refuses a NUL in a parameter): nothing owed.
        figures = Aging(as_of, [], [])
    else:
        async with request.state.engine.connect() as conn:
            figures = await aging(conn, as_of, settings.alert_default_recipient, manager=manager)
    return JSONResponse(AgingAnswer.model_validate(figures.as_json()).model_dump(mode="json"))


_, _defs = models_json_schema([(AgingAnswer, "serialization")], ref_template="#/components/schemas/{model}")
OPENAPI_SCHEMAS = _defs["$defs"]

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
