"""JSON answers from the models the document publishes (ledger.shapes, receiver/openapi.py)."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import JSONResponse

from ledger.shapes import Error


def answer(shape: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """The model serialized as its JSON Schema says (`model_dump(mode="json")`)."""
    return JSONResponse(shape.model_dump(mode="json"), status, headers)


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The `Error` body every refusal carries."""
    return answer(Error(error=message), status, headers)
