"""The refusals of the sandbox's API, in the contract's error shape (section 4)."""

from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """A refusal the API answers with `{"error": {"type", "code", "message"}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.type = status, code, message, type_
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message, **self.extra}}


class CardError(SandboxError):
    """A payment attempt failed; it was recorded (attempt, error, event) before this was raised."""

    def __init__(self, code: str, decline_code: str, message: str, invoice: str):
        super().__init__(402, code, message, "card_error", declineCode=decline_code, invoice=invoice)


def invalid(message: str, code: str = "parameter_invalid") -> SandboxError:
    return SandboxError(400, code, message)


def missing(kind: str, id_: str) -> SandboxError:
    return SandboxError(404, "resource_missing", f"No such {kind}: '{id_}'")
